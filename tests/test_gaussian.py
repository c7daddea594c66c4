"""Gaussian expectations against closed forms."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_initkit import gaussian


def test_expect_relu_closed_form():
    for q in (0.25, 1.0, 9.0):
        mean, second, deriv2 = gaussian.expect(lambda x: np.maximum(x, 0.0), q)
        # the trapezoid's error: ~2e-8 relative
        assert mean == pytest.approx(math.sqrt(q / (2 * math.pi)), rel=1e-7)
        assert second == pytest.approx(q / 2, rel=1e-7)
        assert deriv2 == pytest.approx(0.5, rel=1e-3)


def test_max_of_normals_closed_form():
    assert gaussian.max_of_normals(1) == (0.0, 1.0)
    mean, var = gaussian.max_of_normals(2)  # E[max] = 1/sqrt(pi), Var = 1 - 1/pi
    assert mean == pytest.approx(1 / math.sqrt(math.pi), rel=1e-5)
    assert var == pytest.approx(1 - 1 / math.pi, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_rectifier_moments_match_quadrature_of_the_shifted_rectifier(alpha):
    m = np.array([-3.0, -0.5, 0.0, 0.7, 12.0])
    v = np.array([1.0, 0.3, 2.0, 1.0, 1.0])
    e1, e2, d = gaussian.rectifier_moments(alpha, m, v)
    for i in range(len(m)):
        ref = gaussian.expect(lambda x, i=i: np.where(x + m[i] > 0, x + m[i], alpha * (x + m[i])), v[i])
        # the table is built from float32 evaluations (as a layer computes): ~3e-4 relative in the far tail
        assert (e1[i], e2[i]) == pytest.approx(ref[:2], rel=1e-3, abs=1e-9)
        assert d[i] == pytest.approx(ref[2], rel=5e-3, abs=1e-9)


def test_elementwise_moments_match_quadrature_per_element():
    m = np.array([[-1.0, 0.0], [0.4, 2.0]])
    v = np.array([[0.5, 1.0], [1.7, 0.2]])
    e1, e2, d = gaussian.elementwise_moments(keras.activations.tanh, m, v)
    for i, j in np.ndindex(m.shape):
        ref = gaussian.expect(lambda x, i=i, j=j: np.tanh(x + m[i, j]), v[i, j])
        # interpolated at a few levels of v and corrected to each element's v (second order): a few 1e-3
        assert (e1[i, j], e2[i, j], d[i, j]) == pytest.approx(ref, abs=5e-3)
    # no spread: f at the point
    e1, e2, d = gaussian.elementwise_moments(keras.activations.tanh, np.array([0.5]), np.array([0.0]))
    assert e1[0] == pytest.approx(math.tanh(0.5), rel=1e-6) and e2[0] == pytest.approx(math.tanh(0.5) ** 2, rel=1e-6)
    assert d[0] == pytest.approx((1 - math.tanh(0.5) ** 2) ** 2, rel=1e-3)
