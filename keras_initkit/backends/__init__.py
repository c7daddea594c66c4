"""The backend-specific part of the monitor, in one place: per Keras backend, one module with

- `ops()`: the tensor operations the statistics (`keras_initkit.stats`, `record`, `recurrent`) are written in: the
  `tensorflow` module itself under TensorFlow (its numbers stay bit-identical), a small shim with the same names over
  `jax.numpy` under JAX (`keras_initkit.backends.jax.TFLike`) and over `keras.ops` under PyTorch
  (`keras_initkit.backends.torch.TFLike`), with `Holder` standing in for tf.Variable;
- `probe_function(...)`: the gradient-of-intermediates function of a probe record: one forward pass with the layer
  taps, the loss, and the gradients of the loss w.r.t. every tapped tensor, kernel and recurrent hidden state, then
  the shared statistics, compiled once (`tf.GradientTape` in a `tf.function`; `jax.value_and_grad` of a stateless
  call whose zero perturbations eps added to each tapped tensor give dC/ds = dC/d eps, in `jax.jit`), or run eagerly
  at each record (`torch.autograd.grad` w.r.t. a view of each tapped tensor).

Everything else (the taps, the schedule, the statistics, the tables) is shared. Supported: `SUPPORTED`.
`source="train_batch"` runs inside Keras' own train step, which only the TensorFlow backend lets a callback swap
(`TRAIN_BATCH`).
"""

from __future__ import annotations

import importlib

import keras

__all__ = [
    "SUPPORTED",
    "TRAIN_BATCH",
    "Holder",
    "check_called",
    "module",
    "name",
    "ops",
    "probe_loss",
    "require",
    "tensor_values",
    "unwrap",
]

SUPPORTED = ("tensorflow", "jax", "torch")
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
    """The module of the current backend (`keras_initkit.backends.tensorflow`, `.jax` or `.torch`)."""
    return importlib.import_module(f"keras_initkit.backends.{require()}")


def ops():
    """The tensor operations of the current backend (TensorFlow's names; see the module docstring)."""
    return module().ops()


def tensor_values(spec, layout, t, kind, x, hist, unit, xla):
    """`spec.compute(...)`: the statistics of one tensor where they run (in the caller's traced function under
    TensorFlow, eagerly under PyTorch); JAX compiles them per signature instead (`keras_initkit.backends.jax`)."""
    return spec.compute(layout, t, kind, x, hist, unit, xla)


def probe_loss(model, loss, x, y, y_pred, sample_weight):
    """The probe's loss: `loss(y, y_pred, sample_weight)` when given, else the model's compiled loss (with its
    regularization terms, as `fit` computes it)."""
    if loss is not None:
        return loss(y, y_pred, sample_weight)
    return model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)


def check_called(targets, hooks) -> None:
    """A ValueError naming the selected layers that the forward pass never called (`hooks`: a `LayerHooks`)."""
    missing = [t.name for t in targets if t.index not in hooks.called]
    if missing:
        raise ValueError(f"`layers` selects layers that the model's forward pass does not call: {missing}")


def unwrap(x):
    """The array of a `Holder`, else `x`."""
    return x.value if isinstance(x, Holder) else x


class Holder:
    """A mutable holder standing in for a tf.Variable (the histogram ranges) under a backend without one: a subclass
    gives `asarray(value, dtype)`, the backend's array of a value."""

    @staticmethod
    def asarray(value, dtype=None):
        raise NotImplementedError

    def __init__(self, initial_value, trainable=False, dtype=None):
        self.value = self.asarray(unwrap(initial_value), dtype)

    def assign(self, value, read_value=True):
        self.value = self.asarray(unwrap(value), self.value.dtype)
        return self.value if read_value else None

    def read_value(self):
        return self.value

    def numpy(self):
        return keras.ops.convert_to_numpy(self.value)

    def __or__(self, other):
        return self.value | unwrap(other)

    def __ror__(self, other):
        return unwrap(other) | self.value

    def __and__(self, other):
        return self.value & unwrap(other)

    def __rand__(self, other):
        return unwrap(other) & self.value
