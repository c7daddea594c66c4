"""Layers: the leaf and the selected layers of a model in forward order, their true fans and conv geometry.

Shared by the monitor (which layers it records, and how each one's nonlinearity is reached) and the theory (which
layers get rows, and which kernel taps reach which positions). Keras only: runs under any backend.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keras_initkit.activations import ACTIVATION_LAYERS, layer_activation

__all__ = [
    "Axis",
    "Target",
    "as_tuple",
    "conv_params",
    "gather_matmul",
    "gather_sum",
    "layer_fans",
    "leaf_layers",
    "scatter_matmul",
    "scatter_sum",
    "select_layers",
    "window",
    "window_axis",
]

# Layers with a sliding kernel.
CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
CONV_T = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


# ----------------------------------------------------------------------------------------------------------------
# Which layers, in forward order.


@dataclass
class Target:
    """One selected layer: its depth, display name, how its nonlinearity is reached, that nonlinearity's name, the
    axis of its units (channels) and its kernel."""

    index: int  # depth: 0-based index among monitored layers, input side first
    name: str
    layer: Any
    mode: str  # "fused": has an `activation` attribute; "input": activation layer; "identity": f = identity
    activation: str | None
    unit_axis: int
    kernel: Any  # keras.Variable or None


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
    return bool(layer.weights) or callable(getattr(layer, "activation", None)) or type(layer) in ACTIVATION_LAYERS


def select_layers(model, layers) -> list[Target]:
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
        if callable(getattr(la, "activation", None)) and not isinstance(la, tuple(ACTIVATION_LAYERS)):
            mode = "fused"
        elif type(la) in ACTIVATION_LAYERS:
            mode = "input"
        else:
            mode = "identity"
        act_name = None if mode == "identity" else layer_activation(la)
        kernel = getattr(la, "kernel", None)
        kernel = kernel if isinstance(kernel, keras.Variable) else None
        unit_axis = 1 if getattr(la, "data_format", None) == "channels_first" else -1
        targets.append(Target(i, name, la, mode, act_name, unit_axis, kernel))
    return targets


# ----------------------------------------------------------------------------------------------------------------
# Geometry: which kernel taps reach which positions, the true fans, and sums over the taps of each window.


def conv_params(layer):
    """Kernel as (taps, in, out) with groups/depthwise expanded; kernel size, strides, dilation, padding, transposed."""
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(
            "`model` layers must use data_format='channels_last'. "
            f"Received: layer {layer.name!r} with data_format={layer.data_format!r}"
        )
    w = np.asarray(keras.ops.convert_to_numpy(layer.kernel), dtype=np.float64)
    k = tuple(int(d) for d in w.shape[:-2])
    taps = math.prod(k)
    if isinstance(layer, CONV_T):
        w3 = np.swapaxes(w.reshape(taps, w.shape[-2], w.shape[-1]), 1, 2)  # stored (k, out, in) -> (k, in, out)
    elif isinstance(layer, DEPTHWISE):
        cin, mult = w.shape[-2], w.shape[-1]
        w3 = np.zeros((taps, cin, cin * mult))
        for c in range(cin):
            w3[:, c, c * mult : (c + 1) * mult] = w.reshape(taps, cin, mult)[:, c, :]
    else:
        groups = int(getattr(layer, "groups", 1) or 1)
        cin_g, cout = w.shape[-2], w.shape[-1]
        w3 = np.zeros((taps, cin_g * groups, cout))
        per = cout // groups
        for g in range(groups):
            w3[:, g * cin_g : (g + 1) * cin_g, g * per : (g + 1) * per] = w.reshape(taps, cin_g, cout)[
                :, :, g * per : (g + 1) * per
            ]
    strides = as_tuple(getattr(layer, "strides", 1), len(k))
    dilation = as_tuple(getattr(layer, "dilation_rate", 1), len(k))
    return w3, k, strides, dilation, layer.padding, isinstance(layer, CONV_T)


def as_tuple(v, n):
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


@dataclass
class Axis:
    """One spatial axis of a sliding window (conv, transposed conv, pool): the input position each (output, tap)
    reads, or `valid` False where the tap falls on padding."""

    valid: np.ndarray  # (n_out, k) bool
    src: np.ndarray  # (n_out, k) input position (0 where not valid)
    n_in: int
    n_out: int


def window_axis(k, s, d, padding, n_in, n_out, transposed) -> Axis:
    small, big = (n_in, n_out) if transposed else (n_out, n_in)
    if padding == "causal":
        before = (k - 1) * d
    elif padding == "same":
        before = max((small - 1) * s + (k - 1) * d + 1 - big, 0) // 2
    else:
        before = 0
    pos = np.arange(small)[:, None] * s + np.arange(k)[None, :] * d - before  # big-side position of (small, tap)
    ok = (pos >= 0) & (pos < big)
    if not transposed:
        return Axis(ok, np.where(ok, pos, 0), n_in, n_out)
    valid = np.zeros((big, k), dtype=bool)  # outputs are the big side: output o gets tap t from one small j
    src = np.zeros((big, k), dtype=np.int64)
    jj, tt = np.nonzero(ok)
    valid[pos[jj, tt], tt] = True
    src[pos[jj, tt], tt] = jj
    return Axis(valid, src, n_in, n_out)


def layer_fans(layer) -> tuple[float, float]:
    """True (fan_in, fan_out) of a layer with a kernel: inputs summed into one output, outputs one input feeds.

    Away from the borders. Unlike `kernel_fans` (Keras' convention, read off the kernel's shape), this accounts for
    a transposed convolution's swapped kernel axes and its stride, a strided convolution's fan-out, groups, and a
    depthwise kernel's single input channel:

    | layer | fan_in | fan_out |
    |---|---|---|
    | Dense(out) on in features | in | out |
    | ConvND(out, k, strides=s), in channels, groups g | prod(k) * in / g | prod(k) * out / (g * prod(s)) |
    | ConvNDTranspose(out, k, strides=s), in channels | prod(k) * in / prod(s) | prod(k) * out |
    | DepthwiseConvND(k, strides=s, depth_multiplier=m) | prod(k) | prod(k) * m / prod(s) |

    Values are floats: with strides an average (a stride-2 3x3 kernel reaches 9/4 outputs per input on average).

    Example:
    >>> conv = keras.layers.Conv2DTranspose(32, 3, strides=2)
    >>> conv.build((None, 8, 8, 64))
    >>> layer_fans(conv)
    (144.0, 288.0)

    Reference:
    - [He et al., 2015](https://arxiv.org/abs/1502.01852), Eq 10 (n = k^2 c) and Eq 14 (n^ = k^2 d)
    """
    if isinstance(layer, keras.layers.Dense):
        if not layer.built:
            raise ValueError(f"`layer` must be built (it has no kernel yet). Received: layer {layer.name!r}")
        n_in, n_out = layer.kernel.shape
        return float(n_in), float(n_out)
    if isinstance(layer, (*CONV, *CONV_T, *DEPTHWISE)):
        if not layer.built:
            raise ValueError(f"`layer` must be built (it has no kernel yet). Received: layer {layer.name!r}")
        w3, k, strides, _, _, transposed = conv_params(layer)
        nz = (w3 != 0).any(axis=0)  # (in, out) channel pairs that the group/depthwise structure connects
        per_out = nz.sum(axis=0).mean()  # input channels summed into one output channel
        per_in = nz.sum(axis=1).mean()  # output channels one input channel feeds
        taps, stride = math.prod(k), math.prod(strides)
        if transposed:  # each (input, tap) pair lands on one output: an output gets prod(k) / prod(s) of them
            return float(per_out * taps / stride), float(per_in * taps)
        return float(per_out * taps), float(per_in * taps / stride)
    raise ValueError(
        "`layer` must be a Dense, ConvND, ConvNDTranspose or DepthwiseConvND layer. "
        f"Received: layer {getattr(layer, 'name', layer)!r} of type {type(layer).__name__}"
    )


def window(axes: list[Axis]) -> tuple[np.ndarray, np.ndarray]:
    """(valid, src), each (output positions, taps): the flattened input position each tap reads."""
    n = len(axes)
    valid = np.ones([1] * 2 * n, dtype=bool)
    src = np.zeros([1] * 2 * n, dtype=np.int64)
    stride = 1
    for i in reversed(range(n)):  # row-major positions and taps, as Keras flattens them
        shape = [1] * 2 * n
        shape[i], shape[n + i] = axes[i].valid.shape
        valid = valid & axes[i].valid.reshape(shape)
        src = src + axes[i].src.reshape(shape) * stride
        stride *= axes[i].n_in
    full = [a.n_out for a in axes] + [a.valid.shape[1] for a in axes]
    p, t = math.prod(full[:n]), math.prod(full[n:])
    valid = np.broadcast_to(valid, full).reshape(p, t)
    src = np.broadcast_to(src, full).reshape(p, t)
    return valid, np.where(valid, src, 0)


_CHUNK = 1 << 22  # elements of one gathered block (positions x taps x channels)


def gather_matmul(field, valid, src, w3):
    """sum over taps t and input units i of field[src[p, t], i] * w3[t, i, o], zero where not valid."""
    p, t = valid.shape
    w = w3.reshape(t * w3.shape[1], w3.shape[2])
    out = np.empty((p, w3.shape[-1]))
    step = max(1, _CHUNK // max(1, t * field.shape[1]))
    for lo in range(0, p, step):
        cols = field[src[lo : lo + step]] * valid[lo : lo + step, :, None]
        out[lo : lo + step] = cols.reshape(len(cols), -1) @ w
    return out


def scatter_matmul(grad, valid, src, w3t, n_in):
    """The adjoint of gather_matmul: sum over (p, t) reading input position q of grad[p] @ w3t[t]."""
    t, n_out, n_units = w3t.shape
    per_tap = (grad @ np.moveaxis(w3t, 0, 1).reshape(n_out, t * n_units)).reshape(len(grad), t, n_units)
    out = np.zeros((n_in, n_units))
    for k in range(t):  # one tap reads each input position at most once: plain indexed add
        rows = valid[:, k]
        out[src[rows, k]] += per_tap[rows, k]
    return out


def gather_sum(field, valid, src):
    """sum over the window's taps t of field[src[p, t], :], zero where not valid."""
    return np.einsum("ptj,pt->pj", field[src], valid.astype(np.float64))


def scatter_sum(grad, valid, src, n_in):
    """The adjoint of gather_sum."""
    out = np.zeros((n_in, grad.shape[1]))
    for t in range(valid.shape[1]):
        rows = valid[:, t]
        out[src[rows, t]] += grad[rows]
    return out
