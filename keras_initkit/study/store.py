"""Per-trial result files: one folder per finished trial, written atomically, verified on resume.

Layout under a profile folder (results/<study>/<profile>/):

    trials/<trial_id>/record.json     status, error, wall time, params, the tables' file names and sha256
    trials/<trial_id>/<table>.parquet one file per table that run_trial returned

A trial folder is assembled under a temporary name in the same `trials/` folder and renamed into place with
`os.replace`, so a reader sees either the whole trial or nothing. A folder whose record is missing, unreadable or
whose tables do not match their recorded sha256 (a truncated or corrupt file) is reported as corrupt; the runner
warns and runs that trial again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from keras_initkit.fileio import TMP_PREFIX as _TMP_PREFIX
from keras_initkit.fileio import frame_bytes, write_synced

RECORD = "record.json"
STATUSES = ("ok", "failed", "diverged")
_OLD_PREFIX = ".old-"
_REQUIRED = ("id", "status", "trial", "tables")


class CorruptTrial(Exception):
    """A trial folder that cannot be trusted (missing record, bad JSON, a table that fails its checksum)."""


@dataclasses.dataclass
class TrialRecord:
    """What `record.json` holds about one finished trial, plus the folder it was read from."""

    id: str
    status: str
    trial: dict[str, Any]
    tables: dict[str, dict[str, Any]]
    error: str | None = None
    traceback: str | None = None
    wall_s: float = 0.0
    seed: int | None = None
    index: int | None = None
    engine: str | None = None
    worker: str | None = None
    deterministic: bool = False
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("path")
        return out


def table_to_parquet(frame: pd.DataFrame) -> bytes:
    """A DataFrame as parquet bytes (index dropped), raising a TypeError that names the cause on failure."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"a table must be a pandas DataFrame. Received: {type(frame).__name__}")
    return frame_bytes(frame, ".parquet")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_trial(trials_dir: str | os.PathLike, record: TrialRecord, blobs: Mapping[str, bytes]) -> Path:
    """Write one trial's record and parquet blobs as `trials_dir/<id>/`, atomically; returns that folder.

    An existing folder for the same id (a corrupt one, or a failed trial being retried) is replaced.
    """
    trials_dir = Path(trials_dir)
    trials_dir.mkdir(parents=True, exist_ok=True)
    if record.status not in STATUSES:
        raise ValueError(f"`status` must be one of {STATUSES}. Received: status={record.status!r}")
    tag = uuid.uuid4().hex[:8]
    tmp = trials_dir / f"{_TMP_PREFIX}{record.id}-{tag}"
    tmp.mkdir()
    try:
        tables = {}
        for name, data in blobs.items():
            file = f"{name}.parquet"
            write_synced(tmp / file, data)
            tables[name] = {"file": file, "sha256": _sha256(data), "bytes": len(data)}
        record = dataclasses.replace(record, tables=tables)
        write_synced(tmp / RECORD, json.dumps(record.to_json(), indent=1, sort_keys=True, default=str).encode())
        final = trials_dir / record.id
        old = None
        if final.exists():
            old = trials_dir / f"{_OLD_PREFIX}{record.id}-{tag}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_trial(folder: str | os.PathLike, verify: bool = True) -> TrialRecord:
    """Read and check one trial folder; raises CorruptTrial saying what is wrong."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / RECORD).read_text())
    except FileNotFoundError as e:
        raise CorruptTrial(f"{folder}: {RECORD} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptTrial(f"{folder}: {RECORD} is unreadable ({e})") from e
    if not isinstance(raw, dict) or any(k not in raw for k in _REQUIRED):
        raise CorruptTrial(f"{folder}: {RECORD} lacks one of {_REQUIRED}")
    if raw["id"] != folder.name:
        raise CorruptTrial(f"{folder}: {RECORD} is for trial {raw['id']!r}")
    if raw["status"] not in STATUSES:
        raise CorruptTrial(f"{folder}: unknown status {raw['status']!r}")
    fields = {f.name for f in dataclasses.fields(TrialRecord)}
    record = TrialRecord(**{k: v for k, v in raw.items() if k in fields}, path=folder)
    if verify:
        for name, info in record.tables.items():
            file = folder / info["file"]
            try:
                data = file.read_bytes()
            except OSError as e:
                raise CorruptTrial(f"{folder}: table {name!r} is unreadable ({e})") from e
            if _sha256(data) != info["sha256"]:
                raise CorruptTrial(f"{folder}: table {name!r} ({info['file']}) fails its sha256 check (truncated?)")
    return record


def read_table(record: TrialRecord, name: str) -> pd.DataFrame:
    return pd.read_parquet(record.path / record.tables[name]["file"])


def scan(trials_dir: str | os.PathLike, ids: Iterable[str]) -> tuple[dict[str, TrialRecord], dict[str, str]]:
    """The valid records among `ids` and, separately, the corrupt ones with the reason (absent ids are neither)."""
    trials_dir = Path(trials_dir)
    found: dict[str, TrialRecord] = {}
    corrupt: dict[str, str] = {}
    for tid in ids:
        folder = trials_dir / tid
        if not folder.exists():
            continue
        try:
            found[tid] = read_trial(folder)
        except CorruptTrial as e:
            corrupt[tid] = str(e)
    return found, corrupt


def clean_temporaries(trials_dir: str | os.PathLike) -> int:
    """Remove half-written folders a killed run left behind; returns how many."""
    trials_dir = Path(trials_dir)
    if not trials_dir.is_dir():
        return 0
    n = 0
    for entry in trials_dir.iterdir():
        if entry.name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            n += 1
    return n
