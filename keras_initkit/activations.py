"""Activation gains and Gaussian moments of activations, for the initializers and the theory.

Definition used throughout: for a pre-activation s ~ N(0, q) (zero biases, many inputs, Glorot & Bengio Eq 5,
He et al. Eq 7), the next layer's pre-activation has variance n * Var(W) * E[f(s)^2], and the gradient
back-propagated through f is scaled by E[f'(s)^2]. The *gain* of f is the factor on the weights' standard
deviation that keeps the forward second moment at 1 under fan-in scaling:

    gain(f) = 1 / sqrt(E[f(z)^2]),  z ~ N(0, 1)          (He et al. 2015, Eq 10, generalised)

so relu gives sqrt(2) and a leaky relu with slope a gives sqrt(2 / (1 + a^2)), exactly as in the paper. A few names
carry a conventional value instead (PyTorch's `calculate_gain` table): tanh 5/3 (numerically 1.593; 5/3 keeps tanh
slightly in its nonlinear range) and sigmoid 1 (numerically 1.846, since E[sigmoid^2] counts the mean 1/2).
Every other activation, a Keras activation name or any callable, is computed numerically by quadrature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import keras
import numpy as np

__all__ = ["gain", "moments", "GAIN_TABLE"]

# Keras' own default slope for keras.activations.leaky_relu / layers.LeakyReLU.
DEFAULT_NEGATIVE_SLOPE = 0.2

# name -> gain; None means "computed numerically from the definition above" (the value is still supported by name).
GAIN_TABLE: dict[str, float | None] = {
    "linear": 1.0,
    "relu": math.sqrt(2.0),
    "leaky_relu": None,  # sqrt(2 / (1 + a^2)), exact; depends on negative_slope
    "tanh": 5.0 / 3.0,  # convention (LeCun 1998 / PyTorch); the definition gives 1.593
    "sigmoid": 1.0,  # convention (PyTorch); the definition gives 1.846
    "selu": 1.0,  # self-normalizing fixed point: E[selu(z)^2] = 1 for z ~ N(0, 1) (Klambauer et al. 2017)
    "elu": None,
    "gelu": None,
    "silu": None,
    "softsign": None,
}

_ALIASES = {"swish": "silu", "identity": "linear", None: "linear"}

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def _numpy_activation(name: str, negative_slope: float) -> Callable[[np.ndarray], np.ndarray] | None:
    from math import erf

    erf_v = np.vectorize(erf)
    table = {
        "linear": lambda x: x,
        "relu": lambda x: np.maximum(x, 0.0),
        "leaky_relu": lambda x: np.where(x >= 0, x, negative_slope * x),
        "tanh": np.tanh,
        "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
        "softsign": lambda x: x / (1.0 + np.abs(x)),
        "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
        "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
        "silu": lambda x: x / (1.0 + np.exp(-x)),
        "gelu": lambda x: 0.5 * x * (1.0 + erf_v(x / math.sqrt(2.0))),  # Keras' default: exact (erf) gelu
    }
    return table.get(name)


def _resolve(activation, negative_slope: float | None) -> tuple[str | None, Callable[[np.ndarray], np.ndarray]]:
    """Return (canonical name or None, a float64 numpy function) for a name, a Keras activation or a callable."""
    if isinstance(activation, str) or activation is None:
        name = _ALIASES.get(activation, activation)
        try:
            keras_fn = keras.activations.get(name)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"`activation` must be a Keras activation name or a callable. Received: activation={activation!r}"
            ) from err
        fn = _numpy_activation(name, DEFAULT_NEGATIVE_SLOPE if negative_slope is None else negative_slope)
        return name, fn if fn is not None else _via_keras(keras_fn)
    if callable(activation):
        name = getattr(activation, "__name__", None)
        name = _ALIASES.get(name, name)
        if name in GAIN_TABLE and getattr(activation, "__module__", "").startswith("keras"):
            fn = _numpy_activation(name, DEFAULT_NEGATIVE_SLOPE if negative_slope is None else negative_slope)
            return name, fn
        return None, _via_keras(activation)
    raise ValueError(f"`activation` must be a Keras activation name or a callable. Received: activation={activation!r}")


def _via_keras(fn: Callable) -> Callable[[np.ndarray], np.ndarray]:
    def apply(x: np.ndarray) -> np.ndarray:
        out = fn(keras.ops.convert_to_tensor(x.astype("float32")))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype="float64")

    return apply


# Quadrature grid for E[g(z)], z ~ N(0, 1): trapezoid on [-12, 12] with a node at 0, exact enough for kinks at 0.
_Z = np.linspace(-12.0, 12.0, 48001)
_W = np.exp(-0.5 * _Z**2) / math.sqrt(2.0 * math.pi) * (_Z[1] - _Z[0])
_W[[0, -1]] *= 0.5


def _gauss_moments(fn: Callable[[np.ndarray], np.ndarray], q: float) -> tuple[float, float, float]:
    s = math.sqrt(q) * _Z
    f = fn(s)
    h = 1e-4 * max(1.0, math.sqrt(q))
    df = (fn(s + h) - fn(s - h)) / (2.0 * h)
    return float(_W @ f), float(_W @ f**2), float(_W @ df**2)


@lru_cache(maxsize=1024)
def _named_moments(name: str | None, q: float, negative_slope: float | None) -> tuple[float, float, float]:
    return _gauss_moments(_resolve(name, negative_slope)[1], q)


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
        m, s2, d2 = _gauss_moments(_resolve(activation, negative_slope)[1], float(q))
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
    if name == "leaky_relu":
        a = DEFAULT_NEGATIVE_SLOPE if negative_slope is None else negative_slope
        return math.sqrt(2.0 / (1.0 + a * a))
    if name in GAIN_TABLE and GAIN_TABLE[name] is not None:
        return GAIN_TABLE[name]
    second = moments(activation, 1.0, negative_slope)["second"]
    if not second > 0:
        raise ValueError(f"`activation` has E[f(z)^2] = 0 for z ~ N(0, 1); no gain exists. Received: {activation!r}")
    return 1.0 / math.sqrt(second)
