"""One record: the float32 vector of statistics a recorder computes on the device per step, its layout, and the
tidy tables built from records.

`RecordSpec` holds what the monitor was asked to record (kinds, statistics, histograms, one tracked unit) and turns
each recorded tensor into its part of the vector, appending what each element is to a `Layout` at trace time. The
probe recorder (`keras_initkit.monitor`) and the train-batch recorder (`keras_initkit.train_batch`) share it, so both
record the same values of the same tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

import keras
import numpy as np
import pandas as pd

from keras_initkit import backends
from keras_initkit.backends import ops as _tf  # the backend's tensor operations, in TensorFlow's names
from keras_initkit.layers import Target
from keras_initkit.stats import STATS, TensorView, _rank

__all__ = ["COLUMNS", "FORWARD_KINDS", "GRADIENT_KINDS", "KINDS", "Layout", "Record", "RecordSpec"]

KINDS = ("preact", "activation", "grad_preact", "grad_activation", "kernel", "grad_kernel")
FORWARD_KINDS = ("preact", "activation")
GRADIENT_KINDS = ("grad_preact", "grad_activation", "grad_kernel")
KERNEL_KINDS = ("kernel", "grad_kernel")
COLUMNS = ("step", "epoch", "layer", "depth", "kind", "stat", "value", "diverged")


# ----------------------------------------------------------------------------------------------------------------
# Layout of one record's vector, and the tables built from the records.


@dataclass
class Layout:
    """What each element of a record's float32 vector is: ("stat"|"hist"|"lo"|"hi"|"div", target, kind, stat, unit)."""

    targets: list[Target]
    entries: list[tuple[str, int, str, str, int]] = field(default_factory=list)

    def extend(self, other: Layout) -> None:
        """Append another layout's entries (forgetting the cached arrays)."""
        self.entries.extend(other.entries)
        self.__dict__.pop("arrays", None)

    @cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        e = self.entries
        role = np.array([x[0] for x in e], dtype=object)
        tgt = np.array([x[1] for x in e], dtype=np.int64)
        kind = np.array([x[2] for x in e], dtype=object)
        stat = np.array([x[3] for x in e], dtype=object)
        unit = np.array([x[4] for x in e], dtype=np.int64)
        div_at = {(x[1], x[2], x[4]): i for i, x in enumerate(e) if x[0] == "div"}
        div = np.array([div_at.get((x[1], x[2], x[4]), -1) for x in e], dtype=np.int64)
        lo_at = {(x[1], x[2]): i for i, x in enumerate(e) if x[0] == "lo"}
        hi_at = {(x[1], x[2]): i for i, x in enumerate(e) if x[0] == "hi"}
        lo = np.array([lo_at.get((x[1], x[2]), -1) for x in e], dtype=np.int64)
        hi = np.array([hi_at.get((x[1], x[2]), -1) for x in e], dtype=np.int64)
        names = np.array([t.name for t in self.targets], dtype=object)
        return {
            "role": role,
            "tgt": tgt,
            "kind": kind,
            "stat": stat,
            "unit": unit,
            "div": div,
            "lo": lo,
            "hi": hi,
            "layer": names[tgt] if len(e) else np.array([], dtype=object),
        }

    def layer_rows(self) -> np.ndarray:
        """Selects the layer-level statistics and histogram bins (the rows of `to_frame()`)."""
        a = self.arrays
        return ((a["role"] == "stat") & (a["unit"] < 0)) | (a["role"] == "hist")


class Record(NamedTuple):
    """One record: its layout, step, epoch and vector (a device tensor until flushed, then a numpy array)."""

    layout: Layout
    step: int
    epoch: int
    vec: Any


def frame(layout: Layout, steps, epochs, mat: np.ndarray, select: np.ndarray, extra: dict | None = None):
    """Tidy rows of the elements `select` picks, for the records stacked in `mat` (one row per record)."""
    a = layout.arrays
    idx = np.flatnonzero(select)
    n_ev, k = mat.shape[0], len(idx)
    cols = {
        "step": np.repeat(np.asarray(steps, dtype=np.int64), k),
        "epoch": np.repeat(np.asarray(epochs, dtype=np.int64), k),
        "layer": np.tile(a["layer"][idx], n_ev),
        "depth": np.tile(a["tgt"][idx], n_ev),
        "kind": np.tile(a["kind"][idx], n_ev),
    }
    for name, fn in (extra or {}).items():
        cols[name] = fn(idx, n_ev)
    cols["stat"] = np.tile(a["stat"][idx], n_ev)
    cols["value"] = mat[:, idx].astype(np.float64).reshape(-1)
    cols["diverged"] = (mat[:, a["div"][idx]] > 0.5).reshape(-1)
    return pd.DataFrame(cols)


def empty(columns: Sequence[str]) -> pd.DataFrame:
    """An empty table with these columns and their dtypes."""
    dtypes = {
        "step": "int64",
        "epoch": "int64",
        "depth": "int64",
        "unit": "int64",
        "bin": "int64",
        "value": "float64",
        "left": "float64",
        "right": "float64",
        "diverged": "bool",
    }
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "object")) for c in columns})


# ----------------------------------------------------------------------------------------------------------------
# What to record, validated, and how one tensor becomes its part of the vector.


def _int_at_least(value, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low


def check_kinds(kinds) -> tuple[str, ...]:
    """None: every kind; else a non-empty subset of KINDS (a name, or names), returned in KINDS order."""
    if kinds is None:
        return KINDS
    items = (kinds,) if isinstance(kinds, str) else tuple(kinds) if isinstance(kinds, Iterable) else ()
    if not items or any(not isinstance(k, str) or k not in KINDS for k in items):
        raise ValueError(f"`kinds` must be None or a non-empty subset of {KINDS}. Received: kinds={kinds!r}")
    return tuple(k for k in KINDS if k in items)


def check_stats(stats) -> dict[str, Callable]:
    if stats is None:
        return dict(STATS)
    if isinstance(stats, Mapping):
        bad = [k for k, f in stats.items() if not isinstance(k, str) or not callable(f)]
        if bad or not stats:
            raise ValueError(f"`stats` as a mapping must map names to callables. Received: stats={stats!r}")
        return dict(stats)
    if isinstance(stats, str) or not isinstance(stats, Iterable):
        raise ValueError(f"`stats` must be a list of names from {tuple(STATS)} or a mapping. Received: {stats!r}")
    stats = list(stats)
    unknown = [s for s in stats if s not in STATS]
    if unknown or not stats:
        raise ValueError(f"`stats` must be names from {tuple(STATS)}. Received: stats={stats!r}")
    return {s: STATS[s] for s in stats}


def check_histograms(histograms, kinds: tuple[str, ...]) -> tuple[str, ...]:
    if histograms is True:
        return kinds
    if histograms is False or histograms is None:
        return ()
    chosen = tuple(histograms) if not isinstance(histograms, str) else (histograms,)
    if not chosen or any(k not in KINDS for k in chosen):
        raise ValueError(f"`histograms` must be a bool or kinds from {KINDS}. Received: histograms={histograms!r}")
    if any(k not in kinds for k in chosen):
        raise ValueError(
            f"`histograms` must name recorded kinds (`kinds`={kinds}). Received: histograms={histograms!r}"
        )
    return chosen


def check_bin_range(bin_range) -> dict[str, tuple[float, float]]:
    def pair(r):
        ok = isinstance(r, Sequence) and len(r) == 2 and all(isinstance(v, (int, float)) for v in r)
        if not ok or not (math.isfinite(r[0]) and math.isfinite(r[1]) and r[0] < r[1]):
            raise ValueError(f"`bin_range` must be (low, high) with low < high, finite. Received: {bin_range!r}")
        return float(r[0]), float(r[1])

    if bin_range is None:
        return {}
    if isinstance(bin_range, Mapping):
        bad = [k for k in bin_range if k not in KINDS]
        if bad:
            raise ValueError(f"`bin_range` keys must be kinds from {KINDS}. Received: bin_range={bin_range!r}")
        return {k: pair(v) for k, v in bin_range.items()}
    return dict.fromkeys(KINDS, pair(bin_range))


@dataclass(frozen=True)
class RecordSpec:
    """What is recorded of each monitored layer, and how one tensor becomes its part of a record's vector."""

    kinds: tuple[str, ...]  # the recorded kinds, in KINDS order
    stats: dict[str, Callable]  # name -> f(TensorView)
    histogram_kinds: tuple[str, ...]  # kinds with a histogram per record
    bins: int
    bin_range: dict[str, tuple[float, float]]  # kind -> fixed (low, high)
    track_unit: int | None  # one unit (channel) whose forward statistics are recorded too
    quantile_sample: int | None  # percentiles on a fixed sample of this many elements of larger tensors

    @classmethod
    def create(cls, kinds, stats, histograms, bins, bin_range, track_unit, quantile_sample) -> RecordSpec:
        """Validate the monitor's arguments (each error names the argument, the rule and the value)."""
        kinds = check_kinds(kinds)
        if not _int_at_least(bins, 1):
            raise ValueError(f"`bins` must be an int >= 1. Received: bins={bins!r}")
        if track_unit is not None and not _int_at_least(track_unit, 0):
            raise ValueError(f"`track_unit` must be None or an int >= 0. Received: track_unit={track_unit!r}")
        if quantile_sample is not None and not _int_at_least(quantile_sample, 2):
            raise ValueError(
                f"`quantile_sample` must be None or an int >= 2. Received: quantile_sample={quantile_sample!r}"
            )
        return cls(
            kinds=kinds,
            stats=check_stats(stats),
            histogram_kinds=check_histograms(histograms, kinds),
            bins=int(bins),
            bin_range=check_bin_range(bin_range),
            track_unit=None if track_unit is None else int(track_unit),
            quantile_sample=None if quantile_sample is None else int(quantile_sample),
        )

    @property
    def quantiles(self) -> tuple[float, ...]:
        """The q of the percentile stats (`keras_initkit.stats` marks them), computed together per tensor."""
        return tuple(
            dict.fromkeys(f.quantile for f in self.stats.values() if isinstance(getattr(f, "quantile", None), float))
        )

    @property
    def gradients(self) -> bool:
        """Whether any gradient kind is recorded."""
        return any(k in GRADIENT_KINDS for k in self.kinds)

    def kinds_of(self, t: Target) -> tuple[str, ...]:
        """The recorded kinds of one layer: the kernel kinds only where it has a kernel."""
        return tuple(k for k in self.kinds if t.kernel is not None or k not in KERNEL_KINDS)

    def values(self, layout: Layout, t: Target, kind: str, x, hist: dict | None, unit: int = -1, xla=False):
        """Entries of one tensor appended to `layout` (at trace time); returns its values as one float32 vector.

        Under TensorFlow computed in the caller's traced function; under JAX by a compiled function per signature
        (`keras_initkit.backends.jax.tensor_values`)."""
        return backends.module().tensor_values(self, layout, t, kind, x, hist, unit, xla)

    def compute(self, layout: Layout, t: Target, kind: str, x, hist: dict | None, unit: int = -1, xla=False):
        """`values`' computation, in the backend's tensor operations."""
        tf = _tf()
        view = TensorView(
            x,
            kind=kind,
            activation=t.activation,
            unit_axis=None if unit >= 0 else t.unit_axis,
            quantile_sample=self.quantile_sample,
            xla=xla,
            quantiles=self.quantiles,
        )
        scalars = []
        for name, fn in self.stats.items():
            v = fn(view)
            if v is not None:
                layout.entries.append(("stat", t.index, kind, name, unit))
                scalars.append(_scalar(name, v))
        vals = [tf.stack(scalars)] if scalars else []
        if unit < 0 and kind in self.histogram_kinds:
            lo, hi = self._hist_range(view, t, kind, hist)
            layout.entries.extend(("hist", t.index, kind, f"hist_{b}", unit) for b in range(self.bins))
            layout.entries.extend([("lo", t.index, kind, "lo", unit), ("hi", t.index, kind, "hi", unit)])
            vals += [view.histogram(lo, hi, self.bins), tf.stack([lo, hi])]
        layout.entries.append(("div", t.index, kind, "diverged", unit))
        vals.append(tf.cast(tf.reshape(view.diverged, [1]), tf.float32))
        return tf.concat(vals, 0)

    def unit_values(self, layout: Layout, t: Target, tensors: dict, xla=False) -> list:
        """The tracked unit's entries of the forward kinds in `tensors` (none without `track_unit`)."""
        if self.track_unit is None:
            return []
        tf = _tf()
        out = []
        for kind in FORWARD_KINDS:
            x = tensors.get(kind)
            rank = _rank(x) if x is not None else None
            if rank is None or rank < 2:
                continue
            n_units = x.shape[t.unit_axis]
            if n_units is None or self.track_unit >= n_units:
                continue
            unit = tf.gather(x, self.track_unit, axis=t.unit_axis)
            out.append(self.values(layout, t, kind, unit, None, unit=self.track_unit, xla=xla))
        return out

    def _hist_range(self, view: TensorView, t: Target, kind: str, hist: dict):
        """(lo, hi) of the histogram: given, the activation's bounds, or the first finite record's [min, max]."""
        tf = _tf()
        if kind in self.bin_range:
            lo, hi = self.bin_range[kind]
            return tf.constant(lo, tf.float32), tf.constant(hi, tf.float32)
        if kind == "activation" and view.bounds is not None:
            return tf.constant(view.bounds[0], tf.float32), tf.constant(view.bounds[1], tf.float32)
        is_set, lo_v, hi_v = hist[(t.index, kind)]
        finite = tf.math.is_finite(view.flat)
        mn = tf.reduce_min(tf.where(finite, view.flat, np.inf))
        mx = tf.reduce_max(tf.where(finite, view.flat, -np.inf))
        ok = tf.math.is_finite(mn) & tf.math.is_finite(mx) & (mx > mn)
        use = is_set | ok
        lo = tf.where(is_set, lo_v, tf.where(ok, mn, -1.0))
        hi = tf.where(is_set, hi_v, tf.where(ok, mx, 1.0))
        with tf.control_dependencies([is_set.assign(use), lo_v.assign(lo), hi_v.assign(hi)]):
            return tf.identity(lo), tf.identity(hi)

    def hist_state(self, targets: list[Target]) -> dict:
        """Per (layer, kind) with a histogram: (range set?, low, high) variables, for ranges fixed at first record."""
        tf = _tf()
        return {
            (t.index, kind): (tf.Variable(False), tf.Variable(0.0), tf.Variable(0.0))
            for t in targets
            for kind in self.kinds_of(t)
            if kind in self.histogram_kinds
        }


def _scalar(name: str, v):
    """A `stats` entry's value as a float32 scalar tensor, or a ValueError naming the entry."""
    tf = _tf()
    try:
        t = tf.convert_to_tensor(v)
    except (TypeError, ValueError):
        t = None
    if t is None or _rank(t) != 0 or not _numeric(t.dtype):
        raise ValueError(
            f"`stats` entry {name!r} must return a numeric scalar tensor (or None to skip the tensor). Received: {v!r}"
        )
    v = t
    return v if v.dtype == tf.float32 else tf.cast(v, tf.float32)


def _numeric(dtype) -> bool:
    """Whether a tensor's dtype is a float, int or bool (TensorFlow's DType, a numpy/JAX or a torch dtype)."""
    if hasattr(dtype, "is_floating"):
        return dtype.is_floating or dtype.is_integer or dtype.is_bool
    name = keras.backend.standardize_dtype(dtype)
    return name == "bool" or name.startswith(("float", "bfloat", "int", "uint"))


def reset_hist(state: dict | None) -> None:
    """Forget the histogram ranges fixed in a previous fit."""
    for is_set, _lo, _hi in (state or {}).values():
        is_set.assign(False)
