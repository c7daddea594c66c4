"""gain() and moments(): table entries against the numerical definition, callables, errors."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_initkit import GAIN_TABLE, gain, moments


def numerical_gain(fn) -> float:
    return 1.0 / math.sqrt(moments(fn)["second"])


@pytest.mark.parametrize("name", ["linear", "relu", "selu", "elu", "gelu", "silu", "softsign"])
def test_table_agrees_with_definition(name):
    # Compare with the definition evaluated through Keras' own activation (a callable, not the numpy fast path).
    keras_fn = keras.activations.get(name)
    assert gain(name) == pytest.approx(numerical_gain(lambda x: keras_fn(x)), rel=2e-4)


@pytest.mark.parametrize("a", [0.0, 0.01, 0.2, 0.5, 1.0])
def test_leaky_relu_is_exact(a):
    expected = math.sqrt(2.0 / (1.0 + a * a))
    assert gain("leaky_relu", negative_slope=a) == pytest.approx(expected, rel=1e-12)
    assert numerical_gain(lambda x: keras.ops.leaky_relu(x, negative_slope=a)) == pytest.approx(expected, rel=2e-4)


def test_conventional_entries_and_their_numerical_values():
    assert gain("relu") == pytest.approx(math.sqrt(2))
    assert gain("tanh") == pytest.approx(5 / 3)
    assert gain("sigmoid") == 1.0
    # The definition gives these, documented beside the conventions.
    assert numerical_gain(keras.activations.tanh) == pytest.approx(1.5925, abs=1e-3)
    assert numerical_gain(keras.activations.sigmoid) == pytest.approx(1.8462, abs=1e-3)
    assert set(GAIN_TABLE) >= {
        "linear",
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "selu",
        "elu",
        "gelu",
        "silu",
    }


def test_any_keras_name_and_any_callable():
    # softplus is not in the table: E[softplus(z)^2] from a direct Monte Carlo estimate.
    z = np.random.default_rng(0).normal(size=2_000_000)
    mc = np.mean(np.log1p(np.exp(z)) ** 2)
    assert gain("softplus") == pytest.approx(1 / math.sqrt(mc), rel=3e-3)
    assert gain(lambda x: 3.0 * x) == pytest.approx(1 / 3, rel=1e-6)
    assert gain(keras.activations.relu) == pytest.approx(math.sqrt(2))


def test_moments_scale_with_q():
    # relu is positively homogeneous: E[relu(s)^2] = q/2 and E[relu'(s)^2] = 1/2 for every q.
    for q in (0.01, 1.0, 25.0):
        m = moments("relu", q)
        assert m["second"] == pytest.approx(q / 2, rel=1e-6)
        assert m["deriv2"] == pytest.approx(0.5, rel=1e-3)
        assert m["mean"] == pytest.approx(math.sqrt(q / (2 * math.pi)), rel=1e-6)
    # tanh near 0 is linear: E[tanh(s)^2] ~ q, E[tanh'(s)^2] ~ 1 for small q.
    m = moments("tanh", 1e-4)
    assert m["second"] == pytest.approx(1e-4, rel=1e-3) and m["deriv2"] == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match=r"`q` .* must be a finite number > 0. Received: q=-1"):
        moments("relu", -1)


# ---- the registry: one place says what an activation is ------------------------------------------------------------


def test_registry_reads_leaky_slope_from_keras_and_serves_the_theory():
    import inspect

    from keras_initkit.activations import DEFAULT_NEGATIVE_SLOPE, pointwise, spec

    keras_default = inspect.signature(keras.activations.leaky_relu).parameters["negative_slope"].default
    assert DEFAULT_NEGATIVE_SLOPE == keras_default == spec("leaky_relu").negative_slope
    assert pointwise(keras.activations.leaky_relu).alpha == keras_default  # the theory's rectifier
    assert pointwise(keras.activations.relu).alpha == 0.0
    assert gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + keras_default**2)))


def test_registry_entries_by_name_keras_function_and_layer():
    from keras_initkit.activations import layer_activation, spec

    assert spec("tanh").bounds == (-1.0, 1.0) and spec(keras.activations.sigmoid).bounds == (0.0, 1.0)
    assert spec("relu").rectifier and spec("relu6").rectifier and not spec("leaky_relu").rectifier
    assert spec(None).name == "linear" and spec("swish").name == "silu" and spec("softmax").softmax
    # a callable that is not Keras' is known by its name only
    own = spec(lambda x: x)
    assert own.name == "<lambda>" and own.bounds is None and not own.rectifier and own.negative_slope is None
    assert layer_activation(keras.layers.ReLU()) == "relu"
    assert layer_activation(keras.layers.ReLU(negative_slope=0.1)) == "leaky_relu"
    assert layer_activation(keras.layers.Dense(2, activation="tanh")) == "tanh"
    assert layer_activation(keras.layers.Dropout(0.1)) is None
