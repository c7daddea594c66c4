"""The PyTorch backend of the monitor: `torch.autograd.grad` over one eager probe pass.

The gradient of the loss w.r.t. a tensor inside the call: each tapped tensor s goes on as a view of itself (a new
autograd node, so dC/d view is the gradient through this layer's path only, as the TensorFlow backend's identity op;
no copy is made), and `torch.autograd.grad` gives it with the kernels' and the recurrent hidden states' (their zero
eps, `keras_initkit.recurrent.TimeTaps`, made leaves that require a gradient). The pass runs eagerly under
`torch.enable_grad()` (a callback may run under `no_grad`) in a `keras.StatelessScope`, so no BatchNormalization,
seed or metric update escapes; the statistics then run under `torch.no_grad()` on the tensors' device.

`TFLike` is the statistics' shim: the subset of TensorFlow's names that `keras_initkit.stats`, `record` and
`recurrent` use, over `keras.ops` (so every tensor it makes is on Keras' device, as the model's are). Every shape is
static, so the statistics take their static-shape branches; their float64 accumulations are float64.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable

import keras
import numpy as np

from keras_initkit.backends import Holder, check_called, probe_loss, tensor_values, unwrap
from keras_initkit.hooks import LayerHooks
from keras_initkit.recurrent import TimeTaps

__all__ = ["TFLike", "ops", "probe_function", "tensor_values"]


class _Variable(Holder):
    """A `Holder` of a torch tensor on Keras' device (the histogram ranges)."""

    @staticmethod
    def asarray(value, dtype=None):
        return keras.ops.convert_to_tensor(value, dtype=dtype)


def _tflike():
    o = keras.ops
    wrap = lambda f: lambda *a, **k: f(*(unwrap(x) for x in a), **k)  # noqa: E731

    def axis_of(axis):
        return tuple(axis) if isinstance(axis, (list, tuple)) else axis

    def reduce(f):
        return lambda x, axis=None: f(unwrap(x), axis=axis_of(axis))

    def concat(values, axis=0):
        values = [unwrap(v) for v in values]
        if not any(keras.ops.is_tensor(v) for v in values):
            return np.concatenate([np.asarray(v) for v in values], axis)  # a static shape, as tf.shape's
        return o.concatenate([o.convert_to_tensor(v) for v in values], axis)

    def as_shape(shape):
        return tuple(int(d) for d in np.asarray(shape).reshape(-1))

    def argmax(x, axis=None, output_type=None):
        out = o.argmax(unwrap(x), axis=axis)
        return out if output_type is None else o.cast(out, output_type)

    def gather(x, indices, axis=0):
        return o.take(unwrap(x), o.convert_to_tensor(indices), axis=axis)

    def where(condition, x, y):
        condition, x, y = (unwrap(v) for v in (condition, x, y))
        like = next((v for v in (x, y) if keras.ops.is_tensor(v)), None)
        dtype = like.dtype if like is not None else None
        return o.where(condition, o.convert_to_tensor(x, dtype=dtype), o.convert_to_tensor(y, dtype=dtype))

    def cond(pred, true_fn, false_fn):
        return true_fn() if bool(unwrap(pred)) else false_fn()

    def strided_slice(x, begin, end, strides):
        return unwrap(x)[int(begin[0]) : int(end[0]) : int(np.asarray(strides).reshape(-1)[0])]

    return types.SimpleNamespace(
        float16="float16",
        bfloat16="bfloat16",
        float32="float32",
        float64="float64",
        int32="int32",
        int64="int64",
        bool="bool",
        Variable=_Variable,
        abs=wrap(o.abs),
        argmax=argmax,
        cast=lambda x, dtype: o.cast(unwrap(x), dtype),
        concat=concat,
        cond=cond,
        constant=lambda value, dtype=None: o.convert_to_tensor(unwrap(value), dtype=dtype),
        control_dependencies=lambda _deps: contextlib.nullcontext(),
        convert_to_tensor=lambda value, dtype=None: o.convert_to_tensor(unwrap(value), dtype=dtype),
        equal=wrap(o.equal),
        floor=wrap(o.floor),
        gather=gather,
        identity=wrap(lambda x: x),
        logical_not=wrap(o.logical_not),
        maximum=wrap(o.maximum),
        minimum=wrap(o.minimum),
        norm=lambda x, axis=None: o.norm(unwrap(x), axis=axis),
        ones=lambda shape, dtype="float32": o.ones(as_shape(shape), dtype),
        ones_like=wrap(o.ones_like),
        range=lambda *a, **k: o.arange(*a, **k),
        reduce_all=reduce(o.all),
        reduce_max=reduce(o.max),
        reduce_mean=reduce(o.mean),
        reduce_min=reduce(o.min),
        reduce_sum=reduce(o.sum),
        reshape=lambda x, shape: o.reshape(unwrap(x), as_shape(shape)),
        reverse=lambda x, axis: o.flip(unwrap(x), axis=axis_of(axis)),
        shape=lambda x: np.asarray(tuple(x.shape), dtype=np.int64),
        size=lambda x: int(np.prod(tuple(x.shape))),
        sort=wrap(o.sort),
        sqrt=wrap(o.sqrt),
        square=wrap(o.square),
        stack=lambda values, axis=0: o.stack([unwrap(v) for v in values], axis),
        strided_slice=strided_slice,
        where=where,
        zeros=lambda shape, dtype="float32": o.zeros(as_shape(shape), dtype),
        zeros_like=wrap(o.zeros_like),
        math=types.SimpleNamespace(
            is_finite=wrap(o.isfinite),
            reduce_euclidean_norm=lambda x, axis=None: o.sqrt(o.sum(o.square(unwrap(x)), axis=axis_of(axis))),
            unsorted_segment_sum=lambda data, ids, n: o.segment_sum(unwrap(data), unwrap(ids), num_segments=n),
        ),
    )


TFLike = None  # made at the first `ops()`


def ops():
    global TFLike
    if TFLike is None:
        TFLike = _tflike()
    return TFLike


def probe_function(
    model,
    targets,
    time_targets,
    data,
    *,
    grads: bool,
    training: bool,
    xla: bool,
    reduce: Callable,
    state=(),
    loss: Callable | None = None,
):
    """The probe record of `model` on `data` = (x, y, sample_weight): a callable () -> `reduce(tensors, taps,
    time_grads)` as the TensorFlow backend's (see there), run eagerly at each call; what `reduce` returns comes back
    detached, on the CPU. `xla` is moot; `state` (the histogram ranges `reduce` assigns) needs nothing here.
    """
    import torch

    to_t = lambda v: None if v is None else keras.tree.map_structure(keras.ops.convert_to_tensor, v)  # noqa: E731
    x, y, sw = (to_t(v) for v in data)

    def probe():
        rec: dict[tuple[int, str], object] = {}
        kernels = {t.index: keras.ops.convert_to_tensor(t.kernel) for t in targets if t.kernel is not None}

        def keep(kind):
            def f(t, s):
                s = s.view_as(s)  # the gradient w.r.t. this view is then the one through this layer only
                rec[(t.index, kind)] = s
                return s

            return f

        with torch.enable_grad():
            with keras.StatelessScope():  # no BatchNormalization, seed or metric update escapes the probe
                with (
                    LayerHooks(targets, keep("preact"), keep("activation")) as hooks,
                    TimeTaps(time_targets, lambda eps: eps.requires_grad_(grads)) as taps,
                ):
                    y_pred = model(x, training=training)
                cost = probe_loss(model, loss, x, y, y_pred, sw) if grads else None
            check_called(targets, hooks)
            eps = taps.sources()
            tensors = dict(rec)
            time_grads = None
            if grads:
                keys = [k for k in rec] + [(i, "kernel") for i in kernels]
                srcs = [rec[k] for k in rec] + list(kernels.values())
                wanted = srcs + eps
                live = [j for j, s in enumerate(wanted) if s.requires_grad]
                got = torch.autograd.grad(cost, [wanted[j] for j in live], allow_unused=True) if live else ()
                gs: list = [None] * len(wanted)
                for j, g in zip(live, got, strict=True):
                    gs[j] = g
                gs, time_grads = gs[: len(srcs)], [torch.zeros_like(e) if g is None else g for e, g in
                                                   zip(eps, gs[len(srcs) :], strict=True)]  # fmt: skip
                for (i, kind), src, g in zip(keys, srcs, gs, strict=True):
                    # as the TensorFlow backend: a softmax/sigmoid output whose loss reads its logits has no dC/df(s)
                    if g is not None or kind == "kernel" or i not in hooks.linked:
                        tensors[(i, "grad_" + kind)] = torch.zeros_like(src) if g is None else g
        for i, k in kernels.items():
            tensors[(i, "kernel")] = k
        with torch.no_grad():
            out = reduce(tensors, taps, time_grads)
        return keras.tree.map_structure(lambda v: v.detach().cpu(), out)

    return probe
