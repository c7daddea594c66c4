"""Gradients through time: the hidden state h_t and the back-propagated gradient dC/dh_t of recurrent layers, per step.

The measurement behind vanishing and exploding gradients (Bengio et al. 1994; Pascanu et al. 2013, Fig 3; Arjovsky et
al. 2016, Fig 4): for every `SimpleRNN`, `LSTM`, `GRU`, `RNN(cell)` and each direction of a `Bidirectional` of a
model, at every step t of a batch, a few scalars of h_t (kind "hidden") and of dC/dh_t (kind "grad_hidden"), the total
gradient of the loss w.r.t. h_t: through the layer's output at t and through every later step.

    df = time_statistics(model, x, y)   # tidy: layer, t, lag, kind, stat, value
    df[(df.kind == "grad_hidden") & (df.stat == "norm")].pivot(index="lag", columns="layer", values="value")

Technique (exact, one backward pass): while the model is called, each recurrent layer's loop is run on its input
sequence concatenated with a zero tensor eps of shape (batch, T, units), and the cell adds eps_t to its output h_t and
to the state that is that output (h in every Keras cell: LSTM's c is untouched), so the loop carries h_t + eps_t = h_t.
Then dC/d eps_t = dC/dh_t exactly, for every t at once, from one backward pass over the model call and the loss (the
backend's: `keras_initkit.backends`, under TensorFlow, JAX and PyTorch).
Adding 0 changes no value: the model's output is the uninstrumented one (bit-identical on CPU; on a GPU an LSTM/GRU
that Keras would run with cuDNN runs the generic loop instead, equal to float32 round-off).

Conventions:
- t counts the steps in the order the layer processes them: with `go_backwards=True` (and the backward direction of a
  `Bidirectional`), step t reads input position T-1-t. lag = T-1-t is the number of recurrent steps between h_t and
  the layer's final state.
- Masking: a masked step (for one example) computes nothing, it carries the previous state, so its dC/dh_t is 0. The
  statistics of step t are taken over the examples whose step t is not masked; a step masked in every example is NaN.
- h_t is the cell's output at step t. `RNN(StackedRNNCells)` is the top cell's h. A custom cell whose output is not
  one of its states gets eps on its output only: its grad_hidden is then the gradient through the outputs.

Two entry points: `time_statistics` (standalone: one batch, the model's current weights, a DataFrame; the monitor's
probe function with no layer taps) and `TimeTaps` (the instrumentation itself, for a recorder that owns the backward
pass and the loss, e.g. the monitor's probe record).
`mean_field_chi` gives the per-step factor that the theory predicts for the gradient's squared norm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import keras
import numpy as np
import pandas as pd

from keras_initkit import activations
from keras_initkit.backends import ops as _tf  # the backend's tensor operations, in TensorFlow's names
from keras_initkit.layers import leaf_layers

__all__ = [
    "TIME_COLUMNS",
    "TIME_KINDS",
    "TIME_STATS",
    "MeanField",
    "RecurrentTarget",
    "TimeTaps",
    "mean_field_chi",
    "recurrent_targets",
    "time_frame",
    "time_statistics",
]

TIME_KINDS = ("hidden", "grad_hidden")
TIME_COLUMNS = ("layer", "t", "lag", "kind", "stat", "value")


# ----------------------------------------------------------------------------------------------------------------
# Statistics per step: each maps a view of (batch, T, units) values with (batch, T) weights to a (T,) tensor.


class StepView:
    """x (batch, T, units) float32 and w (batch, T) in {0, 1} (1: step not masked); shared per-step quantities."""

    def __init__(self, x, w):
        tf = _tf()
        self.x = tf.cast(x, tf.float32)
        self.w = tf.cast(w, tf.float32)
        self.units = tf.cast(tf.shape(self.x)[-1], tf.float32)
        self.count = tf.reduce_sum(self.w, axis=0)  # examples per step; 0 gives NaN statistics

    def over_examples(self, v):
        """Weighted mean over examples of v (batch, T): (T,)."""
        tf = _tf()
        return tf.reduce_sum(v * self.w, axis=0) / self.count

    @cached_property
    def mean(self):
        return self.over_examples(_tf().reduce_mean(self.x, axis=-1))

    def var(self):
        # Two passes (centred at the step's mean): exact also when |mean| >> std.
        d = self.x - self.mean[None, :, None]
        return self.over_examples(_tf().reduce_mean(d * d, axis=-1))

    def norm(self):
        return self.over_examples(_tf().norm(self.x, axis=-1))

    def rms(self):
        return _tf().sqrt(self.over_examples(_tf().reduce_mean(self.x * self.x, axis=-1)))


# name -> f(StepView) -> (T,): one entry per statistic. "norm" is the curve of Pascanu et al. / Arjovsky et al.
TIME_STATS: dict[str, Callable[[StepView], Any]] = {
    "mean": lambda v: v.mean,  # mean over examples and units
    "var": StepView.var,  # variance over examples and units
    "norm": StepView.norm,  # mean over examples of the Euclidean norm over units, ||h_t||_2 or ||dC/dh_t||_2
    "rms": StepView.rms,  # root mean square over examples and units: rms^2 * units = E ||.||_2^2
}


def _check_stats(stats) -> tuple[str, ...]:
    items = (stats,) if isinstance(stats, str) else tuple(stats) if isinstance(stats, Sequence) else ()
    if not items or any(s not in TIME_STATS for s in items) or len(set(items)) != len(items):
        raise ValueError(f"`stats` must be distinct names from {tuple(TIME_STATS)}. Received: stats={stats!r}")
    return items


def _check_kinds(kinds) -> tuple[str, ...]:
    items = (kinds,) if isinstance(kinds, str) else tuple(kinds) if isinstance(kinds, Sequence) else ()
    if not items or any(k not in TIME_KINDS for k in items):
        raise ValueError(f"`kinds` must be a non-empty subset of {TIME_KINDS}. Received: kinds={kinds!r}")
    return tuple(k for k in TIME_KINDS if k in items)


# ----------------------------------------------------------------------------------------------------------------
# Which recurrent layers.


@dataclass
class RecurrentTarget:
    """One recurrent layer (a `keras.layers.RNN`: SimpleRNN, LSTM, GRU, RNN(cell), a Bidirectional's direction)."""

    index: int  # 0-based, input side first
    name: str  # display name: the layer's, "bidirectional/forward_lstm" for a direction
    layer: Any  # the keras.layers.RNN instance whose loop is instrumented


def _units(layer) -> int | None:
    size = getattr(layer.cell, "output_size", None)
    return int(size) if isinstance(size, (int, np.integer)) else None


def recurrent_targets(model, layers=None) -> list[RecurrentTarget]:
    """The recurrent layers of `model` in order (nested models too), each Bidirectional as its two directions.

    `layers`: None (every one), a regex string (matched in full against the display names or, for both directions
    at once, the Bidirectional's name), or a list of such names.
    """
    found: list[tuple[str, Any, str]] = []  # (display name, RNN layer, wrapper name or "")
    for layer, parents in leaf_layers(model):
        if isinstance(layer, keras.layers.Bidirectional):
            for sub in (layer.forward_layer, layer.backward_layer):
                found.append((f"{layer.name}/{sub.name}", sub, layer.name))
        elif isinstance(layer, keras.layers.RNN):
            found.append(("/".join([*parents[1:], layer.name]) if parents[1:] else layer.name, layer, ""))
    if layers is None:
        chosen = found
    elif isinstance(layers, str):
        pattern = re.compile(layers)
        chosen = [f for f in found if pattern.fullmatch(f[0]) or (f[2] and pattern.fullmatch(f[2]))]
    elif isinstance(layers, Sequence) and layers and all(isinstance(n, str) for n in layers):
        known = {f[0] for f in found} | {f[2] for f in found if f[2]}
        missing = [n for n in layers if n not in known]
        if missing:
            raise ValueError(
                f"`layers` names recurrent layers the model does not have: {missing}. Available: {sorted(known)}. "
                f"Received: layers={layers!r}"
            )
        chosen = [f for f in found if f[0] in layers or f[2] in layers]
    else:
        raise ValueError(f"`layers` must be None, a regex string or a list of names. Received: layers={layers!r}")
    if not chosen:
        raise ValueError(
            f"`layers` selects no recurrent layer (SimpleRNN, LSTM, GRU, RNN, Bidirectional) of the model "
            f"{model.name!r}. Found: {[f[0] for f in found]}. Received: layers={layers!r}"
        )
    bad = [f"{name} ({type(la.cell).__name__})" for name, la, _ in chosen if _units(la) is None]
    if bad:
        raise ValueError(
            f"`layers` selects recurrent layers whose cell has no integer `output_size` (e.g. ConvLSTM), which are "
            f"not supported: {bad}. Select others with `layers=`. Received: layers={layers!r}"
        )
    return [RecurrentTarget(i, name, la) for i, (name, la, _) in enumerate(chosen)]


# ----------------------------------------------------------------------------------------------------------------
# The instrumentation.


@dataclass
class Tap:
    """What one instrumented layer call left: h_t, the zero perturbation eps, the step weights, in processing order
    except `eps` (input order, as the gradient w.r.t. it)."""

    hidden: Any  # (batch, T, units), processing order
    eps: Any  # (batch, T, units), input order; dC/d eps is dC/dh in input order
    weights: Any  # (batch, T) float32, processing order: 1 where the step is not masked
    backwards: bool


@dataclass
class TimeTaps:
    """While active, each target layer's loop adds a zero eps_t to h_t (see the module docstring), at its first call.

    `watch(tensor)` is called on each eps as it is created (e.g. a `tf.GradientTape`'s `watch`); `source(index,
    zeros)`, where given, returns the eps to use instead (under JAX: an argument of the differentiated function,
    `keras_initkit.backends.jax`). After the model
    call, `sources()` are the tensors to differentiate the loss against, and `values(grads)` the statistics.

        with tf.GradientTape() as tape:
            with TimeTaps(recurrent_targets(model), tape.watch) as taps:
                y_pred = model(x)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, taps.sources(), unconnected_gradients=tf.UnconnectedGradients.ZERO)
        vals = taps.values(grads, ("mean", "var", "norm"))   # {(name, kind): (n_stats, T) tensor}

    Works eagerly and while a `tf.function` traces. A layer called twice (shared) is recorded at its first call.
    """

    targets: list[RecurrentTarget]
    watch: Callable[[Any], None] | None = None
    source: Callable[[int, Any], Any] | None = None  # (target index, zero eps) -> the eps to use (JAX: an argument)
    taps: dict[int, Tap] = field(default_factory=dict)
    _saved: list = field(default_factory=list)

    def __enter__(self) -> TimeTaps:
        self.taps.clear()
        for t in self.targets:
            self._saved.append((t.layer, t.layer.__dict__.get("inner_loop")))
            object.__setattr__(t.layer, "inner_loop", self._loop(t))
        return self

    def __exit__(self, *exc) -> None:
        while self._saved:
            layer, prev = self._saved.pop()
            if prev is None:
                del layer.__dict__["inner_loop"]
            else:
                object.__setattr__(layer, "inner_loop", prev)

    def _loop(self, t: RecurrentTarget):
        layer, original = t.layer, t.layer.inner_loop

        def inner_loop(sequences, initial_state, mask, training=False):
            if t.index in self.taps:  # a second call of a shared layer runs as always
                return original(sequences, initial_state, mask, training=training)
            tf = _tf()
            if keras.tree.is_nested(mask):  # as LSTM's and GRU's own loops do
                mask = mask[0]
            d = sequences.shape[-1]
            shape = tf.concat([tf.shape(sequences)[:-1], [_units(layer)]], 0)
            eps = tf.zeros(shape, dtype=sequences.dtype)
            if self.source is not None:
                eps = self.source(t.index, eps)
            if self.watch is not None:
                self.watch(eps)
            cell = layer.cell
            cell_call = cell.__dict__.get("call")

            def call(inputs, states, *args, **kwargs):
                x, e = inputs[..., :d], inputs[..., d:]
                out, new = (cell_call or type(cell).call.__get__(cell))(x, states, *args, **kwargs)
                e = tf.cast(e, out.dtype)
                hit = out + e
                new = keras.tree.map_structure(lambda s: hit if s is out else s, new)
                return hit, new

            # keras.layers.RNN's own loop (the generic one, never cuDNN: its kernel would not match the wider
            # input), asked for every step's output (the RNN layer picks the last itself when it returns one).
            return_sequences = layer.return_sequences
            object.__setattr__(cell, "call", call)
            object.__setattr__(layer, "return_sequences", True)
            try:
                last, outputs, states = keras.layers.RNN.inner_loop(
                    layer, tf.concat([sequences, eps], -1), initial_state, mask, training=training
                )
            finally:
                object.__setattr__(layer, "return_sequences", return_sequences)
                if cell_call is None:
                    del cell.__dict__["call"]
                else:
                    object.__setattr__(cell, "call", cell_call)
            w = tf.ones(tf.shape(sequences)[:2], tf.float32) if mask is None else tf.cast(mask, tf.float32)
            if layer.go_backwards:
                w = tf.reverse(w, [1])
            self.taps[t.index] = Tap(outputs, eps, w, bool(layer.go_backwards))
            return last, outputs, states

        return inner_loop

    def missing(self) -> list[str]:
        """Names of the targets the model call never ran."""
        return [t.name for t in self.targets if t.index not in self.taps]

    def sources(self) -> list:
        """The eps tensors, in target order (call after the model call)."""
        miss = self.missing()
        if miss:
            raise ValueError(f"`layers` selects recurrent layers that the model's forward pass does not call: {miss}")
        return [self.taps[t.index].eps for t in self.targets]

    def values(self, grads=None, stats: Sequence[str] = ("mean", "var", "norm"), kinds=TIME_KINDS) -> dict:
        """{(name, kind): float32 tensor (len(stats), T)} per target; `grads` is dC/d eps per source (or None: the
        hidden kind only)."""
        tf = _tf()
        stats, kinds = _check_stats(stats), _check_kinds(kinds)
        self.sources()
        out = {}
        for i, t in enumerate(self.targets):
            tap = self.taps[t.index]
            for kind in kinds:
                if kind == "hidden":
                    x = tap.hidden
                elif grads is None:
                    raise ValueError("`grads` must be given to compute the 'grad_hidden' statistics.")
                else:
                    x = tf.reverse(grads[i], [1]) if tap.backwards else grads[i]
                view = StepView(x, tap.weights)
                out[(t.name, kind)] = tf.stack([TIME_STATS[s](view) for s in stats])
        return out


def time_frame(values: Mapping, stats: Sequence[str]) -> pd.DataFrame:
    """The tidy table (TIME_COLUMNS) of `TimeTaps.values` converted to numpy: {(name, kind): (len(stats), T)}."""
    parts = []
    for (name, kind), arr in values.items():
        arr = np.asarray(arr, dtype=np.float64)
        n_t = arr.shape[1]
        t = np.tile(np.arange(n_t), len(stats))
        parts.append(
            pd.DataFrame(
                {
                    "layer": name,
                    "t": t,
                    "lag": n_t - 1 - t,
                    "kind": kind,
                    "stat": np.repeat(np.asarray(stats, dtype=object), n_t),
                    "value": arr.reshape(-1),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def time_statistics(
    model,
    x,
    y=None,
    *,
    layers=None,
    stats: Sequence[str] = ("mean", "var", "norm"),
    kinds: Sequence[str] = TIME_KINDS,
    loss=None,
    sample_weight=None,
    training: bool = False,
) -> pd.DataFrame:
    """Per recurrent layer and step t, statistics of h_t and of dC/dh_t on the batch (x, y) at the current weights.

    Returns a tidy DataFrame with columns layer, t, lag (= T-1-t), kind ("hidden" | "grad_hidden"), stat, value.
    Conventions (processing order, masking) and the technique: see the module docstring.

    Example:
    >>> model = keras.Sequential([keras.Input((50, 8)), keras.layers.SimpleRNN(64), keras.layers.Dense(1)])
    >>> model.compile(loss="mse")
    >>> df = time_statistics(model, x, y)
    >>> g = df[(df.kind == "grad_hidden") & (df.stat == "norm")].set_index("lag").value   # vanishes with lag

    Args:
        model: a built Keras model (Sequential, Functional, nested, or subclassed with its layers as attributes).
        x: the input batch; y: its targets (needed for "grad_hidden").
        layers: which recurrent layers (see `recurrent_targets`); None: all.
        stats: names from TIME_STATS ("mean", "var", "norm", "rms"), per step only scalars.
        kinds: a subset of ("hidden", "grad_hidden").
        loss: a Keras loss (name, instance or callable(y_true, y_pred)); None: the model's compiled loss (with its
            regularization terms, as `fit` computes it).
        sample_weight: per-example weights of the loss.
        training: the `training` flag of the model call (False: no dropout).

    Reference:
    - [Pascanu et al., 2013](https://proceedings.mlr.press/v28/pascanu13.html), Section 2 and Fig 3
    """
    from keras_initkit import backends

    backends.require("time_statistics")
    stats, kinds = _check_stats(stats), _check_kinds(kinds)
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    if not model.built:
        raise ValueError(f"`model` must be built (called on data, or given an Input). Received: model={model.name!r}")
    if not isinstance(training, bool):
        raise ValueError(f"`training` must be a bool. Received: training={training!r}")
    grads_on = "grad_hidden" in kinds
    loss_fn = None
    if grads_on:
        if y is None:
            raise ValueError("`y` is required for kind 'grad_hidden' (or pass kinds=('hidden',)). Received: y=None")
        if loss is not None:
            try:
                loss_fn = keras.losses.get(loss)
            except (ValueError, TypeError) as err:
                raise ValueError(f"`loss` must be a Keras loss or a callable. Received: loss={loss!r}") from err
            if not callable(loss_fn):
                raise ValueError(f"`loss` must be a Keras loss or a callable. Received: loss={loss!r}")
        elif not (getattr(model, "compiled", False) and getattr(model, "loss", None) is not None):
            raise ValueError("`loss` is required: the model is not compiled with a loss. Received: loss=None")
    targets = recurrent_targets(model, layers)
    if loss_fn is not None:
        cost = (lambda y, y_pred, sw: loss_fn(y, y_pred)) if sample_weight is None else loss_fn  # noqa: E731
    else:
        cost = None  # the model's compiled loss
    fn = backends.module().probe_function(
        model,
        [],
        targets,
        (x, y, sample_weight),
        grads=grads_on,
        training=training,
        xla=False,
        reduce=lambda tensors, taps, time_grads: taps.values(time_grads, stats, kinds),
        loss=cost,
    )
    values = fn()
    return time_frame({k: keras.ops.convert_to_numpy(v) for k, v in values.items()}, stats)


# ----------------------------------------------------------------------------------------------------------------
# Theory: the mean-field per-step factor of the gradient's squared norm.


@dataclass(frozen=True)
class MeanField:
    """The fixed point q* of the pre-activation variance and the per-step factor chi of E||dC/dh||^2."""

    q_star: float  # Var(z) at the fixed point, z = W h_{t-1} + U x_t + b
    chi: float  # sigma_w^2 E[f'(z)^2], z ~ N(0, q*): E||dC/dh_{t-1}||^2 = chi E||dC/dh_t||^2
    iterations: int  # of the fixed-point iteration

    def decay(self, lag):
        """Predicted ||dC/dh_{T-1-lag}|| / ||dC/dh_{T-1}||, in root-mean-square: chi^(lag / 2)."""
        return self.chi ** (np.asarray(lag, dtype=np.float64) / 2.0)


def _check_nonneg(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}")
    return float(value)


def mean_field_chi(
    activation="tanh",
    sigma_w2: float = 1.0,
    *,
    sigma_u2: float = 1.0,
    input_var: float = 1.0,
    sigma_b2: float = 0.0,
    tol: float = 1e-12,
    max_iter: int = 10_000,
) -> MeanField:
    """Mean-field per-step factor chi of the back-propagated gradient's squared norm in a vanilla RNN.

    The RNN h_t = f(z_t), z_t = W h_{t-1} + U x_t + b, with W (n x n) of i.i.d. entries of variance sigma_w^2 / n (or
    sigma_w times an orthogonal matrix: the same q and chi), U of variance sigma_u^2 / d_in, b of variance sigma_b^2,
    inputs x of mean square `input_var`. At large width z_t is Gaussian with variance

        q_t = sigma_w^2 E[f(z_{t-1})^2] + sigma_u^2 input_var + sigma_b^2,   z ~ N(0, q_{t-1})

    which converges to the fixed point q*. Back-propagation through one step multiplies dC/dh by diag(f'(z)) W^T, so
    (treating W^T as independent of the forward pass, the gradient-independence assumption of Schoenholz et al.
    2017, exact in norm for an orthogonal W)

        E||dC/dh_{t-1}||^2 = chi E||dC/dh_t||^2,   chi = sigma_w^2 E[f'(z)^2],  z ~ N(0, q*)

    so with the loss on the last output only, E||dC/dh_{T-1-k}||^2 = chi^k E||dC/dh_{T-1}||^2: vanishing for
    chi < 1, exploding for chi > 1. Assumes: width large, steps after the first few (q_t near q*), inputs independent
    of the state, no masking, and a loss that reads only the last step (a loss on every step adds direct terms).

    Example:
    >>> mf = mean_field_chi("tanh", sigma_w2=1.5, sigma_u2=1.0, input_var=1.0)
    >>> mf.chi < 1   # gradients vanish through time at this initialization
    True

    Reference:
    - [Chen, Pennington & Schoenholz, 2018](https://arxiv.org/abs/1806.05394), Section 3 (signal propagation in RNNs)
    """
    sigma_w2 = _check_nonneg("sigma_w2", sigma_w2)
    sigma_u2 = _check_nonneg("sigma_u2", sigma_u2)
    input_var = _check_nonneg("input_var", input_var)
    sigma_b2 = _check_nonneg("sigma_b2", sigma_b2)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"`max_iter` must be an int >= 1. Received: max_iter={max_iter!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"`tol` must be a finite number > 0. Received: tol={tol!r}")
    drive = sigma_u2 * input_var + sigma_b2
    if drive <= 0:
        raise ValueError(
            "`sigma_u2 * input_var + sigma_b2` must be > 0 (an undriven RNN has the fixed point q* = 0 for odd f). "
            f"Received: sigma_u2={sigma_u2!r}, input_var={input_var!r}, sigma_b2={sigma_b2!r}"
        )
    q, iterations, done = drive, 0, False
    while not done:
        if iterations == max_iter:
            raise ValueError(
                f"The variance recursion did not converge in max_iter={max_iter} iterations (q = {q}); an unbounded "
                f"activation with sigma_w2 * E[f(z)^2] / q >= 1 has no fixed point. Received: "
                f"activation={activation!r}, sigma_w2={sigma_w2!r}"
            )
        q_new = sigma_w2 * activations.moments(activation, q)["second"] + drive
        if not math.isfinite(q_new):
            raise ValueError(
                f"The variance recursion diverges (q = {q_new}); no fixed point. Received: activation={activation!r}, "
                f"sigma_w2={sigma_w2!r}"
            )
        done = abs(q_new - q) <= tol * max(1.0, q)
        q, iterations = q_new, iterations + 1
    return MeanField(q_star=q, chi=sigma_w2 * activations.moments(activation, q)["deriv2"], iterations=iterations)
