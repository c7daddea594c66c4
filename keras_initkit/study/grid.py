"""Trial grids: expansion, stable trial ids and derived seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any


def canonical_json(obj: Any) -> str:
    """A stable JSON text of a Config/dict (dataclasses become dicts, keys sorted), used for ids and hashing."""

    def default(o):
        if dataclasses.is_dataclass(o):
            return dataclasses.asdict(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"not JSON-serializable: {type(o).__name__}")

    return json.dumps(obj, sort_keys=True, default=default, separators=(",", ":"))


def protocol_hash(parts: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a study's pre-registered parts, e.g. {"claims": CLAIMS, "rules": RULES,
    "quick": QUICK}: the value its PREREGISTRATION.md pins, so any later edit of a part shows in a test."""
    return hashlib.sha256(canonical_json(dict(parts)).encode()).hexdigest()


def trial_id(trial: Mapping[str, Any], cfg: Any = None, length: int = 12) -> str:
    """Hash of a trial's parameters (and of the study Config, so a changed Config never reuses stale results)."""
    text = canonical_json({"trial": dict(trial), "cfg": cfg})
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def derive_seed(base: int, *keys: Any) -> int:
    """A 31-bit seed derived from a base seed and any keys (trial params, a layer index), stable across runs."""
    text = canonical_json([int(base), *keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def expand_grid(axes: Mapping[str, Sequence[Any]], exclude=None) -> list[dict[str, Any]]:
    """Cartesian product of named axes, in the order given, as a list of dicts.

    Example:
    >>> expand_grid({"act": ["relu", "tanh"], "seed": [0, 1]})[:2]
    [{'act': 'relu', 'seed': 0}, {'act': 'relu', 'seed': 1}]

    Args:
        axes: name -> values. An empty axis is an error.
        exclude: optional predicate; trials for which it returns True are dropped (e.g. He init with sigmoid).
    """
    for name, values in axes.items():
        if len(values) == 0:
            raise ValueError(f"`axes` must give each axis at least one value. Received: {name}=[]")
    names = list(axes)
    out = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axes[n] for n in names))]
    return [t for t in out if not (exclude and exclude(t))]
