"""Gaussian expectations: E[f(s)], E[f(s)^2] and E[f'(s)^2] for s ~ N(m, v), the factors of every variance recursion.

- `expect(fn, q)`: the three moments of a float64 numpy function for s ~ N(0, q), by quadrature (a trapezoid on
  [-12, 12] standard deviations with a node at 0: exact enough for the kinks of rectifiers at 0).
- `expect_keras(fn, q)`: the same for a Keras-ops callable, evaluated in float32 as a layer evaluates it.
- `rectifier_moments(alpha, m, v)`: per element, for the rectifier with slope 1 above 0 and `alpha` below.
- `elementwise_moments(fn, m, v)`: per element, for any Keras-ops callable (Chebyshev interpolants in m, corrected
  in v with the heat equation).
- `max_of_normals(k)`: mean and variance of the maximum of k independent N(0, 1) (max pooling).

Pure numpy on top of Keras ops: runs under any backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import keras
import numpy as np

__all__ = [
    "central_dsq",
    "elementwise_moments",
    "expect",
    "expect_keras",
    "max_of_normals",
    "rectifier_moments",
    "via_keras",
]

NumpyFn = Callable[[np.ndarray], np.ndarray]

# Quadrature grid for E[g(z)], z ~ N(0, 1): trapezoid on [-12, 12] with a node at 0, exact enough for kinks at 0.
_Z = np.linspace(-12.0, 12.0, 48001)
_W = np.exp(-0.5 * _Z**2) / math.sqrt(2.0 * math.pi) * (_Z[1] - _Z[0])
_W[[0, -1]] *= 0.5


def expect(fn: NumpyFn, q: float) -> tuple[float, float, float]:
    """(E[f(s)], E[f(s)^2], E[f'(s)^2]) for s ~ N(0, q), f a float64 numpy function (f' by central difference)."""
    s = math.sqrt(q) * _Z
    f = fn(s)
    h = 1e-4 * max(1.0, math.sqrt(q))
    df = (fn(s + h) - fn(s - h)) / (2.0 * h)
    # einsum, not `@`: a 48001-element BLAS dot is multi-threaded, and 100x slower on busy cores (a study's workers)
    return tuple(float(np.einsum("i,i->", _W, g)) for g in (f, f**2, df**2))


def via_keras(fn: Callable) -> NumpyFn:
    """A Keras-ops callable as a float64 numpy function that evaluates it in float32 (as a layer does)."""

    def apply(x: np.ndarray) -> np.ndarray:
        out = fn(keras.ops.convert_to_tensor(x.astype("float32")))
        return np.asarray(keras.ops.convert_to_numpy(out), dtype="float64")

    return apply


def expect_keras(fn: Callable, q: float) -> tuple[float, float, float]:
    """`expect` of a Keras-ops callable."""
    return expect(via_keras(fn), q)


# ----------------------------------------------------------------------------------------------------------------
# Per element: s ~ N(m, v) with m, v arrays.

_RECT_U = 8.0  # beyond |m / sqrt(v)| = 8 a rectifier's moments are its linear asymptotes to 1e-15


@lru_cache(maxsize=1)
def _rect_table():
    """Chebyshev interpolants on u in [0, 8] of E[relu(u + z)], E[relu(u + z)^2], P(u + z > 0), z ~ N(0, 1)."""
    deg = 32
    u = 0.5 * _RECT_U * (1.0 - np.cos(np.pi * (np.arange(deg + 1) + 0.5) / (deg + 1)))
    vals = np.asarray([expect_keras(lambda t, ui=float(ui): keras.activations.relu(t + ui), 1.0) for ui in u])
    cheb = np.polynomial.Chebyshev
    return tuple(cheb.fit(u, vals[:, i], deg, domain=[0.0, _RECT_U]) for i in range(3))


def rectifier_moments(alpha, m, v):
    """E[f], E[f^2], E[f'^2] of the rectifier with slope alpha below 0, for s ~ N(m, v), per element."""
    p1, p2, pd_ = _rect_table()
    sd = np.sqrt(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.where(sd > 0, m / np.where(sd > 0, sd, 1.0), np.sign(m) * np.inf)
    a = np.abs(u)
    inside = a <= _RECT_U
    ac = np.where(inside, a, 0.0)
    q1 = np.where(inside, p1(ac), a)  # E[relu(|u| + z)]
    q2 = np.where(inside, p2(ac), a * a + 1.0)
    qd = np.where(inside, pd_(ac), 1.0)
    neg = u < 0  # relu(-a + z): by symmetry from relu(a + z) - (a + z) = relu(-(a + z))
    r1 = np.where(neg, q1 - a, q1)
    r2 = np.where(neg, a * a + 1.0 - q2, q2)
    rd = np.where(neg, 1.0 - qd, qd)
    uf = np.where(np.isfinite(u), u, 0.0)
    e1 = sd * (r1 + alpha * (uf - r1))
    e2 = v * (r2 + alpha**2 * (uf * uf + 1.0 - r2))
    d = rd + alpha**2 * (1.0 - rd)
    det = sd == 0  # deterministic units
    if np.any(det):
        y = np.where(m > 0, m, alpha * m)
        e1, e2 = np.where(det, y, e1), np.where(det, y * y, e2)
        d = np.where(det, np.where(m > 0, 1.0, alpha**2), d)
    return e1, e2, d


def central_dsq(fn: Callable, inner: Callable | None = None) -> Callable:
    """t -> f'(inner(t))^2 by a central difference (the backward factor of f applied after inner; inner = id)."""
    h = 1e-3

    def dsq(t):
        x = t if inner is None else inner(t)
        return ((fn(x + h) - fn(x - h)) / (2.0 * h)) ** 2

    return dsq


def elementwise_moments(fn: Callable, m, v, dsq: Callable | None = None):
    """E[f], E[f^2], E[f'^2] per element for s ~ N(m, v): Chebyshev interpolants in m, heat-equation corrected in v.

    `fn` is a Keras-ops callable; `dsq(t)`, when given, is f'(t)^2 (a composition's outermost derivative), else f'
    is taken by central difference. h(m, v) = E[g(m + sqrt(v) z)] solves dh/dv = 1/2 d^2h/dm^2, so h(m, v + dv) =
    h + dv/2 h_mm + dv^2/8 h_mmmm. The interpolants are built at a few levels of v (consecutive levels a factor 2
    apart, each element corrected from the nearest, second order); each node is one quadrature of the shifted f.
    """
    shape = np.shape(m)
    m, v = np.ravel(m).astype(np.float64), np.ravel(v).astype(np.float64)
    e1, e2, d = np.empty_like(m), np.empty_like(m), np.empty_like(m)
    det = ~(v > 1e-12 * (1.0 + m * m))
    if det.any():  # no spread: f at the point
        x = keras.ops.convert_to_tensor(m[det].astype("float32"))
        y = np.asarray(keras.ops.convert_to_numpy(fn(x)), dtype=np.float64)
        dd = dsq if dsq is not None else central_dsq(fn)
        e1[det], e2[det] = y, y * y
        d[det] = np.asarray(keras.ops.convert_to_numpy(dd(x)), dtype=np.float64)
    rand = ~det
    if rand.any():
        lv = np.log(v[rand])
        width = float(lv.max() - lv.min())
        n_levels = max(1, math.ceil(width / math.log(2.0) - 1e-9))  # bands of a factor 2, each from its centre
        levels = lv.min() + (np.arange(n_levels) + 0.5) * width / n_levels
        nearest = np.abs(lv[:, None] - levels[None, :]).argmin(axis=1)
        idx = np.flatnonzero(rand)
        for li, level in enumerate(levels):
            sel = idx[nearest == li]
            if sel.size:
                e1[sel], e2[sel], d[sel] = _cheb_moments(fn, dsq, m[sel], v[sel], math.exp(level))
    return e1.reshape(shape), np.maximum(e2, e1 * e1).reshape(shape), np.maximum(d, 0.0).reshape(shape)


def _cheb_moments(fn: Callable, dsq: Callable | None, m, v, vbar):
    sd = math.sqrt(vbar)
    lo, hi = float(m.min()) - 0.6 * sd, float(m.max()) + 0.6 * sd  # local derivatives; nodes ~sd/1.5 apart
    deg = int(np.clip(math.ceil(1.5 * (hi - lo) / sd), 4, 32))
    nodes = lo + 0.5 * (hi - lo) * (1.0 - np.cos(np.pi * (np.arange(deg + 1) + 0.5) / (deg + 1)))
    vals = []
    for mk in nodes:
        mean, second, deriv2 = expect_keras(lambda t, mk=float(mk): fn(t + mk), vbar)
        dv = deriv2 if dsq is None else expect_keras(lambda t, mk=float(mk): dsq(t + mk), vbar)[0]
        vals.append((mean, second, dv))
    vals = np.asarray(vals)
    dv = v - vbar
    out = []
    for i in range(3):
        c = np.polynomial.Chebyshev.fit(nodes, vals[:, i], deg, domain=[lo, hi])
        out.append(c(m) + 0.5 * dv * c.deriv(2)(m) + 0.125 * dv**2 * c.deriv(4)(m))
    return out


@lru_cache(maxsize=64)
def max_of_normals(k: int) -> tuple[float, float]:
    """Mean and variance of the maximum of k independent N(0, 1): k E[z Phi(z)^(k-1)], k E[z^2 Phi(z)^(k-1)]."""
    if k <= 1:
        return 0.0, 1.0

    def cdf_pow(t):
        return (0.5 * (1.0 + keras.ops.erf(t / math.sqrt(2.0)))) ** (k - 1)

    mean = k * expect_keras(lambda t: t * cdf_pow(t), 1.0)[0]
    second = k * expect_keras(lambda t: t * t * cdf_pow(t), 1.0)[0]
    return mean, second - mean * mean
