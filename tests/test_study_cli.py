"""The study command line: bad input (exit 2, one line, nothing written), --data/--data-path, --plot-only, a
SIGKILL mid-run followed by a resume, and --deterministic run twice (each CLI run in its own process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keras_initkit.study import cli, runner

TOY = str(Path(__file__).with_name("toy_study.py"))
ENV = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
CLI = [sys.executable, "-m", "keras_initkit.study.cli"]


def _run_cli(argv, capsys) -> tuple[int, str]:
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    return rc, capsys.readouterr().err


def _frames(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def _assert_same_tables(a: Path, b: Path):
    for sub in ("raw", "tables"):
        fa, fb = _frames(a / sub), _frames(b / sub)
        assert sorted(fa) == sorted(fb) and fa
        for name in fa:
            pd.testing.assert_frame_equal(fa[name], fb[name], check_exact=True)


@pytest.mark.parametrize(
    "argv, argument, allowed",
    [
        (["nope"], "argument STUDY", "choose from"),
        ([TOY, "--profile", "huge"], "argument --profile", "quick, paper"),
        ([TOY, "--engine", "dask"], "argument --engine", "'serial', 'process', 'ray'"),
        ([TOY, "--data", "cifar100"], "argument --data", "blobs, digits, npz"),
        ([TOY, "--jobs", "0"], "argument --jobs", ">= 1"),
        ([TOY, "--jobs", "-2"], "argument --jobs", ">= 1"),
        ([TOY, "--jobs", "two"], "argument --jobs", ">= 1"),
        ([TOY, "--data-path", "missing/mnist.npz"], "argument --data-path", "no such file"),
        ([TOY, "--address", "ray://head:10001"], "argument --address", "--engine ray"),
        ([TOY, "--plot-only"], "argument --plot-only", "run the study first"),
        ([TOY, "--gpus-per-trial", "-1", "--engine", "ray"], "argument --gpus-per-trial", ">= 0"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, argument, allowed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, err = _run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and argument in lines[0] and allowed in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no results, no docs copy


def test_unknown_study_lists_the_studies_in_the_package(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = _run_cli(["nope"], capsys)
    assert rc == 2 and "unknown study 'nope'" in err
    for name in runner.available_studies():
        assert name in err


def test_data_and_data_path_override_the_config(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(size=(200, 3)) + 2.0 * y[:, None]
    np.savez(tmp_path / "points.npz", x=x, y=y)
    monkeypatch.chdir(tmp_path)
    argv = [TOY, "--data", "npz", "--data-path", "points.npz", "--out", "out", "--no-progress"]
    assert cli.main(argv) == 0
    root = tmp_path / "out" / "toy" / "quick-npz"  # an overridden data set gets its own folder and no docs copy
    meta = json.loads((root / "meta.json").read_text())
    assert meta["config"]["data"] == "npz" and meta["config"]["data_path"] == str(tmp_path / "points.npz")
    assert meta["data"] == "npz" and not (tmp_path / "docs").exists()
    out = capsys.readouterr().out
    assert "T1" in out and f"Report: {Path('out') / 'toy' / 'quick-npz' / 'REPORT.md'}" in out
    # --plot-only redraws from the saved tables
    for fig in (root / "figures").iterdir():
        fig.unlink()
    assert cli.main([*argv, "--plot-only"]) == 0
    assert sorted(p.name for p in (root / "figures").iterdir()) == ["accuracy.png", "curves.png"]


def _finished(trials: Path) -> list[Path]:
    if not trials.is_dir():
        return []
    return [p for p in trials.iterdir() if not p.name.startswith(".") and (p / "record.json").is_file()]


@pytest.mark.slow  # 60-240 s on 2 loaded cores: two CLI processes and an in-process reference run
def test_sigkill_mid_run_then_resume_keeps_every_finished_trial(tmp_path):
    toy = runner.load_study(TOY)
    n_trials = len(toy.trials(toy.PAPER))  # the toy's paper profile: 4 trials of ~1.5 s
    argv = [*CLI, TOY, "--profile", "paper", "--out", "out", "--no-docs", "--no-progress"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = tmp_path / "out" / "toy" / "paper" / "trials"
    deadline = time.monotonic() + 300
    while not _finished(trials) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = {p.name: (p / "record.json").read_bytes() for p in _finished(trials)}
    assert 1 <= len(kept) < n_trials, "the kill must land mid-run"
    assert not (tmp_path / "out" / "toy" / "paper" / "tables").exists()

    done = subprocess.run(argv, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {p.name: (p / "record.json").read_bytes() for p in _finished(trials)}
    assert len(after) == n_trials
    assert all(after[name] == record for name, record in kept.items())  # finished trials kept, not re-run
    assert sorted(os.listdir(trials)) == sorted(after)  # no temporaries, no duplicates
    root = tmp_path / "out" / "toy" / "paper"
    meta = json.loads((root / "meta.json").read_text())
    assert meta["trials"]["resumed"] == len(kept) and meta["trials"]["ok"] == n_trials
    final = pd.read_parquet(root / "raw" / "final.parquet")
    assert len(final) == n_trials and not final.duplicated(["activation", "lr", "seed"]).any()
    # identical to an uninterrupted run
    runner.run_study(toy, profile="paper", out_dir=tmp_path / "ref", plot=False, progress=False)
    _assert_same_tables(tmp_path / "ref" / "toy" / "paper", root)


@pytest.mark.slow  # ~30 s on 2 loaded cores: two CLI processes side by side
def test_deterministic_runs_give_identical_tables(tmp_path):
    # one through the runner's CLI, one through the study module's own main() (`python tests/toy_study.py`)
    commands = [
        [*CLI, TOY, "--deterministic", "--out", "a", "--no-docs", "--no-progress"],
        [sys.executable, TOY, "--deterministic", "--out", "b", "--no-docs", "--no-progress"],
    ]
    procs = [
        subprocess.Popen(c, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    for run in ("a", "b"):
        meta = json.loads((tmp_path / run / "toy" / "quick" / "meta.json").read_text())
        assert meta["deterministic"] is True and meta["trials"]["ok"] == 4
    _assert_same_tables(tmp_path / "a" / "toy" / "quick", tmp_path / "b" / "toy" / "quick")
