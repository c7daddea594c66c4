"""The train-batch recorder (`VarianceMonitor(source="train_batch")`): statistics of the training batch itself,
computed inside Keras' own train step.

The forward tensors are read as the layers compute them, the gradients that back-propagation computes anyway by
identity ops with a custom gradient, and the kernel gradients as the optimizer receives them. It costs no extra
pass. The step is not replaced: a second train function (traced once) runs the model's own `train_step` with these
taps, and the monitor hands Keras that function for the scheduled steps only, its own otherwise. Each part of the
statistics is assigned to a slot variable, read once the step returned.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras

from keras_initkit.hooks import LayerHooks, OptimizerTap, layer_kernel, reachable
from keras_initkit.layers import Target, select_layers
from keras_initkit.record import FORWARD_KINDS, Layout, RecordSpec

__all__ = ["TrainBatchRecorder"]


def _tf():
    import tensorflow as tf

    return tf


def uses_xla(model) -> bool:
    """Whether the model's train step is compiled with XLA (then the recorders' functions are too)."""
    return getattr(model, "jit_compile", False) is True


@dataclass
class _Installed:
    """The recording train function of one model (and compile), and where its statistics land."""

    model: weakref.ref
    targets: list[Target]
    layout: Layout  # grows as slots are made (at the first trace)
    hist: dict
    original: Any  # Keras' own train function
    xla: bool
    step: Any  # tf.Variable: the step to record where an execution runs several (steps_per_execution > 1)
    gated: bool  # steps_per_execution > 1: the slots are assigned at `step` only
    recording: Any = None  # the train function with taps
    entry: Any = None  # what `use` hands Keras for a recorded execution: `recording`, then Keras' own again
    slots: dict[tuple, Any] = field(default_factory=dict)  # key -> tf.Variable holding that part of the vector
    read: Callable | None = None  # traced: the slots concatenated


class TrainBatchRecorder:
    """Builds (once per model and compile) the recording train function and reads its statistics."""

    def __init__(self, spec: RecordSpec, layers):
        self.spec, self.layers = spec, layers
        self.state: _Installed | None = None

    def install(self, model) -> None:
        """Build the recording train function for `model` unless it exists; Keras' own stays in place."""
        tf = _tf()
        if type(model).train_step is not keras.Model.train_step:
            raise ValueError(
                'source="train_batch" wraps Keras\' own train_step, and this model overrides it; use source="probe". '
                f"Received: model of type {type(model).__name__}"
            )
        st = self.state
        original = model.make_train_function() or model.train_function  # fit made it already; compile() resets it
        if st is not None and st.model() is model and original is st.entry:  # left in place by an interrupted fit
            model.train_function = original = st.original
        if st is None or st.model() is not model or st.original is not original:
            targets = reachable(select_layers(model, self.layers))
            with tf.init_scope():
                step = tf.Variable(-1, dtype=tf.int64, trainable=False)
            gated = int(getattr(model, "steps_per_execution", 1) or 1) > 1
            st = _Installed(
                weakref.ref(model),
                targets,
                Layout(targets),
                self.spec.hist_state(targets),
                original,
                uses_xla(model),
                step,
                gated,
            )
            orig_step = model.train_step
            recorder = self

            def train_step(data):
                opt = model.optimizer
                scale = None
                if isinstance(opt, keras.optimizers.LossScaleOptimizer):
                    scale = opt.scale_loss(tf.constant(1.0))
                taps = _StepTaps(recorder, st, scale)
                with LayerHooks(st.targets, taps.on_preact, taps.on_activation, taps.after_call):
                    with OptimizerTap(opt, taps.on_apply):
                        return orig_step(data)

            # Keras builds its train function from `self.train_step` as found now; the attribute is removed at once.
            object.__setattr__(model, "train_step", train_step)
            try:
                model.make_train_function(force=True)
            finally:
                object.__delattr__(model, "train_step")
            st.recording = model.train_function
            model.train_function = original

            def entry(iterator):
                try:
                    return st.recording(iterator)
                finally:  # Keras' own again, also when the execution is interrupted (KeyboardInterrupt)
                    model.train_function = st.original

            st.entry = entry
            self.state = st

    def use(self, model, step: int | None) -> None:
        """Hand Keras the recording train function for the next execution (recording `step`), or its own (None)."""
        st = self.state
        if step is None:
            model.train_function = st.original
            return
        st.step.assign(step)
        model.train_function = st.entry

    def uninstall(self, model) -> None:
        st = self.state
        if st is not None and st.model() is model:
            model.train_function = st.original

    def read(self):
        """The statistics of the last recorded step, as one vector laid out as `state.layout`."""
        tf = _tf()
        st = self.state
        if st.read is None:
            variables = list(st.slots.values())
            st.read = tf.function(lambda: tf.concat([v.read_value() for v in variables], 0), autograph=False)
        return st.read()

    def _slot(self, st: _Installed, key: tuple, compute: Callable):
        """Store `compute(layout)`'s vector in the slot variable `key`; made at the first trace, then reused."""
        tf = _tf()
        if key not in st.slots:
            staged = Layout(st.targets)
            vec = compute(staged)  # at trace time: fixes the slot's size and entries
            with tf.init_scope():
                var = tf.Variable(tf.zeros([vec.shape[0]], tf.float32), trainable=False)
            st.slots[key] = var
            st.layout.extend(staged)
            st.read = None
            return self._assign(st, var, vec)
        return self._assign(st, st.slots[key], compute(Layout(st.targets)))

    def _assign(self, st: _Installed, var, vec):
        """var = vec; with several steps per execution, at the recorded step only (the optimizer has not counted the
        step yet while its taps run)."""
        tf = _tf()
        if st.gated:
            now = tf.equal(tf.cast(st.model().optimizer.iterations, tf.int64), st.step)
            vec = tf.where(now, vec, var)
        return var.assign(vec, read_value=False)

    def store(self, st: _Installed, key: tuple, items: list, scale=None):
        """The statistics of every recorded (target, kind, tensor) in `items`, into the slot `key`."""
        tf = _tf()
        items = [(t, kind, x) for t, kind, x in items if kind in self.spec.kinds]
        if not items:
            return None

        def compute(layout):
            vec = []
            for t, kind, x in items:
                v = tf.cast(x, tf.float32) / scale if scale is not None and kind.startswith("grad") else x
                vec.append(self.spec.values(layout, t, kind, v, st.hist, xla=st.xla))
                if kind in FORWARD_KINDS:
                    vec += self.spec.unit_values(layout, t, {kind: v}, xla=st.xla)
            return tf.concat(vec, 0)

        return self._slot(st, key, compute)


class _StepTaps:
    """The taps of the recording train step, applied while it is traced.

    Per layer, the forward statistics (s, f(s), W) once the layer returned and the backward ones when dC/ds arrives
    (dC/df(s) arrives just before it and waits); every kernel gradient as the optimizer receives them. The gradients
    are read by identity ops with a custom gradient: back-propagation computes them anyway. No control
    dependencies: a tf.function runs every stateful op it holds (the slot assignments), so the statistics may run
    beside the next layer instead of holding it up.
    """

    def __init__(self, recorder: TrainBatchRecorder, st: _Installed, scale):
        self.recorder, self.st, self.scale = recorder, st, scale
        self.forward: dict[int, dict[str, Any]] = {}
        self.waiting: dict[int, Any] = {}  # dC/df(s) of a layer whose dC/ds has not arrived yet
        self.by_var = {id(t.kernel): t for t in st.targets if t.kernel is not None}

    def _identity(self, t: Target, kind: str, x):
        tf = _tf()

        @tf.custom_gradient
        def identity(v):
            def grad(dy):
                self._on_grad(t, kind, dy)
                return dy

            return tf.identity(v), grad

        return identity(x)

    def on_preact(self, t: Target, s):
        self.forward.setdefault(t.index, {})["preact"] = s
        return self._identity(t, "preact", s)

    def on_activation(self, t: Target, a):
        self.forward.setdefault(t.index, {})["activation"] = a
        return self._identity(t, "activation", a)

    def after_call(self, t: Target):
        if t.kernel is None and layer_kernel(t.layer) is not None:  # built at this call (no keras.Input)
            t.kernel = layer_kernel(t.layer)
            self.by_var[id(t.kernel)] = t
        items = [(t, kind, x) for kind, x in self.forward.pop(t.index).items()]
        if t.kernel is not None:
            items.append((t, "kernel", _tf().convert_to_tensor(t.kernel.value)))
        self.recorder.store(self.st, ("forward", t.index), items)

    def _on_grad(self, t: Target, kind: str, dy):
        if kind == "activation":
            self.waiting[t.index] = dy
            return
        items = [(t, "grad_preact", dy)]
        if t.index in self.waiting:
            items.append((t, "grad_activation", self.waiting.pop(t.index)))
        self.recorder.store(self.st, ("backward", t.index), items, self.scale)

    def on_apply(self, grads_and_vars: list):
        targets = [(self.by_var.get(id(v)), g) for g, v in grads_and_vars]
        items = [(t, "grad_kernel", g) for t, g in targets if t is not None and g is not None]
        items += [(self.st.targets[i], "grad_activation", dy) for i, dy in self.waiting.items()]
        self.waiting.clear()
        if items:
            self.recorder.store(self.st, ("kernel_gradients",), items, self.scale)
