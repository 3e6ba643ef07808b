"""Round 3 (issue 30): no exit 0 with a wrong number, every cache verified, every bad file one line. Each test
drives the CLI (exit code, one line, no traceback, nothing created where nothing should be)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spmlbench.experiments.records import load_records
from spmlbench.features.maps import maps_path, write_maps_metadata
from spmlbench.features.pseudo import FORMAT as PSEUDO_FORMAT
from spmlbench.features.pseudo import pseudo_path
from spmlbench.features.store import read_features, read_images, write_features
from spmlbench.paths import features_path, labels_path
from spmlbench.losses import LOSSES
from test_linear_support import write_dataset
from test_reliability_inputs import RUN, one_line
from test_run_experiment import write_spec
from test_run_modes import E2E, write_images
from test_e2e import micro  # noqa: F401 - fixture: backbone name "micro" resolves to a two-conv net

pytestmark = pytest.mark.usefixtures("restore_registry")  # each test ends with the built-ins only

MY_LOSS = (Path(__file__).resolve().parents[1] / "examples" / "my_loss.py").read_text(encoding="utf-8")
FORMULA = "    return torch.where(observed, -torch.log(p + hp.eps), -hp.neg_weight * torch.log(1 - p + hp.eps))\n"


def plugin(tmp_path: Path, name: str, old: str, new: str) -> str:
    """examples/my_loss.py with ``old`` replaced by ``new``, written to ``tmp_path/name``."""
    assert old in MY_LOSS
    path = tmp_path / name
    path.write_text(MY_LOSS.replace(old, new), encoding="utf-8")
    return str(path)


def write_maps(home: Path) -> Path:
    """A layer4 maps cache of the synthetic voc set (its pooled features as 1 x 1 maps), as extract_maps writes."""
    feats, _ = read_features(features_path("voc", "resnet50", home))
    path = maps_path("voc", "resnet50", home)
    np.save(path, feats.astype(np.float16)[:, :, None, None])
    write_maps_metadata(path, {"format": 1, "backbone": "resnet50", "weights": "none", "image_size": 224,
                               "shape": [len(feats), feats.shape[1], 1, 1], "dtype": "float16",
                               "images": read_images(features_path("voc", "resnet50", home))})
    return path


BOOST = (*RUN, "--losses", "boostlu_ll_r", "--lr", "0.01", "--batch-size", "8")


def test_maps_cache_overwritten_truncated_or_bad_json_is_refused(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    path = write_maps(home)
    out = str(tmp_path / "r")
    good = cli(*BOOST, "--out", out)
    assert good.code == 0, good.err
    fix = "rebuild it with 'spmlbench features voc --backbone resnet50 --weights none --image-size 224 --maps --force'"
    maps = np.load(path, mmap_mode="r+")  # overwritten in place, same size: trained on garbage, before
    maps[:20] = np.float16(3.0)
    maps.flush()
    del maps
    one_line(cli(*BOOST, "--out", out, "--force"), f"{path}: bytes do not match the sha256 in its metadata", fix)
    write_maps(home)
    with open(path, "r+b") as fh:  # truncated .npy: a traceback, before
        fh.truncate(path.stat().st_size - 100)
    one_line(cli(*BOOST, "--out", out, "--force"), f"{path}: not a readable .npy file", fix)
    write_maps(home)
    meta = path.with_suffix(".json")
    meta.write_text(meta.read_text()[:50])  # truncated .json
    one_line(cli(*BOOST, "--out", out, "--force"), "resnet50-maps.json is not a maps description", "--maps --force")
    assert len(load_records(out)) == 1  # the good run's record only


def test_maps_sampled_check_above_the_size_limit(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spmlbench.features import maps as maps_mod

    write_dataset(home, n=40)
    path = write_maps(home)
    monkeypatch.setattr(maps_mod, "FULL_HASH_BYTES", 0)  # every file "large": sampled blocks, whole on verify
    assert maps_mod.maps_problem(path) is None
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size - 10)
        fh.write(b"\x7f" * 10)
    assert "sampled sha256" in str(maps_mod.maps_problem(path))
    assert "bytes do not match the sha256" in str(maps_mod.maps_problem(path, full=True))


def test_formula_of_wrong_shape_or_raising_fails_only_that_loss(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    for name, new, problem in (
            ("shape.py", "    return torch.sigmoid(logits)[..., :3]\n",  # trained silently, before (21.31)
             "the formula returned shape (8, 3) for logits (8, 4); return the (B, C) per-entry loss or a scalar"),
            ("undefined.py", "    return undefined_name + p\n",  # a 20-frame traceback and no record, before
             "the formula raised NameError: name 'undefined_name' is not defined")):
        LOSSES._entries.pop("an_weighted", None)  # the other file's loss of that name
        path = plugin(tmp_path, name, FORMULA, new)
        out = tmp_path / f"out-{name}"
        res = cli(*RUN, "--losses", "an,gr,an_weighted", "--plugin", path, "--batch-size", "8", "--out", str(out))
        assert res.code == 1 and "Traceback" not in res.err, res.err
        line = 24 if name == "shape.py" else 29
        assert f"{path}:{line}: loss 'an_weighted': {problem}; fix the loss" in " ".join(res.out.split())
        df = load_records(out).set_index("loss")
        assert df.loc["an", "status"] == "ok" and df.loc["gr", "status"] == "ok"  # the cohort's others finish
        assert df.loc["an_weighted", "status"] == "failed" and problem in df.loc["an_weighted", "error"]
        assert np.isnan(df.loc["an_weighted", "test_map"]) and 0 < df.loc["an", "test_map"] <= 100
        assert res.err.strip().splitlines()[-1].startswith("error: 1 of 3 jobs failed")


def test_plugin_check_raising_and_plugin_names(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    out = tmp_path / "r"
    path = plugin(tmp_path, "check.py", 'self.positive("neg_weight", "eps")', "1 / (self.neg_weight - 0.25)")
    res = cli(*RUN, "--losses", "an,an_weighted", "--plugin", path, "--set", "an_weighted.neg_weight=0.25",
              "--out", str(tmp_path / "ok"))  # refused at planning, before: now only that loss's jobs fail
    check_raising_fails_only_that_loss(res, tmp_path / "ok", path)
    one_line(cli(*RUN, "--losses", "an", "--plugin", "../x", "--out", str(out)),
             "--plugin ../x: no such file or importable module")
    one_line(cli(*RUN, "--losses", "an", "--plugin", "os", "--out", str(out)),  # accepted silently, before
             "--plugin os: the module registered no loss and no head")
    assert not out.exists()


def check_raising_fails_only_that_loss(res, out: Path, path: str) -> None:
    """Exit 1, the one line naming the plugin's check() line, ``an`` recorded and ``an_weighted`` failed."""
    assert res.code == 1 and "Traceback" not in res.err, res.err
    problem = f"{path}:21: an_weighted hyperparameters (eps=1e-05, neg_weight=0.25): check() raised ZeroDivisionError"
    assert problem in " ".join(res.out.split()), res.out
    df = load_records(out).set_index("loss")
    assert df.loc["an", "status"] == "ok" and 0 < df.loc["an", "test_map"] <= 100, df
    assert df.loc["an_weighted", "status"] == "failed" and "ZeroDivisionError" in df.loc["an_weighted", "error"]
    assert res.err.strip().splitlines()[-1].startswith("error: 1 of 2 jobs failed"), res.err


def test_plugin_check_raising_in_an_e2e_lockstep_group(cli, home: Path, tmp_path: Path, micro: str) -> None:
    write_images(home)
    path = plugin(tmp_path, "check.py", 'self.positive("neg_weight", "eps")', "1 / (self.neg_weight - 0.25)")
    res = cli("run", *E2E[:2], "--losses", "an,an_weighted", *E2E[4:], "--mode", "e2e", "--plugin", path,
              "--set", "an_weighted.neg_weight=0.25", "--out", str(tmp_path / "ok"))
    check_raising_fails_only_that_loss(res, tmp_path / "ok", path)


def test_select_with_every_grid_point_failing(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    path = plugin(tmp_path, "nan.py", FORMULA, FORMULA.rstrip() + ' * float("nan")\n')
    out = tmp_path / "r"
    res = cli("run", "--dataset", "voc", "--losses", "an_weighted", "--plugin", path, "--seeds", "0,1", "--epochs", "1",
              "--lr-grid", "1e-2,1e-3,1e-4", "--batch-grid", "8,16", "--device", "cpu", "--out", str(out))
    assert res.code == 1 and "Traceback" not in res.err, res.err
    assert "an_weighted on voc: no grid point trained; nothing to select (6 grid point runs failed" in res.out
    df = load_records(out)
    assert len(df) == 6 and set(df["seed"]) == {0}  # seed 1 ran at a failed point, before
    assert res.err.strip().splitlines()[-1].startswith("error: 6 of 6 jobs failed")  # "2 of 2", before


def test_option_bounds_and_device_before_anything_is_made(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    out = tmp_path / "r"
    one_line(cli(*RUN[:-4], "--losses", "an", "--epochs", "9" * 20, "--out", str(out)),  # ran for days, before
             f"--epochs {'9' * 20}: must be a whole number in [1, 10000]")
    one_line(cli(*RUN, "--losses", "an", "--lr", "inf", "--out", str(out)), "--lr inf: must be a finite number > 0")
    one_line(cli("losses", "--check", "gr.q3=1e400"), "gr.q3=inf: must be a finite number >= 0")
    for device in ("cuda:7", "cuda:x", "nonsense"):
        res = cli("run", "--dataset", "voc", "--losses", "an", "--seeds", "0", "--device", device, "--out", str(out))
        one_line(res, f"--device {device}" if device == "cuda:7" else f"--device '{device}'")
        assert "jobs" not in res.err  # no progress bar first
    one_line(cli("run", "--dataset", "voc", "--losses", "an", "--mode", "e2e", "--image-size", "1", "--weights", "none",
                 "--backbone", "resnet18", "--seeds", "0", "--out", str(out)),
             "--image-size 1: must be a whole number in [32, 4096]")
    assert not out.exists()


def test_top_level_spec_overrides_name_the_spec_and_key(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    out = tmp_path / "r"
    for value, problem in (("-1", "lr = -1: must be a finite positive number"),
                           ("nan", "lr = nan: must be a finite positive number")):
        spec = tmp_path / "top.toml"
        spec.write_text(f"overrides = {{ lr = {value} }}\n" + Path(write_spec(tmp_path)).read_text())
        one_line(cli("run", "--experiment", str(spec), "--out", str(out)), f"{spec}: overrides {problem}")
    spec.write_text('overrides = { epochs = "ten" }\n' + Path(write_spec(tmp_path)).read_text())
    one_line(cli("run", "--experiment", str(spec), "--out", str(out)),  # a TypeError traceback, before
             f"{spec}: overrides epochs = 'ten': must be a whole number in [1, 10000]")
    assert not out.exists()


def _edit_labels(home: Path, edit) -> None:
    path = labels_path("voc", home)
    table = pq.read_table(path)
    df = table.to_pandas()
    edit(df)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(table.schema.metadata), path)


def test_duplicate_image_and_class_without_test_positive(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)

    def duplicate(df) -> None:
        df.loc[1, "image"] = df.loc[0, "image"]

    _edit_labels(home, duplicate)  # blamed on the feature cache, then trained after its rebuild, before
    one_line(cli(*RUN, "--losses", "an", "--out", str(tmp_path / "r")),
             f"{labels_path('voc', home)}: row 1 repeats image 'img0000.png' of row 0")
    write_dataset(home, n=40)

    def no_test_positive(df) -> None:
        for i in df.index[df["split"] == "test"]:
            row = np.array(df.at[i, "labels"]).copy()
            row[3] = 0
            df.at[i, "labels"] = row
            df.at[i, "observed"] = row

    _edit_labels(home, no_test_positive)
    res = cli(*RUN, "--losses", "an", "--out", str(tmp_path / "r"))
    assert res.code == 0, res.err
    assert (f"warning: {labels_path('voc', home)}: class 3 has no positive in the test split; AP policy: such a "
            "class counts as AP 0 in the test mAP") in " ".join(res.out.split())
    assert load_records(tmp_path / "r")["test_ap"][0][3] == 0.0
    rep = cli("report", "--results", str(tmp_path / "r"))
    assert rep.code == 0 and "Traceback" not in rep.err, rep.err
    assert (f"warning: {tmp_path / 'r' / 'records'} (voc): class 3 has no positive in the test split; AP policy: "
            "such a class counts as AP 0") in " ".join(rep.err.split())


def test_features_metadata_not_json_is_one_line_then_rebuilt(cli, home: Path, tmp_path: Path) -> None:
    assert cli("prepare", "digits", "--features", "none").code == 0
    assert cli("features", "digits", "--quiet").code == 0
    path = features_path("digits", "pixels", home)
    good = path.read_bytes()
    for raw in (b"{oops", b"[]"):  # a traceback, and 'features' did not rebuild it, before
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({b"spmlbench": raw}), path)
        one_line(cli("run", "--losses", "an", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path / "r")),
                 f"{path}: its spmlbench metadata is not a JSON object (corrupt)",
                 "rebuild it with 'spmlbench features digits --backbone pixels --force'")
        res = cli("features", "digits")
        assert res.code == 0 and "not a JSON object (corrupt); rebuilding" in res.err, res.err
        assert read_features(path)[0].shape == (6000, 1024)
    assert not (tmp_path / "r" / "records").exists() and len(good) > 0


def _pseudo_cache(home: Path, source: str, values: np.ndarray) -> Path:
    from spmlbench.data.store import load_labels

    df = load_labels("voc", home)
    images = df.loc[df["split"] == "train", "image"].tolist()
    path = pseudo_path("voc", source, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_features(path, images, values, {"format": PSEUDO_FORMAT, "source": source, "views": 1, "num_classes": 4,
                                          "images": len(images)})
    return path


def test_pseudo_label_caches_truncated_or_nan(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    values = np.random.default_rng(0).random((20, 8)).astype(np.float32)
    path = _pseudo_cache(home, "damp", values)
    path.write_bytes(path.read_bytes()[:-200])
    one_line(cli(*RUN, "--losses", "aevlp", "--out", str(tmp_path / "r")),  # 'features voc --backbone damp', before
             f"{path}: not a readable Parquet file", "rebuild it with 'spmlbench pseudo-labels voc --source damp --force'")
    values[3] = np.nan
    path = _pseudo_cache(home, "vlpl", values)  # trained silently, before
    one_line(cli(*RUN, "--losses", "vlpl", "--out", str(tmp_path / "r")),
             f"{path}: holds 8 NaN or infinite pseudo-label scores", "pseudo-labels voc --source vlpl --force")
    assert not (tmp_path / "r" / "records").exists() or not any((tmp_path / "r" / "records").iterdir())


def test_full_disk_names_the_file(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq_mod

    write_dataset(home, n=40)
    real = pq_mod.write_table

    def full(table, where, *a, **k):  # what pyarrow raises on a full disk: no file name, errno in the text
        if "records" in str(where):
            raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq_mod, "write_table", full)
    out = tmp_path / "r"
    res = cli(*RUN, "--losses", "an", "--out", str(out))
    one_line(res, f"error: {out / 'records'}/", ".parquet: No space left on device (no space left on the device; "
             "free space or choose another path")
    assert "a file operation" not in res.err
    assert not [p for p in (out / "records").iterdir()]  # no half-written record, no temp file


def test_two_prepares_of_one_dataset_take_turns(cli, home: Path) -> None:
    import subprocess
    import sys

    from spmlbench import procinfo

    lock = home / ".digits.prepare.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    lock.write_text(procinfo.owner_line(holder.pid))  # a live prepare holds the dataset
    res = cli("prepare", "digits", "--features", "none")
    holder.wait()
    assert res.code == 0, res.err
    assert f"waiting: {lock} is held by another prepare of digits" in " ".join(res.out.split())
    assert labels_path("digits", home).exists() and not lock.exists()
    lock.write_text(procinfo.owner_line(holder.pid))  # its owner is gone: taken over at once
    res = cli("prepare", "digits", "--features", "none")
    assert res.code == 0 and "waiting" not in res.out and not lock.exists()


def test_features_maps_rebuilds_a_corrupt_maps_cache(home: Path) -> None:
    from test_pseudo_labels import _dataset

    from spmlbench.features import maps as maps_mod
    from spmlbench.progress import Note

    _dataset(home, n=7)
    notes: list[str] = []
    sink = lambda event: notes.append(event.text) if isinstance(event, Note) else None  # noqa: E731
    kw = dict(home=home, weights="none", image_size=32, batch_size=4, progress=sink)
    path = maps_mod.extract_maps("tiny", "resnet18", **kw)
    want = np.load(path).copy()
    path.with_suffix(".json").write_text("{trunc")  # "up to date, reused", before
    maps_mod.extract_maps("tiny", "resnet18", **kw)
    assert maps_mod.maps_problem(path) is None and np.array_equal(np.load(path), want)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 64)
    maps_mod.extract_maps("tiny", "resnet18", **kw)
    assert maps_mod.maps_problem(path) is None and np.array_equal(np.load(path), want)
    rebuilt = [n for n in notes if n.endswith("; rebuilding it")]
    assert len(rebuilt) == 2 and all(n.startswith(f"{path}: ") for n in rebuilt)
    assert "is not a maps description" in rebuilt[0] and "not a readable .npy file" in rebuilt[1]
