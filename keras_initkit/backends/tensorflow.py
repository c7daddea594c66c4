"""The TensorFlow backend of the monitor: `tf.GradientTape` over the probe pass, in a `tf.function`."""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_initkit.backends import check_called, probe_loss, tensor_values
from keras_initkit.hooks import LayerHooks
from keras_initkit.recurrent import TimeTaps

__all__ = ["ops", "probe_function", "tensor_values"]


def ops():
    import tensorflow as tf

    return tf


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
    """The probe record of `model` on `data` = (x, y, sample_weight), traced now, never retraced: a callable () ->
    `reduce(tensors, taps, time_grads)`.

    `tensors` maps (target index, kind) to the tensor of that kind (s, f(s), the kernel, and, with `grads`, their
    gradients dC/ds, dC/df(s), dC/dW); `taps` is the `TimeTaps` of `time_targets`, `time_grads` their dC/dh_t (None
    without `grads`). Compiled with XLA when `xla`. `state` (the tf.Variables `reduce` assigns) needs nothing here.
    """
    import tensorflow as tf

    to_t = lambda v: None if v is None else keras.tree.map_structure(tf.convert_to_tensor, v)  # noqa: E731
    x, y, sw = (to_t(v) for v in data)

    def probe():
        rec: dict[tuple[int, str], object] = {}
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
                with (
                    LayerHooks(targets, keep("preact"), keep("activation")) as hooks,
                    TimeTaps(time_targets, tape.watch) as taps,
                ):
                    y_pred = model(x, training=training)
                if grads:
                    cost = probe_loss(model, loss, x, y, y_pred, sw)
        check_called(targets, hooks)
        tensors = dict(rec)
        eps = taps.sources()  # dC/d eps_t = dC/dh_t of each recurrent layer (keras_initkit.recurrent)
        time_grads = None
        if grads:  # every gradient, whichever kinds are recorded: the recorded ones keep their values
            keys = [k for k in rec] + [(i, "kernel") for i in kernels]
            srcs = [rec[k] for k in rec] + list(kernels.values())
            gs = tape.gradient(cost, srcs + eps, unconnected_gradients=tf.UnconnectedGradients.NONE)
            gs, time_grads = (
                gs[: len(srcs)],
                [tf.zeros_like(e) if g is None else g for e, g in zip(eps, gs[len(srcs) :], strict=True)],
            )
            for (i, kind), src, g in zip(keys, srcs, gs, strict=True):
                # A softmax/sigmoid output whose loss reads its logits: Keras computes no dC/df(s) (nor does the
                # train-batch recorder see one); any other unconnected gradient is zero.
                if g is not None or kind == "kernel" or i not in hooks.linked:
                    tensors[(i, "grad_" + kind)] = tf.zeros_like(src) if g is None else g
        for i, k in kernels.items():
            tensors[(i, "kernel")] = tf.convert_to_tensor(k)
        return reduce(tensors, taps, time_grads)

    fn = tf.function(probe, autograph=False, jit_compile=xla)
    fn.get_concrete_function()  # trace now: the layout is known before the first record
    return fn
