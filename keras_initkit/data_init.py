"""Data-dependent initialization: layer-sequential unit variance (LSUV, Mishkin & Matas 2016), `lsuv(model, x)`.

    trace = lsuv(model, x_train[:256])   # the model's kernels are rescaled in place
    trace.groupby("layer")["iteration"].max()

Each weight layer (Dense, Conv1D/2D/3D), from the input up in the monitor's forward order (`select_layers`), has its
kernel optionally re-drawn orthonormally (Keras' own `Orthogonal` on the kernel as a (fan_in, fan_out) matrix, as
the paper does), then scaled by 1 / sqrt(Var(s)) until the variance of its pre-activation s (its output before any
fused activation) on the batch `x` is 1 within `tol`. The variances are read by one `VarianceMonitor` (kind
"preact", stat "var"), whose traced pass reads the kernels anew at each call: one pass per measurement, no retrace.
"""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pandas as pd

from keras_initkit.layers import CONV, select_layers
from keras_initkit.monitor import VarianceMonitor

__all__ = ["LSUV_COLUMNS", "lsuv"]

LSUV_COLUMNS = ("layer", "depth", "iteration", "var_before", "var_after", "scale")
_WEIGHT_LAYERS = (keras.layers.Dense, *CONV)


def _check_x(x) -> None:
    """`x` holds at least one example, of finite numbers (each leaf of a nested structure)."""
    leaves = keras.tree.flatten(x) if x is not None else []
    if not leaves:
        raise ValueError(f"`x` must be a batch of inputs (an array with a first, sample axis). Received: x={x!r}")
    for leaf in leaves:
        try:
            arr = np.asarray(leaf, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"`x` must hold numbers. Received: x of type {type(leaf).__name__}") from None
        if arr.ndim == 0 or arr.shape[0] == 0:
            raise ValueError(
                f"`x` must hold at least one example (a first, sample axis). Received: x of shape {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"`x` must be finite. Received: x of shape {arr.shape} with NaN or Inf")


def _check_args(tol, max_iter, seed) -> None:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.number)) or not 0 < tol < 1:
        raise ValueError(f"`tol` must be a number in (0, 1). Received: tol={tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"`max_iter` must be an integer >= 1. Received: max_iter={max_iter!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"`seed` must be None or an integer >= 0. Received: seed={seed!r}")


def _weight_targets(model, layers):
    """The selected Dense/ConvND layers, in forward order, with the monitor's depths."""
    targets = select_layers(model, layers)
    chosen = [t for t in targets if isinstance(t.layer, _WEIGHT_LAYERS) and t.kernel is not None]
    if not chosen:
        found = sorted({type(t.layer).__name__ for t in targets})
        raise ValueError(
            f"`model` must have a Dense or Conv1D/2D/3D layer among the selected ones (LSUV scales their kernels). "
            f"Received: model {model.name!r} with layers={layers!r} selecting {found}"
        )
    return chosen


class _Preact:
    """Var(s) of each monitored layer on `x`, at the current weights: one traced probe pass per call."""

    def __init__(self, model, x, layers):
        self.model = model
        self.monitor = VarianceMonitor(probe=x, kinds=("preact",), stats=["var"], layers=layers)

    def __call__(self) -> dict[int, float]:
        with warnings.catch_warnings():  # a NaN/Inf is raised as an error by lsuv, naming the layer
            warnings.filterwarnings("ignore", message="VarianceMonitor: NaN/Inf", category=RuntimeWarning)
            rows = self.monitor.measure(self.model)
        self.monitor.reset()
        return dict(zip(rows["depth"].astype(int), rows["value"].astype(float), strict=True))


def _on_x(run, model, x):
    """`run()`, the first pass on `x`: an input that does not fit the model is named as `x`."""
    try:
        return run()
    except (ValueError, TypeError) as e:
        shapes = [tuple(np.shape(v)) for v in keras.tree.flatten(x)]
        raise ValueError(
            f"`x` must fit the model's input. Received: x of shape {shapes[0] if len(shapes) == 1 else shapes} "
            f"for model {model.name!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def _usable(var: float, t) -> float:
    if not math.isfinite(var):
        raise ValueError(
            f"`x` gives layer {t.name!r} (depth {t.index}) a non-finite pre-activation variance ({var}): a NaN or Inf "
            "in a kernel or bias up to it, or an overflow; the weights are left as they were"
        )
    if var <= 0:
        raise ValueError(
            f"`x` gives layer {t.name!r} (depth {t.index}) a pre-activation of variance 0 (all its elements equal on "
            "the batch: a constant x, or a dead layer below): no scale can make it 1; the weights are left as they were"
        )
    return var


def lsuv(model, x, *, tol: float = 0.1, max_iter: int = 10, layers=None, orthogonal_pre_init: bool = True, seed=None):
    """Layer-sequential unit-variance initialization: scale each kernel so its layer's pre-activation has variance 1.

    For each Dense and Conv1D/2D/3D layer, from the input up (the monitor's forward order): optionally re-draw the
    kernel orthonormally (`keras.initializers.Orthogonal`, the kernel reshaped to (fan_in, fan_out)), then, at most
    `max_iter` times while |Var(s) - 1| >= tol, multiply the kernel by 1 / sqrt(Var(s)), where s is the layer's
    output before any fused activation on the batch `x` and Var is over all its elements (Mishkin & Matas 2016,
    Algorithm 1). Biases are left as they are (zero after Keras' default initializer; a non-zero bias is what the
    further passes correct for). The passes run the model in training mode, as `fit` does (the monitor's default),
    inside a `keras.StatelessScope`: no BatchNormalization statistic, dropout seed or metric moves.

    Other layers are not changed: Embedding, recurrent, depthwise and transposed convolution kernels keep their
    values (they still pass the signal on to the layers above, which are measured as they are). With
    BatchNormalization present, LSUV still scales the kernel before it, so the BN layer receives unit variance
    (matching its initial moving variance of 1, so inference mode agrees with training mode); in training mode the
    BN layer normalizes its channels anyway, so the layers above it see the same signal whatever that kernel's
    scale, and typically need no pass at all.

    The model is changed in place; on any error (bad input, a layer whose pre-activation is constant or overflows)
    every kernel is restored to its value before the call. A layer still outside `tol` after `max_iter` passes is
    left at its last scale, with a warning naming it.

    Example:
    >>> model = keras.Sequential([keras.Input((64,))] + [keras.layers.Dense(64, activation="relu",
    ...     kernel_initializer=FixedNormal(0.01)) for _ in range(20)])
    >>> trace = lsuv(model, x[:256], seed=0)
    >>> trace.groupby("depth")["var_after"].last().between(0.9, 1.1).all()
    True

    Args:
        model: a built Keras model (Sequential, Functional or subclassed; a Sequential without `keras.Input` is
            built from `x`), under any backend the monitor supports (`keras_initkit.backends.SUPPORTED`).
        x: the batch of inputs (an array, or the structure of arrays the model takes), at least one example, finite.
        tol: the tolerance on |Var(s) - 1|, in (0, 1).
        max_iter: the most scaling passes per layer, an integer >= 1.
        layers: which layers, as `VarianceMonitor(layers=...)` (None: all); only the Dense and ConvND ones among
            them are scaled.
        orthogonal_pre_init: re-draw each scaled kernel orthonormally first (the paper's pre-initialization);
            False keeps the current kernels and only rescales them.
        seed: None or an int >= 0 for the orthonormal draws (one `keras.random.SeedGenerator` for all layers, so
            kernels of the same shape differ).

    Returns:
        A tidy DataFrame with columns `LSUV_COLUMNS`: one row per pass (iteration 1, 2, ...) with Var(s) before and
        after it and the factor the kernel was multiplied by; a layer already within `tol` has one row with
        iteration 0 and scale 1.

    Raises:
        ValueError: for an empty or non-finite `x`, one whose shape does not fit the model, a model without a
            Dense or ConvND layer (among `layers`), a pre-activation with variance 0 or non-finite, and bad `tol`,
            `max_iter` or `seed`. The weights are then unchanged.

    Reference:
    - [Mishkin & Matas, 2016](https://arxiv.org/abs/1511.06422), "All you need is a good init", Algorithm 1
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model of type {type(model).__name__}")
    _check_x(x)
    _check_args(tol, max_iter, seed)
    if not model.built:  # built as Keras builds it, at its first call
        _on_x(lambda: model(keras.tree.map_structure(lambda v: np.asarray(v)[:1], x)), model, x)
    targets = _weight_targets(model, layers)
    saved = [(t.kernel, keras.ops.convert_to_numpy(t.kernel)) for t in targets]
    try:
        return _lsuv(model, x, targets, float(tol), int(max_iter), layers, orthogonal_pre_init, seed)
    except BaseException:
        for kernel, value in saved:
            kernel.assign(value)
        raise


def _lsuv(model, x, targets, tol, max_iter, layers, orthogonal_pre_init, seed) -> pd.DataFrame:
    measure = _Preact(model, x, layers)
    current = _on_x(measure, model, x)  # before any kernel changes: a bad `x` fails on the untouched model
    if orthogonal_pre_init:
        draw = keras.initializers.Orthogonal(seed=keras.random.SeedGenerator(seed))
        for t in targets:
            t.kernel.assign(draw(tuple(t.kernel.shape), dtype=t.kernel.dtype))
        current = measure()
    rows, unconverged = [], []
    for t in targets:  # each pass measures every layer: the last one of a layer is the next layer's start
        var = _usable(current[t.index], t)
        if abs(var - 1.0) < tol:
            rows.append((t.name, t.index, 0, var, var, 1.0))
            continue
        for it in range(1, max_iter + 1):
            scale = 1.0 / math.sqrt(var)
            t.kernel.assign(t.kernel * scale)
            current = measure()
            after = _usable(current[t.index], t)
            rows.append((t.name, t.index, it, var, after, scale))
            var = after
            if abs(var - 1.0) < tol:
                break
        else:
            unconverged.append(f"{t.name!r} (Var(s) = {var:.3g})")
    if unconverged:
        warnings.warn(
            f"lsuv: {len(unconverged)} layer(s) still outside tol={tol} after max_iter={max_iter} passes, left at "
            f"their last scale: {', '.join(unconverged)}",
            UserWarning,
            stacklevel=3,
        )
    trace = pd.DataFrame(rows, columns=list(LSUV_COLUMNS))
    trace["depth"] = trace["depth"].astype("int64")
    trace["iteration"] = trace["iteration"].astype("int64")
    return trace
