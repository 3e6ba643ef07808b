"""A/B timing of the VOC-sized linear sweep between two checkouts: the 16 default losses x 3 seeds, processes
auto, only ``train_linear_parallel`` timed. Run it once per checkout, alternating, with that checkout's
package first on the path:

    PYTHONPATH=/path/to/before python benchmarks/ab_sweep.py 25
    PYTHONPATH=. python benchmarks/ab_sweep.py 25
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from linear_sweep import VOC, configs, synthetic  # noqa: E402

import spmlbench  # noqa: E402
from spmlbench.losses import default_losses  # noqa: E402
from spmlbench.train.parallel import auto_processes, train_linear_parallel  # noqa: E402


def main() -> None:
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 25
    data = synthetic(VOC, 2048)
    cfgs = configs(default_losses(), [0, 1, 2], epochs, 8, VOC[4])
    processes = auto_processes(cfgs, VOC[0], "cpu")
    t0 = time.perf_counter()
    train_linear_parallel(data, cfgs, threads=2, processes=processes)
    print(f"{spmlbench.__file__}: {time.perf_counter() - t0:.1f} s ({processes} processes, {epochs} epochs)")


if __name__ == "__main__":
    main()
