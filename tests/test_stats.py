"""TensorView and STATS against numpy on fixed tensors."""

from __future__ import annotations

import math
from statistics import NormalDist

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_initkit.stats import SATURATION_MARGIN, STATS, TensorView


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


# ---- numerics: the variance is exact whatever the mean and the scale (issue 13) -------------------------------------

_RNG = np.random.default_rng(0)
_CASES = {
    "N(1e4, 1)": _RNG.normal(1e4, 1.0, (500, 64)),  # E[x^2] - E[x]^2 in float32 gave 0
    "N(1e3, 1)": _RNG.normal(1e3, 1.0, (500, 64)),  # ... and 1.125
    "N(0, 1e18)": _RNG.normal(0.0, 1e9, (500, 64)),
    "N(0, 1e38)": _RNG.normal(0.0, 1e19, (500, 64)),  # the sum of squares overflows float32, the variance does not
    "relu": np.maximum(_RNG.normal(0.0, 1.0, (500, 64)), 0.0),
    "sigmoid": 1.0 / (1.0 + np.exp(-_RNG.normal(0.0, 1.0, (500, 64)))),
    "constant 3": np.full((7, 3), 3.0),
}


def _moments(x, mode):
    """(mean, var, diverged) of a view: eagerly, in a traced tf.function, or in one compiled with XLA."""

    def f(t):
        v = TensorView(t, kind="activation", activation=None, unit_axis=-1, quantile_sample=None, xla=mode == "xla")
        return v.mean, v.var, v.diverged

    if mode != "eager":
        f = tf.function(f, autograph=False, jit_compile=mode == "xla")
    return [np.asarray(r) for r in f(tf.constant(x))]


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
@pytest.mark.parametrize("case", list(_CASES))
def test_variance_is_exact_for_any_mean_and_scale(case, mode):
    x = _CASES[case].astype("float32")
    mean, var, diverged = _moments(x, mode)
    x64 = x.astype(np.float64)
    assert float(var) == pytest.approx(x64.var(), rel=1e-6, abs=1e-30)
    assert float(mean) == pytest.approx(x64.mean(), rel=1e-6, abs=1e-6 * x64.std())
    assert not diverged


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_a_variance_beyond_float32_sets_diverged(mode):
    x = np.array([-1e20, 1e20, 3e20, -2e20], "float32")  # every element finite; Var = 3.5e40 > float32's max
    _mean, var, diverged = _moments(x, mode)
    assert not np.isfinite(var) and diverged
    assert _moments(np.array([1.0, np.inf], "float32"), mode)[2]


# ---- percentiles: a strided sample, checked against numpy on known distributions -----------------------------------


def _sample_tolerance(q: float, m: int, density: float) -> float:
    """Five standard errors of the q-quantile of a sample of m draws (density: the pdf at the quantile)."""
    return 5.0 * math.sqrt(q * (1.0 - q) / m) / density


@pytest.mark.parametrize("dist", ["normal", "uniform", "relu"])
def test_sampled_percentiles_match_numpy_within_the_sampling_error(dist):
    rng = np.random.default_rng(1)
    z = rng.standard_normal((64, 8, 8, 32))
    x = {"normal": z, "uniform": rng.uniform(-1.0, 1.0, z.shape), "relu": np.maximum(z, 0.0)}[dist].astype("float32")
    m = 2048
    v = _view(x, quantile_sample=m)
    assert 0.9 * m <= int(tf.size(v.sorted_sample)) <= m
    for q in (15, 50, 85):
        want = np.percentile(x, q)
        if dist == "uniform":
            tol = _sample_tolerance(q / 100, m, 0.5)
        else:  # normal; relu's atom at 0 holds half the mass: p15 is 0 exactly, p50 within the normal's error
            tol = _sample_tolerance(q / 100, m, NormalDist().pdf(NormalDist().inv_cdf(q / 100)))
        got = float(STATS[f"p{q}"](v))
        assert got == pytest.approx(want, abs=tol), (q, got, want)
    if dist == "relu":
        assert float(STATS["p15"](v)) == 0.0


def test_the_sample_sees_every_channel_and_does_not_depend_on_a_static_batch_size():
    # Channel c holds values around 10 * c: a stride sharing a factor with the 12 channels would miss most of them.
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((96, 5, 5, 12)) + 10.0 * np.arange(12)).astype("float32")
    m = 1000
    static = _view(x, quantile_sample=m).sorted_sample.numpy()
    seen = np.unique(np.round(static / 10.0).astype(int))
    np.testing.assert_array_equal(seen, np.arange(12))
    counts = np.bincount(np.round(static / 10.0).astype(int))
    assert counts.min() >= 0.8 * counts.mean()  # evenly spread

    @tf.function(input_signature=[tf.TensorSpec([None, 5, 5, 12], tf.float32)], autograph=False)
    def dynamic(t):
        return TensorView(t, kind="activation", activation=None, unit_axis=-1, quantile_sample=m).sorted_sample

    np.testing.assert_array_equal(dynamic(tf.constant(x)).numpy(), static)


def test_percentiles_of_a_batch_of_unknown_size_are_computed_together_and_equal_the_static_ones():
    x = np.random.default_rng(3).standard_normal((40, 6, 7)).astype("float32")
    qs = (0.15, 0.5, 0.85)
    static = [float(STATS[f"p{round(q * 100)}"](_view(x, quantile_sample=101))) for q in qs]

    def percentiles(quantiles):
        @tf.function(input_signature=[tf.TensorSpec([None, 6, 7], tf.float32)], autograph=False)
        def f(t):
            v = TensorView(t, kind="activation", activation=None, unit_axis=-1, quantile_sample=101, xla=False,
                           quantiles=quantiles)  # fmt: skip
            return tf.stack([STATS[f"p{round(q * 100)}"](v) for q in qs])

        return f

    together, one_by_one = percentiles(qs), percentiles(())
    np.testing.assert_array_equal(together(tf.constant(x)).numpy(), one_by_one(tf.constant(x)).numpy())
    np.testing.assert_allclose(together(tf.constant(x)).numpy(), static, rtol=1e-6)
    ops = {name: len(fn.get_concrete_function().graph.get_operations()) for name, fn in
           (("together", together), ("one_by_one", one_by_one))}  # fmt: skip
    assert ops["together"] < ops["one_by_one"] - 20, ops
    assert STATS["p85"].quantile == 0.85


# ---- bounded activations: relu6 and the hard ones saturate at their bounds -----------------------------------------


def test_relu6_saturates_at_6_only_and_hard_activations_at_both_bounds():
    x = np.array([[0.0, 0.0, 3.0, 6.0], [6.0, 5.995, 1.0, 0.0]], "float32")
    assert float(STATS["saturated"](_view(x, activation="relu6"))) == pytest.approx(3 / 8)  # zeros are `dead`'s
    h = np.array([0.0, 0.5, 1.0, 0.2], "float32")
    assert float(STATS["saturated"](_view(h, activation="hard_sigmoid"))) == pytest.approx(0.5)
    t = np.array([-1.0, 0.0, 1.0, 0.3], "float32")
    assert float(STATS["saturated"](_view(t, activation="hard_tanh"))) == pytest.approx(0.5)


def test_the_monitor_counts_relu6_saturation_in_a_model():
    from keras_initkit import VarianceMonitor

    keras.utils.set_random_seed(0)
    big = keras.initializers.RandomNormal(stddev=3.0)  # pre-activations of std ~ 10: many outputs reach 6
    inputs = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu6", kernel_initializer=big, name="dense_relu6")(inputs)
    h = keras.layers.Dense(32, kernel_initializer=big, name="dense_linear")(h)
    out = keras.layers.ReLU(max_value=6.0, name="relu_max6")(h)
    model = keras.Model(inputs, out)
    x = np.random.default_rng(0).standard_normal((64, 16)).astype("float32")
    monitor = VarianceMonitor(probe=x, kinds=("activation",), stats=["saturated", "dead"])
    df = monitor.measure(model)
    sat = df[df["stat"] == "saturated"].set_index("layer")["value"]
    acts = keras.Model(inputs, [model.get_layer("dense_relu6").output, out]).predict(x, verbose=0)
    for name, a in zip(["dense_relu6", "relu_max6"], acts, strict=True):
        assert 0.05 < sat[name] == pytest.approx(np.mean(a > 6.0 - SATURATION_MARGIN), abs=1e-6)
