"""The study runner: trials on an engine, atomic per-trial files, resume, tables, claims, figures and the report.

A study is a module following the contract in docs/DESIGN.md (NAME, CLAIMS, Config, PROFILES, trials, run_trial,
summarize, plot). `run_study` runs it and writes, under `<out_dir>/<study>/<profile>/`:

    trials/<id>/         one folder per finished trial (record.json + one parquet per table), see store.py
    raw/<table>.parquet  every trial's tables concatenated in grid order (what `plot` reads back)
    tables/<name>.parquet and .md, claims.csv   what `summarize` returned
    figures/<name>.png, meta.json, REPORT.md    written by `plot_study`, which reads saved tables only

Nothing is written outside that folder unless asked: `publish=DIR` copies the report, figures, claims and summary
tables (as CSV) and meta.json to `DIR/<study>/` (what `make docs-results` does for docs/results/).

Trial status convention: a trial whose `run_trial` raises is "failed" (its error and traceback are recorded, it has
no tables, and it is run again on the next resume). A trial whose tables carry a boolean column `diverged` with any
True value (NaN/Inf loss or activations) is "diverged": its tables are kept and summarized like any other, and it is
not re-run. Every other trial is "ok".
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pickle
import socket
import sys
import time
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from keras_initkit import fileio
from keras_initkit.study import STUDIES_PACKAGE, available_studies, store
from keras_initkit.study.engines import Engine, make_engine
from keras_initkit.study.grid import canonical_json, derive_seed, trial_id

CONTRACT = ("NAME", "CLAIMS", "Config", "PROFILES", "trials", "run_trial", "summarize", "plot")
CLAIM_COLUMNS = ("claim", "statement", "rule", "measured", "paper", "status")


class StudyWarning(UserWarning):
    """Something the runner recovered from (a corrupt trial file re-run, a failed trial)."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C during the trials: the finished trials are on disk (`done` of `total`), the workers are stopped."""

    def __init__(self, folder: Path, done: int, total: int):
        super().__init__(f"interrupted with {done} of {total} trials finished under {folder}")
        self.folder, self.done, self.total = folder, done, total


class UsageError(ValueError):
    """Bad input to the runner or the CLI; `argument` names the offending option (the CLI exits 2 with it)."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"argument {argument}: {message}")
        self.argument = argument


# ---------------------------------------------------------------------------------------------------- studies


@dataclasses.dataclass(frozen=True)
class StudyRef:
    """How a worker process finds a study module again: an importable name, or a file to load under that name."""

    module: str
    file: str | None = None


def _load_file(module_name: str, file: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a module from {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_study(study: str | StudyRef | ModuleType) -> ModuleType:
    """A study module from a name in studies/, a dotted module name, a path to a .py file, or a StudyRef."""
    if isinstance(study, ModuleType):
        return study
    if isinstance(study, StudyRef):  # in a worker: by name first (a Ray node may lack the driver's file paths)
        if study.module in sys.modules:
            return sys.modules[study.module]
        try:
            return importlib.import_module(study.module)
        except ImportError:
            if not study.file:
                raise
        return _load_file(study.module, study.file)
    if not isinstance(study, str) or not study:
        raise UsageError("STUDY", f"must be a study name, a module or a .py path. Received: {study!r}")
    if study.endswith(".py") or os.sep in study:
        path = Path(study).resolve()
        if not path.is_file():
            raise UsageError("STUDY", f"no such study file. Received: {study!r}")
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return sys.modules[name]
        return _load_file(name, str(path))
    names = available_studies()
    if study in names:
        return importlib.import_module(f"{STUDIES_PACKAGE}.{study}")
    if "." in study and importlib.util.find_spec(study.rsplit(".", 1)[0]) is not None:
        if importlib.util.find_spec(study) is not None:
            return importlib.import_module(study)
    raise UsageError(
        "STUDY", f"unknown study {study!r}; choose from {', '.join(names) or '(none)'} (or a module name or .py path)"
    )


def study_ref(module: ModuleType) -> StudyRef:
    file = getattr(module, "__file__", None)
    if module.__name__ == "__main__":  # `python my_study.py`: workers load the file under its stem
        return StudyRef(Path(file).stem, file)
    return StudyRef(module.__name__, file)


def check_contract(module: ModuleType) -> None:
    missing = [name for name in CONTRACT if not hasattr(module, name)]
    if missing:
        raise UsageError("STUDY", f"{module.__name__} does not follow the study contract: it lacks {missing}")


def data_fields(cfg: Any) -> tuple[str | None, bool]:
    """The Config's data-set field ("data", a str, or "datasets", a tuple) and whether it has a `data_path`."""
    names = {f.name for f in dataclasses.fields(cfg)}
    field = "data" if "data" in names else "datasets" if "datasets" in names else None
    return field, "data_path" in names


def allowed_data(module: ModuleType) -> tuple[str, ...]:
    """Data-set names a study accepts: its own `DATASETS` if it declares one, else keras_initkit.datasets'."""
    if hasattr(module, "DATASETS"):
        return tuple(module.DATASETS)
    from keras_initkit.datasets import DATASETS

    return tuple(DATASETS)


def resolve_config(
    module: ModuleType, profile: str, cfg: Any = None, data: str | None = None, data_path: str | None = None
) -> Any:
    """The profile's Config (or `cfg`), with `--data` / `--data-path` applied via dataclasses.replace."""
    profiles = module.PROFILES
    if profile not in profiles:
        raise UsageError("--profile", f"invalid choice {profile!r} (choose from {', '.join(profiles)})")
    cfg = profiles[profile] if cfg is None else cfg
    field, has_path = data_fields(cfg)
    changes: dict[str, Any] = {}
    if data is not None:
        allowed = allowed_data(module)
        if data not in allowed:
            raise UsageError("--data", f"invalid choice {data!r} (choose from {', '.join(allowed)})")
        if field is None:
            raise UsageError("--data", f"study {module.NAME!r} has no `data` field in its Config")
        changes[field] = data if field == "data" else (data,)
    if data_path is not None:
        if not os.path.exists(data_path):
            raise UsageError("--data-path", f"no such file or directory. Received: {data_path!r}")
        if not has_path:
            raise UsageError("--data-path", f"study {module.NAME!r} has no `data_path` field in its Config")
        changes["data_path"] = str(Path(data_path).resolve())
    return dataclasses.replace(cfg, **changes) if changes else cfg


def profile_label(profile: str, data: str | None = None, module: ModuleType | None = None) -> str:
    """Folder name of a run: the profile, plus the data set when --data changed it (quick-digits)."""
    if data is None:
        return profile
    if module is not None:
        field, _ = data_fields(module.PROFILES[profile])
        default = getattr(module.PROFILES[profile], field) if field else None
        if default in (data, (data,)):
            return profile
    return f"{profile}-{data}"


# ------------------------------------------------------------------------------------------------------ trials


@dataclasses.dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to run one trial (the Config travels pickled, unpickled after the study loads)."""

    ref: StudyRef
    cfg: bytes
    trial: dict[str, Any]
    id: str
    seed: int
    index: int
    engine: str = "serial"
    deterministic: bool = False


@dataclasses.dataclass
class TrialResult:
    record: store.TrialRecord
    blobs: dict[str, bytes]


def trial_seed(trial: Mapping[str, Any], tid: str) -> int:
    """The trial's own `seed` (the contract), or one derived from its id when a study's grid has none."""
    if "seed" in trial:
        return int(trial["seed"])
    return derive_seed(0, tid)


def is_diverged(tables: Mapping[str, pd.DataFrame]) -> str | None:
    """The name of the first table whose boolean `diverged` column has a True value, or None."""
    for name, frame in tables.items():
        if "diverged" in frame.columns and bool(frame["diverged"].fillna(False).astype(bool).any()):
            return name
    return None


def run_in_process(module: ModuleType, cfg: Any) -> dict[str, pd.DataFrame]:
    """A study's plain serial run in this process, with no files: each trial seeded as `execute_trial` seeds it,
    its tables concatenated in grid order, plus `summarize(cfg, them)`. What every study's `run(cfg)` returns."""
    from keras_initkit.study.training import clear_session, set_random_seed

    frames: dict[str, list[pd.DataFrame]] = {}
    for trial in module.trials(cfg):
        clear_session()
        set_random_seed(trial_seed(trial, trial_id(trial, cfg)))
        for name, frame in module.run_trial(cfg, trial).items():
            frames.setdefault(name, []).append(frame)
    tables = {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}
    return {**tables, **module.summarize(cfg, tables)}


def execute_trial(task: TrialTask) -> TrialResult:
    """Run one trial in this process: seed, build, train (all inside the study's run_trial), serialize tables."""
    from keras_initkit.study.training import clear_session, set_random_seed

    module = load_study(task.ref)
    cfg = pickle.loads(task.cfg)
    clear_session()
    set_random_seed(task.seed)
    record = store.TrialRecord(
        id=task.id,
        status="ok",
        trial=dict(task.trial),
        tables={},
        seed=task.seed,
        index=task.index,
        engine=task.engine,
        worker=f"{socket.gethostname()}:{os.getpid()}",
        deterministic=task.deterministic,
    )
    blobs: dict[str, bytes] = {}
    t0 = time.perf_counter()
    try:
        tables = module.run_trial(cfg, dict(task.trial))
        if not isinstance(tables, Mapping):
            raise TypeError(f"run_trial must return a dict of DataFrames. Received: {type(tables).__name__}")
        for name, frame in tables.items():
            try:
                blobs[str(name)] = store.table_to_parquet(frame)
            except Exception as e:
                raise TypeError(f"table {name!r} cannot be saved as parquet: {type(e).__name__}: {e}") from e
        diverged = is_diverged(tables)
        if diverged:
            record.status = "diverged"
            record.error = f"diverged: table {diverged!r} has diverged=True"
    except Exception as e:
        record.status = "failed"
        record.error = f"{type(e).__name__}: {e}"
        record.traceback = traceback.format_exc()
        blobs = {}
    finally:
        clear_session()
    record.wall_s = time.perf_counter() - t0
    return TrialResult(record, blobs)


def _engine_failure(task: TrialTask, error: BaseException) -> TrialResult:
    record = store.TrialRecord(
        id=task.id,
        status="failed",
        trial=dict(task.trial),
        tables={},
        error=f"engine: {type(error).__name__}: {error}",
        traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
        seed=task.seed,
        index=task.index,
        engine=task.engine,
        deterministic=task.deterministic,
    )
    return TrialResult(record, {})


# ------------------------------------------------------------------------------------------------------ runner


@dataclasses.dataclass
class StudyResult:
    """What a run produced: its folder, the tables, the summary (with "claims"), counts and the report's path."""

    name: str
    profile: str
    dir: Path
    tables: dict[str, pd.DataFrame]
    summary: dict[str, pd.DataFrame]
    counts: dict[str, int]
    records: list[store.TrialRecord]
    report: Path | None = None
    wall_s: float = 0.0
    # trials taken from an earlier run's files rather than run now
    resumed: int = 0

    @property
    def claims(self) -> pd.DataFrame:
        return self.summary["claims"]


def study_dir(out_dir: str | os.PathLike, name: str, label: str) -> Path:
    return Path(out_dir) / name / label


def concat_tables(records: list[store.TrialRecord]) -> dict[str, pd.DataFrame]:
    """Each table name's frames from all trials with tables, in the given (grid) order."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for record in records:
        for name in record.tables:
            frames.setdefault(name, []).append(store.read_table(record, name))
    return {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}


def check_claims(claims: Any) -> pd.DataFrame:
    if not isinstance(claims, pd.DataFrame):
        raise ValueError(f"summarize() must return a 'claims' DataFrame. Received: {type(claims).__name__}")
    missing = [c for c in CLAIM_COLUMNS if c not in claims.columns]
    if missing:
        raise ValueError(f"summarize()'s 'claims' table lacks columns {missing}; it needs {list(CLAIM_COLUMNS)}")
    from keras_initkit.study.summary import STATUSES

    bad = sorted(set(claims["status"]) - set(STATUSES))
    if bad:
        raise ValueError(f"claims `status` must be one of {STATUSES}. Received: {bad}")
    return claims


def _save_frames(folder: Path, frames: Mapping[str, pd.DataFrame], markdown: bool) -> None:
    from keras_initkit.study.report import frame_to_markdown

    folder.mkdir(parents=True, exist_ok=True)
    keep = set()
    for name, frame in frames.items():
        fileio.atomic_write_bytes(folder / f"{name}.parquet", store.table_to_parquet(frame))
        keep.add(f"{name}.parquet")
        if markdown:
            fileio.atomic_write_text(folder / f"{name}.md", frame_to_markdown(frame, max_rows=None) + "\n")
            keep.add(f"{name}.md")
    for stale in folder.iterdir():
        if stale.is_file() and stale.name not in keep:
            stale.unlink()


def read_frames(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def run_study(
    study: str | ModuleType,
    cfg: Any = None,
    profile: str = "quick",
    out_dir: str | os.PathLike = "results",
    engine: str | Engine = "serial",
    jobs: int | None = None,
    resume: bool = True,
    deterministic: bool = False,
    data: str | None = None,
    data_path: str | None = None,
    publish: str | os.PathLike | None = None,
    plot: bool = True,
    progress: bool = True,
    address: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0.0,
    argv: list[str] | None = None,
) -> StudyResult:
    """Run a study's trials on an engine, resuming from finished trial files, then summarize, plot and report.

    Args:
        study: a study module, or a name in studies/, a dotted module name, a .py path.
        cfg: a Config to run instead of `PROFILES[profile]` (the profile still names the output folder).
        profile: a key of the study's PROFILES ("quick", "paper").
        out_dir: results root; the run writes `<out_dir>/<study>/<profile>/` (`<profile>-<data>` with `data`).
        engine: "serial", "process", "ray" or an Engine.
        jobs: process workers, or trials a local Ray instance runs at once (default: one per CPU; Ray: its CPUs).
        resume: skip trials whose files are complete ("ok", "diverged"); failed and corrupt ones run again. A run
            that resumes every trial keeps the original run's wall time and finish time in meta.json and REPORT.md.
        deterministic: TensorFlow op determinism in every worker (identical tables run to run on a CPU).
        data, data_path: override the Config's data set (`data` / `datasets` field) and `data_path`.
        publish: when given, the report, figures, claims, summary tables (CSV) and meta.json are also copied to
            `<publish>/<study>/` (see report.publish).
        plot: run the plotting step (figures, meta.json, REPORT.md) after the tables.
        progress: show the tqdm bar over trials.
        address, cpus_per_trial, gpus_per_trial: the Ray engine's cluster address and per-trial resources.
        argv: the command line, recorded in meta.json.

    Raises:
        StudyInterrupted: on Ctrl-C during the trials (a KeyboardInterrupt; the finished trials are kept).
    """
    from keras_initkit.study import report

    t_start = time.perf_counter()
    module = load_study(study)
    check_contract(module)
    cfg = resolve_config(module, profile, cfg, data, data_path)
    label = profile_label(profile, data, module)
    owns_engine = not isinstance(engine, Engine)
    if owns_engine:
        engine = make_engine(engine, jobs, deterministic, address, cpus_per_trial, gpus_per_trial)
    deterministic = deterministic or engine.settings.deterministic

    trial_list = [dict(t) for t in module.trials(cfg)]
    ids = [trial_id(t, cfg) for t in trial_list]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{module.NAME}.trials(cfg) returned duplicate trials; each grid point must be unique")
    root = study_dir(out_dir, module.NAME, label)
    trials_dir = root / "trials"
    store.clean_temporaries(trials_dir)

    done: dict[str, store.TrialRecord] = {}
    if resume:
        found, corrupt = store.scan(trials_dir, ids)
        for reason in corrupt.values():
            warnings.warn(f"corrupt trial file, running it again: {reason}", StudyWarning, stacklevel=2)
        done = {tid: rec for tid, rec in found.items() if rec.status != "failed"}
    cfg_bytes = pickle.dumps(cfg)
    ref = study_ref(module)
    tasks = [
        TrialTask(ref, cfg_bytes, trial, tid, trial_seed(trial, tid), i, engine.name, deterministic)
        for i, (trial, tid) in enumerate(zip(trial_list, ids, strict=True))
        if tid not in done
    ]

    records = dict(done)
    if tasks:
        trials_dir.mkdir(parents=True, exist_ok=True)
    bar = _progress(module.NAME, len(ids), len(done), progress)
    results = engine.map(execute_trial, tasks, _engine_failure)
    try:
        for result in results:
            rec = result.record
            store.write_trial(trials_dir, rec, result.blobs)
            records[rec.id] = store.read_trial(trials_dir / rec.id, verify=False)
            if rec.status == "failed":
                warnings.warn(f"trial {rec.id} {rec.trial} failed: {rec.error}", StudyWarning, stacklevel=2)
            bar.update(1)
            bar.set_postfix(failed=_count(records, "failed"), diverged=_count(records, "diverged"), refresh=False)
    except KeyboardInterrupt:
        results.close()  # the engine stops its workers now, not when this frame is garbage
        raise StudyInterrupted(root, sum(1 for t in ids if t in records), len(ids)) from None
    finally:
        bar.close()
        if owns_engine:
            engine.close()

    ordered = [records[tid] for tid in ids]
    tables = concat_tables([r for r in ordered if r.status != "failed"])
    counts = {status: _count(records, status, ids) for status in store.STATUSES}
    _save_frames(root / "raw", tables, markdown=False)

    earlier = _earlier_meta(root) if not tasks else None

    def meta_now():
        meta = report.build_meta(
            module,
            cfg,
            profile=profile,
            label=label,
            data=data,
            engine=engine,
            deterministic=deterministic,
            records=ordered,
            counts=counts,
            wall_s=time.perf_counter() - t_start,
            argv=argv,
            resumed=len(done),
        )
        if earlier is not None:  # nothing ran: the report keeps the run that ran the trials
            meta.update(wall_s=earlier["wall_s"], finished=earlier["finished"])
        return meta

    try:
        summary = dict(module.summarize(cfg, tables))
        summary["claims"] = check_claims(summary.get("claims"))
    except Exception:
        # the trial files and meta.json (with every failed trial's error) stay; fix summarize and rerun (resumes)
        fileio.atomic_write_text(root / "meta.json", report.dump_json(meta_now()))
        raise
    _save_frames(root / "tables", summary, markdown=True)
    fileio.atomic_write_text(root / "claims.csv", summary["claims"].to_csv(index=False))
    meta = meta_now()
    fileio.atomic_write_text(root / "meta.json", report.dump_json(meta))
    result = StudyResult(module.NAME, label, root, tables, summary, counts, ordered, resumed=len(done))
    if plot:
        # meta's wall_s (what REPORT.md states) is the run up to its tables; the plotting step is timed apart, so a
        # later --plot-only renders the same report
        t_plot = time.perf_counter()
        result.report = plot_study(module, cfg, profile, out_dir, data=data)
        meta["plot_s"] = round(time.perf_counter() - t_plot, 3)
        fileio.atomic_write_text(root / "meta.json", report.dump_json(meta))
        if publish is not None:
            report.publish(root, Path(publish) / module.NAME)
    result.wall_s = meta["wall_s"]
    return result


def plot_study(
    study: str | ModuleType,
    cfg: Any = None,
    profile: str = "quick",
    out_dir: str | os.PathLike = "results",
    data: str | None = None,
    data_path: str | None = None,
    publish: str | os.PathLike | None = None,
) -> Path:
    """The plotting step alone: read the saved tables, draw figures/*.png, write REPORT.md (and publish it).

    Never trains: raises FileNotFoundError when the run's tables are not there yet.
    """
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_initkit.study import report

    module = load_study(study)
    check_contract(module)
    cfg = resolve_config(module, profile, cfg, data, data_path)
    root = study_dir(out_dir, module.NAME, profile_label(profile, data, module))
    if not (root / "tables" / "claims.parquet").is_file() or not (root / "meta.json").is_file():
        raise FileNotFoundError(f"no saved tables under {root}; run the study first")
    tables = read_frames(root / "raw")
    summary = read_frames(root / "tables")
    try:
        figures = module.plot(tables, summary) or {}
    except Exception as e:  # the report is still written; fix plot() and rerun with --plot-only
        message = f"{module.NAME}.plot() failed, report without figures: {type(e).__name__}: {e}"
        warnings.warn(message, StudyWarning, stacklevel=2)
        figures = {}
    fig_dir = root / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures.items():
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        fileio.atomic_write_bytes(fig_dir / f"{name}.png", buffer.getvalue())
        written.append(f"{name}.png")
    for stale in fig_dir.glob("*.png"):
        if stale.name not in written:
            stale.unlink()
    meta = report.load_json(root / "meta.json")
    text = report.render_report(module, cfg, summary, meta, [f"figures/{n}" for n in written])
    path = root / "REPORT.md"
    fileio.atomic_write_text(path, text)
    if publish is not None:
        report.publish(root, Path(publish) / module.NAME)
    return path


def _earlier_meta(root: Path) -> dict[str, Any] | None:
    """meta.json of the run that produced the trial files being resumed, if it got that far."""
    from keras_initkit.study import report

    try:
        meta = report.load_json(root / "meta.json")
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and {"wall_s", "finished"} <= set(meta) else None


def _count(records: Mapping[str, store.TrialRecord], status: str, ids: list[str] | None = None) -> int:
    keys = ids if ids is not None else list(records)
    return sum(1 for k in keys if k in records and records[k].status == status)


def _progress(name: str, total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=name,
        unit="trial",
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0.1,
    )


def config_json(cfg: Any) -> Any:
    """The Config as plain JSON data (tuples become lists)."""
    import json

    return json.loads(canonical_json(cfg))
