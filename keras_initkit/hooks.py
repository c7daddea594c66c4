"""Trace-time taps: a layer's `call` or an optimizer's `apply_gradients` patched on the instance while a recorder's
function is traced (never while it runs), then restored. The patched calls compute exactly what they always
compute; the recorder sees the tensors on their way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from keras_initkit.layers import Target

__all__ = ["LayerHooks", "OptimizerTap", "layer_kernel", "reachable"]

# The op types whose output Keras' cross-entropies read back to the logits (keras/src/backend/tensorflow/nn.py,
# `_get_logits`), when the tensor carries no `_keras_logits` attribute.
_LOGITS_OPS = ("Softmax", "Sigmoid")


def _is_recurrent(layer) -> bool:
    return isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))


def reachable(targets: list[Target]) -> list[Target]:
    """The targets as the hooks reach them: a recurrent layer (RNN, LSTM, GRU, SimpleRNN, RNN(cell), Bidirectional)
    has no activation to swap (its cell applies it at each time step): s is its output, its kernel the cell's input
    kernel (none for Bidirectional). Other targets are returned unchanged.
    """
    out = []
    for t in targets:
        if _is_recurrent(t.layer):
            t = dataclasses.replace(t, mode="identity", activation=None, kernel=layer_kernel(t.layer))
        out.append(t)
    return out


def layer_kernel(layer):
    """The kernel variable a target records: a recurrent layer's cell's input kernel, else the layer's `kernel`;
    None where there is none (or not yet: a layer built at its first call)."""
    kernel = getattr(getattr(layer, "cell", None) if _is_recurrent(layer) else layer, "kernel", None)
    return kernel if isinstance(kernel, keras.Variable) else None


class LayerHooks:
    """While active (at trace time only), each target layer's `call` hands s and f(s) to the callbacks.

    `on_preact(target, s)` and `on_activation(target, a)` return the tensor the forward pass goes on with (the same
    values; a recorder may insert an identity op to reach the gradient that flows through this layer only).
    `after_call(target)` runs once the layer returned. A layer called twice (shared) is recorded at its first call.

    Keras' link from a softmax/sigmoid output to its logits survives the taps, so a cross-entropy loss computes what
    it computes without them (from the logits): a tapped tensor carries the `_keras_logits` of the tensor it
    replaces, and a raw Softmax/Sigmoid op output (whose link is its op type) is recorded but not replaced. `linked`
    holds the targets whose tapped output has such a link: a loss may then never read that tensor itself.
    """

    def __init__(self, targets, on_preact, on_activation, after_call=None):
        self.targets, self.on_preact, self.on_activation, self.after_call = (
            targets,
            on_preact,
            on_activation,
            after_call,
        )
        self.called: set[int] = set()
        self.linked: set[int] = set()
        self._saved: list[tuple[Any, Any]] = []

    def _tap(self, fn, t: Target, x):
        """`fn(t, x)`, the tensor the forward pass goes on with, keeping the logits link of `x`."""
        logits = getattr(x, "_keras_logits", None)
        op = getattr(x, "op", None)
        if logits is None and op is not None and getattr(op, "type", None) in _LOGITS_OPS:
            self.linked.add(t.index)
            fn(t, x)
            return x
        out = fn(t, x)
        if logits is not None and out is not x:
            self.linked.add(t.index)
            out._keras_logits = logits
        return out

    def _wrap(self, t: Target, orig):
        def call(*args, **kwargs):
            if t.index in self.called:
                return orig(*args, **kwargs)
            self.called.add(t.index)
            if t.mode == "fused":
                act, seen = t.layer.activation, []

                def recorder(s):
                    if not seen:  # a layer applying its activation more than once is recorded at the first
                        seen.append(True)
                        s = self._tap(self.on_preact, t, s)
                    return act(s)

                object.__setattr__(t.layer, "activation", recorder)
                try:
                    out = orig(*args, **kwargs)
                finally:
                    object.__setattr__(t.layer, "activation", act)
                if not seen:  # its `call` never applied `activation`: the identity is its nonlinearity
                    out = self._tap(self.on_preact, t, out)
            elif t.mode == "input":
                out = orig(self._tap(self.on_preact, t, args[0]), *args[1:], **kwargs)
            else:
                out = self._tap(self.on_preact, t, orig(*args, **kwargs))
            out = self._tap(self.on_activation, t, out)
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


class OptimizerTap:
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
