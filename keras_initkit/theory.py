"""Signal propagation at initialization: true fans, predicted per-layer variances, and their comparison.

The recursions of Glorot & Bengio (2010, Eq 5-14) and He et al. (2015, Eq 7-14): with zero-mean weights drawn
independently of the signal,

    forward:   Var(s_l)      = fan_in  * Var(W_l)     * E[f(s_{l-1})^2]
    backward:  Var(dC/ds_l)  = E[f'(s_l)^2] * fan_out * Var(W_{l+1}) * Var(dC/ds_{l+1})

`predict_variance` evaluates them element by element (each position and unit of one example) on the model's
actual weights:

- Each element's pre-activation is Gaussian across the batch, s ~ N(m, v), independent of the other elements. Its
  mean and variance come from the kernel, the bias and the previous layer's elements: m_o = sum W_io E[x_i] + b_o
  and v_o = sum W_io^2 Var(x_i), the sums running over the inputs the layer really reads (a conv's taps at each
  position, zero padding excluded; strides, dilation, groups, depthwise and transposed kernels as Keras applies
  them). Averaged over the weights this is the recursion above (E[(sum W E[x])^2] = fan_in Var(W) E[x]^2).
  Keeping the realized means is what makes the prediction follow one network: a ReLU net's units acquire fixed
  means that carry a third (and, with depth, most) of the variance, and the recursion alone misses a single
  20-layer, 256-wide ReLU net by about +-40% (one standard deviation over seeds) where this stays within a few
  percent; keeping positions apart does the same for "same" padding on small maps (where the borders sum fewer
  taps, and their inward taps read larger signals).
- E[f(s)], E[f(s)^2] and E[f'(s)^2] come from `keras_initkit.gaussian` for any activation: rectifiers through one
  cached table in m / sqrt(v); any other activation through Chebyshev interpolants in m at a few levels of v,
  corrected to each element's v with the heat equation dh/dv = 1/2 d^2h/dm^2.
- Backward: dC/ds has zero mean and is independent of the forward signal and of W (Glorot & Bengio's assumption),
  so E[(dC/dx_i)^2] = sum_o W_io^2 E[(dC/ds_o)^2] over the outputs input i reaches, and
  E[(dC/ds)^2] = E[f'(s)^2] E[(dC/dx)^2]. The chain needs its value at the top: `top_grad_var`, Var(dC/ds) at the
  topmost monitored layer (e.g. (p - y) / batch for softmax with cross-entropy); `compare` can instead anchor it
  to the measured top layer.

Approximations beyond those of the papers:
- Max pooling: a window's elements are taken as independent N(m, v) with the window's average m and v (the spread
  of their means added to v), and the maximum of k independent N(0, 1) as the Gaussian with its exact mean and
  variance (`gaussian.max_of_normals`), applied before the activation (exact ordering for non-decreasing
  activations; any other is first replaced by a Gaussian of the same moments). The gradient reaches each window's
  maximum, so the activation below contributes E[f'(s_max)^2], not E[f'(s)^2] (for ReLU after a 2x2 pool: 0.94,
  not 1/2).
- Average and global pooling, dropout (`training=True`: second moment / (1 - rate)) are exact in the first two
  moments; their output is then treated as Gaussian (central limit).
- BatchNormalization: `training=True` (the monitor's default) normalizes each channel with its predicted batch mean
  and variance; its backward pass scales by gamma^2 / (var + eps), ignoring two projections of order 1/batch.
  `training=False` applies the moving statistics (an affine map).
- Correlations between elements are ignored (zero on average over the weights; their realized values are what
  remains: a few percent per layer for a 256-wide Dense net, more for few channels or few taps).
- A softmax has no elementwise moments: its activation row is left out, and no predicted layer may read from it.
- Deep non-homogeneous nets (GELU, tanh) on real data: each element is one Gaussian across the batch, but the
  examples' second moments differ (standardized digits: coefficient of variation 1.8 at the input, about 3 at
  layer 19 of a 20 x 512 GELU net), so a unit's pre-activation is a Gaussian scale mixture and E[f(s)^2] differs
  from the Gaussian's (Jensen); a homogeneous f (ReLU, linear) is exact under the mixture. Measured on that net
  (gain("gelu")-scaled fan-in init, 2 seeds): measured / predicted Var(s) at layer 19 is 1.085 and 0.87 on digits,
  1.004 and 0.94 on Gaussian inputs of the same per-feature moments (where the spread is 0.19 at the input); the
  per-seed scatter is as large as the drift, and the cause of the drift reported in issue 13 is not isolated.

Graphs: the model's calls are read from `call_graph` (the functional graph, or a traced forward pass of a
subclassed model). Each merge is an elementwise rule on the per-element means and variances (the output then
treated as Gaussian), exact under its assumption:
- Add / Subtract / Average of branches uncorrelated across the batch (e.g. a residual branch with zero-mean weights,
  on average over them): means add (Average: / n), variances add (Average: / n^2); the gradient reaches each input
  unchanged (Average: scaled by 1 / n^2 in variance). Broadcast inputs get the sum of the gradients they reach.
- Concatenate: the fields are concatenated, so each channel keeps its mean and variance and the output's mean
  variance is the width-weighted mean of the inputs'; the gradient is split the same way. Exact.
- Multiply of independent branches: E[ab] = E[a] E[b], E[(ab)^2] = E[a^2] E[b^2] (zero-mean branches: the second
  moments multiply); backward E[(dC/da)^2] = E[(dC/dy)^2] E[b^2].
- ZeroPadding: the added elements are exactly 0 (mean and variance 0), so the tensor's second moment scales by the
  non-padded fraction; Cropping drops elements. Exact; the gradient is cropped (padded) back.
- A layer called several times (shared) gets one step per call; its rows are those of its first call (as the
  monitor records). A branch point's gradient is the sum of its consumers' (independent, zero mean).
- Backward chains start at the sinks: the selected layers no other selected layer reads from (one per head of a
  model with a side output), each with `top_grad_var`.

Layers handled: Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D, Activation and the activation layers
(ReLU, LeakyReLU, ELU, PReLU, Softmax), BatchNormalization (last axis), MaxPooling/AveragePooling 1D-3D and their
global versions, Flatten, Reshape, Dropout/SpatialDropout/GaussianDropout, ZeroPadding/Cropping 1D-3D, Add,
Subtract, Average, Multiply, Concatenate; channels_last; any graph (Sequential, Functional, nested, subclassed) with
one input of a fixed shape. Layers it has no rule for, among those the selected layers depend on, are all named in
one ValueError; `layers=` selecting layers before the first of them predicts that prefix. The computation is
numpy on the weights (no forward pass, except one to trace a subclassed model), so it runs under any backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import keras
import numpy as np
import pandas as pd

from keras_initkit.activations import IDENTITY, SOFTMAX, Pointwise, compose, layer_pointwise, pointwise
from keras_initkit.gaussian import max_of_normals
from keras_initkit.layers import (
    CONV,
    CONV_T,
    DEPTHWISE,
    as_tuple,
    call_graph,
    conv_params,
    gather_matmul,
    gather_sum,
    layer_fans,
    scatter_matmul,
    scatter_sum,
    select_layers,
    window,
    window_axis,
)

__all__ = ["THEORY_KINDS", "compare", "layer_fans", "predict_variance"]

THEORY_KINDS = ("preact", "activation", "grad_preact")

_MAXPOOL = (keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.MaxPooling3D)
_AVGPOOL = (keras.layers.AveragePooling1D, keras.layers.AveragePooling2D, keras.layers.AveragePooling3D)
_GMAXPOOL = (keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D)
_GAVGPOOL = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
)
_DROPOUT = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianDropout,
)
_ZEROPAD = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_CROP = (keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Cropping3D)
_MERGE = tuple(getattr(keras.layers, n) for n in ("Add", "Subtract", "Average", "Multiply", "Concatenate"))
_ACT_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax)
_KNOWN = (
    keras.layers.Dense,
    *CONV,
    *CONV_T,
    *DEPTHWISE,
    keras.layers.Activation,
    *_ACT_LAYERS,
    keras.layers.BatchNormalization,
    *_MAXPOOL,
    *_AVGPOOL,
    *_GMAXPOOL,
    *_GAVGPOOL,
    *_DROPOUT,
    keras.layers.Flatten,
    keras.layers.Reshape,
    *_ZEROPAD,
    *_CROP,
    *_MERGE,
)
_SUPPORTED = (
    "Dense, Conv1D/2D/3D, Conv1D/2D/3DTranspose, DepthwiseConv1D/2D, Activation, ReLU, LeakyReLU, ELU, PReLU, "
    "Softmax (last), BatchNormalization, MaxPooling/AveragePooling/GlobalMaxPooling/GlobalAveragePooling 1D-3D, "
    "Flatten, Reshape, Dropout, SpatialDropout, GaussianDropout, ZeroPadding/Cropping 1D-3D, Add, Subtract, Average, "
    "Multiply, Concatenate"
)


# ----------------------------------------------------------------------------------------------------------------
# The signal, as fields over the elements of one example: at position p (flattened) and unit j (a Dense unit or a
# channel), x = a_j * g(u) + c_j with u ~ N(m[p, j], v[p, j]) across the batch.


@dataclass
class _Signal:
    shape: tuple  # per-example shape, units last
    g: Pointwise
    m: np.ndarray  # (positions, units)
    v: np.ndarray  # (positions, units)
    a: np.ndarray | None = None  # (units,) or None
    c: np.ndarray | None = None

    @cached_property
    def _moments(self):
        e1, e2, d = self.g.moments(self.m, self.v)
        if self.a is not None:
            a, c = self.a, self.c
            e1, e2 = a * e1 + c, a * a * e2 + 2 * a * c * e1 + c * c
        return e1, np.maximum(e2, e1 * e1), d

    @property
    def e1(self):
        """E[x] per element (across the batch)."""
        return self._moments[0]

    @property
    def e2(self):
        """E[x^2] per element."""
        return self._moments[1]

    @property
    def d(self):
        """E[f'(u)^2] per element, f the outermost function (the backward factor of the last nonlinearity)."""
        return self._moments[2]

    def var(self) -> float:
        """Variance over all elements of the tensor (batch, positions and units), as the monitor's `var`."""
        return float(np.mean(self.e2) - np.mean(self.e1) ** 2)

    def gaussian(self) -> _Signal:
        """The Gaussian with the same mean and variance per element."""
        if self.g.kind == "id" and self.a is None:
            return self
        return _Signal(self.shape, IDENTITY, self.e1.copy(), self.e2 - self.e1**2)

    def apply(self, f: Pointwise) -> _Signal:
        """f(x): the next function in the chain, exact where it composes with the Gaussian source."""
        if f.kind == "id":
            return self
        if self.g.kind == "id":
            m, v = self.m, self.v
            if self.a is not None:
                m, v = self.a * self.m + self.c, self.a**2 * self.v
            return _Signal(self.shape, f, m, v)
        per_unit_alpha = (f.kind == "rect" and np.ndim(f.alpha)) or (self.g.kind == "rect" and np.ndim(self.g.alpha))
        if self.a is not None or per_unit_alpha:
            return self.gaussian().apply(f)
        return _Signal(self.shape, compose(f, self.g), self.m, self.v)


# ----------------------------------------------------------------------------------------------------------------
# One step per layer: the forward signal, and the backward map of E[(dC/dx)^2] per element.


def _per_unit(x, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(
            f"`{name}` must be a number or an array of one value per input feature (last axis, {n}). "
            f"Received: {name} of shape {arr.shape}"
        )
    return arr.copy()


def _weights(layer, attr):
    w = getattr(layer, attr, None)
    return None if w is None else np.asarray(keras.ops.convert_to_numpy(w), dtype=np.float64)


def _linear(layer, sig: _Signal, out_shape):
    """Dense / conv: the pre-activation signal and the backward map."""
    if isinstance(layer, keras.layers.Dense):
        w3 = _weights(layer, "kernel")[None]
        n_pos = sig.m.shape[0]
        valid, src = np.ones((n_pos, 1), dtype=bool), np.arange(n_pos)[:, None]
    else:
        w3, k, strides, dil, padding, transposed = conv_params(layer)
        spatial_in, spatial_out = sig.shape[:-1], out_shape[:-1]
        axes = [
            window_axis(k[i], strides[i], dil[i], padding, spatial_in[i], spatial_out[i], transposed)
            for i in range(len(k))
        ]
        valid, src = window(axes)
    bias = _weights(layer, "bias")
    w2 = w3 * w3
    m = gather_matmul(sig.e1, valid, src, w3) + (0.0 if bias is None else bias)
    v = gather_matmul(sig.e2 - sig.e1**2, valid, src, w2)
    n_in = sig.m.shape[0]
    w2t = np.swapaxes(w2, 1, 2)
    return _Signal(tuple(out_shape), IDENTITY, m, v), lambda g: scatter_matmul(g, valid, src, w2t, n_in)


def _pool(layer, sig: _Signal, out_shape):
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(f"`model` layers must use data_format='channels_last'. Received: layer {layer.name!r}")
    spatial_in = sig.shape[:-1]
    n_in = math.prod(spatial_in)
    if isinstance(layer, (*_GMAXPOOL, *_GAVGPOOL)):
        valid, src = np.ones((1, n_in), dtype=bool), np.arange(n_in)[None, :]
    else:
        pool = as_tuple(layer.pool_size, len(spatial_in))
        strides = as_tuple(layer.strides, len(spatial_in))
        axes = [
            window_axis(pool[i], strides[i], 1, layer.padding, spatial_in[i], out_shape[i], False)
            for i in range(len(pool))
        ]
        valid, src = window(axes)
    count = valid.sum(axis=1, keepdims=True).astype(np.float64)  # elements in each window (fewer at a border)

    def window_mean(field):
        return gather_sum(field, valid, src) / count

    if isinstance(layer, (*_AVGPOOL, *_GAVGPOOL)):
        # Keras averages over the window's real elements: mean of the means, sum of the variances / count^2.
        new = _Signal(tuple(out_shape), IDENTITY, window_mean(sig.e1), window_mean(sig.e2 - sig.e1**2) / count)
        return new, lambda g: scatter_sum(g / count**2, valid, src, n_in)
    src_sig = sig if sig.g.monotone and (sig.a is None or np.all(sig.a >= 0)) else sig.gaussian()
    # The maximum of a window: its source u is taken as the window's average N(m, v) (the spread of the means added
    # to v), and the maximum of k independent N(0, 1) as the Gaussian with the same mean and variance.
    m_bar = window_mean(src_sig.m)
    v_bar = window_mean(src_sig.v) + np.maximum(window_mean(src_sig.m**2) - m_bar**2, 0.0)
    stats = np.array([max_of_normals(int(k)) for k in count[:, 0]])
    mu, var = stats[:, :1], stats[:, 1:]
    new = _Signal(tuple(out_shape), src_sig.g, m_bar + np.sqrt(v_bar) * mu, v_bar * var, src_sig.a, src_sig.c)
    # The gradient reaches each window's maximum only, where the nonlinearity below has the derivative f'(u_max)
    # rather than f'(u) (ReLU: 1 with probability ~1 - 2^-k, not 1/2). The layer below multiplies by E[f'(u)^2];
    # the factor d_max / d_in turns that into E[f'(u_max)^2].
    exact = src_sig is sig and sig.g.kind != "id"
    d_max = new.d if exact else np.ones_like(new.m)
    d_in = sig.d if exact else np.ones_like(sig.m)
    safe = np.where(d_in > 0, d_in, 1.0)

    def back(g):
        return np.where(d_in > 0, scatter_sum(g * d_max / count, valid, src, n_in) / safe, 0.0)

    return new, back


def _batchnorm(layer, sig: _Signal, training):
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    if axis not in (-1, len(sig.shape)):
        raise ValueError(
            f"BatchNormalization must normalize the last axis (channels_last). Received: layer {layer.name!r} "
            f"with axis={layer.axis!r}"
        )
    n = sig.m.shape[1]
    gamma = _weights(layer, "gamma")
    beta = _weights(layer, "beta")
    gamma = np.ones(n) if gamma is None else gamma
    beta = np.zeros(n) if beta is None else beta
    if training:  # the channel's statistics over the batch and the positions
        mu = sig.e1.mean(axis=0)
        var = np.maximum(sig.e2.mean(axis=0) - mu * mu, 0.0)
    else:
        mu, var = _weights(layer, "moving_mean"), _weights(layer, "moving_variance")
    scale = gamma / np.sqrt(var + layer.epsilon)
    a0 = np.ones(n) if sig.a is None else sig.a
    c0 = np.zeros(n) if sig.c is None else sig.c
    new = _Signal(sig.shape, sig.g, sig.m, sig.v, a0 * scale, (c0 - mu) * scale + beta)
    return new, lambda g: g * scale * scale


def _dropout(layer, sig: _Signal, training):
    if not training:
        return sig, _identity_back
    keep = 1.0 - float(layer.rate)
    new = _Signal(sig.shape, IDENTITY, sig.e1.copy(), np.maximum(sig.e2 / keep - sig.e1**2, 0.0))
    return new, lambda g: g / keep


def _reshape(sig: _Signal, out_shape):
    """Any reshape: the fields are per element, in Keras' row-major order."""
    out_shape = tuple(out_shape)
    p_in, n_in = sig.m.shape

    def per_element(x):
        return None if x is None else np.broadcast_to(x, sig.m.shape).reshape(-1, out_shape[-1])

    g = sig.g
    if g.kind == "rect" and np.ndim(g.alpha):
        g = Pointwise("rect", per_element(g.alpha))
    new = _Signal(out_shape, g, per_element(sig.m), per_element(sig.v), per_element(sig.a), per_element(sig.c))
    return new, lambda grad: grad.reshape(p_in, n_in)


def _pads(layer) -> np.ndarray:
    """(spatial axes, 2): elements added before and after each axis (ZeroPadding), or removed (Cropping: < 0)."""
    if isinstance(layer, _ZEROPAD):
        return np.asarray(layer.padding, dtype=np.int64).reshape(-1, 2)
    return -np.asarray(layer.cropping, dtype=np.int64).reshape(-1, 2)


def _pad_field(x, shape, pads):
    """A per-element field of per-example `shape`, zero-padded (pads > 0) or cropped (pads < 0) on the spatial axes."""
    full = np.pad(x.reshape(shape), [(max(a, 0), max(b, 0)) for a, b in pads] + [(0, 0)])
    keep = tuple(slice(max(-a, 0), full.shape[k] - max(-b, 0)) for k, (a, b) in enumerate(pads))
    return full[keep].reshape(-1, shape[-1])


def _pad(layer, sig: _Signal, out_shape):
    """ZeroPadding: the added elements are exactly 0 (mean 0, variance 0); Cropping drops elements. Exact."""
    pads = _pads(layer)
    src = sig.gaussian()
    new = _Signal(tuple(out_shape), IDENTITY, _pad_field(src.m, sig.shape, pads), _pad_field(src.v, sig.shape, pads))
    return new, lambda g: _pad_field(g, tuple(out_shape), -pads)


def _unbroadcast(field, shape):
    """Sum a field over the axes that `shape` (per example, units last) broadcast to reach it."""
    axes = tuple(k for k, (n, m) in enumerate(zip(shape, field.shape, strict=True)) if n == 1 and m != 1)
    return field.sum(axis=axes, keepdims=True).reshape(-1, shape[-1])


def _merge(layer, sigs: list[_Signal], out_shape):
    """Merge layers (see the module docstring for each rule): the output signal and the backward map, one E[g^2]
    field per input."""
    out_shape = tuple(out_shape)
    shapes = [
        s.shape if len(s.shape) == len(out_shape) else (1,) * (len(out_shape) - len(s.shape)) + s.shape for s in sigs
    ]
    flat = out_shape[-1]
    if isinstance(layer, keras.layers.Concatenate):
        axis = layer.axis % (len(out_shape) + 1) - 1  # per-example axis
        m = np.concatenate([s.e1.reshape(s.shape) for s in sigs], axis=axis)
        v = np.concatenate([(s.e2 - s.e1**2).reshape(s.shape) for s in sigs], axis=axis)
        cuts = np.cumsum([s.shape[axis] for s in sigs])[:-1]
        new = _Signal(out_shape, IDENTITY, m.reshape(-1, flat), v.reshape(-1, flat))
        return new, lambda g: [
            p.reshape(-1, s.shape[-1]) for p, s in zip(np.split(g.reshape(out_shape), cuts, axis), sigs, strict=True)
        ]
    e1 = [np.broadcast_to(s.e1.reshape(sh), out_shape) for s, sh in zip(sigs, shapes, strict=True)]
    e2 = [np.broadcast_to(s.e2.reshape(sh), out_shape) for s, sh in zip(sigs, shapes, strict=True)]
    if isinstance(layer, keras.layers.Multiply):
        m, sq = np.prod(e1, axis=0), np.prod(e2, axis=0)
        new = _Signal(out_shape, IDENTITY, m.reshape(-1, flat), np.maximum(sq - m * m, 0.0).reshape(-1, flat))

        def back(g):
            g = g.reshape(out_shape)
            return [
                _unbroadcast(g * np.prod([e for j, e in enumerate(e2) if j != i], axis=0), sh)
                for i, sh in enumerate(shapes)
            ]

        return new, back
    sign = np.ones(len(sigs))
    if isinstance(layer, keras.layers.Subtract):
        sign[1] = -1.0
    elif isinstance(layer, keras.layers.Average):
        sign /= len(sigs)
    m = sum(c * e for c, e in zip(sign, e1, strict=True))
    v = sum(c * c * (b - a * a) for c, a, b in zip(sign, e1, e2, strict=True))
    new = _Signal(out_shape, IDENTITY, m.reshape(-1, flat), v.reshape(-1, flat))
    return new, lambda g: [_unbroadcast(c * c * g.reshape(out_shape), sh) for c, sh in zip(sign, shapes, strict=True)]


def _problem(layer, in_shapes) -> str | None:
    """Why the theory cannot predict this layer, or None."""
    if not isinstance(layer, keras.layers.Layer):
        return "an operation, not a layer"
    if len(in_shapes) > 1 and not isinstance(layer, _MERGE):
        return f"{len(in_shapes)} inputs"
    if not isinstance(layer, _KNOWN):
        return "no rule for this layer"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"data_format={layer.data_format!r} (channels_last only)"
    if isinstance(layer, keras.layers.BatchNormalization):
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        if axis not in (-1, len(in_shapes[0])):
            return f"axis={layer.axis!r} (the last axis only)"
    if isinstance(layer, keras.layers.Concatenate) and layer.axis % (len(in_shapes[0]) + 1) == 0:
        return "concatenates along the batch axis"
    try:
        if isinstance(layer, _ACT_LAYERS):
            layer_pointwise(layer, in_shapes[0])
        elif callable(getattr(layer, "activation", None)):
            pointwise(layer.activation)
    except ValueError as err:
        return str(err)
    return None


def _is_softmax(layer) -> bool:
    try:
        if isinstance(layer, _ACT_LAYERS):
            return isinstance(layer, keras.layers.Softmax)
        return callable(getattr(layer, "activation", None)) and pointwise(layer.activation) == SOFTMAX
    except ValueError:
        return False


@dataclass
class _Step:
    pre: _Signal  # the pre-activation
    act: _Signal | None  # the output when the layer applies a nonlinearity (its E[f'^2] scales the gradient)
    back: Callable  # E[(dC/d.)^2] per element at the pre-activation -> one field per input


def _identity_back(g):
    return g


def _step(layer, sigs: list[_Signal], out_shape, training: bool):
    """(pre-activation signal, output signal, nonlinearity applied, is softmax, backward map per input)."""
    if isinstance(layer, _MERGE):
        new, back = _merge(layer, sigs, out_shape)
        return new, new, False, False, back
    sig = sigs[0]
    if isinstance(layer, (keras.layers.Dense, *CONV, *CONV_T, *DEPTHWISE)):
        pre, back = _linear(layer, sig, out_shape)
        return pre, *_activate(pre, pointwise(layer.activation)), lambda g: [back(g)]
    if isinstance(layer, keras.layers.Activation):
        return sig, *_activate(sig, pointwise(layer.activation)), lambda g: [g]
    if isinstance(layer, _ACT_LAYERS):
        return sig, *_activate(sig, layer_pointwise(layer, sig.shape)), lambda g: [g]
    if isinstance(layer, keras.layers.BatchNormalization):
        new, back = _batchnorm(layer, sig, training)
    elif isinstance(layer, (*_MAXPOOL, *_AVGPOOL, *_GMAXPOOL, *_GAVGPOOL)):
        new, back = _pool(layer, sig, out_shape)
    elif isinstance(layer, _DROPOUT):
        new, back = _dropout(layer, sig, training)
    elif isinstance(layer, (*_ZEROPAD, *_CROP)):
        new, back = _pad(layer, sig, out_shape)
    else:  # Flatten, Reshape
        new, back = _reshape(sig, out_shape)
    return new, new, False, False, lambda g: [back(g)]


def _activate(pre: _Signal, f):
    """(output signal, nonlinearity applied, is softmax) for f applied to `pre`."""
    if f == SOFTMAX:
        return pre, False, True
    if f.kind == "id":
        return pre, False, False
    return pre.apply(f), True, False


def _top_values(top_grad_var, sinks: list[str]) -> dict[str, float]:
    """Var(dC/ds) at each sink's pre-activation: one number for all, or one per sink by name."""
    if not isinstance(top_grad_var, dict):
        return dict.fromkeys(sinks, float(top_grad_var))
    if sorted(top_grad_var) != sinks:
        raise ValueError(
            "`top_grad_var` as a dict must name exactly the selected layers no other selected layer reads from "
            f"(where the backward chains start): {sinks}. Received: top_grad_var={top_grad_var!r}"
        )
    return {k: float(v) for k, v in top_grad_var.items()}


def predict_variance(
    model: keras.Model,
    input_var: float | np.ndarray = 1.0,
    input_mean: float | np.ndarray = 0.0,
    top_grad_var: float = 1.0,
    *,
    training: bool = True,
    layers=None,
) -> pd.DataFrame:
    """Predicted per-layer variances at initialization, from the model's actual weights (see the module docstring).

    It reads the weights as they are now: call it before `fit` to set it beside the monitor's step 0.

    Example:
    >>> model = keras.Sequential([keras.Input((256,))] + [keras.layers.Dense(256, activation="relu",
    ...     kernel_initializer=GlorotFanIn()) for _ in range(10)])
    >>> s = predict_variance(model).query("kind == 'preact'")["value"].to_numpy()
    >>> round(float((s[-1] / s[0]) ** (1 / 9)), 1)  # halves per layer (He et al. 2015, Eq 7)
    0.5

    Args:
        model: a built Keras model of any kind (Sequential, Functional, nested, subclassed) with one input of a
            fixed shape.
        input_var: variance of each input element (a number, or one per input feature: the last axis).
        input_mean: mean of each input element (idem). Elements are taken as independent.
        top_grad_var: Var(dC/ds) at the pre-activation of each sink (a selected layer no other selected layer
            reads from: the topmost one in a chain), the start of the backward chains; a dict by layer name gives
            each sink (e.g. each head) its own.
            The default 1 makes the gradient rows relative to it; `compare` anchors them to a measurement.
        training: BatchNormalization with batch statistics and active dropout (the `VarianceMonitor` default), or
            inference mode (moving statistics, no dropout).
        layers: which layers get rows, as `VarianceMonitor(layers=...)`: None (the monitor's default), names,
            a regex or layer types. Names and depths are the monitor's, so the two frames line up.

    Returns:
        A tidy DataFrame with columns layer, depth, kind ("preact", "activation", "grad_preact"), stat ("var"),
        value: the variance over all elements (batch, positions, units) of s, f(s) and dC/ds. A softmax layer has
        no "activation" row.

    References:
    - [Glorot & Bengio, 2010](https://proceedings.mlr.press/v9/glorot10a.html), Eq 5-14
    - [He et al., 2015](https://arxiv.org/abs/1502.01852), Eq 7-14
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model of type {type(model).__name__}")
    for name, val in (("input_var", input_var), ("top_grad_var", top_grad_var)):
        vals = list(val.values()) if isinstance(val, dict) and name == "top_grad_var" else val
        arr = np.asarray(vals, dtype=np.float64) if not isinstance(vals, bool) else np.asarray(np.nan)
        if not (np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.any(arr > 0)):
            raise ValueError(f"`{name}` must be finite, >= 0 and not all 0. Received: {name}={val!r}")
    if not isinstance(top_grad_var, dict) and np.ndim(top_grad_var) != 0:
        raise ValueError(
            "`top_grad_var` must be a number or a dict of numbers by layer name. "
            f"Received: top_grad_var={top_grad_var!r}"
        )
    if isinstance(input_mean, bool) or not np.all(np.isfinite(np.asarray(input_mean, dtype=np.float64))):
        raise ValueError(f"`input_mean` must be finite. Received: input_mean={input_mean!r}")
    graph = call_graph(model)
    in_shapes = [graph.shapes[r] for r in graph.inputs]
    if len(in_shapes) != 1 or not in_shapes[0] or any(d is None for d in in_shapes[0]):
        raise ValueError(
            "`model` must have one input with a fixed shape (every axis but the batch known). "
            f"Received: input shapes {in_shapes}"
        )
    in_shape = in_shapes[0]
    calls = graph.calls
    targets = {id(t.layer): t for t in select_layers(model, layers)}
    selected = [c.first and id(c.layer) in targets for c in calls]
    made = graph.producers()
    consumers: dict[int, list[int]] = {}
    for i, c in enumerate(calls):
        for r in c.inputs:
            consumers.setdefault(r, []).append(i)

    # The calls the selected layers depend on, and why any of them cannot be predicted: all named in one error.
    needed = [False] * len(calls)
    todo = [i for i, s in enumerate(selected) if s]
    while todo:
        i = todo.pop()
        if not needed[i]:
            needed[i] = True
            todo.extend(made[r] for r in calls[i].inputs if r in made)
    softmax_out: dict[int, str] = {}  # tensor -> the softmax it passed through
    problems = []
    for i, c in enumerate(calls):
        after = next((softmax_out[r] for r in c.inputs if r in softmax_out), None)
        if after is None and _is_softmax(c.layer):
            after = c.layer.name
        if after is not None:
            softmax_out.update((r, after) for r in c.outputs)
        if not needed[i]:
            continue
        why = _problem(c.layer, [graph.shapes[r] for r in c.inputs])
        outside = [r for r in c.inputs if r not in made and r not in graph.inputs]
        if why is None and outside:
            why = "reads a tensor computed outside any layer"
        if why is None and len(c.outputs) != 1:
            why = f"{len(c.outputs)} outputs"
        if why is None and any(r in softmax_out for r in c.inputs):
            why = f"reads the output of the softmax in {softmax_out[c.inputs[0]]!r} (no elementwise moments)"
        if why is not None:
            problems.append((i, f"{c.layer.name!r} ({type(c.layer).__name__}: {why})"))
    if problems:
        first = problems[0][0]
        prefix = [targets[id(c.layer)].name for i, c in enumerate(calls[:first]) if selected[i]]
        hint = ""
        if 0 < len(prefix) <= 4:
            hint = f"; `layers={prefix!r}` predicts the prefix before the first of them"
        elif prefix:
            hint = f"; `layers=` naming the {len(prefix)} selected layers up to {prefix[-1]!r} predicts that prefix"
        raise ValueError(
            f"`model` has {len(problems)} layer(s) the theory cannot predict: {', '.join(p for _, p in problems)}. "
            f"Supported: {_SUPPORTED}{hint}."
        )

    # Forward, in call order.
    n, positions = int(in_shape[-1]), math.prod(in_shape[:-1])
    mean0, var0 = _per_unit(input_mean, n, "input_mean"), _per_unit(input_var, n, "input_var")
    sigs = {graph.inputs[0]: _Signal(in_shape, IDENTITY, np.tile(mean0, (positions, 1)), np.tile(var0, (positions, 1)))}
    rows, steps = [], {}
    for i, c in enumerate(calls):
        if not needed[i]:
            continue
        pre, out, nonlinear, softmax, back = _step(
            c.layer, [sigs[r] for r in c.inputs], graph.shapes[c.outputs[0]], training
        )
        sigs[c.outputs[0]] = out
        steps[i] = _Step(pre, out if nonlinear else None, back)
        if selected[i]:
            t = targets[id(c.layer)]
            rows.append((t.name, t.index, "preact", pre.var()))
            if not softmax:
                rows.append((t.name, t.index, "activation", out.var()))

    # Backward: from the sinks (selected layers no other selected layer reads from, directly or not) down.
    below = [False] * len(calls)  # a selected call reads from this one, directly or not
    above = [False] * len(calls)  # this call reads from a selected one, directly or not
    for i in reversed(range(len(calls))):
        below[i] = any(selected[j] or below[j] for r in calls[i].outputs for j in consumers.get(r, []))
    for i, c in enumerate(calls):
        above[i] = any(selected[made[r]] or above[made[r]] for r in c.inputs if r in made)
    sinks = {i: targets[id(calls[i].layer)].name for i, s in enumerate(selected) if s and not below[i]}
    top = _top_values(top_grad_var, sorted(sinks.values()))
    grads: dict[int, np.ndarray] = {}
    for i in reversed(range(len(calls))):
        if i not in steps:
            continue
        st, c = steps[i], calls[i]
        if i in sinks:
            g = np.full(st.pre.m.shape, top[sinks[i]])
        elif c.outputs[0] in grads:
            g = grads.pop(c.outputs[0])
            g = g if st.act is None else g * st.act.d
        else:
            continue
        if selected[i]:
            t = targets[id(c.layer)]
            rows.append((t.name, t.index, "grad_preact", float(np.mean(g))))
        if above[i]:
            for r, gi in zip(c.inputs, st.back(g), strict=True):
                grads[r] = grads[r] + gi if r in grads else gi
    frame = pd.DataFrame(rows, columns=["layer", "depth", "kind", "value"])
    frame.insert(3, "stat", "var")
    frame["depth"] = frame["depth"].astype("int64")
    order = {k: i for i, k in enumerate(THEORY_KINDS)}
    frame = frame.sort_values(["depth", "kind"], key=lambda s: s.map(order) if s.name == "kind" else s)
    return frame.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------------
# Measured beside predicted.

ANCHORS = ("top", None)


def _theory_rows(frame: pd.DataFrame, name: str, step) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"`{name}` must be a pandas DataFrame. Received: {name} of type {type(frame).__name__}")
    missing = [c for c in ("layer", "depth", "kind", "value") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"`{name}` must have the columns layer, depth, kind, value (and stat). Missing {missing}; "
            f"received columns {list(frame.columns)}"
        )
    keep = frame["kind"].isin(THEORY_KINDS)
    if "stat" in frame.columns:
        keep &= frame["stat"] == "var"
    if "unit" in frame.columns:
        raise ValueError(f"`{name}` holds one unit's statistics (a `unit` column): pass the layer-level frame")
    if step is not None and "step" in frame.columns:
        keep &= frame["step"] == step
    rows = frame.loc[keep, ["layer", "depth", "kind", "value"]]
    if rows.empty:
        at = f" at step {step}" if step is not None and "step" in frame.columns else ""
        raise ValueError(f"`{name}` has no rows with stat 'var' and kind in {THEORY_KINDS}{at}.")
    dup = rows.duplicated(["layer", "kind"], keep=False)
    if dup.any():
        first = rows.loc[dup].iloc[0]
        raise ValueError(
            f"`{name}` has several rows for layer {first['layer']!r}, kind {first['kind']!r}: select one run "
            "(one seed, one step) before comparing."
        )
    return rows


def compare(measured: pd.DataFrame, predicted: pd.DataFrame, *, step: int | None = 0, anchor: str | None = "top"):
    """Measured beside predicted variance per (layer, depth, kind), with their ratio.

    Example:
    >>> monitor = VarianceMonitor(probe=(x[:256], y[:256]))
    >>> predicted = predict_variance(model, input_var=x.var(axis=0), input_mean=x.mean(axis=0))
    >>> table = compare(monitor.measure(model), predicted)

    Args:
        measured: a monitor frame (`VarianceMonitor.to_frame()` or `.measure()`), or any frame with columns layer,
            depth, kind, value (stat, step optional). Only stat "var" of kinds "preact", "activation",
            "grad_preact" is used, one row per (layer, kind).
        predicted: `predict_variance(model, ...)`.
        step: the measured step to compare (0: at initialization, where the theory holds); None keeps all rows.
        anchor: "top": the predicted gradient chain is rescaled so that the topmost layer with a measured
            grad_preact matches it (its ratio is 1 by construction: the `anchor` column marks it); the backward
            prediction starts from a value it cannot know (the loss's gradient at the top). None: no rescaling
            (when `top_grad_var` was given).

    Returns:
        DataFrame with columns layer, depth (the measured one), kind, measured, predicted, ratio (measured /
        predicted), anchor (bool), sorted by kind then depth; layers present in both frames only.
    """
    if anchor not in ANCHORS:
        raise ValueError(f"`anchor` must be one of {ANCHORS}. Received: anchor={anchor!r}")
    m = _theory_rows(measured, "measured", step)
    p = _theory_rows(predicted, "predicted", None)
    out = m.rename(columns={"value": "measured"}).merge(
        p[["layer", "kind", "value"]].rename(columns={"value": "predicted"}), on=["layer", "kind"], how="inner"
    )
    if out.empty:
        raise ValueError(
            "`measured` and `predicted` share no (layer, kind): were they made from the same model with the same "
            f"`layers`? Measured layers: {sorted(m['layer'].unique())}; predicted: {sorted(p['layer'].unique())}"
        )
    out["anchor"] = False
    if anchor == "top":
        grad = out.index[(out["kind"] == "grad_preact") & np.isfinite(out["measured"]) & (out["predicted"] > 0)]
        if len(grad):
            top = out.loc[grad, "depth"].idxmax()
            scale = out.at[top, "measured"] / out.at[top, "predicted"]
            out.loc[out["kind"] == "grad_preact", "predicted"] *= scale
            out.at[top, "anchor"] = True
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ratio"] = out["measured"] / out["predicted"]
    order = {k: i for i, k in enumerate(THEORY_KINDS)}
    out = out.sort_values(["kind", "depth"], key=lambda s: s.map(order) if s.name == "kind" else s)
    return out[["layer", "depth", "kind", "measured", "predicted", "ratio", "anchor"]].reset_index(drop=True)
