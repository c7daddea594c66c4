"""The activation registry, activation gains and Gaussian moments of activations.

One registry (`REGISTRY`, looked up with `spec`) says what the package knows of an activation f: its float64 numpy
form for quadrature, its conventional gain, its saturation bounds, whether it is a rectifier (units can be dead),
its negative slope when it is piecewise linear through 0 (relu 0, leaky_relu Keras' own default), whether it
normalizes across units (softmax), and whether it is elementwise at all (softmax, log_softmax, glu and sparsemax are
not: they mix the units of an axis, so no gain or Gaussian moment of one unit exists). The initializers, the
monitor's statistics and the theory all read it here.

Definition used throughout: for a pre-activation s ~ N(0, q) (zero biases, many inputs, Glorot & Bengio Eq 5,
He et al. Eq 7), the next layer's pre-activation has variance n * Var(W) * E[f(s)^2], and the gradient
back-propagated through f is scaled by E[f'(s)^2]. The *gain* of f is the factor on the weights' standard
deviation that keeps the forward second moment at 1 under fan-in scaling:

    gain(f) = 1 / sqrt(E[f(z)^2]),  z ~ N(0, 1)          (He et al. 2015, Eq 10, generalised)

so relu gives sqrt(2) and a leaky relu with slope a gives sqrt(2 / (1 + a^2)), exactly as in the paper. A few names
carry a conventional value instead (PyTorch's `calculate_gain` table): tanh 5/3 (numerically 1.593; 5/3 keeps tanh
slightly in its nonlinear range) and sigmoid 1 (numerically 1.846, since E[sigmoid^2] counts the mean 1/2).
Every other activation, a Keras activation name or any callable, is computed numerically by quadrature
(`keras_initkit.gaussian`).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import keras
import numpy as np

from keras_initkit import gaussian

__all__ = [
    "GAIN_TABLE",
    "IDENTITY",
    "REGISTRY",
    "SOFTMAX",
    "Activation",
    "Pointwise",
    "compose",
    "gain",
    "layer_activation",
    "layer_pointwise",
    "moments",
    "pointwise",
    "spec",
]

# Keras' own default slope of keras.activations.leaky_relu, read from Keras (the LeakyReLU layer's is its own).
DEFAULT_NEGATIVE_SLOPE = float(inspect.signature(keras.activations.leaky_relu).parameters["negative_slope"].default)

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def _gelu(x: np.ndarray, _a: float) -> np.ndarray:
    erf_v = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf_v(x / math.sqrt(2.0)))  # Keras' default: exact (erf) gelu


@dataclass(frozen=True)
class Activation:
    """What the package knows of one activation f (one registry entry)."""

    name: str | None
    numpy: Callable[[np.ndarray, float], np.ndarray] | None = None  # float64 f(x, negative_slope); None: via Keras
    gain: float | None = None  # conventional gain; None: from the definition 1 / sqrt(E[f(z)^2])
    bounds: tuple[float, float] | None = None  # (low, high) of a bounded f: near them it saturates
    rectifier: bool = False  # f >= 0 and exactly 0 below a threshold: a unit can be dead
    negative_slope: float | None = None  # piecewise linear through 0: slope 1 above 0, this below (its default)
    softmax: bool = False  # normalizes across units: no elementwise moments
    elementwise: bool = True  # f(x)_i depends on x_i only (False: softmax, glu, ...; no gain, no moments)


def _rectifier(x: np.ndarray, a: float) -> np.ndarray:
    return np.where(x >= 0, x, a * x)


_ENTRIES = (
    Activation("linear", lambda x, a: x, gain=1.0),
    # gain sqrt(2 / (1 + a^2)), exact; relu with a negative_slope is Keras' relu(x, negative_slope=a): a leaky relu
    Activation("relu", _rectifier, gain=math.sqrt(2.0), rectifier=True, negative_slope=0.0),
    Activation("leaky_relu", _rectifier, negative_slope=DEFAULT_NEGATIVE_SLOPE),
    # convention (LeCun 1998 / PyTorch); the definition gives 1.593
    Activation("tanh", lambda x, a: np.tanh(x), gain=5.0 / 3.0, bounds=(-1.0, 1.0)),
    # convention (PyTorch); the definition gives 1.846
    Activation("sigmoid", lambda x, a: 1.0 / (1.0 + np.exp(-x)), gain=1.0, bounds=(0.0, 1.0)),
    # self-normalizing fixed point: E[selu(z)^2] = 1 for z ~ N(0, 1) (Klambauer et al. 2017)
    Activation(
        "selu", lambda x, a: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))), gain=1.0
    ),
    Activation("elu", lambda x, a: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))),
    Activation("gelu", _gelu),
    Activation("silu", lambda x, a: x / (1.0 + np.exp(-x))),
    Activation("softsign", lambda x, a: x / (1.0 + np.abs(x)), bounds=(-1.0, 1.0)),
    # Known by name only (the quadrature evaluates them through Keras). The hard ones reach their bounds exactly.
    Activation("relu6", rectifier=True, bounds=(0.0, 6.0)),
    Activation("hard_sigmoid", bounds=(0.0, 1.0)),
    Activation("sparse_sigmoid", bounds=(0.0, 1.0)),
    Activation("hard_tanh", bounds=(-1.0, 1.0)),
    Activation("hard_silu"),  # x * hard_sigmoid(x): bounded below (-0.375) only
    Activation("softmax", softmax=True, elementwise=False),
    Activation("log_softmax", softmax=True, elementwise=False),
    Activation("glu", elementwise=False),  # halves the last axis: a gate from one half on the other
    Activation("sparsemax", elementwise=False),
)
REGISTRY: dict[str, Activation] = {e.name: e for e in _ENTRIES}

# name -> gain of the activations with a numpy form; None means "computed from the definition above".
GAIN_TABLE: dict[str, float | None] = {e.name: e.gain for e in _ENTRIES if e.numpy is not None}

_ALIASES = {"swish": "silu", "hard_swish": "hard_silu", "identity": "linear", None: "linear"}

# Activation layers that apply their nonlinearity in `call` without an `activation` attribute: name of f.
ACTIVATION_LAYERS = {
    keras.layers.ReLU: "relu",
    keras.layers.LeakyReLU: "leaky_relu",
    keras.layers.ELU: "elu",
    keras.layers.PReLU: "prelu",
    keras.layers.Softmax: "softmax",
}


def _keras_name(fn: Callable) -> str | None:
    """The registry name of a Keras activation function (by name, from a keras module), else None."""
    name = getattr(fn, "__name__", None)
    name = _ALIASES.get(name, name)
    return name if name in REGISTRY and getattr(fn, "__module__", "").startswith("keras") else None


def spec(activation) -> Activation:
    """The registry entry of an activation name (None: linear) or a Keras activation function.

    Anything else (an unknown name, any other callable) gets an entry that knows nothing beyond its name.
    """
    if isinstance(activation, str) or activation is None:
        name = _ALIASES.get(activation, activation)
        return REGISTRY.get(name) or Activation(name)
    name = _keras_name(activation) if callable(activation) else None
    return REGISTRY[name] if name is not None else Activation(getattr(activation, "__name__", None))


def layer_activation(layer) -> str | None:
    """Name of the nonlinearity a layer applies: its `activation` attribute's, an activation layer's, or None.

    A ReLU layer with a non-zero `negative_slope` is a "leaky_relu", one with `max_value=6` (and no slope or
    threshold: MobileNetV2's) a "relu6", whose saturation at 6 is counted; another `max_value` stays a "relu".
    """
    if type(layer) in ACTIVATION_LAYERS:
        name = ACTIVATION_LAYERS[type(layer)]
        if name == "relu" and getattr(layer, "negative_slope", 0.0):
            return "leaky_relu"
        if name == "relu" and layer.max_value is not None and float(layer.max_value) == 6.0 and not layer.threshold:
            return "relu6"
        return name
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", type(act).__name__) if callable(act) else None


def _is_real(value) -> bool:
    # Python and numpy scalars (np.float32, np.int64) count; bools and strings do not.
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_slope(negative_slope) -> float | None:
    if negative_slope is None:
        return None
    if not _is_real(negative_slope) or not math.isfinite(negative_slope) or not negative_slope >= 0:
        raise ValueError(
            f"`negative_slope` must be a number >= 0 and finite. Received: negative_slope={negative_slope!r}"
        )
    return float(negative_slope)


def _elementwise(fn: Callable) -> bool:
    """Whether fn acts on each element alone: f of a vector equals f of it reshaped to pairs (softmax, glu differ)."""
    t = np.linspace(-3.0, 3.0, 16, dtype="float32")
    try:
        flat = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(t)))
        pairs = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(t.reshape(8, 2))))
    except (ValueError, TypeError, IndexError):
        return False
    return flat.shape == t.shape and pairs.shape == (8, 2) and np.allclose(flat, pairs.reshape(16), 1e-5, 1e-6)


def _resolve(activation, negative_slope: float | None) -> tuple[str | None, Callable[[np.ndarray], np.ndarray]]:
    """Return (canonical name or None, a float64 numpy function) for a name, a Keras activation or a callable.

    Refuses an activation that is not elementwise, and a `negative_slope` for one that is not piecewise linear.
    """
    if isinstance(activation, str) or activation is None:
        name = _ALIASES.get(activation, activation)
        try:
            fn = keras.activations.get(name)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"`activation` must be a Keras activation name or a callable. Received: activation={activation!r}"
            ) from err
    elif callable(activation):
        name, fn = _keras_name(activation), activation
    else:
        raise ValueError(
            f"`activation` must be a Keras activation name or a callable. Received: activation={activation!r}"
        )
    entry = REGISTRY.get(name) if name is not None else None
    known = entry is not None and entry.numpy is not None  # a numpy form: elementwise by construction
    if (entry is not None and not entry.elementwise) or (not known and not _elementwise(fn)):
        raise ValueError(
            "`activation` must be elementwise (each output depends on its own input only): this one mixes the units "
            f"of an axis (softmax, log_softmax, glu, sparsemax...), so no gain or Gaussian moment of one unit exists. "
            f"Received: activation={activation!r}"
        )
    if negative_slope is not None and (entry is None or entry.negative_slope is None):
        raise ValueError(
            "`negative_slope` applies only to the rectifiers relu and leaky_relu (and their Keras functions). "
            f"Received: negative_slope={negative_slope!r} with activation={activation!r}"
        )
    if entry is not None and entry.numpy is not None:
        slope = entry.negative_slope if negative_slope is None else negative_slope
        return name, lambda x: entry.numpy(x, slope)
    return name, gaussian.via_keras(fn)


@lru_cache(maxsize=1024)
def _named_moments(name: str | None, q: float, negative_slope: float | None) -> tuple[float, float, float]:
    return gaussian.expect(_resolve(name, negative_slope)[1], q)


def moments(activation, q: float = 1.0, negative_slope: float | None = None) -> dict[str, float]:
    """Gaussian moments of an activation f for a pre-activation s ~ N(0, q).

    Returns {"mean": E[f(s)], "second": E[f(s)^2], "deriv2": E[f'(s)^2]}: the forward factor (second) and the
    backward factor (deriv2) of Glorot & Bengio's Eq 5-14 and He et al.'s Eq 8/14 for any activation.

    Example:
    >>> round(moments("relu")["second"], 6)
    0.5
    """
    if not (_is_real(q) and math.isfinite(q) and q > 0):
        raise ValueError(f"`q` (the pre-activation variance) must be a finite number > 0. Received: q={q!r}")
    negative_slope = _check_slope(negative_slope)
    if isinstance(activation, str) or activation is None:
        m, s2, d2 = _named_moments(activation, float(q), negative_slope)
    else:
        m, s2, d2 = gaussian.expect(_resolve(activation, negative_slope)[1], float(q))
    return {"mean": m, "second": s2, "deriv2": d2}


def gain(activation, negative_slope: float | None = None) -> float:
    """Recommended gain of an activation: gain = 1 / sqrt(E[f(z)^2]), z ~ N(0, 1), or its table value.

    See the module docstring for the definition and the two conventional entries (tanh 5/3, sigmoid 1).
    Use it as the `gain` of `GlorotAvg`, `GlorotFanIn` or `GlorotFanOut`.

    Examples:
    >>> round(gain("relu"), 4)
    1.4142
    >>> gain("tanh")
    1.6666666666666667
    >>> layer = keras.layers.Dense(256, activation="tanh", kernel_initializer=GlorotAvg(gain=gain("tanh")))

    Args:
        activation: a Keras activation name ("relu", "gelu", ...), a Keras activation function, or any callable
            mapping a tensor to a tensor.
        negative_slope: slope of "leaky_relu" (Keras' default when None) or "relu" (0 when None: Keras'
            `relu(x, negative_slope=a)` is a leaky relu) for negative inputs; a finite number >= 0. Refused for
            any other activation.

    Raises:
        ValueError: for an activation that is not elementwise (softmax, log_softmax, glu, sparsemax: no gain of one
            unit exists), a `negative_slope` that is not a finite number >= 0 or that the activation has no use for.

    Reference:
    - [He et al., 2015](https://arxiv.org/abs/1502.01852), Eq 10 and 14
    """
    negative_slope = _check_slope(negative_slope)
    name, _ = _resolve(activation, negative_slope)
    entry = REGISTRY.get(name) if name is not None else None
    if entry is not None and entry.negative_slope is not None:  # piecewise linear: exact (relu's sqrt(2) too)
        a = entry.negative_slope if negative_slope is None else negative_slope
        return math.sqrt(2.0 / (1.0 + a * a))
    if entry is not None and entry.gain is not None:
        return entry.gain
    second = moments(activation, 1.0, negative_slope)["second"]
    if not second > 0:
        raise ValueError(f"`activation` has E[f(z)^2] = 0 for z ~ N(0, 1); no gain exists. Received: {activation!r}")
    return 1.0 / math.sqrt(second)


# ----------------------------------------------------------------------------------------------------------------
# An activation as a pointwise function of one element, for signal propagation (the theory).


@dataclass(frozen=True)
class Pointwise:
    """A pointwise function: "id", "rect" (slope 1 above 0, `alpha` below: ReLU, leaky ReLU, PReLU), or "any"."""

    kind: str
    alpha: float | np.ndarray = 0.0
    fn: Callable | None = None  # keras-ops callable ("any")
    dsq: Callable | None = None  # t -> f'(g(t))^2 of the outermost f, when this is a composition f(g)
    monotone: bool = True

    def __call__(self, t):
        if self.kind == "id":
            return t
        if self.kind == "rect":
            return keras.ops.where(t > 0, t, float(np.mean(self.alpha)) * t)
        return self.fn(t)

    def moments(self, m, v):
        """E[f(s)], E[f(s)^2], E[f'(s)^2] per element for s ~ N(m, v) (arrays of one shape)."""
        if self.kind == "id":
            return m, m * m + v, np.ones_like(m)
        if self.kind == "rect":
            return gaussian.rectifier_moments(self.alpha, m, v)
        return gaussian.elementwise_moments(self, m, v, self.dsq)


IDENTITY = Pointwise("id")
SOFTMAX = "softmax"


def _is_monotone(fn: Callable) -> bool:
    t = np.linspace(-12.0, 12.0, 4801, dtype="float32")
    y = np.asarray(keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(t))), dtype=np.float64)
    return bool(np.all(np.diff(y) >= -1e-6 * (1.0 + np.abs(y[1:]))))


def pointwise(act) -> Pointwise | str:
    """A Keras activation (function or callable) as a Pointwise, or SOFTMAX, from the registry."""
    entry = spec(act)
    if entry.name == "linear":
        return IDENTITY
    if entry.negative_slope is not None:  # relu; leaky_relu with Keras' default slope
        return Pointwise("rect", entry.negative_slope)
    if entry.softmax:
        return SOFTMAX
    if not entry.elementwise:
        raise ValueError(f"`activation` {entry.name!r} is not elementwise: the theory has no rule for it")
    return Pointwise("any", fn=act, monotone=_is_monotone(act))


def layer_pointwise(layer, shape) -> Pointwise | str:
    """The nonlinearity of an activation layer without an `activation` attribute (input of per-example `shape`)."""
    if isinstance(layer, keras.layers.ReLU):
        slope, max_value, threshold = float(layer.negative_slope), layer.max_value, float(layer.threshold)
        if max_value is None and threshold == 0.0:
            return Pointwise("rect", slope)

        def relu(t):
            return keras.activations.relu(t, negative_slope=slope, max_value=max_value, threshold=threshold)

        return Pointwise("any", fn=relu, monotone=slope >= 0)
    if isinstance(layer, keras.layers.LeakyReLU):
        return Pointwise("rect", float(layer.negative_slope))
    if isinstance(layer, keras.layers.PReLU):
        alpha = np.asarray(keras.ops.convert_to_numpy(layer.alpha), dtype=np.float64)
        alpha = np.broadcast_to(alpha, shape).reshape(-1, shape[-1])  # per element, as the fields
        return Pointwise("rect", float(alpha.flat[0]) if np.all(alpha == alpha.flat[0]) else alpha.copy())
    if isinstance(layer, keras.layers.ELU):
        a = float(layer.alpha)
        return Pointwise("any", fn=lambda t: keras.activations.elu(t, alpha=a), monotone=a >= 0)
    if isinstance(layer, keras.layers.Softmax):
        return SOFTMAX
    raise ValueError(f"Unsupported activation layer {layer.name!r} of type {type(layer).__name__}")


def compose(f: Pointwise, g: Pointwise) -> Pointwise:
    if g.kind == "id":
        return f
    if f.kind == "id":
        return g
    return Pointwise("any", fn=lambda t: f(g(t)), dsq=gaussian.central_dsq(f, g), monotone=f.monotone and g.monotone)
