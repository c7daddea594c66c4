"""One atomic-write helper for the whole package: a reader sees the old file or the whole new one, never a part.

Files are written to a temporary sibling (`.tmp-<name>-<random>`), flushed to disk, then renamed into place with
`os.replace`. They get the user's umask (0666 & ~umask), like any file `open(path, "w")` creates.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"
FRAME_SUFFIXES = (".parquet", ".csv")


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary sibling and os.replace (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def frame_bytes(frame, suffix: str) -> bytes:
    """A pandas DataFrame serialized as `.parquet` or `.csv` bytes (index dropped)."""
    if suffix == ".parquet":
        buffer = io.BytesIO()
        frame.reset_index(drop=True).to_parquet(buffer, index=False)
        return buffer.getvalue()
    if suffix == ".csv":
        return frame.to_csv(index=False).encode("utf-8")
    raise ValueError(f"`path` must end in one of {FRAME_SUFFIXES}. Received suffix: {suffix!r}")


def write_frame(path: str | os.PathLike, frame) -> None:
    """Write a DataFrame to `path` (.parquet or .csv, chosen by the suffix), atomically."""
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in FRAME_SUFFIXES:
        raise ValueError(f"`path` must end in .parquet or .csv. Received: path={os.fspath(path)!r}")
    atomic_write_bytes(path, frame_bytes(frame, suffix))
