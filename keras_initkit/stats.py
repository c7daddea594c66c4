"""Tensor statistics: `TensorView` (one recorded tensor and its derived quantities, each computed once) and `STATS`,
a table of small named pure functions of a view (optax's style of small named measurements; adding one is one
entry). TensorFlow ops, run inside the monitor's traced functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property, lru_cache
from typing import Any

import numpy as np

from keras_initkit.activations import spec
from keras_initkit.backends import ops as _tf  # the backend's tensor operations, in TensorFlow's names

__all__ = ["SATURATION_MARGIN", "STATS", "TensorView"]

# A value of a bounded activation this close to a bound counts as saturated (|tanh| > 0.99, sigmoid < 0.01 or > 0.99).
SATURATION_MARGIN = 0.01


class TensorView:
    """One recorded tensor and the quantities derived from it, each computed at most once (stats share them).

    Attributes: `x` (float32 tensor), `kind` (one of KINDS), `activation` (name of the layer's nonlinearity or None),
    `bounds` ((low, high) of a bounded activation or None), `unit_axis` (axis of units/channels; None for a single
    unit's slice). Derived, cached: `flat`, `mean`, `var`, `sorted_sample`, `quantile(q)`, `dead_fraction`.
    """

    def __init__(
        self,
        x,
        *,
        kind: str,
        activation: str | None,
        unit_axis: int | None,
        quantile_sample: int | None,
        xla=False,
        quantiles: tuple[float, ...] = (),
    ):
        tf = _tf()
        self.xla = xla
        self.quantiles = tuple(quantiles)  # the q the stats will ask: on a sample of unknown size, computed at once
        self.x = tf.cast(x, tf.float32)
        self.kind = kind
        self.activation = activation
        self.bounds = spec(activation).bounds if activation else None
        self.unit_axis = unit_axis
        self.quantile_sample = quantile_sample

    @cached_property
    def flat(self):
        return _tf().reshape(self.x, [-1])

    @cached_property
    def _moments(self):
        """(mean, var) in float32, each exact to ~1e-7 relative whatever the tensor's mean and scale.

        Off XLA, a fast path reads the tensor twice: the sum, and the sum of squares as a squared Euclidean norm (one
        fused kernel, where tf.nn.moments reads it three times and writes a squared copy). Var = E[x^2] - E[x]^2 is
        exact to a few float32 ulps while E[x]^2 <= Var (relative error ~ 6e-8 * (1 + mean^2 / var)); a tensor with
        |mean| > std, or whose sum of squares overflows float32, takes the two-pass float64 path instead (a cond:
        only the branch taken runs). Under XLA, which fuses the casts into the reductions, always the float64 path.
        """
        tf = _tf()
        if self.xla:
            return _two_pass64(self.flat)
        n = self.flat.shape[0]
        inv_n = 1.0 / max(n, 1) if n is not None else 1.0 / tf.cast(tf.size(self.flat), tf.float32)
        mean = tf.reduce_sum(self.flat) * inv_n
        second = tf.square(tf.math.reduce_euclidean_norm(self.flat)) * inv_n
        var = second - mean * mean
        one_pass_exact = tf.math.is_finite(second) & (mean * mean <= var)  # False for NaN
        return tf.cond(one_pass_exact, lambda: (mean, var), lambda: _two_pass64(self.flat))

    @property
    def mean(self):
        return self._moments[0]

    @property
    def var(self):
        return self._moments[1]

    @cached_property
    def diverged(self):
        """True when the mean or the variance is not finite: a NaN or Inf element, or a variance beyond float32.

        Every other built-in statistic of a tensor with a finite mean and variance is finite.
        """
        tf = _tf()
        return tf.logical_not(tf.math.is_finite(self.mean) & tf.math.is_finite(self.var))

    @cached_property
    def sorted_sample(self):
        """The sorted tensor, or a fixed strided sample of at most `quantile_sample` of its elements when larger.

        Every s-th element, s >= size / quantile_sample the first stride coprime with every static dimension: the
        same elements at every record, all units (channels) and positions alike (a stride sharing a factor with the
        channel count would see a few channels only). A strided slice copies far less than a random gather, and the
        sort of the sample is the percentiles' whole cost.
        """
        tf = _tf()
        n = self.flat.shape[0]
        cap = self.quantile_sample
        if cap is None or (n is not None and n <= cap):
            return tf.sort(self.flat)
        primes = _prime_factors(tuple(d for d in self.x.shape if d is not None))
        if n is not None:
            first = -(-n // cap)
            stride = next((s for s in range(first, first + _STRIDE_SEARCH) if all(s % p for p in primes)), first)
            return tf.sort(self.flat[::stride])
        size = tf.size(self.flat)
        stride = (size + cap - 1) // cap
        if primes:
            candidates = stride + tf.range(_STRIDE_SEARCH)
            coprime = tf.reduce_all(candidates[:, None] % np.int32(primes)[None, :] != 0, axis=1)
            # the first coprime candidate (the first one when none is: argmax of all-zero is 0)
            stride = tf.gather(candidates, tf.argmax(tf.cast(coprime, tf.int32), output_type=tf.int32))
        # A strided slice with a tensor stride has a shape of unknown rank: reshaped to the vector it is, so the
        # percentiles' gather stays a scalar (a batch of unknown size: Keras' last, smaller batch of an epoch).
        return tf.sort(tf.reshape(tf.strided_slice(self.flat, [0], [size], tf.reshape(stride, [1])), [-1]))

    def quantile(self, q: float):
        """Linear-interpolated q-quantile (numpy's default method) of `sorted_sample`."""
        tf = _tf()
        s = self.sorted_sample
        m = s.shape[0]
        if m is not None:  # static size: the interpolation is fixed at trace time (one gather, three ops)
            pos = q * (m - 1)
            lo = int(math.floor(pos))
            frac = pos - lo
            return tf.reduce_sum(tf.gather(s, [lo, min(lo + 1, m - 1)]) * np.float32([1.0 - frac, frac]))
        if q in self.quantiles:
            return self._dynamic_quantiles[self.quantiles.index(q)]
        return _interpolate(s, tf.constant(q, tf.float32))

    @cached_property
    def _dynamic_quantiles(self):
        """Every q of `quantiles` of a sample of unknown size (a batch dimension unknown at trace time, as in Keras'
        train step), in one vector: the same arithmetic as one q at a time, in half the graph's ops (85 -> 41 for
        p15, p50 and p85)."""
        tf = _tf()
        return _interpolate(self.sorted_sample, tf.constant(self.quantiles, tf.float32))

    @cached_property
    def dead_fraction(self):
        """Fraction of units (channels) that are exactly 0 on every example and position of the batch.

        For outputs >= 0 (a rectifier's, as `stat_dead` asks): a unit is dead when its maximum is 0.
        """
        tf = _tf()
        rank = _rank(self.x)
        if self.unit_axis is None or rank is None or rank < 2:
            return tf.cast(tf.equal(tf.reduce_max(self.x), 0.0), tf.float32)
        axis = self.unit_axis % rank
        others = [a for a in range(rank) if a != axis]
        dead = tf.equal(tf.reduce_max(self.x, axis=others), 0.0)  # NaN is not 0: a NaN unit is not dead
        return tf.reduce_mean(tf.cast(dead, tf.float32))

    def histogram(self, lo, hi, bins: int):
        """Fraction of all elements in each of `bins` equal bins on [lo, hi]; values outside are not counted."""
        tf = _tf()
        x = self.flat
        width = (hi - lo) / bins
        idx = tf.cast(tf.floor((x - lo) / width), tf.int32)
        idx = tf.minimum(idx, bins - 1)  # x == hi falls in the last bin
        inside = (x >= lo) & (x <= hi)  # False for NaN
        idx = tf.where(inside, idx, bins)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(x), idx, bins + 1)[:bins]
        return counts / tf.cast(tf.maximum(tf.size(x), 1), tf.float32)


def _interpolate(s, q):
    """Linear-interpolated q-quantiles (numpy's default method) of a sorted vector `s` of unknown size; `q` a float32
    scalar or vector."""
    tf = _tf()
    m = tf.shape(s)[0]
    pos = q * tf.cast(m - 1, tf.float32)
    lo = tf.cast(tf.floor(pos), tf.int32)
    frac = pos - tf.cast(lo, tf.float32)
    return tf.gather(s, lo) * (1.0 - frac) + tf.gather(s, tf.minimum(lo + 1, m - 1)) * frac


def _rank(x) -> int | None:
    """The rank of a tensor (None where TensorFlow does not know it)."""
    shape = x.shape
    return shape.rank if hasattr(shape, "rank") else len(shape)


def _two_pass64(flat):
    """(mean, var) of a flat float32 tensor, accumulated in float64 from the exact mean (two passes), as float32."""
    tf = _tf()
    x = tf.cast(flat, tf.float64)
    n = tf.cast(tf.maximum(tf.size(x), 1), tf.float64)
    mean = tf.reduce_sum(x) / n
    if tf.float64 == tf.float32:  # JAX without jax_enable_x64: float32 sums, so the deviations are scaled by their
        # largest (no overflow of the squares' sum while the variance itself is finite), and the corrected two-pass
        # form removes the mean's rounding error (Chan, Golub & LeVeque 1983).
        d = x - mean
        s = tf.reduce_max(tf.abs(d))
        s = tf.where(tf.math.is_finite(s) & (s > 0), s, tf.ones_like(s))
        d = d / s
        var = (tf.reduce_sum(tf.square(d)) / n - tf.square(tf.reduce_sum(d) / n)) * s * s
        return tf.cast(mean, tf.float32), tf.cast(var, tf.float32)
    var = tf.reduce_sum(tf.square(x - mean)) / n
    return tf.cast(mean, tf.float32), tf.cast(var, tf.float32)


# Consecutive strides tried for the first one coprime with a tensor's static dimensions (prime gaps below 2^31 are
# under 300; in practice dimensions have a few small prime factors and the second or third candidate qualifies).
_STRIDE_SEARCH = 64


@lru_cache(maxsize=256)
def _prime_factors(dims: tuple[int, ...]) -> tuple[int, ...]:
    """The distinct prime factors of a tuple of positive ints."""
    out: set[int] = set()
    for d in dims:
        p = 2
        while p * p <= d:
            while d % p == 0:
                out.add(p)
                d //= p
            p += 1
        if d > 1:
            out.add(d)
    return tuple(sorted(out))


def stat_mean(v: TensorView):
    return v.mean


def stat_var(v: TensorView):
    return v.var


def stat_std(v: TensorView):
    return _tf().sqrt(v.var)


def _percentile(q: float) -> Callable[[TensorView], Any]:
    def stat(v: TensorView):
        return v.quantile(q / 100.0)

    stat.__name__ = f"stat_p{q:g}"
    stat.quantile = q / 100.0  # read by RecordSpec: every percentile of a record is computed at once
    return stat


def stat_saturated(v: TensorView):
    """Fraction of a bounded activation's outputs within SATURATION_MARGIN of a bound (activation kind only).

    A rectifier's lower bound 0 is not counted (its zeros are `dead`'s, per unit): relu6 saturates at 6 only.
    """
    if v.kind != "activation" or v.bounds is None:
        return None
    tf = _tf()
    lo, hi = v.bounds
    x = v.flat
    high = x > hi - SATURATION_MARGIN
    at_bound = high if spec(v.activation).rectifier else (x < lo + SATURATION_MARGIN) | high
    return tf.reduce_mean(tf.cast(at_bound, tf.float32))


def stat_dead(v: TensorView):
    """Fraction of units that output exactly 0 for the whole batch (activation kind of a rectifier only)."""
    if v.kind != "activation" or not spec(v.activation).rectifier:
        return None
    return v.dead_fraction


# name -> f(TensorView) -> scalar tensor, or None where the statistic does not apply (decided from the view's kind
# and activation, never from values). Pass `stats={**STATS, "absmax": lambda v: tf.reduce_max(tf.abs(v.flat))}`.
STATS: dict[str, Callable[[TensorView], Any]] = {
    "mean": stat_mean,
    "var": stat_var,
    "std": stat_std,
    "p15": _percentile(15),
    "p50": _percentile(50),
    "p85": _percentile(85),
    "saturated": stat_saturated,
    "dead": stat_dead,
}
