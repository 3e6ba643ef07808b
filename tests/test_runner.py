"""Jobs, records, locks and the runner: skip finished jobs, --force, resume after a kill, concurrent runs."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spmlbench.experiments import locks
from spmlbench.experiments.jobs import JobSpec, expand_jobs, parse_grid
from spmlbench.experiments.recipes import paper_recipe as recipe
from spmlbench.experiments.records import load_records, record_path
from spmlbench.experiments.runner import run_jobs
from test_linear_support import write_dataset

META = {"protocol": {"label_seed": 1200, "split_seed": 1200}, "expected_positives": {"computed": 1.6, "paper": None}}


def jobs_for(losses: list[str], **kw) -> list[JobSpec]:
    base = dict(dataset="voc", losses=losses, seeds=[0], meta=META, backbone="resnet50", epochs=2, recipe="paper")
    base.update(kw)
    return expand_jobs(**base)


def test_job_id_is_sha256_of_canonical_json() -> None:
    job = jobs_for(["gr"], sets=["gr.q3=1.5"])[0]
    fields = {"dataset": "voc", "loss": "gr", "mode": "linear", "seed": 0, "label_seed": 1200, "split_seed": 1200,
              "backbone": "resnet50", "epochs": 2, "batch_size": 8, "lr": 1e-4, "val": "clean",
              "early_stop": "drop:2", "hparams": job.to_dict()["hparams"]}
    assert job.to_dict() == fields
    assert job.to_dict()["hparams"]["q3"] == 1.5
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert job.job_id == hashlib.sha256(text.encode()).hexdigest()[:16]
    assert jobs_for(["gr"], sets=["gr.q3=1.5"])[0].job_id == job.job_id
    assert jobs_for(["gr"])[0].job_id != job.job_id


def test_recipes_follow_the_papers() -> None:
    assert (recipe("gr", "voc").epochs, recipe("gr", "voc").early_stop, recipe("gr", "voc").batch_size) == (8, "drop:2", 8)
    assert recipe("ll_cp", "coco").early_stop == "drop:3" and recipe("ll_cp", "coco").batch_size == 16
    assert recipe("em", "cub").lr == 1e-4 and recipe("em", "coco").batch_size == 16
    assert recipe("em_apl", "voc").early_stop == "no_improve"
    assert recipe("an", "voc").epochs == 25 and recipe("an", "voc").early_stop == "none"
    assert recipe("role", "voc").lr == 1e-3 and recipe("role", "cub").batch_size == 8


def test_grid_and_expected_positives() -> None:
    assert parse_grid("gr.beta=[0,2,-2,-2],[0,10,-2,-8]")[2] == [[0, 2, -2, -2], [0, 10, -2, -8]]
    jobs = jobs_for(["gr", "epr"], grids=["gr.q3=1,1.5"], seeds=[0, 1], early_stop="none")
    assert sorted(dict(j.hparams)["q3"] for j in jobs if j.loss == "gr") == [1, 1, 1.5, 1.5]
    assert all(j.early_stop == "none" for j in jobs)
    assert dict(jobs_for(["epr"], dataset="digits")[0].hparams)["expected_num_pos"] == 1.6  # from metadata
    assert dict(jobs_for(["epr"])[0].hparams)["expected_num_pos"] == 1.5  # voc's published value


def test_locks(tmp_path: Path) -> None:
    assert locks.claim(tmp_path, "a")
    assert not locks.claim(tmp_path, "a")  # held by this live process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    locks.lock_path(tmp_path, "b").write_text(f"{int(dead.stdout)} {socket.gethostname()}")
    assert locks.claim(tmp_path, "b")  # stale: its process is gone
    locks.lock_path(tmp_path, "c").write_text(f"1 other-host.example")
    assert not locks.claim(tmp_path, "c")  # another host's claim is respected while it is refreshed
    assert locks.held_by_other(tmp_path, "c")
    old = time.time() - locks.STALE_S - 60
    os.utime(locks.lock_path(tmp_path, "c"), (old, old))  # ... but not once that host stopped refreshing it
    assert not locks.held_by_other(tmp_path, "c")
    assert locks.claim(tmp_path, "c")
    assert locks.lock_path(tmp_path, "c").read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
    os.utime(locks.lock_path(tmp_path, "a"), (old, old))
    assert not locks.claim(tmp_path, "a")  # this process's own claim is never stale to itself, however old
    locks.release(tmp_path, "a")
    assert not locks.lock_path(tmp_path, "a").exists()


def test_heartbeat_refreshes_own_claims_only(tmp_path: Path) -> None:
    assert locks.claim(tmp_path, "mine")
    locks.lock_path(tmp_path, "theirs").write_text("1 other-host.example")
    old = time.time() - 3600
    for name in ("mine", "theirs"):
        os.utime(locks.lock_path(tmp_path, name), (old, old))
    with locks.heartbeat(tmp_path, ["mine", "theirs"], every=0.05):
        deadline = time.time() + 5
        while locks.lock_path(tmp_path, "mine").stat().st_mtime < old + 60 and time.time() < deadline:
            time.sleep(0.02)
    assert locks.lock_path(tmp_path, "mine").stat().st_mtime > time.time() - 60  # refreshed
    assert locks.lock_path(tmp_path, "theirs").stat().st_mtime == pytest.approx(old)  # not ours: untouched


def test_run_skip_force_and_records(home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    out = tmp_path / "res"
    jobs = jobs_for(["an", "gr", "role"], seeds=[0, 1])
    s1 = run_jobs(jobs, out, device="cpu")
    assert len(s1.ran) == 6 and not s1.skipped
    df = load_records(out)
    assert sorted(df["job_id"]) == sorted(j.job_id for j in jobs)
    row = df[df["loss"] == "gr"].iloc[0]
    assert row["status"] == "ok" and len(row["val_map"]) == row["epochs_run"] <= 2
    assert len(row["test_ap"]) == 4 and row["test_map"] == pytest.approx(sum(row["test_ap"]) / 4)
    assert row["val_map"][row["best_epoch"] - 1] == max(row["val_map"])
    assert json.loads(row["hparams"])["q3"] == 1 and row["features_sha256"] and json.loads(row["versions"])["torch"]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    s2 = run_jobs(jobs, out, device="cpu")
    assert not s2.ran and len(s2.skipped) == 6
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()} == before
    s3 = run_jobs(jobs[:2], out, device="cpu", force=True)
    assert len(s3.ran) == 2
    after = {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    assert sum(after[k] != before[k] for k in before) == 2
    again = load_records(out).set_index("job_id")
    assert again.loc[jobs[0].job_id, "val_map"].tolist() == df.set_index("job_id").loc[jobs[0].job_id, "val_map"].tolist()
    assert not list((out / "locks").iterdir())


RUN_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from spmlbench.experiments.jobs import expand_jobs
    from spmlbench.experiments.runner import RunProgress, run_jobs
    from test_runner import META

    class KillInSecondCohort(RunProgress):
        cohorts = 0
        def cohort(self, jobs):
            self.cohorts += 1
        def epoch(self, event):
            if self.cohorts == 2 and {kill}:
                os.kill(os.getpid(), signal.SIGKILL)

    jobs = expand_jobs(dataset="voc", losses=["an", "role", "gr"], seeds=[0, 1], meta=META, backbone="resnet50",
                       recipe="paper")
    s = run_jobs(jobs, sys.argv[1], device="cpu", progress=KillInSecondCohort())
    print("RAN", len(s.ran))
""")


def run_script(tmp_path: Path, home: Path, out: Path, kill: bool) -> subprocess.Popen:
    script = tmp_path / f"run_{kill}.py"
    script.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent), kill=kill))
    env = dict(os.environ, SPMLBENCH_HOME=str(home))
    return subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


@pytest.mark.slow
def test_resume_after_kill(home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=120)
    out = tmp_path / "res"
    p = run_script(tmp_path, home, out, kill=True)
    p.wait(timeout=120)
    assert p.returncode == -9
    first = {f.name: f.read_bytes() for f in (out / "records").glob("*.parquet")}
    assert len(first) == 2  # the first cohort (an, both seeds) finished; role was in flight
    assert len(list((out / "locks").iterdir())) == 2  # the killed cohort's stale claims
    p = run_script(tmp_path, home, out, kill=False)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    assert "RAN 4" in stdout
    assert {f.name: f.read_bytes() for f in (out / "records").glob("*.parquet") if f.name in first} == first
    assert len(load_records(out)) == 6 and not list((out / "locks").iterdir())


@pytest.mark.slow
def test_two_concurrent_runs(home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=120)
    out = tmp_path / "res"
    procs = [run_script(tmp_path, home, out, kill=False) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    ran = [int(o.split("RAN")[1]) for o, _ in outs]
    assert sum(ran) == 6  # every job run exactly once, by one of the two
    df = load_records(out)
    assert len(df) == 6 and df["job_id"].is_unique
    assert not list((out / "locks").iterdir())
    assert record_path(out, df["job_id"][0]).exists()


def test_paper_recipes_have_no_dataset_wide_override() -> None:
    """Family values apply on every dataset; digits has no lr override any more (the selection replaces it)."""
    role_voc, role_digits = recipe("role", "voc"), recipe("role", "digits")
    assert (role_voc.lr, role_voc.batch_size, role_voc.epochs) == (1e-3, 16, 25)
    assert (role_digits.lr, role_digits.batch_size, role_digits.epochs) == (1e-3, 16, 25)
    em_voc, em_digits = recipe("em", "voc"), recipe("em", "digits")
    assert (em_voc.lr, em_voc.batch_size, em_voc.epochs, em_voc.early_stop) == (1e-5, 8, 10, "no_improve")
    assert (em_digits.lr, em_digits.batch_size, em_digits.epochs, em_digits.early_stop) == (1e-5, 8, 10, "no_improve")
    gr_digits = recipe("gr", "digits")
    assert (gr_digits.lr, gr_digits.epochs, gr_digits.early_stop) == (1e-4, 8, "drop:2")
    assert "digits" not in gr_digits.source


def test_rebuilt_feature_cache_reruns_linear_jobs(home: Path, tmp_path: Path) -> None:
    """The job id does not see the feature bytes: a record made from another cache is not reused."""
    from spmlbench.features.store import read_features, write_features
    from spmlbench.paths import features_path

    write_dataset(home)
    out = tmp_path / "res"
    jobs = jobs_for(["an"], seeds=[0])
    assert len(run_jobs(jobs, out, device="cpu").ran) == 1
    assert not run_jobs(jobs, out, device="cpu").ran  # same cache: skipped
    path = features_path("voc", "resnet50", home)
    feats, _ = read_features(path)
    from spmlbench.features.store import read_images
    write_features(path, read_images(path), feats[:, ::-1] * 0.5, {"backbone": "resnet50", "weights": "none"})
    s = run_jobs(jobs, out, device="cpu")
    assert s.ran == [jobs[0].job_id] and not s.skipped
    new_sha = read_features(path)[1]["sha256"]
    assert load_records(out)["features_sha256"].tolist() == [new_sha]
    assert not run_jobs(jobs, out, device="cpu").ran


def test_linear_record_settings_hold_the_resolved_recipe(home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    out = tmp_path / "res"
    job = jobs_for(["gr"], seeds=[0])[0]
    run_jobs([job], out, device="cpu")
    settings = json.loads(load_records(out)["settings"].iloc[0])
    assert settings["optimizer"] == "adam" and settings["lr"] == job.lr and settings["epochs"] == job.epochs
    assert settings["early_stop"] == job.early_stop and "Chen et al. 2024" in settings["recipe_source"]


def test_force_skips_jobs_another_forced_run_redid_since_it_started(home: Path, tmp_path: Path) -> None:
    """Two concurrent --force runs never re-run a job twice: a record newer than the run's start was
    written by the other forced run (simulated here by moving one record's mtime into the future)."""
    write_dataset(home)
    out = tmp_path / "res"
    jobs = jobs_for(["an", "gr"], seeds=[0])
    assert len(run_jobs(jobs, out, device="cpu").ran) == 2
    fresh = record_path(out, jobs[0].job_id)
    future = time.time() + 3600
    os.utime(fresh, (future, future))
    s = run_jobs(jobs, out, device="cpu", force=True)
    assert s.ran == [jobs[1].job_id] and s.by_others == [jobs[0].job_id]
    assert fresh.stat().st_mtime == pytest.approx(future)  # not rewritten
    assert not list((out / "locks").iterdir())
