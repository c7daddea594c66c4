"""Trace-time taps: a layer's `call` or an optimizer's `apply_gradients` patched on the instance while a recorder's
function is traced (never while it runs), then restored. The patched calls compute exactly what they always
compute; the recorder sees the tensors on their way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras_initkit.layers import Target

__all__ = ["LayerHooks", "OptimizerTap"]


class LayerHooks:
    """While active (at trace time only), each target layer's `call` hands s and f(s) to the callbacks.

    `on_preact(target, s)` and `on_activation(target, a)` return the tensor the forward pass goes on with (the same
    values; a recorder may insert an identity op to reach the gradient that flows through this layer only).
    `after_call(target)` runs once the layer returned. A layer called twice (shared) is recorded at its first call.
    """

    def __init__(self, targets, on_preact, on_activation, after_call=None):
        self.targets, self.on_preact, self.on_activation, self.after_call = (
            targets,
            on_preact,
            on_activation,
            after_call,
        )
        self.called: set[int] = set()
        self._saved: list[tuple[Any, Any]] = []

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
                        s = self.on_preact(t, s)
                    return act(s)

                object.__setattr__(t.layer, "activation", recorder)
                try:
                    out = orig(*args, **kwargs)
                finally:
                    object.__setattr__(t.layer, "activation", act)
                if not seen:  # its `call` never applied `activation`: the identity is its nonlinearity
                    out = self.on_preact(t, out)
            elif t.mode == "input":
                out = orig(self.on_preact(t, args[0]), *args[1:], **kwargs)
            else:
                out = self.on_preact(t, orig(*args, **kwargs))
            out = self.on_activation(t, out)
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
