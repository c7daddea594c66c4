"""The study command line: `python -m keras_initkit` and its --help (before TensorFlow is imported), bad input
(exit 2, one line, nothing written), the defaults make shares, --data/--data-path, --plot-only, --publish, Ctrl-C and
SIGKILL mid-run followed by a resume, and --deterministic run twice (each CLI run in its own process)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keras_initkit.study import available_studies, cli, engines, runner

TOY = str(Path(__file__).with_name("toy_study.py"))
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
CLI = [sys.executable, "-m", "keras_initkit", "study"]
HEAVY = ("keras", "tensorflow", "jax", "pandas", "numpy")


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
        ([TOY, "--profile", "huge"], "argument --profile", "quick, paper, smoke"),
        ([TOY, "--engine", "dask"], "argument --engine", "'serial', 'process', 'ray'"),
        ([TOY, "--data", "cifar100"], "argument --data", "blobs, digits, npz"),
        ([TOY, "--jobs", "0"], "argument --jobs", ">= 1"),
        ([TOY, "--jobs", "-2"], "argument --jobs", ">= 1"),
        ([TOY, "--jobs", "two"], "argument --jobs", ">= 1"),
        ([TOY, "--data-path", "missing/mnist.npz"], "argument --data-path", "no such file"),
        ([TOY, "--address", "ray://head:10001"], "argument --address", "--engine ray"),
        ([TOY, "--plot-only"], "argument --plot-only", "run the study first"),
        ([TOY, "--gpus-per-trial", "-1", "--engine", "ray"], "argument --gpus-per-trial", ">= 0"),
        ([TOY, "--out", "a_file"], "argument --out", "must be a directory"),
        ([TOY, "--out", "a_file/results"], "argument --out", "is a file"),
        ([TOY, "--publish", "a_file"], "argument --publish", "must be a directory"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, argument, allowed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder\n")
    rc, err = _run_cli(["--out", str(tmp_path / "out"), *argv], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error:" in lines[0] and argument in lines[0] and allowed in lines[0], lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]  # no results, nothing published


def test_an_unwritable_out_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # root writes anywhere it has a mode bit for: /proc refuses new folders to everyone
    target = str(locked / "results") if os.geteuid() != 0 else "/proc/keras_initkit_results"
    try:
        rc, err = _run_cli([TOY, "--out", target], capsys)
    finally:
        locked.chmod(0o700)
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "argument --out: cannot write in" in err and repr(target) in err
    assert list(locked.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["locked"]


def _help(*args: str) -> str:
    """`python -m keras_initkit ARGS` in a fresh interpreter; fails unless it answered without importing Keras,
    TensorFlow, pandas or numpy."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['keras_initkit', *{list(args)!r}]\n"
        "try:\n    runpy.run_module('keras_initkit', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_lists_the_studies_and_every_default_before_tensorflow_is_imported():
    top = _help("--help")
    assert "study" in top and all(name in top for name in available_studies())
    text = " ".join(_help("study", "--help").split())
    assert {"batchnorm", "sigmoid_vs_relu", "vgg_depth"} <= set(available_studies())
    assert all(name in text for name in available_studies())
    for default in (
        "PROFILES key: quick, paper, smoke (quick)",
        "where trials run (process)",
        f"every core, {engines.cpu_count()} here; --engine ray: the Ray cluster's CPUs",
        "a run writes only under it (results)",
        "DIR/<study>/, e.g. docs/results (default: none)",
        "(default: 1)",
        "(default: 0)",
    ):
        assert default in text, default
    assert "--no-docs" not in text and "--docs-dir" not in text


def test_the_entry_points_answer_help():
    for command in ([sys.executable, "-m", "keras_initkit"], [sys.executable, "-m", "keras_initkit.study.cli"]):
        done = subprocess.run([*command, "--help"], env=ENV, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage: python -m keras_initkit" in done.stdout, done.stderr
    script = Path(sys.executable).with_name("keras-initkit")
    if not script.exists():
        pytest.skip("the keras-initkit console script is not installed in this environment (make install)")
    done = subprocess.run([str(script), "study", "--help"], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: keras-initkit study"), done.stderr


def test_defaults_equal_makes(monkeypatch):
    args = cli.build_command_parser().parse_args(["study", "toy"])
    assert (args.engine, args.jobs, args.profile, args.out, args.publish) == ("process", None, "quick", "results", None)
    engine = engines.make_engine(args.engine, args.jobs)
    assert engine.jobs == engines.cpu_count()
    if shutil.which("make") is None:
        pytest.skip("make is not installed")

    def make(*variables: str) -> str:
        done = subprocess.run(
            ["make", "-n", "study-vgg", *variables], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
        )
        return next(line for line in done.stdout.splitlines() if "keras_initkit study vgg_depth" in line).strip()

    compare = " --compare docs/results"  # make's runs say whether the committed verdicts came out again
    assert make().endswith(f"vgg_depth --profile quick --engine process --jobs {engines.cpu_count()}{compare}")
    assert make("PROFILE=smoke", "JOBS=3").endswith(f"--profile smoke --engine process --jobs 3{compare}")
    assert make("ENGINE=ray").endswith(f"--engine ray{compare}")  # no --jobs: Ray uses the cluster's CPUs
    assert make("ENGINE=ray", "JOBS=4").endswith(f"--engine ray --jobs 4{compare}")
    listed = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    for variable in ("EXTRA=cpu", "PROFILE=quick", "ENGINE=process", f"JOBS={engines.cpu_count()}"):
        assert variable in listed, variable


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
    argv = [TOY, "--data", "npz", "--data-path", "points.npz", "--out", "out", "--no-progress", "--engine", "serial"]
    assert cli.main(argv) == 0
    root = tmp_path / "out" / "toy" / "quick-npz"  # an overridden data set gets its own folder
    meta = json.loads((root / "meta.json").read_text())
    assert meta["config"]["data"] == "npz" and meta["config"]["data_path"] == str(tmp_path / "points.npz")
    assert meta["data"] == "npz" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "points.npz"]
    out = capsys.readouterr().out
    assert "T1" in out and f"Report: {Path('out') / 'toy' / 'quick-npz' / 'REPORT.md'}" in out
    # --plot-only redraws from the saved tables
    for fig in (root / "figures").iterdir():
        fig.unlink()
    assert cli.main([*argv, "--plot-only"]) == 0
    assert sorted(p.name for p in (root / "figures").iterdir()) == ["accuracy.png", "curves.png"]


def test_compare_reports_whether_the_verdicts_match_the_published_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [TOY, "--out", "out", "--no-progress", "--engine", "serial"]
    assert cli.main([*argv, "--compare", "pub"]) == 0  # nothing published yet: said, not an error
    assert "Compare: no published claims to compare with in " in capsys.readouterr().out
    assert cli.main([*argv, "--publish", "pub"]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--compare", "pub"]) == 0  # a resumed rerun: the same verdicts
    assert f"Compare: verdicts identical to {Path('pub') / 'toy' / 'claims.csv'}" in capsys.readouterr().out
    published = tmp_path / "pub" / "toy" / "claims.csv"
    claims = pd.read_csv(published, dtype=str, keep_default_na=False)
    was = claims.loc[0, "status"]
    claims.loc[0, "status"] = "FAIL" if was != "FAIL" else "PASS"
    claims.to_csv(published, index=False)
    assert cli.main([*argv, "--compare", "pub"]) == 0
    out = capsys.readouterr().out
    assert f"verdicts DIFFER from {published.relative_to(tmp_path)}: {claims.loc[0, 'claim']}: " in out
    assert cli.main([*argv, "--profile", "paper", "--compare", "pub"]) == 0  # another profile: not compared
    assert "is from profile 'quick', not 'paper': not compared" in capsys.readouterr().out


def _finished(trials: Path) -> list[Path]:
    if not trials.is_dir():
        return []
    return [p for p in trials.iterdir() if not p.name.startswith(".") and (p / "record.json").is_file()]


@pytest.mark.slow  # 60-240 s on 2 loaded cores: two CLI processes and an in-process reference run
def test_sigkill_mid_run_then_resume_keeps_every_finished_trial(tmp_path):
    toy = runner.load_study(TOY)
    n_trials = len(toy.trials(toy.PAPER))  # the toy's paper profile: 4 trials of ~1.5 s
    argv = [*CLI, TOY, "--profile", "paper", "--out", "out", "--no-progress", "--engine", "serial"]
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
        [*CLI, TOY, "--deterministic", "--out", "a", "--no-progress", "--engine", "serial"],
        [sys.executable, TOY, "--deterministic", "--out", "b", "--no-progress", "--engine", "serial"],
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


@pytest.mark.slow  # 30-90 s on 2 loaded cores: a process pool starts, is interrupted, and the run is resumed
def test_ctrl_c_stops_the_workers_and_prints_the_command_that_resumes(tmp_path):
    argv = [TOY, "--profile", "paper", "--out", "out", "--jobs", "2", "--no-progress"]
    # The driver takes Ctrl-C as a terminal's foreground job does, also when this suite runs in the background: a
    # shell starts a background job (`make test &`) with SIGINT ignored, and a child inherits an ignored SIGINT.
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        proc = subprocess.Popen([*CLI, *argv], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, previous)
    trials = tmp_path / "out" / "toy" / "paper" / "trials"
    deadline = time.monotonic() + 300
    while not _finished(trials) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = subprocess.run(["ps", "--ppid", str(proc.pid), "-o", "pid="], capture_output=True, text=True).stdout
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    waited = time.monotonic() - t0
    assert proc.returncode == 130 and waited < 10, (proc.returncode, waited)
    err = err.decode()
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    resume = f"python -m keras_initkit study {TOY} --profile paper --out out --jobs 2 --no-progress"
    assert last.startswith("python -m keras_initkit study: interrupted: ") and last.endswith(f"resume with: {resume}")
    time.sleep(2)  # a worker that outlived the driver would still be running
    assert workers.split() and not [pid for pid in workers.split() if _running(pid)]
    kept = _finished(trials)
    assert 1 <= len(kept) < 4 and sorted(os.listdir(trials)) == sorted(p.name for p in kept)  # no partial trial
    assert not (tmp_path / "out" / "toy" / "paper" / "tables").exists()
    done = subprocess.run(
        [sys.executable, *shlex.split(resume)[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"4 trials ({len(kept)} resumed)" in done.stdout


def _running(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
