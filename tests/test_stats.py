"""TensorView and STATS against numpy on fixed tensors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_initkit.stats import STATS, TensorView


def _view(x, kind="activation", activation=None, quantile_sample=None):
    return TensorView(tf.constant(x), kind=kind, activation=activation, unit_axis=-1, quantile_sample=quantile_sample)


def test_moments_and_percentiles_match_numpy():
    x = np.random.default_rng(0).standard_normal((64, 10)).astype("float32")
    v = _view(x)
    assert float(STATS["mean"](v)) == pytest.approx(x.mean(), abs=1e-6)
    assert float(STATS["var"](v)) == pytest.approx(x.var(), rel=1e-5)
    assert float(STATS["std"](v)) == pytest.approx(x.std(), rel=1e-5)
    for q in (15, 50, 85):
        assert float(STATS[f"p{q}"](v)) == pytest.approx(np.percentile(x, q), rel=1e-5, abs=1e-6)


def test_saturated_and_dead_apply_by_the_activation_registry():
    x = np.array([[0.0, 0.995], [0.0, -0.2]], "float32")
    assert float(STATS["saturated"](_view(x, activation="tanh"))) == pytest.approx(0.25)
    assert STATS["saturated"](_view(x, activation="relu")) is None  # unbounded
    assert STATS["saturated"](_view(x, kind="preact", activation="tanh")) is None
    dead = np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]], "float32")
    assert float(STATS["dead"](_view(dead, activation="relu"))) == pytest.approx(1 / 3)
    assert float(STATS["dead"](_view(dead, activation="relu6"))) == pytest.approx(1 / 3)
    assert STATS["dead"](_view(dead, activation="leaky_relu")) is None


def test_diverged_and_histogram():
    v = _view(np.array([1.0, np.nan], "float32"))
    assert bool(v.diverged)
    h = _view(np.array([0.0, 0.25, 0.5, 1.0, 2.0], "float32")).histogram(0.0, 1.0, 2)
    np.testing.assert_allclose(h.numpy(), [0.4, 0.4])  # 2.0 is outside; 1.0 falls in the last bin
