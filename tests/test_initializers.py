"""Property tests over every initializer: variance vs formula, bounds, seeds, serialization, errors."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_initkit as kik
from keras_initkit.initializers import kernel_fans

DENSE = (1000, 500)
CONV = (3, 3, 64, 128)

# (factory, Var(W) as a function of (fan_in, fan_out), uniform limit or None)
CASES = {
    "GlorotAvg": (lambda s: kik.GlorotAvg(seed=s), lambda fi, fo: 2.0 / (fi + fo), "uniform"),
    "GlorotAvg-normal-gain": (
        lambda s: kik.GlorotAvg("normal", gain=5 / 3, seed=s),
        lambda fi, fo: (5 / 3) ** 2 * 2.0 / (fi + fo),
        None,
    ),
    "GlorotAvg-truncated": (
        lambda s: kik.GlorotAvg("truncated_normal", seed=s),
        lambda fi, fo: 2.0 / (fi + fo),
        None,
    ),
    "GlorotFanIn": (lambda s: kik.GlorotFanIn(seed=s), lambda fi, fo: 1.0 / fi, "uniform"),
    "GlorotFanIn-normal": (
        lambda s: kik.GlorotFanIn("normal", seed=s),
        lambda fi, fo: 1.0 / fi,
        None,
    ),
    "GlorotFanOut": (
        lambda s: kik.GlorotFanOut(gain=math.sqrt(2), seed=s),
        lambda fi, fo: 2.0 / fo,
        "uniform",
    ),
    "He": (lambda s: kik.He(seed=s), lambda fi, fo: 2.0 / fi, None),
    "He-fan_out-leaky": (
        lambda s: kik.He("fan_out", negative_slope=0.25, seed=s),
        lambda fi, fo: 2.0 / (1 + 0.25**2) / fo,
        None,
    ),
    "He-uniform": (
        lambda s: kik.He(distribution="uniform", seed=s),
        lambda fi, fo: 2.0 / fi,
        "uniform",
    ),
    "He-truncated": (
        lambda s: kik.He(distribution="truncated_normal", seed=s),
        lambda fi, fo: 2.0 / fi,
        None,
    ),
    "StandardUniform": (
        lambda s: kik.StandardUniform(seed=s),
        lambda fi, fo: 1.0 / (3 * fi),
        "uniform",
    ),
    "FixedNormal": (lambda s: kik.FixedNormal(seed=s), lambda fi, fo: 1e-4, None),
    "FixedNormal-0.1": (lambda s: kik.FixedNormal(0.1, seed=s), lambda fi, fo: 1e-2, None),
}


def _sample(init, shape):
    return np.asarray(keras.ops.convert_to_numpy(init(shape)), dtype="float64")


@pytest.mark.parametrize("shape", [DENSE, CONV], ids=["dense", "conv2d"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_variance_mean_bounds(name, shape):
    factory, var_fn, kind = CASES[name]
    init = factory(7)
    w = init(shape)
    assert tuple(w.shape) == shape
    assert keras.backend.standardize_dtype(w.dtype) == "float32"
    w = _sample(init, shape)
    fi, fo = kernel_fans(shape)
    expected = var_fn(fi, fo)
    n = w.size
    # Var(sample variance) = sigma^4 (kurtosis - 1) / n; kurtosis <= 3 for all three laws: 6-sigma band.
    tol = 6.0 * math.sqrt(2.0 / n)
    assert abs(w.var() / expected - 1.0) < tol, (w.var(), expected, tol)
    assert abs(w.mean()) < 6.0 * math.sqrt(expected / n)
    if kind == "uniform":
        limit = math.sqrt(3.0 * expected)
        assert w.max() <= limit * (1 + 1e-6) and w.min() >= -limit * (1 + 1e-6)
        # The sample reaches close to the limit: it is uniform on the whole interval, not narrower.
        assert w.max() > 0.99 * limit and w.min() < -0.99 * limit


@pytest.mark.parametrize("name", sorted(CASES))
def test_seed_rules(name):
    factory = CASES[name][0]
    a = _sample(factory(1), (64, 32))
    assert np.array_equal(a, _sample(factory(1), (64, 32))), "same seed must give the same values"
    assert not np.array_equal(a, _sample(factory(2), (64, 32))), "different seeds must differ"
    init = factory(None)  # unlike Keras: an unseeded preset draws anew at each call ...
    assert not np.array_equal(_sample(init, (8, 8)), _sample(init, (8, 8)))
    keras.utils.set_random_seed(7)  # ... reproducibly under the global seed
    first = _sample(factory(None), (8, 8))
    keras.utils.set_random_seed(7)
    assert np.array_equal(first, _sample(factory(None), (8, 8)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_one_unseeded_instance_shared_by_layers_gives_distinct_kernels(name):
    init = CASES[name][0](None)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(16, kernel_initializer=init) for _ in range(3)])
    kernels = [np.asarray(layer.kernel) for layer in model.layers]
    assert not np.array_equal(kernels[0], kernels[1]) and not np.array_equal(kernels[1], kernels[2])
    keras.utils.set_random_seed(3)
    again = keras.Sequential([keras.Input((16,))] + [keras.layers.Dense(16, kernel_initializer=init) for _ in range(3)])
    assert all(np.array_equal(k, np.asarray(layer.kernel)) for k, layer in zip(kernels, again.layers, strict=True))


def test_numpy_scalars_are_accepted():
    a = _sample(kik.GlorotAvg(gain=np.float32(2.0), seed=np.int64(5)), (32, 16))
    assert np.array_equal(a, _sample(kik.GlorotAvg(gain=2.0, seed=5), (32, 16)))
    assert np.array_equal(
        _sample(kik.He(negative_slope=np.float64(0.1), seed=np.int32(2)), (8, 4)),
        _sample(kik.He(negative_slope=0.1, seed=2), (8, 4)),
    )
    assert np.array_equal(
        _sample(kik.FixedNormal(np.float32(0.5), seed=np.int64(1)), (4,)), _sample(kik.FixedNormal(0.5, seed=1), (4,))
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_round_trips(name):
    init = CASES[name][0](3)
    cfg = init.get_config()
    clone = type(init)(**cfg)
    assert clone.get_config() == cfg
    assert np.array_equal(_sample(clone, (16, 8)), _sample(init, (16, 8)))
    clone2 = type(init).from_config(cfg)
    assert clone2.get_config() == cfg
    blob = keras.saving.serialize_keras_object(init)
    assert blob["registered_name"] == f"keras_initkit>{type(init).__name__}"
    back = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
    assert type(back) is type(init) and back.get_config() == cfg


def test_config_is_exactly_the_constructor_arguments():
    import inspect

    for cls in (
        kik.GlorotAvg,
        kik.GlorotFanIn,
        kik.GlorotFanOut,
        kik.He,
        kik.StandardUniform,
        kik.FixedNormal,
    ):
        params = set(inspect.signature(cls.__init__).parameters) - {"self"}
        assert set(cls().get_config()) == params, cls


def test_matches_keras_builtins():
    n = 400_000
    shape = (800, 500)
    ours = _sample(kik.GlorotAvg(seed=0), shape)
    theirs = _sample(keras.initializers.GlorotUniform(seed=0), shape)
    # Same law (same limit), and Keras' GlorotUniform is exactly VarianceScaling(1, fan_avg, uniform).
    assert np.array_equal(ours, theirs)
    he = _sample(kik.He(distribution="truncated_normal", seed=0), shape)
    assert np.array_equal(he, _sample(keras.initializers.HeNormal(seed=0), shape))
    # Our default He is the paper's untruncated Gaussian with the same variance as HeNormal.
    he_n = _sample(kik.He(seed=0), shape)
    assert abs(he_n.var() / theirs_var(shape) - 1) < 6 * math.sqrt(2 / n)
    # Untruncated: tails beyond 2 std exist (about 4.55 %), which a truncated normal never has.
    frac = np.mean(np.abs(he_n) > 2 * math.sqrt(2 / 800))
    assert 0.040 < frac < 0.051


def theirs_var(shape):
    return float(_sample(keras.initializers.HeNormal(seed=1), shape).var())


@pytest.mark.parametrize(
    "layer, in_shape",
    [
        (keras.layers.Dense(4, kernel_initializer=kik.FixedNormal(seed=1)), (8,)),
        (keras.layers.Conv1D(4, 3, kernel_initializer=kik.He(seed=1)), (8, 3)),
        (keras.layers.Conv2D(4, 3, kernel_initializer=kik.GlorotAvg(seed=1)), (8, 8, 3)),
        (keras.layers.Conv3D(4, 3, kernel_initializer=kik.GlorotFanIn(seed=1)), (5, 5, 5, 3)),
        (
            keras.layers.Conv2DTranspose(4, 3, kernel_initializer=kik.GlorotFanOut(seed=1)),
            (8, 8, 3),
        ),
        (
            keras.layers.DepthwiseConv2D(3, depthwise_initializer=kik.StandardUniform(seed=1)),
            (8, 8, 3),
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, keras.layers.Layer) else None,
)
def test_layers_accept_them(layer, in_shape):
    x = np.random.default_rng(0).normal(size=(2, *in_shape)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x))
    assert np.all(np.isfinite(y)) and np.std(y) > 0


@pytest.mark.parametrize(
    "layer, in_shape, fans",
    [
        (keras.layers.Dense(30), (20,), (20, 30)),
        (keras.layers.Conv1D(30, 5), (16, 20), (100, 150)),
        (keras.layers.Conv2D(30, 3), (8, 8, 20), (180, 270)),
        (keras.layers.Conv3D(30, 3), (5, 5, 5, 20), (540, 810)),
        # Transposed conv stores (k, k, filters, in): Keras' "fan_in" is k*k*filters (module docstring).
        (keras.layers.Conv2DTranspose(30, 3), (8, 8, 20), (270, 180)),
        # Depthwise stores (k, k, in, multiplier): fan_in k*k*in, fan_out k*k*multiplier.
        (keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 20), (180, 18)),
    ],
)
def test_documented_fans_per_layer_type(layer, in_shape, fans):
    layer.build((None, *in_shape))
    assert kernel_fans(layer.kernel.shape) == fans
    layer.kernel_initializer = kik.He(mode="fan_in", seed=0)
    w = _sample(layer.kernel_initializer, tuple(layer.kernel.shape))
    assert abs(w.var() / (2.0 / fans[0]) - 1) < 6 * math.sqrt(2 / w.size) + 0.02


ERRORS = [
    (
        lambda: kik.GlorotAvg(distribution="gauss"),
        "`distribution` must be one of",
        "distribution='gauss'",
    ),
    (lambda: kik.GlorotFanIn(gain=-1.0), "`gain` must be a finite positive number", "gain=-1.0"),
    (lambda: kik.GlorotFanOut(gain=0), "`gain` must be a finite positive number", "gain=0"),
    (lambda: kik.GlorotAvg(gain=float("inf")), "`gain` must be a finite positive number", "gain=inf"),
    (lambda: kik.GlorotAvg(gain=float("nan")), "`gain` must be a finite positive number", "gain=nan"),
    (lambda: kik.GlorotAvg(gain="2"), "`gain` must be a finite positive number", "gain='2'"),
    (
        lambda: kik.He(negative_slope=float("inf")),
        "`negative_slope` must be a finite number >= 0",
        "negative_slope=inf",
    ),
    (lambda: kik.FixedNormal(float("inf")), "`stddev` must be a finite positive number", "stddev=inf"),
    (lambda: kik.He(seed=1.5), "`seed` must be None, an int or a `keras.random.SeedGenerator`", "seed=1.5"),
    (lambda: kik.FixedNormal(seed=True), "`seed` must be None, an int", "seed=True"),
    (lambda: kik.GlorotAvg(input_axes="0"), "`input_axes` must be None or a sequence of ints", "input_axes='0'"),
    (lambda: kik.He(mode="fan_mid"), "`mode` must be one of", "mode='fan_mid'"),
    (
        lambda: kik.He(negative_slope=-0.1),
        "`negative_slope` must be a finite number >= 0",
        "negative_slope=-0.1",
    ),
    (
        lambda: kik.He(distribution="normalish"),
        "`distribution` must be one of",
        "distribution='normalish'",
    ),
    (lambda: kik.FixedNormal(stddev=-0.01), "`stddev` must be a finite positive number", "stddev=-0.01"),
    (lambda: kik.FixedNormal(stddev=0.0), "`stddev` must be a finite positive number", "stddev=0.0"),
    (lambda: kik.GlorotAvg()(()), "`shape` must have rank >= 1", "shape=()"),
    (lambda: kik.He()((3, 0, 4)), "`shape` must have only positive dimensions", "shape=(3, 0, 4)"),
    (lambda: kik.FixedNormal()((0,)), "`shape` must have only positive dimensions", "shape=(0,)"),
    (lambda: kik.StandardUniform()(()), "`shape` must have rank >= 1", "shape=()"),
    (
        lambda: kik.gain("relu", negative_slope=-1),
        "`negative_slope` must be a number >= 0",
        "negative_slope=-1",
    ),
    (
        lambda: kik.gain("no_such_activation"),
        "`activation` must be a Keras activation",
        "no_such_activation",
    ),
]


@pytest.mark.parametrize("call, rule, received", ERRORS, ids=[e[2] for e in ERRORS])
def test_errors_name_argument_rule_and_value(call, rule, received):
    with pytest.raises(ValueError) as err:
        call()
    assert rule in str(err.value) and received in str(err.value), str(err.value)


def test_save_and_load_model_in_a_fresh_process(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(8, activation="tanh", kernel_initializer=kik.GlorotAvg(gain=kik.gain("tanh"))),
            keras.layers.Dense(8, kernel_initializer=kik.GlorotFanIn("normal", seed=4)),
            keras.layers.Dense(8, kernel_initializer=kik.GlorotFanOut()),
            keras.layers.Dense(8, activation="relu", kernel_initializer=kik.He("fan_out", 0.1, seed=5)),
            keras.layers.Dense(8, kernel_initializer=kik.StandardUniform(seed=6)),
            keras.layers.Dense(3, kernel_initializer=kik.FixedNormal(0.02, seed=7)),
        ]
    )
    path = tmp_path / "m.keras"
    model.save(path)
    expected = [
        {
            "class": type(layer.kernel_initializer).__name__,
            "config": layer.kernel_initializer.get_config(),
        }
        for layer in model.layers
    ]
    code = textwrap.dedent(
        f"""
        import json, keras, keras_initkit, numpy as np
        m = keras.models.load_model({str(path)!r})
        out = [{{"class": type(l.kernel_initializer).__name__, "config": l.kernel_initializer.get_config()}}
               for l in m.layers]
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == json.loads(json.dumps(expected))


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backend_samples_the_same_law(backend):
    pytest.importorskip(backend, reason=f"{backend} is not installed (torch: make test-torch)")
    code = textwrap.dedent(
        """
        import json, keras, numpy as np, keras_initkit as kik
        out = {}
        for name, init, var in [("GlorotAvg", kik.GlorotAvg(seed=1), 2 / 1500),
                                ("He", kik.He(seed=1), 2 / 1000),
                                ("StandardUniform", kik.StandardUniform(seed=1), 1 / 3000),
                                ("FixedNormal", kik.FixedNormal(seed=1), 1e-4)]:
            w = keras.ops.convert_to_numpy(init((1000, 500)))
            out[name] = float(w.var() / var)
        m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, kernel_initializer=kik.He(seed=0))])
        out["backend"] = keras.backend.backend()
        out["forward"] = list(keras.ops.convert_to_numpy(m(np.ones((2, 6), "float32"))).shape)
        print(json.dumps(out))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out.pop("backend") == backend and out.pop("forward") == [2, 4]
    for name, ratio in out.items():
        assert abs(ratio - 1) < 6 * math.sqrt(2 / 500_000), (name, ratio)


ATTENTION_PRESETS = {
    "He": (lambda: kik.He(), keras.initializers.HeNormal, lambda fi, fo: 2.0 / fi),
    "GlorotAvg": (lambda: kik.GlorotAvg(), keras.initializers.GlorotUniform, lambda fi, fo: 2.0 / (fi + fo)),
}


@pytest.mark.parametrize("name", sorted(ATTENTION_PRESETS))
def test_attention_layers_build_with_the_true_fans(name):
    """MultiHeadAttention's query projection: kernel (width, heads, key_dim), fan_in = width, fan_out = heads * key_dim.

    Keras (>= 3.15) clones a VarianceScaling initializer with `input_axes` / `output_axes` from the einsum equation;
    our presets must honour them and give the same variance as Keras' own initializer of that law.
    """
    ours, keras_cls, law = ATTENTION_PRESETS[name]
    width, heads, key_dim = 256, 8, 32
    variances = {}
    for label, init in (("ours", ours()), ("keras", keras_cls())):
        keras.utils.set_random_seed(0)
        mha = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=key_dim, kernel_initializer=init)
        x = np.zeros((1, 4, width), "float32")
        mha(x, x)
        kernel = np.asarray(mha.query_dense.kernel)
        assert kernel.shape == (width, heads, key_dim)
        variances[label] = float(kernel.var())
    expected = law(width, heads * key_dim)
    n = width * heads * key_dim
    tol = 6 * math.sqrt(2.0 / n) * expected  # 6 standard errors of a Gaussian sample variance (uniform: smaller)
    assert abs(variances["ours"] - expected) < tol, (variances, expected)
    assert abs(variances["ours"] - variances["keras"]) < 2 * tol, variances
    # Without the axes, Keras' shape convention would give fan_in = width * heads: 8x too small a variance for He.
    assert variances["ours"] > 4 * law(width * heads, key_dim * width)


EINSUM_LAYERS = {
    "EinsumDense": (lambda init: keras.layers.EinsumDense("ab,bcd->acd", (4, 8), kernel_initializer=init), (2, 16)),
    "MultiHeadAttention": (lambda init: keras.layers.MultiHeadAttention(2, 8, kernel_initializer=init), (2, 3, 16)),
    "GroupQueryAttention": (
        lambda init: keras.layers.GroupQueryAttention(8, 4, 2, kernel_initializer=init),
        (2, 3, 16),
    ),
}


@pytest.mark.parametrize("layer", sorted(EINSUM_LAYERS))
@pytest.mark.parametrize("preset", [kik.GlorotAvg, kik.GlorotFanIn, kik.GlorotFanOut, kik.He, kik.StandardUniform])
def test_einsum_layers_accept_every_variance_scaling_preset(layer, preset):
    make, shape = EINSUM_LAYERS[layer]
    x = np.ones(shape, "float32")
    lay = make(preset())
    out = lay(x) if layer == "EinsumDense" else lay(x, x)
    assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (3, 3, 32, 16), (5, 8, 8), (2, 2, 4, 4), (3, 3, 3, 8, 8), (10, 6)])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_delta_orthogonal_centre_is_orthogonal_and_other_taps_zero(shape, gain):
    from keras_initkit.initializers import DeltaOrthogonal

    w = _sample(DeltaOrthogonal(gain=gain, seed=3), shape)
    centre = tuple(k // 2 for k in shape[:-2])
    singular = np.linalg.svd(w[centre], compute_uv=False)
    np.testing.assert_allclose(singular, gain, rtol=1e-5)
    rest = w.copy()
    rest[centre] = 0
    assert not rest.any()


def test_delta_orthogonal_seeds_config_and_errors():
    from keras_initkit.initializers import DeltaOrthogonal

    a = _sample(DeltaOrthogonal(seed=1), (3, 3, 8, 8))
    assert np.array_equal(a, _sample(DeltaOrthogonal(seed=1), (3, 3, 8, 8)))
    assert not np.array_equal(a, _sample(DeltaOrthogonal(seed=2), (3, 3, 8, 8)))
    shared = DeltaOrthogonal()
    assert not np.array_equal(_sample(shared, (3, 3, 8, 8)), _sample(shared, (3, 3, 8, 8)))
    init = DeltaOrthogonal(gain=1.5, seed=4)
    assert init.get_config() == {"gain": 1.5, "seed": 4}
    blob = keras.saving.serialize_keras_object(init)
    assert blob["registered_name"] == "keras_initkit>DeltaOrthogonal"
    back = keras.saving.deserialize_keras_object(json.loads(json.dumps(blob)))
    assert np.array_equal(_sample(back, (3, 3, 8, 8)), _sample(init, (3, 3, 8, 8)))
    for call, text in [
        (lambda: DeltaOrthogonal(gain=0), "`gain` must be a finite positive number. Received: gain=0"),
        (lambda: DeltaOrthogonal(gain=float("inf")), "Received: gain=inf"),
        (lambda: DeltaOrthogonal()((8,)), "`shape` must have rank >= 2"),
    ]:
        with pytest.raises(ValueError, match=re.escape(text)):
            call()


def test_delta_orthogonal_conv_net_keeps_the_signal_of_a_linear_stack():
    """A 40-layer linear conv stack with delta-orthogonal kernels is an isometry at each position (norms kept)."""
    from keras_initkit.initializers import DeltaOrthogonal

    keras.utils.set_random_seed(0)
    convs = [
        keras.layers.Conv2D(8, 3, padding="same", use_bias=False, kernel_initializer=DeltaOrthogonal())
        for _ in range(40)
    ]
    model = keras.Sequential([keras.Input((6, 6, 8)), *convs])
    x = np.random.default_rng(0).normal(size=(4, 6, 6, 8)).astype("float32")
    y = np.asarray(model(x))
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-4)
