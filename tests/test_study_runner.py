"""The study runner on a toy study (tests/toy_study.py, trials of about a second): artefacts, resume, corrupt
files, failed and diverged trials, the plotting step, the process engine and the per-trial store."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from keras_initkit.study import engines, runner, store
from keras_initkit.study.grid import trial_id

TOY = Path(__file__).with_name("toy_study.py")


@pytest.fixture(scope="module")
def toy():
    return runner.load_study(str(TOY))


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory):
    """One uninterrupted serial run of the quick profile, published to out/docs (a preregistration already there)."""
    out = tmp_path_factory.mktemp("ref")
    (out / "docs" / "toy" / "figures").mkdir(parents=True)
    (out / "docs" / "toy" / "PREREGISTRATION.md").write_text("written before the run\n")
    (out / "docs" / "toy" / "figures" / "stale.png").write_bytes(b"old figure")
    result = runner.run_study(toy, profile="quick", out_dir=out / "results", publish=out / "docs", progress=False)
    return result, out


def _frames(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def _assert_same_tables(a: Path, b: Path):
    for sub in ("raw", "tables"):
        fa, fb = _frames(a / sub), _frames(b / sub)
        assert sorted(fa) == sorted(fb)
        for name in fa:
            pd.testing.assert_frame_equal(fa[name], fb[name], check_exact=True)


class _Counter:
    """Wraps the toy's run_trial to count calls (serial engine: same process, same module object)."""

    def __init__(self, toy, monkeypatch):
        self.calls = []
        original = toy.run_trial

        def counted(cfg, trial):
            self.calls.append(dict(trial))
            return original(cfg, trial)

        monkeypatch.setattr(toy, "run_trial", counted)


def test_end_to_end_writes_every_artefact(reference, toy):
    result, out = reference
    root = out / "results" / "toy" / "quick"
    assert result.dir == root
    assert result.counts == {"ok": 4, "failed": 0, "diverged": 0}
    ids = [trial_id(t, toy.QUICK) for t in toy.trials(toy.QUICK)]
    assert sorted(p.name for p in (root / "trials").iterdir()) == sorted(ids)
    for tid in ids:
        rec = store.read_trial(root / "trials" / tid)
        assert rec.status == "ok" and rec.wall_s > 0 and set(rec.tables) == {"curves", "final"}
    raw = _frames(root / "raw")
    assert len(raw["final"]) == 4 and len(raw["curves"]) == 4 * toy.QUICK.epochs
    # raw tables are in grid order, whatever the completion order
    assert list(zip(raw["final"]["activation"], raw["final"]["seed"], strict=True)) == [
        (t["activation"], t["seed"]) for t in toy.trials(toy.QUICK)
    ]
    for name in ("accuracy", "claims"):
        assert (root / "tables" / f"{name}.parquet").is_file() and (root / "tables" / f"{name}.md").is_file()
    claims = pd.read_csv(root / "claims.csv")
    assert list(claims.columns) == list(runner.CLAIM_COLUMNS)
    assert list(claims["claim"]) == ["T1", "T2"] and set(claims["status"]) <= {"PASS", "FAIL", "N/A"}
    assert sorted(p.name for p in (root / "figures").iterdir()) == ["accuracy.png", "curves.png"]
    assert (root / "figures" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    meta = json.loads((root / "meta.json").read_text())
    for key in ("packages", "python", "platform", "devices", "git_commit", "config", "seeds", "engine", "wall_s"):
        assert key in meta, key
    assert meta["cpus"] == os.cpu_count() and meta["usable_cpus"] == engines.cpu_count() and "cpu_model" in meta
    assert meta["tf_threads"] == {"intra_op": 0, "inter_op": 0}  # serial: TensorFlow's defaults
    assert meta["trials"] == {"total": 4, "ok": 4, "failed": 0, "diverged": 0, "resumed": 0}
    assert meta["profile"] == "quick" and meta["engine"] == "serial" and meta["seeds"] == [0, 1]
    assert meta["config"]["activations"] == ["relu", "tanh"] and "keras" in meta["packages"]
    assert any(d.startswith("CPU") for d in meta["devices"])

    report = (root / "REPORT.md").read_text()
    for row in claims.itertuples():
        assert re.search(rf"\|\s*{row.claim}\s*\|\s*{row.status}\s*\|", report), row.claim
    assert toy.CLAIMS["T1"] in report
    assert "| `width` | `8` | hidden units of the one hidden layer |" in report  # setup table from the comments
    assert "4 trials: 4 ok, 0 diverged, 0 failed" in report
    assert "## Environment" in report and meta["python"] in report
    assert result.report == root / "REPORT.md"
    # the published copy: same report (figure links resolve relative to it), claims, summary tables as CSV, meta
    docs = out / "docs" / "toy"
    assert (docs / "REPORT.md").read_text() == report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert sorted(links) == ["figures/accuracy.png", "figures/curves.png"]
    for link in links:
        assert (root / link).is_file() and (docs / link).is_file()
    assert sorted(str(p.relative_to(docs)) for p in docs.rglob("*") if p.is_file()) == [
        "PREREGISTRATION.md",
        "REPORT.md",
        "claims.csv",
        "figures/accuracy.png",
        "figures/curves.png",
        "meta.json",
        "tables/accuracy.csv",
    ]  # the stale figure is gone, the preregistration untouched
    assert (docs / "PREREGISTRATION.md").read_text() == "written before the run\n"
    assert (docs / "claims.csv").read_bytes() == (root / "claims.csv").read_bytes()
    assert (docs / "meta.json").read_bytes() == (root / "meta.json").read_bytes()
    pd.testing.assert_frame_equal(pd.read_csv(docs / "tables" / "accuracy.csv"), result.summary["accuracy"])


def test_runner_tables_equal_the_pure_serial_run(reference, toy):
    result, _ = reference
    pure = toy.run(toy.QUICK)
    for name in ("curves", "final", "accuracy", "claims"):
        pd.testing.assert_frame_equal(result.tables.get(name, result.summary.get(name)), pure[name], check_exact=True)


def test_resume_skips_finished_trials(reference, toy, tmp_path, monkeypatch):
    result, out = reference
    root = out / "results" / "toy" / "quick"
    before = {p.name: (p / "record.json").read_bytes() for p in (root / "trials").iterdir()}
    counter = _Counter(toy, monkeypatch)
    again = runner.run_study(toy, profile="quick", out_dir=out / "results", plot=False, progress=False)
    assert counter.calls == []
    assert {p.name: (p / "record.json").read_bytes() for p in (root / "trials").iterdir()} == before
    assert json.loads((root / "meta.json").read_text())["trials"]["resumed"] == 4
    assert again.resumed == 4 and result.resumed == 0
    # one trial file gone: only that trial runs again, and the tables come out the same
    copy = tmp_path / "results"
    import shutil

    shutil.copytree(out / "results", copy)
    gone = sorted((copy / "toy" / "quick" / "trials").iterdir())[0]
    gone_trial = json.loads((gone / "record.json").read_text())["trial"]
    shutil.rmtree(gone)
    runner.run_study(toy, profile="quick", out_dir=copy, plot=False, progress=False)
    assert counter.calls == [gone_trial]
    _assert_same_tables(root, copy / "toy" / "quick")
    assert again.counts == result.counts


def test_corrupt_trial_files_are_rerun_with_a_warning(reference, toy, tmp_path, monkeypatch):
    import shutil

    _, out = reference
    shutil.copytree(out / "results", tmp_path / "results")
    root = tmp_path / "results" / "toy" / "quick"
    victims = sorted((root / "trials").iterdir())[:3]
    trials = [json.loads((v / "record.json").read_text())["trial"] for v in victims]
    data = (victims[0] / "curves.parquet").read_bytes()
    (victims[0] / "curves.parquet").write_bytes(data[: len(data) // 2])  # truncated table
    (victims[1] / "record.json").write_text('{"id": "')  # truncated record
    (victims[2] / "record.json").unlink()  # no record
    for victim, reason in zip(victims, ["sha256", "unreadable", "missing"], strict=True):
        with pytest.raises(store.CorruptTrial, match=reason):
            store.read_trial(victim)
    counter = _Counter(toy, monkeypatch)
    with pytest.warns(runner.StudyWarning, match="corrupt trial file") as caught:
        runner.run_study(toy, profile="quick", out_dir=tmp_path / "results", plot=False, progress=False)
    warned = " ".join(str(w.message) for w in caught)
    assert all(v.name in warned for v in victims)
    assert sorted(counter.calls, key=str) == sorted(trials, key=str)
    assert all(store.read_trial(v).status == "ok" for v in victims)
    _assert_same_tables(out / "results" / "toy" / "quick", root)


def test_failed_and_diverged_trials_are_counted_and_the_study_goes_on(toy, tmp_path, monkeypatch):
    cfg = dataclasses.replace(toy.QUICK, activations=("relu",), lrs=(0.1, 1e38), fail_seeds=(1,))
    with pytest.warns(runner.StudyWarning, match="injected failure"):
        result = runner.run_study(toy, cfg, profile="quick", out_dir=tmp_path, progress=False)
    # relu x 2 lrs x 2 seeds: seed 1 raises (2 trials), seed 0 at lr 1e38 overflows to NaN (1), 1 ok
    assert result.counts == {"ok": 1, "failed": 2, "diverged": 1}
    by_status = {s: [r for r in result.records if r.status == s] for s in store.STATUSES}
    assert all(r.trial["seed"] == 1 and "RuntimeError: injected failure" in r.error for r in by_status["failed"])
    assert all("Traceback" in r.traceback and r.tables == {} for r in by_status["failed"])
    assert all(r.trial["lr"] == 1e38 and "diverged" in r.error for r in by_status["diverged"])
    final = result.tables["final"]
    assert len(final) == 2 and int(final["diverged"].sum()) == 1  # diverged trials keep their tables
    assert result.summary["accuracy"]["trials"].sum() == 1
    meta = json.loads((result.dir / "meta.json").read_text())
    assert meta["trials"] == {"total": 4, "ok": 1, "failed": 2, "diverged": 1, "resumed": 0}
    assert len(meta["failed"]) == 2 and "injected failure" in meta["failed"][0]["error"]
    report = (result.dir / "REPORT.md").read_text()
    assert "4 trials: 1 ok, 1 diverged, 2 failed" in report and "Failed trials:" in report
    # resume: failed trials run again (they may have been transient), ok and diverged ones do not
    counter = _Counter(toy, monkeypatch)
    with pytest.warns(runner.StudyWarning):
        again = runner.run_study(toy, cfg, profile="quick", out_dir=tmp_path, plot=False, progress=False)
    assert sorted(c["seed"] for c in counter.calls) == [1, 1]
    assert again.counts == result.counts


def test_plot_only_reads_saved_tables_and_never_trains(reference, toy, tmp_path, monkeypatch):
    import shutil

    _, out = reference
    shutil.copytree(out / "results", tmp_path / "results")
    root = tmp_path / "results" / "toy" / "quick"
    shutil.rmtree(root / "figures")
    (root / "REPORT.md").unlink()

    def no_training(cfg, trial):
        raise AssertionError("the plotting step must not train")

    monkeypatch.setattr(toy, "run_trial", no_training)
    path = runner.plot_study(toy, profile="quick", out_dir=tmp_path / "results")
    assert path == root / "REPORT.md" and "## Figures" in path.read_text()
    assert sorted(p.name for p in (root / "figures").iterdir()) == ["accuracy.png", "curves.png"]
    with pytest.raises(FileNotFoundError, match="run the study first"):
        runner.plot_study(toy, profile="paper", out_dir=tmp_path / "results")

    def broken_plot(tables, summary):
        raise KeyError("no such column")

    monkeypatch.setattr(toy, "plot", broken_plot)
    with pytest.warns(runner.StudyWarning, match="plot\\(\\) failed.*no such column"):
        runner.plot_study(toy, profile="quick", out_dir=tmp_path / "results")
    text = path.read_text()
    assert "## Figures" not in text and "| T1 " in text  # the report is still written, without figures
    assert list((root / "figures").iterdir()) == []


def test_plot_only_renders_the_runs_own_report(toy, tmp_path):
    # REPORT.md states the run's wall time up to its tables; meta.json times the plotting step apart (plot_s), so
    # redrawing later gives the same report, word for word
    result = runner.run_study(toy, profile="quick", out_dir=tmp_path, progress=False)
    original = result.report.read_text()
    meta = json.loads((result.dir / "meta.json").read_text())
    assert meta["plot_s"] > 0 and f"in {meta['wall_s']:.0f} s." in original
    assert runner.plot_study(toy, profile="quick", out_dir=tmp_path).read_text() == original


def test_a_rerun_that_runs_no_trial_keeps_the_original_wall_time(toy, tmp_path, monkeypatch):
    first = runner.run_study(toy, profile="smoke", out_dir=tmp_path, progress=False)
    meta = json.loads((first.dir / "meta.json").read_text())
    report = first.report.read_text()
    assert meta["trials"]["resumed"] == 0 and "was resumed" not in report
    counter = _Counter(toy, monkeypatch)
    again = runner.run_study(toy, profile="smoke", out_dir=tmp_path, progress=False)
    assert counter.calls == [] and again.resumed == 1 and again.wall_s == first.wall_s
    meta_again = json.loads((first.dir / "meta.json").read_text())
    assert (meta_again["wall_s"], meta_again["finished"]) == (meta["wall_s"], meta["finished"])
    assert meta_again["trials"]["resumed"] == 1
    text = again.report.read_text()
    assert f"in {meta['wall_s']:.0f} s." in text and "Every trial (1) was resumed from an earlier run" in text
    assert "(1 resumed from an earlier run)" in text


def test_bad_arguments_raise_before_anything_is_written(toy, tmp_path):
    cases = [
        (dict(profile="huge"), "--profile.*quick, paper, smoke"),
        (dict(data="cifar100"), "--data.*blobs, digits, npz"),
        (dict(data_path=str(tmp_path / "nope.npz")), "--data-path.*no such file"),
        (dict(engine="dask"), "`engine` must be one of"),
        (dict(engine="process", jobs=0), "`jobs` must be an integer >= 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            runner.run_study(toy, out_dir=tmp_path / "out", progress=False, **kwargs)
    with pytest.raises(runner.UsageError, match="unknown study 'nope'"):
        runner.load_study("nope")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~60 s on 2 loaded cores: two spawned workers each import TensorFlow
def test_process_engine_equals_serial(reference, toy, tmp_path):
    result, out = reference
    got = runner.run_study(toy, profile="quick", out_dir=tmp_path, engine="process", jobs=2, plot=False, progress=False)
    assert got.counts == result.counts
    assert {r.worker for r in got.records} != {r.worker for r in result.records}  # really ran elsewhere
    assert all(r.engine == "process" for r in got.records)
    _assert_same_tables(out / "results" / "toy" / "quick", tmp_path / "toy" / "quick")


def _crash_on_two(task: int) -> str:
    if task == 2:
        os._exit(3)  # a worker dying (segfault, OOM kill) rather than raising
    return f"done {task}"


@pytest.mark.slow  # ~50 s on 2 loaded cores: the pool is spawned twice
def test_process_engine_survives_a_dead_worker():
    engine = engines.ProcessEngine(jobs=1, threads=1)
    got = list(engine.map(_crash_on_two, [1, 2, 3], on_error=lambda task, e: f"error {task} {type(e).__name__}"))
    assert got == ["done 1", "error 2 BrokenProcessPool", "done 3"]


def test_store_writes_atomically_and_detects_damage(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    rec = store.TrialRecord(id="abc", status="ok", trial={"seed": 0}, tables={})
    folder = store.write_trial(tmp_path, rec, {"t": store.table_to_parquet(frame)})
    back = store.read_trial(folder)
    assert back.status == "ok" and back.trial == {"seed": 0}
    pd.testing.assert_frame_equal(store.read_table(back, "t"), frame)
    # a retry replaces the folder whole
    store.write_trial(tmp_path, dataclasses.replace(rec, status="failed", error="boom"), {})
    again = store.read_trial(folder)
    assert again.status == "failed" and again.tables == {} and not (folder / "t.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc"]  # no temporaries left
    (tmp_path / ".tmp-def-1234").mkdir()
    (tmp_path / ".old-abc-5678").mkdir()
    assert store.clean_temporaries(tmp_path) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["abc"]
    with pytest.raises(ValueError, match="status"):
        store.write_trial(tmp_path, dataclasses.replace(rec, status="weird"), {})
    found, corrupt = store.scan(tmp_path, ["abc", "missing"])
    assert list(found) == ["abc"] and corrupt == {}
    with pytest.raises(TypeError, match="DataFrame"):
        store.table_to_parquet([1, 2])


def test_git_commit_is_dirty_for_code_changes_not_for_committed_reports(tmp_path):
    import shutil
    import subprocess

    from keras_initkit.study.report import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path, check=True)

    (tmp_path / "docs" / "results" / "toy").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "toy" / "REPORT.md").write_text("old\n")
    (tmp_path / "study.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    head = git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    (tmp_path / "docs" / "results" / "toy" / "REPORT.md").write_text("new\n")  # a study rewrote its report
    assert git_commit(tmp_path) == head
    (tmp_path / "study.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "+dirty"
    assert git_commit(tmp_path.parent / "no-such-repo-here") is None
