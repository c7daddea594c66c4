"""The backend-specific part of the monitor, in one place: per Keras backend, one module with

- `ops()`: the tensor operations the statistics (`keras_initkit.stats`, `record`, `recurrent`) are written in: the
  `tensorflow` module itself under TensorFlow (its numbers stay bit-identical), a small shim with the same names over
  `jax.numpy` under JAX (`keras_initkit.backends.jax.TFLike`);
- `probe_function(...)`: the gradient-of-intermediates function of a probe record: one forward pass with the layer
  taps, the loss, and the gradients of the loss w.r.t. every tapped tensor, kernel and recurrent hidden state, then
  the shared statistics, compiled once (`tf.GradientTape` in a `tf.function`; `jax.value_and_grad` of a stateless
  call whose zero perturbations eps added to each tapped tensor give dC/ds = dC/d eps, in `jax.jit`).

Everything else (the taps, the schedule, the statistics, the tables) is shared. Supported: `SUPPORTED`.
`source="train_batch"` runs inside Keras' own train step, which only the TensorFlow backend lets a callback swap
(`TRAIN_BATCH`).
"""

from __future__ import annotations

import importlib

import keras

__all__ = ["SUPPORTED", "TRAIN_BATCH", "check_called", "module", "name", "ops", "require"]

SUPPORTED = ("tensorflow", "jax")
TRAIN_BATCH = ("tensorflow",)


def name() -> str:
    """The Keras backend in use (`keras.backend.backend()`)."""
    return keras.backend.backend()


def require(what: str = "VarianceMonitor", among: tuple[str, ...] = SUPPORTED) -> str:
    """The backend's name, or a ValueError naming it when `what` does not run under it."""
    backend = name()
    if backend not in among:
        raise ValueError(
            f"{what} runs under the Keras backends {', '.join(among)}; set KERAS_BACKEND to one of them. "
            f"Received: backend={backend!r}"
        )
    return backend


def module():
    """The module of the current backend (`keras_initkit.backends.tensorflow` or `.jax`)."""
    return importlib.import_module(f"keras_initkit.backends.{require()}")


def ops():
    """The tensor operations of the current backend (TensorFlow's names; see the module docstring)."""
    return module().ops()


def check_called(targets, hooks) -> None:
    """A ValueError naming the selected layers that the forward pass never called (`hooks`: a `LayerHooks`)."""
    missing = [t.name for t in targets if t.index not in hooks.called]
    if missing:
        raise ValueError(f"`layers` selects layers that the model's forward pass does not call: {missing}")
