"""The studies' shared measures against hand computations."""

import math

import keras
import numpy as np
import pytest

from keras_initkit import GlorotAvg, StandardUniform
from keras_initkit.study.metrics import accuracy, error_percent, jacobian_singular_values


class _Fixed(keras.Model):
    """Returns fixed logits per example index (the input holds the index)."""

    def __init__(self, logits):
        super().__init__()
        self.table = keras.ops.convert_to_tensor(logits)

    def call(self, x, training=False):
        return keras.ops.take(self.table, keras.ops.cast(x[:, 0], "int32"), axis=0)


def test_accuracy_counts_argmax_hits_across_batches_and_non_finite_rows_as_wrong():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [np.nan, 9.0], [5.0, np.inf], [1.0, 0.0]], dtype="float32")
    x = np.arange(5, dtype="float32")[:, None]
    y = np.array([0, 1, 1, 0, 1])  # right, right, NaN row (wrong), inf row (wrong), wrong
    model = _Fixed(logits)
    for batch in (1, 2, 1000):
        assert accuracy(model, x, y, batch=batch) == pytest.approx(2 / 5)
        assert error_percent(model, x, y, batch=batch) == pytest.approx(60.0)


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"len\(x\)=3, len\(y\)=2"):
        accuracy(_Fixed(np.zeros((3, 2), "float32")), np.zeros((3, 1), "float32"), np.zeros(2))


def test_cross_entropy_against_a_hand_computation():
    from keras_initkit.study.metrics import cross_entropy

    logits = np.array([[0.0, 0.0], [3.0, 1.0], [1000.0, 0.0]], dtype="float32")  # the last one: shift-stable
    y = np.array([0, 1, 0])
    x = np.arange(3, dtype="float32")[:, None]
    expect = np.mean([np.log(2.0), np.log1p(np.exp(2.0)), 0.0])
    assert cross_entropy(_Fixed(logits), x, y) == pytest.approx(expect)
    with pytest.raises(ValueError, match=r"len\(x\)=3, len\(y\)=2"):
        cross_entropy(_Fixed(logits), x, y[:2])


# ------------------------------------------------------------------------------------------------ the Jacobian


def _dense(n_in, n_out, activation=None, init=None, bias=0.0):
    layer = keras.layers.Dense(n_out, activation=activation, kernel_initializer=init or GlorotAvg(seed=3))
    layer.build((None, n_in))
    layer.bias.assign(np.full((n_out,), bias, dtype="float32"))
    return layer


def test_jacobian_of_a_linear_layer_is_the_kernel():
    layer = _dense(7, 5, bias=0.3)
    z = np.random.default_rng(0).normal(size=(4, 7)).astype("float32")
    sv = jacobian_singular_values(layer, z)
    expected = np.linalg.svd(keras.ops.convert_to_numpy(layer.kernel).astype("float64"), compute_uv=False)
    assert sv.shape == (4, 5)
    for row in sv:  # the same for every input: the map is affine
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


def test_jacobian_of_a_tanh_layer_matches_the_hand_formula():
    # z -> tanh(z W + b): J = diag(1 - tanh(s)^2) W^T, s = z W + b
    layer = _dense(6, 6, activation="tanh", bias=-0.2)
    z = np.random.default_rng(1).normal(size=(3, 6)).astype("float32")
    w = keras.ops.convert_to_numpy(layer.kernel).astype("float64")
    s = z.astype("float64") @ w - 0.2
    sv = jacobian_singular_values(layer, z)
    for i in range(3):
        jac = np.diag(1.0 - np.tanh(s[i]) ** 2) @ w.T
        np.testing.assert_allclose(sv[i], np.linalg.svd(jac, compute_uv=False), rtol=1e-4, atol=1e-6)


def test_jacobian_generic_path_agrees_with_the_dense_path():
    layer = _dense(5, 4, activation="softsign", bias=0.1)
    z = np.random.default_rng(2).normal(size=(2, 5)).astype("float32")
    wrapped = keras.Sequential([keras.Input((5,)), layer])  # not a Dense: the generic GradientTape path
    np.testing.assert_allclose(
        jacobian_singular_values(wrapped, z), jacobian_singular_values(layer, z), rtol=1e-5, atol=1e-6
    )


def test_mean_singular_value_of_standard_init_follows_the_quarter_circle_law():
    # A square n x n matrix with iid entries of variance sigma^2 has mean singular value -> 8/(3 pi) sigma sqrt(n);
    # standard init: n Var(W) = 1/3, so ~0.49 (Glorot & Bengio report ~0.5 with tanh, whose slope is ~1 near 0).
    n = 400
    layer = _dense(n, n, init=StandardUniform(seed=5))
    sv = jacobian_singular_values(layer, np.zeros((1, n), "float32"))
    assert sv.mean() == pytest.approx(8 / (3 * math.pi) / math.sqrt(3), rel=0.03)
    layer = _dense(n, n, init=GlorotAvg(seed=5))
    sv = jacobian_singular_values(layer, np.zeros((1, n), "float32"))
    assert sv.mean() == pytest.approx(8 / (3 * math.pi), rel=0.03)


def test_jacobian_rejects_a_bad_input_shape():
    with pytest.raises(ValueError, match="inputs"):
        jacobian_singular_values(_dense(3, 3), np.zeros((3,), "float32"))
