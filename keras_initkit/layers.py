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
    "Call",
    "Graph",
    "Target",
    "as_tuple",
    "call_graph",
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
    """Leaf layers in forward order, through nested models, each with its containers' names.

    The order is that of each layer's first call in the forward pass (`call_graph`), for every kind of model
    (Sequential, Functional, nested, subclassed): a shared layer is placed at its first call. Layers the forward
    pass never calls come last; a model not built yet has no forward pass to read, and its layers come in tracking
    order (a Sequential's is its forward order; a subclassed model's is attribute creation order).
    """
    tracked = _tracked_leaves(model, [model.name])
    if _input_shapes(model) is None:
        return tracked
    out, seen = [], set()
    for c in call_graph(model).calls:
        if c.first and isinstance(c.layer, keras.layers.Layer) and id(c.layer) not in seen:
            seen.add(id(c.layer))
            out.append((c.layer, c.parents))
    return out + [(la, p) for la, p in tracked if id(la) not in seen]


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
# The call graph: which layer reads which tensors, in forward order.


@dataclass
class Call:
    """One call of a leaf layer (or of a non-layer operation in a functional graph) in the forward pass."""

    layer: Any
    parents: list[str]  # the containers' names, outermost first
    inputs: list[int]  # tensor ids (local to one Graph) it reads
    outputs: list[int]  # tensor ids it writes
    first: bool  # the layer's first call (a shared layer is called several times)


@dataclass
class Graph:
    """A model's forward pass as calls in forward order (each after the calls it reads from), with the per-example
    shape of each tensor. A tensor that is neither an input nor written by a call was computed outside any layer
    (e.g. `x + y` in a subclassed model's `call`)."""

    calls: list[Call]
    inputs: list[int]
    outputs: list[int]
    shapes: dict[int, tuple]

    def producers(self) -> dict[int, int]:
        """Tensor id -> index of the call that writes it."""
        return {r: i for i, c in enumerate(self.calls) for r in c.outputs}


class _Builder:
    def __init__(self):
        self.calls: list[Call] = []
        self.shapes: dict[int, tuple] = {}
        self.seen: set[int] = set()

    def ref(self, shape) -> int:
        r = len(self.shapes)
        self.shapes[r] = tuple(shape)
        return r

    def add(self, layer, parents, inputs, shapes) -> list[int]:
        outs = [self.ref(s) for s in shapes]
        self.calls.append(Call(layer, parents, list(inputs), outs, id(layer) not in self.seen))
        self.seen.add(id(layer))
        return outs

    def expand(self, model, inputs, parents) -> list[int]:
        """The model's calls, reading `inputs`: its symbolic graph when it has one, else a traced forward pass."""
        try:
            outputs = list(model.outputs)
        except (AttributeError, ValueError):
            return self.trace(model, inputs, parents)
        return self.walk(model, inputs, parents, outputs)

    def walk(self, model, inputs, parents, outputs) -> list[int]:
        """A functional model's graph, from its outputs back to its inputs (depth first, iteratively)."""
        refs = {id(t): r for t, r in zip(model.inputs, inputs, strict=True)}
        stack = [(t, False) for t in reversed(outputs)]
        while stack:
            tensor, ready = stack.pop()
            if id(tensor) in refs:
                continue
            op, node_index, _ = tensor._keras_history
            node = op._inbound_nodes[node_index]
            if not ready:
                stack.append((tensor, True))
                stack.extend((x, False) for x in reversed(node.input_tensors) if id(x) not in refs)
                continue
            ins = [refs[id(x)] for x in node.input_tensors]
            if isinstance(op, keras.Model) and (not _has_graph(op) or len(op.inputs) == len(ins)):
                outs = self.expand(op, ins, [*parents, op.name])
            else:
                outs = self.add(op, parents, ins, [tuple(x.shape[1:]) for x in node.output_tensors])
            refs.update((id(x), r) for x, r in zip(node.output_tensors, outs, strict=True))
        return [refs[id(t)] for t in outputs]

    def trace(self, model, inputs, parents) -> list[int]:
        """A model without a symbolic graph (subclassed): its leaf layers' calls recorded during one forward pass on
        a batch of one zero example."""
        shapes = [self.shapes[r] for r in inputs]
        if any(d is None for s in shapes for d in s):
            raise ValueError(
                f"`model` {model.name!r} has no symbolic graph and an input shape with unknown axes {shapes}: "
                "its forward order cannot be traced"
            )
        xs = [keras.ops.zeros((1, *s)) for s in shapes]
        refs = {id(x): r for x, r in zip(xs, inputs, strict=True)}
        keep = list(xs)  # keeps every traced tensor alive, so that no id is reused

        def ref_of(t):
            if id(t) not in refs:  # computed outside any layer
                refs[id(t)] = self.ref(tuple(t.shape[1:]))
                keep.append(t)
            return refs[id(t)]

        active = [0]

        def wrap(layer, orig, where):
            def call(*args, **kwargs):
                if active[0]:  # a leaf called inside another leaf belongs to it
                    return orig(*args, **kwargs)
                active[0] += 1
                try:
                    out = orig(*args, **kwargs)
                finally:
                    active[0] -= 1
                read = keras.tree.flatten((args, {k: v for k, v in kwargs.items() if k not in ("mask", "training")}))
                ins = [ref_of(t) for t in read if keras.ops.is_tensor(t)]
                written = [t for t in keras.tree.flatten(out) if keras.ops.is_tensor(t)]
                keep.extend(written)
                outs = self.add(layer, where, ins, [tuple(t.shape[1:]) for t in written])
                refs.update((id(t), r) for t, r in zip(written, outs, strict=True))
                return out

            return call

        saved = []
        try:
            for layer, where in _tracked_leaves(model, parents):
                saved.append((layer, layer.__dict__.get("call")))
                object.__setattr__(layer, "call", wrap(layer, layer.call, where))
            out = model(xs[0] if len(xs) == 1 else xs)
        finally:
            for layer, own in reversed(saved):
                if own is None:
                    object.__delattr__(layer, "call")
                else:
                    object.__setattr__(layer, "call", own)
        return [ref_of(t) for t in keras.tree.flatten(out) if keras.ops.is_tensor(t)]


def _has_graph(model) -> bool:
    try:
        return all(hasattr(t, "_keras_history") for t in model.outputs)
    except (AttributeError, ValueError):
        return False


def _tracked_leaves(model, parents) -> list[tuple[Any, list[str]]]:
    """Leaf layers in tracking order (attribute creation order in a subclassed model), each with its containers."""
    out, seen = [], set()

    def walk(layer, where):
        for sub in getattr(layer, "layers", None) or []:
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if getattr(sub, "layers", None):
                walk(sub, [*where, sub.name])
            elif not isinstance(sub, keras.layers.InputLayer):
                out.append((sub, where))

    walk(model, parents)
    return out


def _input_shapes(model) -> list[tuple] | None:
    """Per-example input shapes of a built model: its symbolic inputs, else the shape it was built with."""
    try:
        return [tuple(x.shape[1:]) for x in model.inputs]
    except (AttributeError, ValueError):
        pass
    if not model.built:
        return None
    shape = (model.get_build_config() or {}).get("input_shape")
    if shape is None:
        return None
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [tuple(s[1:]) for s in shape]
    return [tuple(shape[1:])]


def call_graph(model) -> Graph:
    """The model's forward pass as a graph of leaf-layer calls, in forward order.

    Functional and Sequential models (and functional models nested in them) are read off their symbolic graph;
    a subclassed model (or one nested in a functional model) is traced: its leaf layers' calls are recorded while
    it runs once on one zero example of the shape it was built with. Calls come in a topological order (each after
    the calls whose outputs it reads); a shared layer has one call per use, its first one marked `first`.

    Raises:
        ValueError: when the model is not built (nothing to trace), or a subclassed model has unknown input axes.
    """
    shapes = _input_shapes(model)
    if shapes is None:
        raise ValueError(
            f"`model` must be built (call it on data, `model.build(shape)` or use keras.Input) before its forward "
            f"order can be read. Received: model {model.name!r}, built={model.built}"
        )
    b = _Builder()
    inputs = [b.ref(s) for s in shapes]
    outputs = b.expand(model, inputs, [model.name])
    return Graph(b.calls, inputs, outputs, b.shapes)


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
