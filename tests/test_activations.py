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


# ---- gain refuses what has no gain, honours relu's slope, takes numpy scalars (issue 13) --------------------------


@pytest.mark.parametrize(
    "activation",
    [
        "softmax",
        "log_softmax",
        "glu",
        "sparsemax",
        keras.activations.softmax,
        keras.activations.glu,
        lambda x: keras.activations.softmax(x),  # not Keras' own function: found not elementwise by evaluation
    ],
)
def test_gain_refuses_activations_that_are_not_elementwise(activation):
    with pytest.raises(ValueError, match=r"`activation` must be elementwise .* Received: activation="):
        gain(activation)
    with pytest.raises(ValueError, match="must be elementwise"):
        moments(activation)


def test_relu_with_a_negative_slope_is_a_leaky_relu():
    a = 0.3
    expected = math.sqrt(2.0 / (1.0 + a * a))
    assert gain("relu", negative_slope=a) == pytest.approx(expected, rel=1e-12)
    assert gain(keras.activations.relu, negative_slope=a) == pytest.approx(expected, rel=1e-12)
    # Keras' relu(x, negative_slope=a) is the same function
    assert numerical_gain(lambda x: keras.activations.relu(x, negative_slope=a)) == pytest.approx(expected, rel=2e-4)
    assert moments("relu", negative_slope=a)["second"] == pytest.approx((1 + a * a) / 2, rel=1e-6)
    assert gain("relu") == math.sqrt(2.0) and moments("relu")["second"] == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, -0.1, True, "0.2"])
def test_negative_slope_must_be_a_finite_number_at_least_0(bad):
    with pytest.raises(ValueError, match=r"`negative_slope` must be a number >= 0 and finite. Received: negati"):
        gain("leaky_relu", negative_slope=bad)


def test_negative_slope_is_refused_where_the_activation_has_none():
    with pytest.raises(ValueError, match=r"`negative_slope` applies only to .* Received: negative_slope=0.1 with"):
        gain("tanh", negative_slope=0.1)


@pytest.mark.parametrize("q", [math.inf, math.nan, 0.0, True])
def test_moments_rejects_non_finite_q(q):
    with pytest.raises(ValueError, match=r"`q` .* must be a finite number > 0"):
        moments("relu", q)


def test_numpy_scalars_are_numbers():
    assert gain("leaky_relu", negative_slope=np.float32(0.5)) == pytest.approx(math.sqrt(2 / 1.25), rel=1e-7)
    assert gain("relu", negative_slope=np.int64(1)) == pytest.approx(1.0)
    assert moments("relu", np.float32(2.0))["second"] == pytest.approx(1.0, rel=1e-6)
    assert moments("relu", np.int64(4))["second"] == pytest.approx(2.0, rel=1e-6)


def test_relu6_and_hard_activations_have_their_bounds():
    from keras_initkit.activations import layer_activation, pointwise, spec

    assert spec("relu6").bounds == (0.0, 6.0) and spec(keras.activations.relu6).rectifier
    assert spec("hard_sigmoid").bounds == (0.0, 1.0) and spec("sparse_sigmoid").bounds == (0.0, 1.0)
    assert spec("hard_tanh").bounds == (-1.0, 1.0)
    assert spec("hard_swish").name == "hard_silu" and spec(keras.activations.hard_silu).bounds is None
    assert layer_activation(keras.layers.Dense(2, activation="relu6")) == "relu6"
    assert layer_activation(keras.layers.ReLU(max_value=6)) == "relu6"  # MobileNetV2's
    assert layer_activation(keras.layers.ReLU(max_value=6.0, negative_slope=0.1)) == "leaky_relu"
    assert layer_activation(keras.layers.ReLU(max_value=3.0)) == "relu"  # no registry entry for another bound
    # The gains of the hard ones are computed through Keras; relu6 is relu at N(0, 1) but for the tail beyond 6.
    assert gain("relu6") == pytest.approx(math.sqrt(2.0), rel=1e-6)
    assert gain("hard_sigmoid") == pytest.approx(numerical_gain(keras.activations.hard_sigmoid), rel=1e-12)
    with pytest.raises(ValueError, match="not elementwise"):
        pointwise(keras.activations.glu)
