"""keras_initkit.lsuv (Mishkin & Matas 2016): held-out pre-activation variances of deep ReLU and tanh MLPs from bad
starts, conv nets with BatchNormalization, subclassed models, the trace, and weights untouched on every bad input."""

from __future__ import annotations

import math
import warnings

import keras
import numpy as np
import pytest

from keras_initkit import FixedNormal, VarianceMonitor, lsuv
from keras_initkit.data_init import LSUV_COLUMNS
from keras_initkit.datasets import load

WIDTH, N_LAYERS = 64, 20
HELD_OUT_TOL = 0.25  # held-out Var(s) within 25% of 1 (the batch LSUV saw is within tol=0.1)


@pytest.fixture(scope="module")
def digits():
    """(x for lsuv, held-out x), flat: digits' train split's first 256 and its test split's first 256 images."""
    data = load("digits")
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    return flat(data.x_train[:256]), flat(data.x_test[:256])


def _mlp(activation: str, init, n_layers: int = N_LAYERS) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((WIDTH,))]
        + [keras.layers.Dense(WIDTH, activation=activation, kernel_initializer=init) for _ in range(n_layers)]
    )


def _preact_var(model, x) -> np.ndarray:
    with warnings.catch_warnings():  # a bad start's top layers overflow: that is what is tested
        warnings.filterwarnings("ignore", message="VarianceMonitor: NaN/Inf", category=RuntimeWarning)
        rows = VarianceMonitor(probe=x, kinds=("preact",), stats=["var"]).measure(model)
    return rows.sort_values("depth")["value"].to_numpy()


def _kernels(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


TOO_LARGE = {"relu": 10 * math.sqrt(2 / WIDTH), "tanh": 10 * math.sqrt(1 / WIDTH)}  # 10x the He / LeCun std


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize(
    "start, orthogonal", [("small", False), ("large", False), ("small", True)], ids=["N(0,0.01)", "10x", "ortho"]
)
def test_held_out_preactivation_variance_is_one_at_every_layer(digits, activation, start, orthogonal):
    x, held_out = digits
    init = FixedNormal(0.01) if start == "small" else keras.initializers.RandomNormal(stddev=TOO_LARGE[activation])
    model = _mlp(activation, init)
    before = _preact_var(model, held_out)
    assert before[-1] < 1e-3 or not before[-1] < 10  # a bad start indeed (vanished, grown or overflowed at the top)
    trace = lsuv(model, x, orthogonal_pre_init=orthogonal, seed=0)
    after = _preact_var(model, held_out)
    assert len(after) == N_LAYERS
    np.testing.assert_array_less(np.abs(after - 1.0), HELD_OUT_TOL)
    last = trace.groupby("depth")["var_after"].last().to_numpy()
    np.testing.assert_array_less(np.abs(last - 1.0), 0.1)  # on the batch it saw: within tol


def test_the_trace_is_tidy_and_consistent(digits):
    x, _ = digits
    model = _mlp("relu", FixedNormal(0.01), n_layers=5)
    trace = lsuv(model, x, orthogonal_pre_init=False, tol=0.01, max_iter=5)
    assert tuple(trace.columns) == LSUV_COLUMNS
    assert sorted(trace["depth"].unique()) == list(range(5))
    assert list(trace["layer"].unique()) == [la.name for la in model.layers]
    for _, rows in trace.groupby("depth"):
        # each pass starts where the previous one ended; scale is 1 / sqrt(Var before)
        np.testing.assert_allclose(rows["var_before"].to_numpy()[1:], rows["var_after"].to_numpy()[:-1])
        moved = rows[rows["iteration"] > 0]
        np.testing.assert_allclose(moved["scale"], 1 / np.sqrt(moved["var_before"]), rtol=1e-6)
    assert trace["iteration"].min() >= 1  # N(0, 0.01) is far from 1 everywhere: every layer took a pass
    again = lsuv(model, x, orthogonal_pre_init=False, tol=0.05)
    assert (again["iteration"] == 0).all() and (again["scale"] == 1.0).all()  # already unit variance: no pass


def test_seeded_orthogonal_pre_init_is_reproducible_and_orthonormal(digits):
    x, _ = digits
    a, b = _mlp("relu", FixedNormal(0.01), 3), _mlp("relu", FixedNormal(0.01), 3)
    lsuv(a, x, seed=1)
    lsuv(b, x, seed=1)
    for wa, wb in zip(_kernels(a), _kernels(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    k1, k2 = a.layers[1].kernel, a.layers[2].kernel
    assert not np.allclose(k1, k2)  # one generator for all layers: same shapes, different draws
    w = keras.ops.convert_to_numpy(k1)
    gram = w.T @ w
    np.testing.assert_allclose(gram / gram[0, 0], np.eye(WIDTH), atol=1e-4)  # orthogonal up to LSUV's scale


def test_conv_net_with_batchnorm_and_a_subclassed_model(digits):
    data = load("digits")
    x, held_out = data.x_train[:256], data.x_test[:256]
    keras.utils.set_random_seed(0)
    conv = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=FixedNormal(0.01)),
            keras.layers.Conv2D(16, 3, padding="same", kernel_initializer=FixedNormal(0.01)),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=FixedNormal(0.01)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, kernel_initializer=FixedNormal(0.01)),
        ]
    )
    bn = conv.layers[2]
    moving = [keras.ops.convert_to_numpy(w).copy() for w in bn.weights]
    trace = lsuv(conv, x, seed=0)
    assert list(trace["layer"].unique()) == [conv.layers[i].name for i in (0, 1, 4, 6)]  # BN, ReLU, Flatten: no kernel
    rows = VarianceMonitor(probe=held_out, kinds=("preact",), stats=["var"]).measure(conv)
    scaled = rows[rows["layer"].isin(trace["layer"])]["value"].to_numpy()
    np.testing.assert_array_less(np.abs(scaled - 1.0), HELD_OUT_TOL)
    for w, m in zip(bn.weights, moving, strict=True):  # the passes never move BatchNormalization's statistics
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), m)

    class Tower(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = [
                keras.layers.Dense(WIDTH, activation="tanh", kernel_initializer=FixedNormal(0.01)) for _ in range(2)
            ]
            self.out = keras.layers.Dense(10)

        def call(self, inputs):
            h = inputs
            for layer in self.hidden:
                h = layer(h)
            return self.out(h)

    tower = Tower()
    flat_x, flat_held = digits
    trace = lsuv(tower, flat_x, orthogonal_pre_init=False)  # built from x
    assert trace["depth"].nunique() == 3
    np.testing.assert_array_less(np.abs(_preact_var(tower, flat_held) - 1.0), HELD_OUT_TOL)


def test_a_functional_model_with_two_branches(digits):
    x, held_out = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((WIDTH,))
    a = keras.layers.Dense(WIDTH, activation="relu", kernel_initializer=FixedNormal(0.01), name="a")(inputs)
    b = keras.layers.Dense(WIDTH, activation="tanh", kernel_initializer=FixedNormal(0.01), name="b")(inputs)
    merged = keras.layers.Concatenate()([a, b])
    out = keras.layers.Dense(10, kernel_initializer=FixedNormal(0.01), name="out")(merged)
    model = keras.Model(inputs, out)
    trace = lsuv(model, x, seed=0)
    assert set(trace["layer"]) == {"a", "b", "out"} and trace["layer"].iloc[-1] == "out"
    np.testing.assert_array_less(np.abs(_preact_var(model, held_out) - 1.0), HELD_OUT_TOL)


def test_layers_selects_which_kernels_are_scaled(digits):
    x, _ = digits
    model = _mlp("relu", FixedNormal(0.01), n_layers=4)
    before = _kernels(model)
    names = [model.layers[1].name, model.layers[2].name]
    trace = lsuv(model, x, layers=names, orthogonal_pre_init=False)
    assert list(trace["layer"].unique()) == names
    after = _kernels(model)
    np.testing.assert_array_equal(after[0], before[0])  # dense 0's kernel
    np.testing.assert_array_equal(after[6], before[6])  # dense 3's kernel
    assert not np.array_equal(after[2], before[2])


def _no_weight_model():
    return keras.Sequential([keras.Input((WIDTH,)), keras.layers.ReLU(), keras.layers.Activation("tanh")])


@pytest.mark.parametrize(
    "case, match",
    [
        ("empty x", r"`x` must hold at least one example.*\(0, 64\)"),
        ("x None", r"`x` must be a batch of inputs"),
        ("x NaN", r"`x` must be finite"),
        ("x of the wrong shape", r"`x` must fit the model's input.*\(256, 63\)"),
        ("constant x", r"`x` gives layer 'dense\w*' \(depth 0\) a pre-activation of variance 0"),
        ("NaN kernel", r"`x` gives layer 'dense\w*' \(depth 2\) a non-finite pre-activation variance"),
        ("tol 0", r"`tol` must be a number in \(0, 1\). Received: tol=0"),
        ("tol -0.1", r"`tol` must be a number in \(0, 1\). Received: tol=-0.1"),
        ("max_iter 0", r"`max_iter` must be an integer >= 1. Received: max_iter=0"),
        ("max_iter 2.5", r"`max_iter` must be an integer >= 1. Received: max_iter=2.5"),
        ("seed -1", r"`seed` must be None or an integer >= 0. Received: seed=-1"),
        ("layers none with a kernel", r"`model` must have a Dense or Conv1D/2D/3D layer"),
        ("layers no match", r"`layers` selects no layer"),
    ],
)
def test_bad_input_raises_and_leaves_the_weights_unchanged(digits, case, match):
    x, _ = digits
    model = _mlp("relu", FixedNormal(0.01), n_layers=4)
    kwargs = {"seed": 0}
    if case == "empty x":
        x = x[:0]
    elif case == "x None":
        x = None
    elif case == "x NaN":
        x = x.copy()
        x[3, 5] = np.nan
    elif case == "x of the wrong shape":
        x = x[:, :63]
    elif case == "constant x":
        x = np.zeros_like(x)
    elif case == "NaN kernel":  # found at depth 2, after depths 0 and 1 were already scaled
        model.layers[2].kernel.assign(np.full((WIDTH, WIDTH), np.nan, dtype=np.float32))
        kwargs["orthogonal_pre_init"] = False
    elif case == "layers none with a kernel":
        model = _no_weight_model()
    elif case == "layers no match":
        kwargs["layers"] = "conv.*"
    else:
        name, value = case.split(" ")
        kwargs[name] = float(value) if "." in value else int(value)
    before = _kernels(model)
    with pytest.raises(ValueError, match=match):
        lsuv(model, x, **kwargs)
    for w, b in zip(_kernels(model), before, strict=True):
        np.testing.assert_array_equal(w, b)


def test_a_layer_outside_tol_after_max_iter_is_named(digits):
    x, _ = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(  # a large bias: scaling the kernel alone cannot bring Var(s) to 1 in one pass
        [keras.Input((WIDTH,)), keras.layers.Dense(WIDTH, bias_initializer=keras.initializers.RandomNormal(0, 3))]
    )
    with pytest.warns(UserWarning, match=r"lsuv: 1 layer\(s\) still outside tol=0.01 after max_iter=1"):
        trace = lsuv(model, x, tol=0.01, max_iter=1)
    assert len(trace) == 1
