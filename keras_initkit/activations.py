"""The activation registry, activation gains and Gaussian moments of activations.

One registry (`REGISTRY`, looked up with `spec`) says what the package knows of an activation f: its float64 numpy
form for quadrature, its conventional gain, its saturation bounds, whether it is a rectifier (units can be dead),
its negative slope when it is piecewise linear through 0 (relu 0, leaky_relu Keras' own default), and whether it
normalizes across units (softmax). The initializers, the monitor's statistics and the theory all read it here.

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
    negative_slope: float | None = None  # piecewise linear through 0: slope 1 above 0, this below
    softmax: bool = False  # normalizes across units: no elementwise moments


_ENTRIES = (
    Activation("linear", lambda x, a: x, gain=1.0),
    Activation("relu", lambda x, a: np.maximum(x, 0.0), gain=math.sqrt(2.0), rectifier=True, negative_slope=0.0),
    # gain sqrt(2 / (1 + a^2)), exact; depends on negative_slope
    Activation("leaky_relu", lambda x, a: np.where(x >= 0, x, a * x), negative_slope=DEFAULT_NEGATIVE_SLOPE),
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
    # Known by name only (the quadrature evaluates them through Keras).
    Activation("relu6", rectifier=True),
    Activation("hard_sigmoid", bounds=(0.0, 1.0)),
    Activation("hard_tanh", bounds=(-1.0, 1.0)),
    Activation("softmax", softmax=True),
    Activation("log_softmax", softmax=True),
)
REGISTRY: dict[str, Activation] = {e.name: e for e in _ENTRIES}

# name -> gain of the activations with a numpy form; None means "computed from the definition above".
GAIN_TABLE: dict[str, float | None] = {e.name: e.gain for e in _ENTRIES if e.numpy is not None}

_ALIASES = {"swish": "silu", "identity": "linear", None: "linear"}

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

    A ReLU layer with a non-zero `negative_slope` is a "leaky_relu".
    """
    if type(layer) in ACTIVATION_LAYERS:
        name = ACTIVATION_LAYERS[type(layer)]
        return "leaky_relu" if name == "relu" and getattr(layer, "negative_slope", 0.0) else name
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", type(act).__name__) if callable(act) else None


def _resolve(activation, negative_slope: float | None) -> tuple[str | None, Callable[[np.ndarray], np.ndarray]]:
    """Return (canonical name or None, a float64 numpy function) for a name, a Keras activation or a callable."""
    slope = DEFAULT_NEGATIVE_SLOPE if negative_slope is None else negative_slope
    if isinstance(activation, str) or activation is None:
        name = _ALIASES.get(activation, activation)
        try:
            keras_fn = keras.activations.get(name)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"`activation` must be a Keras activation name or a callable. Received: activation={activation!r}"
            ) from err
        entry = REGISTRY.get(name)
        if entry is not None and entry.numpy is not None:
            return name, lambda x: entry.numpy(x, slope)
        return name, gaussian.via_keras(keras_fn)
    if callable(activation):
        name = _keras_name(activation)
        if name is not None and REGISTRY[name].numpy is not None:
            return name, lambda x: REGISTRY[name].numpy(x, slope)
        return None, gaussian.via_keras(activation)
    raise ValueError(f"`activation` must be a Keras activation name or a callable. Received: activation={activation!r}")


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
    if isinstance(q, bool) or not (isinstance(q, (int, float)) and q > 0 and math.isfinite(q)):
        raise ValueError(f"`q` (the pre-activation variance) must be a finite number > 0. Received: q={q!r}")
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
        negative_slope: slope of "leaky_relu" for negative inputs (Keras' default 0.2 when None); must be >= 0.

    Reference:
    - [He et al., 2015](https://arxiv.org/abs/1502.01852), Eq 10 and 14
    """
    if negative_slope is not None and (
        isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or not negative_slope >= 0
    ):
        raise ValueError(f"`negative_slope` must be a number >= 0. Received: negative_slope={negative_slope!r}")
    name, _ = _resolve(activation, negative_slope)
    entry = REGISTRY.get(name) if name is not None else None
    if entry is not None and entry.gain is not None:
        return entry.gain
    if entry is not None and entry.negative_slope is not None:  # piecewise linear: exact
        a = entry.negative_slope if negative_slope is None else negative_slope
        return math.sqrt(2.0 / (1.0 + a * a))
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
