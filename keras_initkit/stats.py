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

__all__ = ["SATURATION_MARGIN", "STATS", "TensorView"]

# A value of a bounded activation this close to a bound counts as saturated (|tanh| > 0.99, sigmoid < 0.01 or > 0.99).
SATURATION_MARGIN = 0.01


def _tf():
    import tensorflow as tf

    return tf


class TensorView:
    """One recorded tensor and the quantities derived from it, each computed at most once (stats share them).

    Attributes: `x` (float32 tensor), `kind` (one of KINDS), `activation` (name of the layer's nonlinearity or None),
    `bounds` ((low, high) of a bounded activation or None), `unit_axis` (axis of units/channels; None for a single
    unit's slice). Derived, cached: `flat`, `mean`, `var`, `sorted_sample`, `quantile(q)`, `dead_fraction`.
    """

    def __init__(
        self, x, *, kind: str, activation: str | None, unit_axis: int | None, quantile_sample: int | None, xla=False
    ):
        tf = _tf()
        self.xla = xla
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
        # Two reads of the tensor, no copy: the sum, and the sum of squares as a squared Euclidean norm (one fused
        # kernel), where tf.nn.moments reads it three times and writes a squared copy. Var = E[x^2] - E[x]^2 loses
        # digits only when |mean| >> std (relative error ~ 1e-7 * mean^2 / var), not the case of these tensors.
        tf = _tf()
        n = self.flat.shape[0]
        inv_n = 1.0 / max(n, 1) if n is not None else 1.0 / tf.cast(tf.size(self.flat), tf.float32)
        mean = tf.reduce_sum(self.flat) * inv_n
        if self.xla:  # XLA has no EuclideanNorm kernel, and fuses the square into the sum itself
            second = tf.reduce_sum(tf.square(self.flat)) * inv_n
        else:
            second = tf.square(tf.math.reduce_euclidean_norm(self.flat)) * inv_n
        return mean, tf.maximum(second - mean * mean, 0.0)

    @property
    def mean(self):
        return self._moments[0]

    @property
    def var(self):
        return self._moments[1]

    @cached_property
    def diverged(self):
        # Any NaN or Inf element makes the sum (so the mean) non-finite: no extra pass over the tensor.
        return _tf().logical_not(_tf().math.is_finite(self.mean))

    @cached_property
    def sorted_sample(self):
        """The sorted tensor, or a fixed pseudo-random sample of `quantile_sample` of its elements when larger."""
        tf = _tf()
        n = self.flat.shape[0]
        cap = self.quantile_sample
        if cap is None or (n is not None and n <= cap):
            return tf.sort(self.flat)
        # Positions floor(u * n) for fixed u in [0, 1): the same elements at every record, and no aliasing with the
        # layout (a strided sample of an NHWC tensor would see a few channels only).
        u = _sample_positions(cap)
        if n is not None:
            idx = tf.constant(((u * n) >> 31).astype(np.int32))
        else:
            idx = tf.bitwise.right_shift(tf.constant(u) * tf.size(self.flat, out_type=tf.int64), 31)
        return tf.sort(tf.gather(self.flat, idx))

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
        m = tf.shape(s)[0]
        pos = q * tf.cast(m - 1, tf.float32)
        lo = tf.cast(tf.floor(pos), tf.int32)
        frac = pos - tf.cast(lo, tf.float32)
        return tf.gather(s, lo) * (1.0 - frac) + tf.gather(s, tf.minimum(lo + 1, m - 1)) * frac

    @cached_property
    def dead_fraction(self):
        """Fraction of units (channels) that are exactly 0 on every example and position of the batch.

        For outputs >= 0 (a rectifier's, as `stat_dead` asks): a unit is dead when its maximum is 0.
        """
        tf = _tf()
        if self.unit_axis is None or self.x.shape.rank is None or self.x.shape.rank < 2:
            return tf.cast(tf.equal(tf.reduce_max(self.x), 0.0), tf.float32)
        axis = self.unit_axis % self.x.shape.rank
        others = [a for a in range(self.x.shape.rank) if a != axis]
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


@lru_cache(maxsize=8)
def _sample_positions(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 2**31, size=size, dtype=np.int64)


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
    return stat


def stat_saturated(v: TensorView):
    """Fraction of a bounded activation's outputs within SATURATION_MARGIN of a bound (activation kind only)."""
    if v.kind != "activation" or v.bounds is None:
        return None
    tf = _tf()
    lo, hi = v.bounds
    x = v.flat
    return tf.reduce_mean(tf.cast((x < lo + SATURATION_MARGIN) | (x > hi - SATURATION_MARGIN), tf.float32))


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
