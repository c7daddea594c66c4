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

How the tensors are reached (TensorFlow, JAX and PyTorch; the backend's part is `keras_initkit.backends`): while the
probe function is traced (once; under PyTorch, at each record), each monitored layer's
`call` is wrapped. A layer with an `activation` attribute (Dense, ConvND, Activation, ...) runs with that attribute
swapped for a recorder that sees s and returns f(s), so the layer computes exactly what it always computes; an
activation layer without one (ReLU, LeakyReLU, ELU, PReLU, Softmax) records its input as s; any other layer
(BatchNormalization, ...) has the identity as its nonlinearity (s = its output), and so has a recurrent layer
(SimpleRNN, LSTM, GRU, RNN(cell), Bidirectional: s = its output; its kernel is the cell's input kernel, none for
Bidirectional; per-time-step records are not part of this table). The probe pass runs inside a
`keras.StatelessScope`, so it never moves BatchNormalization statistics, dropout seeds or metric states.
`source="train_batch"` runs under TensorFlow only (refused at construction under JAX and PyTorch).

Attaching the monitor never changes training: every weight after every step is bit-identical to plain `fit` from
the same seed (tested for softmax and sigmoid outputs with and without `from_logits`, saturated or not). The taps
keep Keras' link from a softmax/sigmoid output to its logits (`_keras_logits`), so a cross-entropy loss is computed
from the logits as without the monitor, and the recorded dC/ds of such an output is Keras' own, (p - y)/N for a
softmax with cross-entropy. One exception, `source="train_batch"` on CPU with oneDNN (TensorFlow's default on x86):
recording s of a layer with a fused smooth activation (`Dense(..., activation="tanh")`) keeps TensorFlow from fusing
MatMul+BiasAdd+activation into one oneDNN kernel, whose activation can differ in the last bit (weights then drift
by float rounding, ~3e-8 after 4 steps); relu and linear layers, GPUs and `source="probe"` are unaffected.

Two sources:
- `source="probe"` (default): a fixed probe batch, one extra forward and backward pass per record.
- `source="train_batch"`: statistics of the training batch itself, computed inside Keras' own train step from the
  forward tensors, the gradients that back-propagation computes anyway (read by identity ops with a custom
  gradient) and the kernel gradients handed to the optimizer. It costs no extra pass, so recording every step
  stays cheap (`keras_initkit.train_batch`).

The rooms: `stats` (what a tensor is reduced to), `layers` (which layers, in order), `hooks` (how they are reached
while tracing), `record` (the vector of one record and the tables built from records), `train_batch` (the second
recorder); this module holds the callback: its arguments, lifecycle, schedule, the probe recorder and the tables.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import pandas as pd

from keras_initkit import backends
from keras_initkit.fileio import write_frame
from keras_initkit.hooks import reachable
from keras_initkit.layers import leaf_layers, select_layers
from keras_initkit.record import COLUMNS, KINDS, Layout, Record, RecordSpec, empty, frame, reset_hist
from keras_initkit.recurrent import TIME_KINDS, recurrent_targets, time_frame
from keras_initkit.stats import STATS, TensorView
from keras_initkit.train_batch import TrainBatchRecorder, uses_xla

# leaf_layers and select_layers live in keras_initkit.layers; importable from here as before.
__all__ = ["COLUMNS", "KINDS", "STATS", "TensorView", "VarianceMonitor", "leaf_layers", "select_layers"]

SOURCES = ("probe", "train_batch")


def _tf():
    import tensorflow as tf

    return tf


def _check_every(every):
    if every == "log":
        return every
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f'`every` must be an int >= 1 or "log". Received: every={every!r}')
    return int(every)


def _first_batch(probe):
    """The first batch of a tf.data.Dataset, a keras.utils.PyDataset, a generator or an iterator; else `probe`."""
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset exists only where TensorFlow was imported
    if tf is not None and isinstance(probe, tf.data.Dataset):
        for batch in probe.take(1):
            return keras.tree.map_structure(np.asarray, batch)
        raise ValueError(f"`probe` as a tf.data.Dataset must yield a batch. Received: an empty dataset {probe!r}")
    if isinstance(probe, keras.utils.PyDataset):
        return probe[0]
    if inspect.isgenerator(probe) or (hasattr(probe, "__next__") and hasattr(probe, "__iter__")):
        try:
            return next(probe)
        except StopIteration:
            raise ValueError(f"`probe` as a generator must yield a batch. Received: an exhausted {probe!r}") from None
    return probe


def _check_probe(probe):
    """(x, y, sample_weight) of the probe: arrays (or nested structures of arrays) of one number of samples, >= 1."""
    if probe is None:
        return None
    probe = _first_batch(probe)
    x, y, sw = keras.utils.unpack_x_y_sample_weight(probe)
    if x is None:
        raise ValueError(f"`probe` must be (x, y), (x, y, sample_weight) or x. Received: probe={probe!r}")
    sizes = {}
    for name, part in (("x", x), ("y", y), ("sample_weight", sw)):
        for leaf in keras.tree.flatten(part) if part is not None else []:
            shape = getattr(leaf, "shape", None)
            if shape is None:
                leaf = np.asarray(leaf)
                shape = leaf.shape
            if len(shape) == 0:
                raise ValueError(
                    f"`probe` arrays must have a first (sample) axis. Received: {name} of shape {tuple(shape)}"
                )
            sizes.setdefault(name, int(shape[0]))
            if int(shape[0]) != sizes[name]:
                sizes[name] = -1
    if any(n == -1 for n in sizes.values()) or len(set(sizes.values())) > 1:
        raise ValueError(
            "`probe` arrays must hold the same number of samples (first axis) in x, y and sample_weight. "
            f"Received: samples {sizes} (-1: differing within one part)"
        )
    if 0 in sizes.values():
        raise ValueError(f"`probe` must hold at least one sample. Received: samples {sizes}")
    return x, y, sw


def _check_layers(layers):
    """`layers` of the form `select_layers` takes; a regex is compiled here, so a bad one fails at construction."""
    if layers is None or isinstance(layers, type):
        return layers
    if isinstance(layers, str):
        try:
            re.compile(layers)
        except re.error as e:
            raise ValueError(f"`layers` as a string must be a valid regex ({e}). Received: layers={layers!r}") from None
        return layers
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(e, (str, type)) for e in layers):
        return list(layers)
    raise ValueError(
        "`layers` must be None, a list of layer names and/or layer types, a layer type, or a regex string. "
        f"Received: layers={layers!r}"
    )


def _check_log_dir(log_dir):
    if log_dir is not None and not isinstance(log_dir, (str, os.PathLike)):
        raise ValueError(f"`log_dir` must be None, a str or a path. Received: log_dir={log_dir!r}")
    return log_dir


def _check_probe_fits(model, probe) -> None:
    """The probe's features match the model's inputs, and sparse labels lie within the output's units."""
    x, y, _ = probe
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a model built without keras.Input has no symbolic inputs
        inputs = []
    leaves = keras.tree.flatten(x)
    if inputs and len(inputs) == len(leaves):
        for inp, leaf in zip(inputs, leaves, strict=True):
            want, got = tuple(inp.shape[1:]), tuple(np.shape(leaf)[1:])
            if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got, strict=True)):
                raise ValueError(
                    f"`probe` x must match the model's input shape (batch, *{want}). "
                    f"Received: probe x of shape {tuple(np.shape(leaf))} for model {model.name!r}"
                )
    loss = getattr(model, "loss", None)
    loss_name = str(getattr(loss, "name", None) or getattr(loss, "__name__", None) or loss)
    outputs = keras.tree.flatten(getattr(model, "outputs", None) or []) if inputs else []
    if y is None or "sparse_categorical" not in loss_name or len(outputs) != 1:
        return
    labels = np.asarray(y)
    units = outputs[0].shape[-1]
    if units is not None and labels.size and np.issubdtype(labels.dtype, np.number):
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi >= units:
            raise ValueError(
                f"`probe` labels must lie in [0, {units}) for the model's {units} output units (loss {loss_name!r}). "
                f"Received: probe y in [{lo}, {hi}]"
            )


@dataclass
class _Probe:
    """The traced probe function of one model (and compile state), its record layout and histogram state."""

    model: weakref.ref
    compiled: tuple
    fn: Callable
    layout: Layout
    hist: dict
    time_layout: list = field(default_factory=list)  # (layer, kind, T) of each per-time-step block, in order


@dataclass
class _Fit:
    """Where the current fit stands: reset in `on_train_begin`."""

    steps: int = 0  # optimizer steps taken
    epoch: int = 0
    epoch_base: int = 0  # steps taken before this epoch
    last_probe_step: int | None = None
    warned_diverged: bool = False
    recording: int | None = None  # the step the train-batch recorder records in this execution


class VarianceMonitor(keras.callbacks.Callback):
    """Records per-layer statistics of pre-activations, activations, their gradients, kernels and kernel gradients.

    Records on the fixed `probe` batch at step 0 before any update (`at_init`), then every `every` optimizer steps
    (or at steps 1, 2, 4, 8, ... with `every="log"`), and optionally at each epoch's end. Outside `fit`,
    `measure(model)` records once (e.g. at initialization). Results: `to_frame()` (tidy, `COLUMNS`),
    `histogram_frame()`, `unit_frame()`, `save(path)`. Steps are the optimizer's `iterations`: a second `fit` of
    the same model continues the table (at-init rows only while `iterations` is 0), `reset()` starts over, and a fit
    of another model, or of one whose optimizer's count went back, starts a fresh table. The Keras CSVLogger
    lifecycle otherwise: state made in `__init__`, checked against the model in `on_train_begin`, finished in
    `on_train_end`; nothing is plotted or written to disk while training except the optional TensorBoard scalars,
    written at epoch ends. A model not built yet (a Sequential without `keras.Input`) is built from the probe's
    shape before the first record, as Keras builds it from the first batch's.

    For an output whose loss reads the logits (softmax or sigmoid with a cross-entropy, which Keras computes from
    the logits), Keras computes no dC/df(s): that layer has no `grad_activation` rows, and its `grad_preact` is the
    gradient with respect to the logits.

    Example:
    >>> monitor = VarianceMonitor(probe=(x_val[:256], y_val[:256]), every=50)
    >>> model.fit(x, y, epochs=5, callbacks=[monitor])
    >>> monitor.to_frame().query("kind == 'preact' and stat == 'var'")

    Args:
        probe: `(x, y)` or `(x, y, sample_weight)` (a tuple, as Keras unpacks data) or `x` alone: the fixed batch;
            or a batched tf.data.Dataset, keras.utils.PyDataset, generator or iterator, whose first batch is taken
            once, here. Without labels (or without a compiled loss) only the forward kinds and the kernel are
            recorded. Required unless `source="train_batch"` (where it serves `on_epoch_end` and `measure`).
        every: record every `every` optimizer steps (int >= 1), or `"log"` for steps 1, 2, 4, 8, ...
        at_init: record at step 0, before the first update.
        on_epoch_end: also record (on the probe) at the end of every epoch.
        kinds: which kinds to record: None (all of `KINDS`) or a subset, e.g. ("preact", "activation") to record
            the forward kinds only (no gradient pass, no warning for a probe without labels). Recording fewer kinds
            does not change the values of those recorded.
        layers: which layers: None (every leaf layer with weights, an activation, or that is an activation layer),
            a list of layer names and/or layer types, a layer type, or a regex matched against whole layer names.
            Nested models are searched; depth counts the monitored layers, input side first.
        stats: statistic names from `STATS` (None: all), or a mapping name -> function of a `TensorView`.
        histograms: False, True (every recorded kind) or a list of recorded kinds: fixed-bin histograms per record.
        bins: number of equal-width histogram bins.
        bin_range: (low, high) for every kind, or a dict kind -> (low, high); kinds left out get the bounds of a
            bounded activation (activation kind) or the [min, max] of their first finite record in each fit.
        track_unit: also record the statistics of one unit (channel) of the forward kinds of every monitored layer
            that has it (Ioffe & Szegedy Fig 1b tracks one unit's 15/50/85th percentiles): see `unit_frame()`.
        log_dir: if given, TensorBoard scalars `<layer>/<kind>/<stat>` are written there (TensorFlow summaries).
        source: "probe" (the probe batch; one extra forward and backward pass per record) or "train_batch" (the
            training batch, inside Keras' train step: no extra pass; the model must not override `train_step`).
            With `steps_per_execution > 1`, "probe" records after each execution that holds a scheduled step
            (exact when `every` is a multiple of it) and "train_batch" records the first scheduled step of each
            execution (exact when `every` >= it); otherwise a warning names the effective schedule, once per fit.
        training: run the probe in training mode (batch statistics in BatchNormalization, dropout active), as the
            optimizer sees the model. The probe pass never updates the model's state either way.
        quantile_sample: percentiles are computed on a fixed strided sample of this many elements of larger
            tensors (standard error of a 15/50/85th percentile below 0.068 standard deviations for 512, 0.035 for
            2048; sorting the samples is the costly part of a record on CPU: 512 keeps a conv net's record within
            1.1x its forward+backward pass); None: exact.
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
        quantile_sample: int | None = 512,
        kinds: Iterable[str] | None = None,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"`source` must be one of {SOURCES}. Received: source={source!r}")
        _require_backend()
        if source == "train_batch" and backends.name() not in backends.TRAIN_BATCH:
            raise ValueError(
                '`source="train_batch"` records inside Keras\' own train step, which a callback can swap under the '
                f'{", ".join(backends.TRAIN_BATCH)} backend only; use source="probe" under this backend. '
                f"Received: source={source!r} with backend={backends.name()!r}"
            )
        if probe is None and (source == "probe" or on_epoch_end):
            raise ValueError(
                '`probe` is required unless source="train_batch" (and on_epoch_end=False). Received: probe=None'
            )
        self.every = _check_every(every)
        self.at_init = bool(at_init)
        self.record_epoch_end = bool(on_epoch_end)
        self.layers = _check_layers(layers)
        self.spec = RecordSpec.create(kinds, stats, histograms, bins, bin_range, track_unit, quantile_sample)
        self.log_dir = _check_log_dir(log_dir)
        self.source = source
        self.training = bool(training)
        self.probe = _check_probe(probe)
        if kinds is not None and self.spec.gradients and self.probe is not None and self.probe[1] is None:
            raise ValueError(
                "`kinds` names gradient kinds, which need a probe with labels: pass probe=(x, y), or record the "
                f"forward kinds only. Received: kinds={kinds!r} with probe=x (no labels)"
            )
        # Built per model, kept across fits (a traced function is never retraced per record).
        self._probe: _Probe | None = None
        self._train = TrainBatchRecorder(self.spec, self.layers)
        self._writer = None
        self._owner: weakref.ref | None = None  # the model the table was recorded on
        self.reset()

    # -- table ----------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every record: the next `fit` (or `measure`) starts a fresh table and fresh histogram ranges."""
        self._records: list[Record] = []
        self._pending: list[Record] = []
        self._time: list[tuple[int, list, Any]] = []  # (step, time layout, vector) of recurrent layers' records
        self._fit = _Fit()
        self._owner = None
        if self._probe is not None:
            reset_hist(self._probe.hist)
        if self._train.state is not None:
            reset_hist(self._train.state.hist)

    def _flush(self):
        """Move pending records (device tensors) to the host table; warn about divergence; write TensorBoard."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        for layout, step, epoch, vec in pending:
            vec = np.asarray(vec, dtype=np.float32)
            self._records.append(Record(layout, step, epoch, vec))
            a = layout.arrays
            div = vec[a["role"] == "div"] > 0.5
            if div.any() and not self._fit.warned_diverged:
                self._fit.warned_diverged = True
                i = np.flatnonzero(a["role"] == "div")[np.argmax(div)]
                warnings.warn(
                    f"VarianceMonitor: NaN/Inf in layer {a['layer'][i]!r}, kind {a['kind'][i]!r} at step {step}: the "
                    "run has diverged; its rows are flagged diverged=True (warned once per fit).",
                    RuntimeWarning,
                    stacklevel=2,
                )
            if self._writer is not None:
                self._write_summaries(layout, step, vec)

    def _write_summaries(self, layout: Layout, step: int, vec: np.ndarray):
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
        parts = [frame(lay, steps, epochs, mat, lay.layer_rows()) for lay, steps, epochs, mat in self._grouped()]
        return pd.concat(parts, ignore_index=True) if parts else empty(COLUMNS)

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
            width = (hi - lo) / self.spec.bins
            df = frame(layout, steps, epochs, mat, sel, {"bin": lambda _i, n, b=b: np.tile(b, n)})
            df["left"] = (lo + b * width).reshape(-1).astype(np.float64)
            df["right"] = (lo + (b + 1) * width).reshape(-1).astype(np.float64)
            parts.append(df.drop(columns="stat")[list(columns)])
        return pd.concat(parts, ignore_index=True) if parts else empty(columns)

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
                parts.append(frame(layout, steps, epochs, mat, sel, unit)[list(columns)])
        return pd.concat(parts, ignore_index=True) if parts else empty(columns)

    def time_frame(self) -> pd.DataFrame:
        """Per time step of every monitored recurrent layer (SimpleRNN, LSTM, GRU, RNN(cell), each direction of a
        Bidirectional), at each probe record: columns `step, layer, t, lag, kind, stat, value`, lag = T-1-t.

        Kinds: "hidden" (h_t) and "grad_hidden" (dC/dh_t: the total gradient of the loss with respect to h_t,
        through the output and every later step: the vanishing-gradient-through-time measurement of Bengio et al.
        1994 and Pascanu et al. 2013). Stats: mean and var over examples and units, and "norm", the mean over
        examples of ||dC/dh_t||_2 (Pascanu's and Arjovsky's curves). Probe records only (source="probe",
        `on_epoch_end`, `measure`); see `keras_initkit.recurrent` for how h_t is tapped without changing the output.
        """
        self._flush()
        parts = [
            time_frame(_time_values(layout, np.asarray(vec)), TIME_RECORD_STATS).assign(step=step)
            for step, layout, vec in self._time
        ]
        if not parts:
            return empty(TIME_COLUMNS)
        return pd.concat(parts, ignore_index=True)[list(TIME_COLUMNS)]

    def save(self, path: str | os.PathLike) -> None:
        """Write `to_frame()` to `path` (.parquet or .csv), atomically (a temporary file, then os.replace)."""
        write_frame(path, self.to_frame())

    # -- the probe recorder ---------------------------------------------------------------------------------------

    def _probe_fn(self, model) -> _Probe:
        """The traced probe function for `model` (built once, never retraced), its layout, and its state."""
        st = self._probe
        compiled = (getattr(model, "compiled", False), id(getattr(model, "loss", None)))
        if st is not None and st.model() is model and st.compiled == compiled:
            return st
        _ensure_built(model, self.probe[0])
        _check_probe_fits(model, self.probe)
        targets = reachable(select_layers(model, self.layers))
        time_targets = _time_targets(model, targets)
        time_layout: list[tuple[str, str, int]] = []
        x, y, sw = self.probe
        spec = self.spec
        has_loss = getattr(model, "compiled", False) and getattr(model, "loss", None) is not None
        grads = spec.gradients and y is not None and has_loss
        if spec.gradients and y is None:
            warnings.warn(
                "VarianceMonitor: the probe has no labels (probe=x), so the gradient kinds (grad_preact, "
                "grad_activation, grad_kernel) are skipped; pass probe=(x, y) to record them, or "
                "kinds=('preact', 'activation', 'kernel') to record the forward kinds only.",
                UserWarning,
                stacklevel=3,
            )
        elif spec.gradients and not has_loss:
            warnings.warn(
                "VarianceMonitor: the model is not compiled with a loss, so the gradient kinds are skipped; "
                "compile(loss=...) before recording them.",
                UserWarning,
                stacklevel=3,
            )
        hist = spec.hist_state(targets)
        layout = Layout(targets)
        tf = backends.ops()

        def reduce(tensors, taps, time_grads):
            """The record's vectors from the probe pass's tensors (the shared part, under every backend)."""
            layout.entries.clear()
            layout.__dict__.pop("arrays", None)
            vals = []
            for t in targets:
                mine = {k: tensors[(t.index, k)] for k in spec.kinds_of(t) if (t.index, k) in tensors}
                vals += [spec.values(layout, t, k, v, hist, xla=xla) for k, v in mine.items()]
                vals += spec.unit_values(layout, t, mine, xla=xla)
            time_layout.clear()
            time_vals = [tf.zeros((0,), tf.float32)]
            kinds = TIME_KINDS if time_grads is not None else ("hidden",)
            for (name, kind), v in taps.values(time_grads, TIME_RECORD_STATS, kinds).items():
                time_layout.append((name, kind, int(v.shape[1])))
                time_vals.append(tf.reshape(tf.cast(v, tf.float32), [-1]))
            return tf.concat(vals, 0), tf.concat(time_vals, 0)

        # Compiled with XLA where the model's train step is (Keras' "auto": on GPU): the many small reductions then
        # fuse into few kernels instead of one launch each. JAX compiles with XLA always.
        backend = backends.require()
        xla = uses_xla(model) or backend == "jax"
        fn = backends.module().probe_function(
            model,
            targets,
            time_targets,
            (x, y, sw),
            grads=grads,
            training=self.training,
            xla=xla,
            reduce=reduce,
            state=[v for vs in hist.values() for v in vs],
        )
        self._probe = _Probe(weakref.ref(model), compiled, fn, layout, hist, time_layout)
        return self._probe

    def _record_probe(self, model, step: int, epoch: int):
        st = self._probe_fn(model)
        vec, time_vec = st.fn()
        self._pending.append(Record(st.layout, step, epoch, vec))
        if st.time_layout:
            self._time.append((step, st.time_layout, time_vec))
        self._fit.last_probe_step = step

    def measure(self, model: keras.Model | None = None, *, step: int = 0, epoch: int = 0) -> pd.DataFrame:
        """Record once on the probe, outside `fit` (e.g. at initialization); returns that record's tidy rows.

        The record is also appended to the table (`to_frame()`, `save()`) until the next `fit` starts a fresh one.
        """
        _require_backend()
        model = self.model if model is None else model
        if model is None:
            raise ValueError("`model` must be given (the monitor is not attached to a model). Received: model=None")
        if self.probe is None:
            raise ValueError("`measure` needs the monitor's `probe` batch. Received: probe=None")
        self._flush()
        self._record_probe(model, int(step), int(epoch))
        layout, step_, epoch_, vec = self._pending[-1]
        self._flush()
        return frame(layout, [step_], [epoch_], np.asarray(vec, dtype=np.float32)[None, :], layout.layer_rows())

    # -- Keras callback hooks -------------------------------------------------------------------------------------

    def _scheduled(self, lo: int, hi: int, last: bool) -> int | None:
        """The largest (`last`) or smallest step t in [lo, hi] that the schedule records, or None."""
        lo = max(lo, 0 if self.at_init else 1)
        if hi < lo:
            return None
        if self.every == "log":
            t = (1 << (hi.bit_length() - 1) if hi else 0) if last else (1 << (lo - 1).bit_length() if lo else 0)
        else:
            t = hi - hi % self.every if last else -(-lo // self.every) * self.every
        return t if lo <= t <= hi else None

    def _check_schedule(self, spe: int) -> None:
        """Warn (once per fit) where `steps_per_execution` keeps the schedule from being recorded as asked."""
        if spe <= 1:
            return
        if self.source == "probe" and (self.every == "log" or self.every % spe):
            effect = (
                f"the probe can only be recorded between executions: every={self.every!r} records after each "
                f"execution of {spe} steps that holds a scheduled step (steps that are multiples of {spe}); "
                f"use an `every` that is a multiple of {spe} to record the schedule exactly"
            )
        elif self.source == "train_batch" and (self.every == "log" or self.every < spe):
            effect = (
                f"one training batch per execution of {spe} steps is recorded: every={self.every!r} records the "
                f"first scheduled step of each execution; use every >= {spe} to record the schedule exactly"
            )
        else:
            return
        warnings.warn(f"VarianceMonitor: with steps_per_execution={spe}, {effect}.", UserWarning, stacklevel=3)

    def on_train_begin(self, logs=None):
        _require_backend()
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        start = int(optimizer.iterations.numpy()) if optimizer is not None else 0
        owner = None if self._owner is None else self._owner()
        if owner is not None and (owner is not model or start < self._fit.steps):
            self.reset()  # another model, or its optimizer started over: a new run, a new table
        self._owner = weakref.ref(model)
        self._flush()
        self._fit = _Fit(steps=start, epoch_base=start)
        self._check_schedule(int(getattr(model, "steps_per_execution", 1) or 1))
        if self.probe is not None:
            self._probe_fn(model)  # traced now (the model built first if Keras has not): bad input fails here
        if self.source == "train_batch":
            self._train.install(model)
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
        if self.source == "probe" and self.at_init and start == 0:
            self._record_probe(model, 0, 0)

    def on_epoch_begin(self, epoch, logs=None):
        self._fit.epoch = int(epoch)
        self._fit.epoch_base = self._fit.steps

    def on_train_batch_begin(self, batch, logs=None):
        if self.source == "train_batch":
            # Keras calls `model.train_function` afresh at each execution: the recording one runs only when the
            # schedule holds a step of this execution (it records that step), Keras' own (untouched) one otherwise.
            first = self._fit.epoch_base + int(batch)
            last = first + int(getattr(self.model, "steps_per_execution", 1) or 1) - 1
            self._fit.recording = self._scheduled(first, last, last=False)
            self._train.use(self.model, self._fit.recording)

    def on_train_batch_end(self, batch, logs=None):
        fit = self._fit
        prev, cur = fit.steps, fit.epoch_base + int(batch) + 1
        fit.steps = cur
        if self.source == "probe":
            if self._scheduled(prev + 1, cur, last=True) is not None:
                self._record_probe(self.model, cur, fit.epoch)
        elif fit.recording is not None:
            if fit.recording < cur:  # else the execution ended (with its epoch) before the scheduled step
                self._pending.append(Record(self._train.state.layout, fit.recording, fit.epoch, self._train.read()))
            fit.recording = None

    def on_epoch_end(self, epoch, logs=None):
        if self.record_epoch_end and self._fit.last_probe_step != self._fit.steps:
            self._record_probe(self.model, self._fit.steps, int(epoch))
        self._flush()

    def on_train_end(self, logs=None):
        self._flush()
        if self.source == "train_batch":
            self._train.uninstall(self.model)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# Statistics of each time step of a recurrent layer (keras_initkit.recurrent.TIME_STATS): scalars per step.
TIME_RECORD_STATS = ("mean", "var", "norm")
TIME_COLUMNS = ("step", "layer", "t", "lag", "kind", "stat", "value")


def _time_targets(model, targets) -> list:
    """The monitored recurrent layers, each Bidirectional as its two directions (none: no per-step records)."""
    names = {t.name for t in targets}
    try:
        found = recurrent_targets(model)
    except ValueError:  # no recurrent layer, or only ones the per-step taps do not support (ConvLSTM)
        return []
    return [r for r in found if r.layer.name in names or r.name.split("/")[0] in names]


def _time_values(layout: list, vec: np.ndarray) -> dict:
    """{(layer, kind): array (len(TIME_RECORD_STATS), T)} from one record's flat per-time-step vector."""
    out, at = {}, 0
    for name, kind, steps in layout:
        size = len(TIME_RECORD_STATS) * steps
        out[(name, kind)] = vec[at : at + size].reshape(len(TIME_RECORD_STATS), steps)
        at += size
    return out


def _ensure_built(model, x) -> None:
    """Build a model not built yet (a Sequential without keras.Input, which Keras builds at its first batch) from the
    probe's shape, as Keras builds it from the first batch's, before the probe's function is traced."""
    if not model.built:
        model.build(keras.tree.map_structure(lambda v: (None, *np.shape(v)[1:]), x))


def _require_backend():
    backends.require("VarianceMonitor")
