"""Per-layer activation and gradient statistics during `model.fit`: the `VarianceMonitor` callback.

What the papers' figures show, on any Keras model: for each monitored layer, the pre-activation s (the input to the
nonlinearity, also when it is fused into the layer as in `Dense(100, activation="sigmoid")`), the activation f(s)
(the layer's output), the back-propagated gradients dC/ds and dC/df(s), the kernel W and its gradient dC/dW
(Glorot & Bengio 2010, Fig 6-8; He et al. 2015, Eq 8; Ioffe & Szegedy 2015, Fig 1b). Each tensor is reduced on the
device to a few named statistics (`STATS`), so the table grows by (layers x kinds x stats) scalars per record.

    monitor = VarianceMonitor(probe=(x_val[:256], y_val[:256]), every=50)
    model.fit(x, y, epochs=5, callbacks=[monitor])
    df = monitor.to_frame()          # tidy: step, epoch, layer, depth, kind, stat, value, diverged
    monitor.save("layers.parquet")   # or .csv

How the tensors are reached (TensorFlow backend): while the probe function is traced (once), each monitored layer's
`call` is wrapped. A layer with an `activation` attribute (Dense, ConvND, Activation, ...) runs with that attribute
swapped for a recorder that sees s and returns f(s), so the layer computes exactly what it always computes; an
activation layer without one (ReLU, LeakyReLU, ELU, PReLU, Softmax) records its input as s; any other layer
(BatchNormalization, ...) has the identity as its nonlinearity (s = its output). The probe pass runs inside a
`keras.StatelessScope`, so it never moves BatchNormalization statistics, dropout seeds or metric states.

Two sources:
- `source="probe"` (default): a fixed probe batch, one extra forward and backward pass per record.
- `source="train_batch"`: statistics of the training batch itself, computed inside Keras' own train step from the
  forward tensors, the gradients that back-propagation computes anyway (read by identity ops with a custom
  gradient) and the kernel gradients handed to the optimizer. It costs no extra pass, so recording every step
  stays cheap. The step is not replaced: a second train function (traced once) runs the model's own `train_step`
  with these taps, and the monitor hands Keras that function for the scheduled steps only, its own otherwise.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import keras
import numpy as np
import pandas as pd

from keras_initkit.fileio import write_frame

__all__ = ["VarianceMonitor", "TensorView", "STATS", "KINDS", "COLUMNS"]

KINDS = ("preact", "activation", "grad_preact", "grad_activation", "kernel", "grad_kernel")
COLUMNS = ("step", "epoch", "layer", "depth", "kind", "stat", "value", "diverged")
SOURCES = ("probe", "train_batch")
FORWARD_KINDS = ("preact", "activation")

# A value of a bounded activation this close to a bound counts as saturated (|tanh| > 0.99, sigmoid < 0.01 or > 0.99).
SATURATION_MARGIN = 0.01
BOUNDS = {
    "tanh": (-1.0, 1.0),
    "sigmoid": (0.0, 1.0),
    "hard_sigmoid": (0.0, 1.0),
    "softsign": (-1.0, 1.0),
    "hard_tanh": (-1.0, 1.0),
}
# Activations whose units can be dead (exactly 0 on the whole batch); their outputs are >= 0.
RECTIFIERS = ("relu", "relu6")
# Activation layers that apply their nonlinearity in `call` without an `activation` attribute: name of f.
_ACTIVATION_LAYERS = {
    keras.layers.ReLU: "relu",
    keras.layers.LeakyReLU: "leaky_relu",
    keras.layers.ELU: "elu",
    keras.layers.PReLU: "prelu",
    keras.layers.Softmax: "softmax",
}


def _tf():
    import tensorflow as tf

    return tf


# ----------------------------------------------------------------------------------------------------------------
# Statistics: a table of named pure functions of a TensorView (adding one is one entry).


class TensorView:
    """One recorded tensor and the quantities derived from it, each computed at most once (stats share them).

    Attributes: `x` (float32 tensor), `kind` (one of KINDS), `activation` (name of the layer's nonlinearity or None),
    `bounds` ((low, high) of a bounded activation or None), `unit_axis` (axis of units/channels; None for a single
    unit's slice). Derived, cached: `flat`, `mean`, `var`, `sorted_sample`, `quantile(q)`, `dead_fraction`.
    """

    def __init__(
        self, x, *, kind: str, activation: str | None, unit_axis: int | None, quantile_sample: int | None, xla=False
    ):
        tf = _tf()
        self.xla = xla
        self.x = tf.cast(x, tf.float32)
        self.kind = kind
        self.activation = activation
        self.bounds = BOUNDS.get(activation) if activation else None
        self.unit_axis = unit_axis
        self.quantile_sample = quantile_sample

    @cached_property
    def flat(self):
        return _tf().reshape(self.x, [-1])

    @cached_property
    def _moments(self):
        # Two reads of the tensor, no copy: the sum, and the sum of squares as a squared Euclidean norm (one fused
        # kernel), where tf.nn.moments reads it three times and writes a squared copy. Var = E[x^2] - E[x]^2 loses
        # digits only when |mean| >> std (relative error ~ 1e-7 * mean^2 / var), not the case of these tensors.
        tf = _tf()
        n = self.flat.shape[0]
        inv_n = 1.0 / max(n, 1) if n is not None else 1.0 / tf.cast(tf.size(self.flat), tf.float32)
        mean = tf.reduce_sum(self.flat) * inv_n
        if self.xla:  # XLA has no EuclideanNorm kernel, and fuses the square into the sum itself
            second = tf.reduce_sum(tf.square(self.flat)) * inv_n
        else:
            second = tf.square(tf.math.reduce_euclidean_norm(self.flat)) * inv_n
        return mean, tf.maximum(second - mean * mean, 0.0)

    @property
    def mean(self):
        return self._moments[0]

    @property
    def var(self):
        return self._moments[1]

    @cached_property
    def diverged(self):
        # Any NaN or Inf element makes the sum (so the mean) non-finite: no extra pass over the tensor.
        return _tf().logical_not(_tf().math.is_finite(self.mean))

    @cached_property
    def sorted_sample(self):
        """The sorted tensor, or a fixed pseudo-random sample of `quantile_sample` of its elements when larger."""
        tf = _tf()
        n = self.flat.shape[0]
        cap = self.quantile_sample
        if cap is None or (n is not None and n <= cap):
            return tf.sort(self.flat)
        # Positions floor(u * n) for fixed u in [0, 1): the same elements at every record, and no aliasing with the
        # layout (a strided sample of an NHWC tensor would see a few channels only).
        u = _sample_positions(cap)
        if n is not None:
            idx = tf.constant(((u * n) >> 31).astype(np.int32))
        else:
            idx = tf.bitwise.right_shift(tf.constant(u) * tf.size(self.flat, out_type=tf.int64), 31)
        return tf.sort(tf.gather(self.flat, idx))

    def quantile(self, q: float):
        """Linear-interpolated q-quantile (numpy's default method) of `sorted_sample`."""
        tf = _tf()
        s = self.sorted_sample
        m = s.shape[0]
        if m is not None:  # static size: the interpolation is fixed at trace time (one gather, three ops)
            pos = q * (m - 1)
            lo = int(math.floor(pos))
            frac = pos - lo
            return tf.reduce_sum(tf.gather(s, [lo, min(lo + 1, m - 1)]) * np.float32([1.0 - frac, frac]))
        m = tf.shape(s)[0]
        pos = q * tf.cast(m - 1, tf.float32)
        lo = tf.cast(tf.floor(pos), tf.int32)
        frac = pos - tf.cast(lo, tf.float32)
        return tf.gather(s, lo) * (1.0 - frac) + tf.gather(s, tf.minimum(lo + 1, m - 1)) * frac

    @cached_property
    def dead_fraction(self):
        """Fraction of units (channels) that are exactly 0 on every example and position of the batch.

        For outputs >= 0 (a rectifier's, as `stat_dead` asks): a unit is dead when its maximum is 0.
        """
        tf = _tf()
        if self.unit_axis is None or self.x.shape.rank is None or self.x.shape.rank < 2:
            return tf.cast(tf.equal(tf.reduce_max(self.x), 0.0), tf.float32)
        axis = self.unit_axis % self.x.shape.rank
        others = [a for a in range(self.x.shape.rank) if a != axis]
        dead = tf.equal(tf.reduce_max(self.x, axis=others), 0.0)  # NaN is not 0: a NaN unit is not dead
        return tf.reduce_mean(tf.cast(dead, tf.float32))

    def histogram(self, lo, hi, bins: int):
        """Fraction of all elements in each of `bins` equal bins on [lo, hi]; values outside are not counted."""
        tf = _tf()
        x = self.flat
        width = (hi - lo) / bins
        idx = tf.cast(tf.floor((x - lo) / width), tf.int32)
        idx = tf.minimum(idx, bins - 1)  # x == hi falls in the last bin
        inside = (x >= lo) & (x <= hi)  # False for NaN
        idx = tf.where(inside, idx, bins)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(x), idx, bins + 1)[:bins]
        return counts / tf.cast(tf.maximum(tf.size(x), 1), tf.float32)


@lru_cache(maxsize=8)
def _sample_positions(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 2**31, size=size, dtype=np.int64)


def stat_mean(v: TensorView):
    return v.mean


def stat_var(v: TensorView):
    return v.var


def stat_std(v: TensorView):
    return _tf().sqrt(v.var)


def _percentile(q: float) -> Callable[[TensorView], Any]:
    def stat(v: TensorView):
        return v.quantile(q / 100.0)

    stat.__name__ = f"stat_p{q:g}"
    return stat


def stat_saturated(v: TensorView):
    """Fraction of a bounded activation's outputs within SATURATION_MARGIN of a bound (activation kind only)."""
    if v.kind != "activation" or v.bounds is None:
        return None
    tf = _tf()
    lo, hi = v.bounds
    x = v.flat
    return tf.reduce_mean(tf.cast((x < lo + SATURATION_MARGIN) | (x > hi - SATURATION_MARGIN), tf.float32))


def stat_dead(v: TensorView):
    """Fraction of units that output exactly 0 for the whole batch (activation kind of a rectifier only)."""
    if v.kind != "activation" or v.activation not in RECTIFIERS:
        return None
    return v.dead_fraction


# name -> f(TensorView) -> scalar tensor, or None where the statistic does not apply (decided from the view's kind
# and activation, never from values). Pass `stats={**STATS, "absmax": lambda v: tf.reduce_max(tf.abs(v.flat))}`.
STATS: dict[str, Callable[[TensorView], Any]] = {
    "mean": stat_mean,
    "var": stat_var,
    "std": stat_std,
    "p15": _percentile(15),
    "p50": _percentile(50),
    "p85": _percentile(85),
    "saturated": stat_saturated,
    "dead": stat_dead,
}


# ----------------------------------------------------------------------------------------------------------------
# Which layers, and how each one is reached.


@dataclass
class _Target:
    index: int  # depth: 0-based index among monitored layers, input side first
    name: str
    layer: Any
    mode: str  # "fused": has an `activation` attribute; "input": activation layer; "identity": f = identity
    activation: str | None
    unit_axis: int
    kernel: Any  # keras.Variable or None

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.kernel is not None else KINDS[:4]


def leaf_layers(model) -> list[tuple[Any, list[str]]]:
    """Leaf layers in order (input side first), through nested models, each with its containers' names."""
    out, seen = [], set()

    def walk(layer, parents):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if getattr(sub, "layers", None):
                walk(sub, [*parents, sub.name])
            elif not isinstance(sub, keras.layers.InputLayer):
                out.append((sub, parents))

    walk(model, [model.name])
    return out


def _is_default(layer) -> bool:
    return bool(layer.weights) or callable(getattr(layer, "activation", None)) or type(layer) in _ACTIVATION_LAYERS


def select_layers(model, layers) -> list[_Target]:
    """The leaf layers `layers` selects (None: layers with weights or an activation; names; a regex; types), in order,
    each with its depth, display name, how its activation is reached and its kernel. Shared by the monitor and theory.
    """
    leaves = leaf_layers(model)
    if layers is None:
        chosen = [(la, p) for la, p in leaves if _is_default(la)]
    elif isinstance(layers, str):
        pattern = re.compile(layers)
        chosen = [(la, p) for la, p in leaves if pattern.fullmatch(la.name)]
    elif isinstance(layers, type) or (
        isinstance(layers, Sequence) and all(isinstance(e, (str, type)) for e in layers) and len(layers) > 0
    ):
        items = [layers] if isinstance(layers, type) else list(layers)
        types = tuple(e for e in items if isinstance(e, type))
        names = [e for e in items if isinstance(e, str)]
        known = {la.name for la, _ in leaves}
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(
                f"`layers` names layers the model does not have (leaf layers only): {missing}. "
                f"Available: {sorted(known)}. Received: layers={layers!r}"
            )
        chosen = [(la, p) for la, p in leaves if la.name in names or (types and isinstance(la, types))]
    else:
        raise ValueError(
            f"`layers` must be None, a list of layer names, a regex string, or layer types. Received: layers={layers!r}"
        )
    if not chosen:
        raise ValueError(f"`layers` selects no layer of the model {model.name!r}. Received: layers={layers!r}")
    counts: dict[str, int] = {}
    for la, _ in chosen:
        counts[la.name] = counts.get(la.name, 0) + 1
    targets = []
    for i, (la, parents) in enumerate(chosen):
        name = la.name if counts[la.name] == 1 else "/".join([*parents[1:], la.name])
        act = getattr(la, "activation", None)
        if callable(act) and not isinstance(la, tuple(_ACTIVATION_LAYERS)):
            mode, act_name = "fused", getattr(act, "__name__", type(act).__name__)
        elif type(la) in _ACTIVATION_LAYERS:
            mode, act_name = "input", _ACTIVATION_LAYERS[type(la)]
            if act_name == "relu" and getattr(la, "negative_slope", 0.0):
                act_name = "leaky_relu"
        else:
            mode, act_name = "identity", None
        kernel = getattr(la, "kernel", None)
        kernel = kernel if isinstance(kernel, keras.Variable) else None
        unit_axis = 1 if getattr(la, "data_format", None) == "channels_first" else -1
        targets.append(_Target(i, name, la, mode, act_name, unit_axis, kernel))
    return targets


class _Hooks:
    """While active (at trace time only), each target layer's `call` hands s and f(s) to the callbacks.

    `on_preact(target, s)` and `on_activation(target, a)` return the tensor the forward pass goes on with (the same
    values; a recorder may insert an identity op to reach the gradient that flows through this layer only).
    `after_call(target)` runs once the layer returned. A layer called twice (shared) is recorded at its first call.
    """

    def __init__(self, targets, on_preact, on_activation, after_call=None):
        self.targets, self.on_preact, self.on_activation, self.after_call = (
            targets,
            on_preact,
            on_activation,
            after_call,
        )
        self.called: set[int] = set()
        self._saved: list[tuple[Any, Any]] = []

    def _wrap(self, t: _Target, orig):
        def call(*args, **kwargs):
            if t.index in self.called:
                return orig(*args, **kwargs)
            self.called.add(t.index)
            if t.mode == "fused":
                act, seen = t.layer.activation, []

                def recorder(s):
                    if not seen:  # a layer applying its activation more than once is recorded at the first
                        seen.append(True)
                        s = self.on_preact(t, s)
                    return act(s)

                object.__setattr__(t.layer, "activation", recorder)
                try:
                    out = orig(*args, **kwargs)
                finally:
                    object.__setattr__(t.layer, "activation", act)
                if not seen:  # its `call` never applied `activation`: the identity is its nonlinearity
                    out = self.on_preact(t, out)
            elif t.mode == "input":
                out = orig(self.on_preact(t, args[0]), *args[1:], **kwargs)
            else:
                out = self.on_preact(t, orig(*args, **kwargs))
            out = self.on_activation(t, out)
            if self.after_call is not None:
                self.after_call(t)
            return out

        return call

    def __enter__(self):
        for t in self.targets:
            own = t.layer.__dict__.get("call")
            self._saved.append((t.layer, own))
            object.__setattr__(t.layer, "call", self._wrap(t, t.layer.call))
        return self

    def __exit__(self, *exc):
        for layer, own in reversed(self._saved):
            if own is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", own)
        self._saved.clear()
        return False


# ----------------------------------------------------------------------------------------------------------------
# Layout of one record's vector, and the tables built from the records.


@dataclass
class _Layout:
    """What each element of a record's float32 vector is: ("stat"|"hist"|"lo"|"hi"|"div", target, kind, stat, unit)."""

    targets: list[_Target]
    entries: list[tuple[str, int, str, str, int]] = field(default_factory=list)

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


def _frame(layout: _Layout, steps, epochs, mat: np.ndarray, select: np.ndarray, extra: dict | None = None):
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


def _empty(columns: Sequence[str]) -> pd.DataFrame:
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


def _check_every(every):
    if every == "log":
        return every
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f'`every` must be an int >= 1 or "log". Received: every={every!r}')
    return int(every)


class VarianceMonitor(keras.callbacks.Callback):
    """Records per-layer statistics of pre-activations, activations, their gradients, kernels and kernel gradients.

    Records on the fixed `probe` batch at step 0 before any update (`at_init`), then every `every` optimizer steps
    (or at steps 1, 2, 4, 8, ... with `every="log"`), and optionally at each epoch's end. Outside `fit`,
    `measure(model)` records once (e.g. at initialization). Results: `to_frame()` (tidy, `COLUMNS`),
    `histogram_frame()`, `unit_frame()`, `save(path)`. The Keras CSVLogger lifecycle: state made in `__init__`,
    reset in `on_train_begin` (one instance reused across `fit` calls starts a fresh table each time), finished in
    `on_train_end`; nothing is plotted or written to disk while training except the optional TensorBoard scalars,
    written at epoch ends.

    Example:
    >>> monitor = VarianceMonitor(probe=(x_val[:256], y_val[:256]), every=50)
    >>> model.fit(x, y, epochs=5, callbacks=[monitor])
    >>> monitor.to_frame().query("kind == 'preact' and stat == 'var'")

    Args:
        probe: `(x, y)` or `(x, y, sample_weight)` (a tuple, as Keras unpacks data) or `x` alone: the fixed batch.
            Without labels (or without a compiled loss) only the forward kinds and the kernel are recorded.
            Required unless `source="train_batch"` (where it serves `on_epoch_end` and `measure`).
        every: record every `every` optimizer steps (int >= 1), or `"log"` for steps 1, 2, 4, 8, ...
        at_init: record at step 0, before the first update.
        on_epoch_end: also record (on the probe) at the end of every epoch.
        layers: which layers: None (every leaf layer with weights, an activation, or that is an activation layer),
            a list of layer names and/or layer types, a layer type, or a regex matched against whole layer names.
            Nested models are searched; depth counts the monitored layers, input side first.
        stats: statistic names from `STATS` (None: all), or a mapping name -> function of a `TensorView`.
        histograms: False, True (every recorded kind) or a list of kinds: fixed-bin histograms per record.
        bins: number of equal-width histogram bins.
        bin_range: (low, high) for every kind, or a dict kind -> (low, high); kinds left out get the bounds of a
            bounded activation (activation kind) or the [min, max] of their first finite record in each fit.
        track_unit: also record the statistics of one unit (channel) of the forward kinds of every monitored layer
            that has it (Ioffe & Szegedy Fig 1b tracks one unit's 15/50/85th percentiles): see `unit_frame()`.
        log_dir: if given, TensorBoard scalars `<layer>/<kind>/<stat>` are written there (TensorFlow summaries).
        source: "probe" (the probe batch; one extra forward and backward pass per record) or "train_batch" (the
            training batch, inside Keras' train step: no extra pass; the model must not override `train_step`;
            with `steps_per_execution > 1`, an execution that holds a scheduled step records its last step).
        training: run the probe in training mode (batch statistics in BatchNormalization, dropout active), as the
            optimizer sees the model. The probe pass never updates the model's state either way.
        quantile_sample: percentiles are computed on a fixed pseudo-random sample of this many elements of larger
            tensors (for 2048, a standard error below 0.035 standard deviations; sorting is the costly part of a
            record on CPU); None: exact.
    """

    def __init__(
        self,
        probe=None,
        every: int | str = 50,
        at_init: bool = True,
        on_epoch_end: bool = False,
        layers=None,
        stats: Iterable[str] | Mapping[str, Callable] | None = None,
        histograms: bool | Iterable[str] = False,
        bins: int = 50,
        bin_range: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
        track_unit: int | None = None,
        log_dir: str | os.PathLike | None = None,
        source: str = "probe",
        training: bool = True,
        quantile_sample: int | None = 2048,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"`source` must be one of {SOURCES}. Received: source={source!r}")
        if probe is None and (source == "probe" or on_epoch_end):
            raise ValueError(
                '`probe` is required unless source="train_batch" (and on_epoch_end=False). Received: probe=None'
            )
        self.every = _check_every(every)
        self.at_init = bool(at_init)
        self.record_epoch_end = bool(on_epoch_end)
        self.layers = layers
        self.stats = self._check_stats(stats)
        self.histogram_kinds = self._check_histograms(histograms)
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"`bins` must be an int >= 1. Received: bins={bins!r}")
        self.bins = int(bins)
        self.bin_range = self._check_bin_range(bin_range)
        if track_unit is not None and (
            isinstance(track_unit, bool) or not isinstance(track_unit, (int, np.integer)) or track_unit < 0
        ):
            raise ValueError(f"`track_unit` must be None or an int >= 0. Received: track_unit={track_unit!r}")
        self.track_unit = None if track_unit is None else int(track_unit)
        self.log_dir = log_dir
        self.source = source
        self.training = bool(training)
        if quantile_sample is not None and (
            isinstance(quantile_sample, bool)
            or not isinstance(quantile_sample, (int, np.integer))
            or quantile_sample < 2
        ):
            raise ValueError(
                f"`quantile_sample` must be None or an int >= 2. Received: quantile_sample={quantile_sample!r}"
            )
        self.quantile_sample = None if quantile_sample is None else int(quantile_sample)
        self.probe = self._check_probe(probe)
        # Built per model, kept across fits (a traced function is never retraced per record).
        self._probe_state: dict | None = None
        self._train_state: dict | None = None
        self._writer = None
        self._reset_table()

    # -- argument checks ------------------------------------------------------------------------------------------

    @staticmethod
    def _check_stats(stats) -> dict[str, Callable]:
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

    @staticmethod
    def _check_histograms(histograms) -> tuple[str, ...]:
        if histograms is True:
            return KINDS
        if histograms is False or histograms is None:
            return ()
        kinds = tuple(histograms) if not isinstance(histograms, str) else (histograms,)
        if not kinds or any(k not in KINDS for k in kinds):
            raise ValueError(f"`histograms` must be a bool or kinds from {KINDS}. Received: histograms={histograms!r}")
        return kinds

    @staticmethod
    def _check_bin_range(bin_range) -> dict[str, tuple[float, float]]:
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

    @staticmethod
    def _check_probe(probe):
        if probe is None:
            return None
        x, y, sw = keras.utils.unpack_x_y_sample_weight(probe)
        if x is None:
            raise ValueError(f"`probe` must be (x, y), (x, y, sample_weight) or x. Received: probe={probe!r}")
        return x, y, sw

    # -- table ----------------------------------------------------------------------------------------------------

    def _reset_table(self):
        self._records: list[tuple[_Layout, int, int, np.ndarray]] = []
        self._pending: list[tuple[_Layout, int, int, Any]] = []
        self._steps = 0
        self._epoch = 0
        self._epoch_base = 0
        self._last_probe_step = None
        self._warned_diverged = False
        self._recording_now = False

    def _flush(self):
        """Move pending records (device tensors) to the host table; warn about divergence; write TensorBoard."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for layout, step, epoch, vec in pending:
            vec = np.asarray(vec, dtype=np.float32)
            self._records.append((layout, step, epoch, vec))
            a = layout.arrays
            div = vec[a["role"] == "div"] > 0.5
            if div.any() and not self._warned_diverged:
                self._warned_diverged = True
                i = np.flatnonzero(a["role"] == "div")[np.argmax(div)]
                warnings.warn(
                    f"VarianceMonitor: NaN/Inf in layer {a['layer'][i]!r}, kind {a['kind'][i]!r} at step {step}: the "
                    "run has diverged; its rows are flagged diverged=True (warned once per fit).",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if self._writer is not None:
                self._write_summaries(layout, step, vec)

    def _write_summaries(self, layout: _Layout, step: int, vec: np.ndarray):
        tf = _tf()
        a = layout.arrays
        with self._writer.as_default(step=step):
            for i in np.flatnonzero(a["role"] == "stat"):
                unit = "" if a["unit"][i] < 0 else f"unit{a['unit'][i]}/"
                tf.summary.scalar(f"{a['layer'][i]}/{a['kind'][i]}/{unit}{a['stat'][i]}", float(vec[i]))
        self._writer.flush()

    def _grouped(self):
        self._flush()
        groups: dict[int, list] = {}
        for layout, step, epoch, vec in self._records:
            groups.setdefault(id(layout), [layout, [], [], []])
            g = groups[id(layout)]
            g[1].append(step), g[2].append(epoch), g[3].append(vec)
        return [(layout, steps, epochs, np.stack(vecs)) for layout, steps, epochs, vecs in groups.values()]

    def to_frame(self) -> pd.DataFrame:
        """Tidy table of every record since the fit began: columns `COLUMNS`, one row per value.

        `stat` holds the statistic names (and `hist_<i>` when histograms are on); `diverged` is True where the
        tensor held a NaN or Inf.
        """
        parts = []
        for layout, steps, epochs, mat in self._grouped():
            a = layout.arrays
            parts.append(
                _frame(layout, steps, epochs, mat, ((a["role"] == "stat") & (a["unit"] < 0)) | (a["role"] == "hist"))
            )
        return pd.concat(parts, ignore_index=True) if parts else _empty(COLUMNS)

    def histogram_frame(self) -> pd.DataFrame:
        """Histograms in long form: step, epoch, layer, depth, kind, bin, left, right, value (fraction of the
        tensor's elements in [left, right)), diverged. Empty unless `histograms` is on."""
        columns = ("step", "epoch", "layer", "depth", "kind", "bin", "left", "right", "value", "diverged")
        parts = []
        for layout, steps, epochs, mat in self._grouped():
            a = layout.arrays
            sel = a["role"] == "hist"
            if not sel.any():
                continue
            idx = np.flatnonzero(sel)
            b = np.array([int(s.split("_")[1]) for s in a["stat"][idx]], dtype=np.int64)
            lo, hi = mat[:, a["lo"][idx]], mat[:, a["hi"][idx]]
            width = (hi - lo) / self.bins
            df = _frame(layout, steps, epochs, mat, sel, {"bin": lambda _i, n, b=b: np.tile(b, n)})
            df["left"] = (lo + b * width).reshape(-1).astype(np.float64)
            df["right"] = (lo + (b + 1) * width).reshape(-1).astype(np.float64)
            parts.append(df.drop(columns="stat")[list(columns)])
        return pd.concat(parts, ignore_index=True) if parts else _empty(columns)

    def unit_frame(self) -> pd.DataFrame:
        """Statistics of the tracked unit (`track_unit`): step, epoch, layer, depth, kind, unit, stat, value,
        diverged. Empty unless `track_unit` is set."""
        columns = ("step", "epoch", "layer", "depth", "kind", "unit", "stat", "value", "diverged")
        parts = []
        for layout, steps, epochs, mat in self._grouped():
            a = layout.arrays
            sel = (a["role"] == "stat") & (a["unit"] >= 0)
            if sel.any():
                unit = {"unit": lambda i, n, units=a["unit"]: np.tile(units[i], n)}
                parts.append(_frame(layout, steps, epochs, mat, sel, unit)[list(columns)])
        return pd.concat(parts, ignore_index=True) if parts else _empty(columns)

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_frame()` to `path` (.parquet or .csv), atomically (a temporary file, then os.replace)."""
        write_frame(path, self.to_frame())

    # -- the probe function ---------------------------------------------------------------------------------------

    def _values(self, layout: _Layout, t: _Target, kind: str, x, hist: dict | None, unit: int = -1, xla=False):
        """Entries of one tensor appended to `layout` (at trace time); returns its values as one float32 vector."""
        tf = _tf()
        view = TensorView(
            x,
            kind=kind,
            activation=t.activation,
            unit_axis=None if unit >= 0 else t.unit_axis,
            quantile_sample=self.quantile_sample,
            xla=xla,
        )
        scalars = []
        for name, fn in self.stats.items():
            v = fn(view)
            if v is not None:
                layout.entries.append(("stat", t.index, kind, name, unit))
                scalars.append(v if v.dtype == tf.float32 else tf.cast(v, tf.float32))
        vals = [tf.stack(scalars)] if scalars else []
        if unit < 0 and kind in self.histogram_kinds:
            lo, hi = self._hist_range(view, t, kind, hist)
            layout.entries.extend(("hist", t.index, kind, f"hist_{b}", unit) for b in range(self.bins))
            layout.entries.extend([("lo", t.index, kind, "lo", unit), ("hi", t.index, kind, "hi", unit)])
            vals += [view.histogram(lo, hi, self.bins), tf.stack([lo, hi])]
        layout.entries.append(("div", t.index, kind, "diverged", unit))
        vals.append(tf.cast(tf.reshape(view.diverged, [1]), tf.float32))
        return tf.concat(vals, 0)

    def _hist_range(self, view: TensorView, t: _Target, kind: str, hist: dict):
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

    def _hist_state(self, targets: list[_Target]) -> dict:
        tf = _tf()
        return {
            (t.index, kind): (tf.Variable(False), tf.Variable(0.0), tf.Variable(0.0))
            for t in targets
            for kind in t.kinds
            if kind in self.histogram_kinds
        }

    @staticmethod
    def _reset_hist(state: dict | None):
        for is_set, _lo, _hi in (state or {}).values():
            is_set.assign(False)

    def _probe_fn(self, model):
        """The traced probe function for `model` (built once, never retraced), its layout, and its state."""
        st = self._probe_state
        compiled = (getattr(model, "compiled", False), id(getattr(model, "loss", None)))
        if st is not None and st["model"]() is model and st["compiled"] == compiled:
            return st
        tf = _tf()
        if not model.built:
            raise ValueError(
                f"The model must be built (called on data, or given an Input) before measuring: {model.name!r}"
            )
        targets = select_layers(model, self.layers)
        x, y, sw = self.probe
        grads = y is not None and getattr(model, "compiled", False) and getattr(model, "loss", None) is not None
        if y is None:
            warnings.warn(
                "VarianceMonitor: the probe has no labels (probe=x), so the gradient kinds (grad_preact, "
                "grad_activation, grad_kernel) are skipped; pass probe=(x, y) to record them.",
                UserWarning,
                stacklevel=3,
            )
        elif not grads:
            warnings.warn(
                "VarianceMonitor: the model is not compiled with a loss, so the gradient kinds are skipped; "
                "compile(loss=...) before recording them.",
                UserWarning,
                stacklevel=3,
            )
        to_t = lambda v: None if v is None else keras.tree.map_structure(tf.convert_to_tensor, v)  # noqa: E731
        x, y, sw = to_t(x), to_t(y), to_t(sw)
        hist = self._hist_state(targets)
        layout = _Layout(targets)
        training = self.training

        def probe():
            rec: dict[tuple[int, str], Any] = {}
            kernels = {t.index: t.kernel.value for t in targets if t.kernel is not None}

            with tf.GradientTape(watch_accessed_variables=False) as tape:

                def keep(kind):
                    def f(t, s):
                        s = tf.identity(s)  # the gradient w.r.t. s is then the one through this layer only
                        tape.watch(s)
                        rec[(t.index, kind)] = s
                        return s

                    return f

                tape.watch(list(kernels.values()))
                with keras.StatelessScope():  # no BatchNormalization, seed or metric update escapes the probe
                    with _Hooks(targets, keep("preact"), keep("activation")) as hooks:
                        y_pred = model(x, training=training)
                    if grads:
                        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sw)
            missing = [t.name for t in targets if t.index not in hooks.called]
            if missing:
                raise ValueError(f"`layers` selects layers that the model's forward pass does not call: {missing}")
            if grads:
                keys = [k for k in rec] + [(i, "kernel") for i in kernels]
                srcs = [rec[k] for k in rec] + list(kernels.values())
                gs = tape.gradient(loss, srcs, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                grad = {(i, "grad_" + kind): g for (i, kind), g in zip(keys, gs, strict=True)}
            items = []
            for t in targets:
                tensors = {"preact": rec[(t.index, "preact")], "activation": rec[(t.index, "activation")]}
                if grads:
                    tensors["grad_preact"] = grad[(t.index, "grad_preact")]
                    tensors["grad_activation"] = grad[(t.index, "grad_activation")]
                if t.kernel is not None:
                    tensors["kernel"] = tf.convert_to_tensor(kernels[t.index])
                    if grads:
                        tensors["grad_kernel"] = grad[(t.index, "grad_kernel")]
                items.append((t, tensors))
            layout.entries.clear()
            layout.__dict__.pop("arrays", None)
            vals = []
            for t, tensors in items:
                vals += [self._values(layout, t, k, tensors[k], hist, xla=xla) for k in KINDS if k in tensors]
                vals += self._unit_values(layout, t, tensors, xla=xla)
            return tf.concat(vals, 0)

        # Compiled with XLA where the model's train step is (Keras' "auto": on GPU): the many small reductions then
        # fuse into few kernels instead of one launch each.
        xla = _uses_xla(model)
        fn = tf.function(probe, autograph=False, jit_compile=xla)
        fn.get_concrete_function()  # trace now: the layout is known before the first record
        self._probe_state = {
            "model": weakref.ref(model),
            "compiled": compiled,
            "fn": fn,
            "layout": layout,
            "hist": hist,
        }
        return self._probe_state

    def _unit_values(self, layout: _Layout, t: _Target, tensors: dict, xla=False) -> list:
        if self.track_unit is None:
            return []
        tf = _tf()
        out = []
        for kind in FORWARD_KINDS:
            x = tensors.get(kind)
            if x is None or x.shape.rank is None or x.shape.rank < 2:
                continue
            n_units = x.shape[t.unit_axis]
            if n_units is None or self.track_unit >= n_units:
                continue
            unit = tf.gather(x, self.track_unit, axis=t.unit_axis)
            out.append(self._values(layout, t, kind, unit, None, unit=self.track_unit, xla=xla))
        return out

    def _record_probe(self, model, step: int, epoch: int):
        st = self._probe_fn(model)
        self._pending.append((st["layout"], step, epoch, st["fn"]()))
        self._last_probe_step = step

    def measure(self, model: keras.Model | None = None, *, step: int = 0, epoch: int = 0) -> pd.DataFrame:
        """Record once on the probe, outside `fit` (e.g. at initialization); returns that record's tidy rows.

        The record is also appended to the table (`to_frame()`, `save()`) until the next `fit` starts a fresh one.
        """
        _require_tensorflow()
        model = self.model if model is None else model
        if model is None:
            raise ValueError("`model` must be given (the monitor is not attached to a model). Received: model=None")
        if self.probe is None:
            raise ValueError("`measure` needs the monitor's `probe` batch. Received: probe=None")
        self._flush()
        self._record_probe(model, int(step), int(epoch))
        layout, step_, epoch_, vec = self._pending[-1]
        self._flush()
        a = layout.arrays
        sel = ((a["role"] == "stat") & (a["unit"] < 0)) | (a["role"] == "hist")
        return _frame(layout, [step_], [epoch_], np.asarray(vec, dtype=np.float32)[None, :], sel)

    # -- source="train_batch": statistics inside Keras' own train step --------------------------------------------

    def _install_train_batch(self, model):
        """Build (once per model and compile) the recording train function: Keras' own `train_step` with taps."""
        tf = _tf()
        if type(model).train_step is not keras.Model.train_step:
            raise ValueError(
                'source="train_batch" wraps Keras\' own train_step, and this model overrides it; use source="probe". '
                f"Received: model of type {type(model).__name__}"
            )
        st = self._train_state
        original = model.make_train_function() or model.train_function  # fit made it already; compile() resets it
        if st is None or st["model"]() is not model or st["original"] is not original:
            targets = select_layers(model, self.layers)
            st = {
                "model": weakref.ref(model),
                "targets": targets,
                "slots": {},
                "layout": _Layout(targets),
                "hist": self._hist_state(targets),
                "read": None,
                "original": original,
                "xla": _uses_xla(model),
            }
            orig_step = model.train_step
            monitor = self

            def train_step(data):
                opt = model.optimizer
                scale = None
                if isinstance(opt, keras.optimizers.LossScaleOptimizer):
                    scale = opt.scale_loss(tf.constant(1.0))
                taps = _StepTaps(monitor, st, scale)
                with _Hooks(st["targets"], taps.on_preact, taps.on_activation, taps.after_call):
                    with _OptimizerTap(opt, taps.on_apply):
                        return orig_step(data)

            # Keras builds its train function from `self.train_step` as found now; the attribute is removed at once.
            object.__setattr__(model, "train_step", train_step)
            try:
                model.make_train_function(force=True)
            finally:
                object.__delattr__(model, "train_step")
            st["recording"] = model.train_function
            model.train_function = original
            self._train_state = st
        self._reset_hist(st["hist"])
        self._recording_now = False

    def _uninstall_train_batch(self, model):
        st = self._train_state
        if st is not None and st["model"]() is model:
            model.train_function = st["original"]

    def _slot(self, st: dict, key: tuple, compute: Callable):
        """Store `compute(layout)`'s vector in the slot variable `key`; made at the first trace, then reused."""
        tf = _tf()
        if key not in st["slots"]:
            staged = _Layout(st["targets"])
            vec = compute(staged)  # at trace time: fixes the slot's size and entries
            with tf.init_scope():
                var = tf.Variable(tf.zeros([vec.shape[0]], tf.float32), trainable=False)
            st["slots"][key] = var
            st["layout"].entries.extend(staged.entries)
            st["layout"].__dict__.pop("arrays", None)
            st["read"] = None
            return var.assign(vec, read_value=False)
        return st["slots"][key].assign(compute(_Layout(st["targets"])), read_value=False)

    def _store(self, st: dict, key: tuple, items: list, scale=None):
        """The statistics of every (target, kind, tensor) in `items`, into the slot `key`."""
        tf = _tf()

        def compute(layout):
            vec = []
            for t, kind, x in items:
                v = tf.cast(x, tf.float32) / scale if scale is not None and kind.startswith("grad") else x
                vec.append(self._values(layout, t, kind, v, st["hist"], xla=st["xla"]))
                if kind in FORWARD_KINDS:
                    vec += self._unit_values(layout, t, {kind: v}, xla=st["xla"])
            return tf.concat(vec, 0)

        return self._slot(st, key, compute)

    def _read_slots(self):
        tf = _tf()
        st = self._train_state
        if st["read"] is None:
            variables = list(st["slots"].values())
            st["read"] = tf.function(lambda: tf.concat([v.read_value() for v in variables], 0), autograph=False)
        return st["read"]()

    # -- Keras callback hooks -------------------------------------------------------------------------------------

    def _last_scheduled(self, lo: int, hi: int) -> int | None:
        """The largest step t in [lo, hi] that the schedule records, or None."""
        if hi < lo or hi < 0:
            return None
        if self.every == "log":
            t = 1 << (hi.bit_length() - 1) if hi >= 1 else 0
        else:
            t = hi - hi % self.every
        if t < lo or (t == 0 and not self.at_init):
            return None
        return t

    def on_train_begin(self, logs=None):
        _require_tensorflow()
        self._reset_table()
        model = self.model
        if self.probe is not None:
            self._reset_hist(self._probe_fn(model)["hist"])
        if self.source == "train_batch":
            self._install_train_batch(model)
        if self.log_dir is not None:
            if importlib.util.find_spec("tensorboard") is None:
                warnings.warn(
                    f"VarianceMonitor: log_dir={os.fspath(self.log_dir)!r} is ignored: TensorBoard is not installed "
                    "(pip install tensorboard); the table is recorded as usual.",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                self._writer = _tf().summary.create_file_writer(os.fspath(self.log_dir))
        if self.source == "probe" and self.at_init:
            self._record_probe(model, 0, 0)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch)
        self._epoch_base = self._steps

    def on_train_batch_begin(self, batch, logs=None):
        if self.source == "train_batch":
            # Keras calls `model.train_function` afresh at each step: the recording one runs only when the schedule
            # holds a step of this execution, Keras' own (untouched) one otherwise.
            first = self._epoch_base + int(batch)
            last = first + int(getattr(self.model, "steps_per_execution", 1) or 1) - 1
            self._recording_now = self._last_scheduled(first, last) is not None
            st = self._train_state
            self.model.train_function = st["recording"] if self._recording_now else st["original"]

    def on_train_batch_end(self, batch, logs=None):
        prev, cur = self._steps, self._epoch_base + int(batch) + 1
        self._steps = cur
        if self.source == "probe":
            if self._last_scheduled(prev + 1, cur) is not None:
                self._record_probe(self.model, cur, self._epoch)
        elif self._recording_now:  # the slots hold the statistics of the execution's last step, cur - 1
            self._pending.append((self._train_state["layout"], cur - 1, self._epoch, self._read_slots()))
            self._recording_now = False

    def on_epoch_end(self, epoch, logs=None):
        if self.record_epoch_end and self._last_probe_step != self._steps:
            self._record_probe(self.model, self._steps, int(epoch))
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()
        if self.source == "train_batch":
            self._uninstall_train_batch(self.model)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _StepTaps:
    """The taps of the recording train step (source="train_batch"), applied while it is traced.

    Per layer, the forward statistics (s, f(s), W) once the layer returned and the backward ones when dC/ds arrives
    (dC/df(s) arrives just before it and waits); every kernel gradient as the optimizer receives them. The gradients
    are read by identity ops with a custom gradient: back-propagation computes them anyway. No control
    dependencies: a tf.function runs every stateful op it holds (the slot assignments), so the statistics may run
    beside the next layer instead of holding it up.
    """

    def __init__(self, monitor: VarianceMonitor, st: dict, scale):
        self.monitor, self.st, self.scale = monitor, st, scale
        self.forward: dict[int, dict[str, Any]] = {}
        self.waiting: dict[int, Any] = {}  # dC/df(s) of a layer whose dC/ds has not arrived yet
        self.by_var = {id(t.kernel): t for t in st["targets"] if t.kernel is not None}

    def _identity(self, t: _Target, kind: str, x):
        tf = _tf()

        @tf.custom_gradient
        def identity(v):
            def grad(dy):
                self._on_grad(t, kind, dy)
                return dy

            return tf.identity(v), grad

        return identity(x)

    def on_preact(self, t: _Target, s):
        self.forward.setdefault(t.index, {})["preact"] = s
        return self._identity(t, "preact", s)

    def on_activation(self, t: _Target, a):
        self.forward.setdefault(t.index, {})["activation"] = a
        return self._identity(t, "activation", a)

    def after_call(self, t: _Target):
        items = [(t, kind, x) for kind, x in self.forward.pop(t.index).items()]
        if t.kernel is not None:
            items.append((t, "kernel", _tf().convert_to_tensor(t.kernel.value)))
        self.monitor._store(self.st, ("forward", t.index), items)

    def _on_grad(self, t: _Target, kind: str, dy):
        if kind == "activation":
            self.waiting[t.index] = dy
            return
        items = [(t, "grad_preact", dy)]
        if t.index in self.waiting:
            items.append((t, "grad_activation", self.waiting.pop(t.index)))
        self.monitor._store(self.st, ("backward", t.index), items, self.scale)

    def on_apply(self, grads_and_vars: list):
        targets = [(self.by_var.get(id(v)), g) for g, v in grads_and_vars]
        items = [(t, "grad_kernel", g) for t, g in targets if t is not None and g is not None]
        items += [(self.st["targets"][i], "grad_activation", dy) for i, dy in self.waiting.items()]
        self.waiting.clear()
        if items:
            self.monitor._store(self.st, ("kernel_gradients",), items, self.scale)


class _OptimizerTap:
    """While active (at trace time only), the optimizer's `apply_gradients` hands the gradients to `on_apply` first."""

    def __init__(self, optimizer, on_apply: Callable):
        self.optimizer, self.on_apply = optimizer, on_apply

    def __enter__(self):
        if self.optimizer is None:
            return self
        orig = self.optimizer.apply_gradients

        def apply_gradients(grads_and_vars, *args, **kwargs):
            grads_and_vars = list(grads_and_vars)
            self.on_apply(grads_and_vars)
            return orig(grads_and_vars, *args, **kwargs)

        object.__setattr__(self.optimizer, "apply_gradients", apply_gradients)
        return self

    def __exit__(self, *exc):
        if self.optimizer is not None and "apply_gradients" in self.optimizer.__dict__:
            object.__delattr__(self.optimizer, "apply_gradients")
        return False


def _uses_xla(model) -> bool:
    return getattr(model, "jit_compile", False) is True


def _require_tensorflow():
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "VarianceMonitor needs the TensorFlow backend (it reads gradients with tf.GradientTape); set "
            f"KERAS_BACKEND=tensorflow. Received: backend={keras.backend.backend()!r}"
        )
