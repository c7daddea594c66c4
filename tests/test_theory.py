"""keras_initkit.theory: true fans, predicted per-layer variances against measured ones, and compare().

Measured values come from an independent computation: a numpy forward and backward pass over the Dense
nets' weights (loss C = sum(y * r) / batch with fixed random signs r, so dC/dy is independent of the net), and
`VarianceMonitor.measure` for the conv net. At width 256 a single net's variances scatter around the theory's
expectation (forward +-9% at layer 20 of a linear net; backward through 20 ReLU layers +-8%, one standard deviation
over seeds): the claims that hold per net are tested per net, the others on the mean of a few seeds.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pandas as pd
import pytest

from keras_initkit import GlorotAvg, GlorotFanIn, He, StandardUniform, kernel_fans
from keras_initkit.layers import select_layers
from keras_initkit.theory import THEORY_KINDS, compare, layer_fans, predict_variance

L = keras.layers
WIDTH, DEPTH, BATCH = 256, 20, 256

_FN = {None: lambda s: s, "relu": lambda s: np.maximum(s, 0.0), "tanh": np.tanh}
_DERIV = {None: np.ones_like, "relu": lambda s: (s > 0).astype(s.dtype), "tanh": lambda s: 1.0 - np.tanh(s) ** 2}
_INITS = {"GlorotFanIn": GlorotFanIn, "He": He, "StandardUniform": StandardUniform, "GlorotAvg": GlorotAvg}


@functools.cache
def _skeleton(activation, depth: int) -> keras.Model:
    return keras.Sequential([keras.Input((WIDTH,))] + [L.Dense(WIDTH, activation=activation) for _ in range(depth)])


def _dense_net(init: str, activation, depth: int, seed: int) -> keras.Model:
    """depth x Dense(256) with each kernel drawn by `init` (its own seed per layer), biases 0."""
    model = _skeleton(activation, depth)
    for i, layer in enumerate(model.layers):
        layer.kernel.assign(_INITS[init](seed=seed * 1000 + i)(tuple(layer.kernel.shape)))
    return model


def _measure_dense(model: keras.Model, activation, seed: int) -> pd.DataFrame:
    """Variance over all elements of s, f(s), dC/ds per layer, from a numpy forward and backward pass (dC/dy = r)."""
    x = np.random.default_rng(10_000 + seed).standard_normal((BATCH, WIDTH)).astype(np.float32)
    weights = [(keras.ops.convert_to_numpy(la.kernel), keras.ops.convert_to_numpy(la.bias)) for la in model.layers]
    pre, out = [], [x]
    for w, b in weights:
        pre.append(out[-1] @ w + b)
        out.append(_FN[activation](pre[-1]))
    grad = (np.sign(np.random.default_rng(20_000 + seed).standard_normal(out[-1].shape)) / BATCH).astype(np.float32)
    rows = []
    for i in reversed(range(len(weights))):
        g_pre = grad * _DERIV[activation](pre[i])
        name = model.layers[i].name
        rows += [
            (name, i, "preact", pre[i].var(dtype=np.float64)),
            (name, i, "activation", out[i + 1].var(dtype=np.float64)),
        ]
        rows.append((name, i, "grad_preact", g_pre.var(dtype=np.float64)))
        grad = g_pre @ weights[i][0].T
    return pd.DataFrame(rows, columns=["layer", "depth", "kind", "value"]).assign(stat="var")


@functools.cache
def _run(init: str, activation, depth: int, seed: int) -> pd.DataFrame:
    """compare(measured, predicted) for one Dense net (cached: several tests read the same nets)."""
    model = _dense_net(init, activation, depth, seed)
    return compare(_measure_dense(model, activation, seed), predict_variance(model, input_var=1.0))


def _values(table: pd.DataFrame, kind: str, col: str) -> np.ndarray:
    return table[table["kind"] == kind].sort_values("depth")[col].to_numpy()


def _seeds_mean(init, activation, depth, seeds) -> pd.DataFrame:
    tables = [_run(init, activation, depth, s) for s in seeds]
    out = tables[0][["layer", "depth", "kind"]].copy()
    for col in ("measured", "predicted", "ratio"):
        out[col] = np.mean([t[col].to_numpy() for t in tables], axis=0)
    return out


# ----------------------------------------------------------------------------------------------------------------
# layer_fans


def _built(layer, input_shape):
    layer.build(input_shape)
    return layer


@pytest.mark.parametrize(
    ("layer", "input_shape", "expected"),
    [
        (L.Dense(64), (None, 100), (100, 64)),
        (L.Conv1D(8, 5), (None, 20, 3), (15, 40)),
        (L.Conv1D(8, 5, strides=2), (None, 20, 3), (15, 20)),
        (L.Conv2D(32, 3), (None, 16, 16, 4), (36, 288)),
        (L.Conv2D(32, 3, strides=2), (None, 16, 16, 4), (36, 72)),
        (L.Conv2D(32, 3, groups=2), (None, 16, 16, 4), (18, 144)),
        (L.Conv3D(6, 2), (None, 4, 4, 4, 3), (24, 48)),
        (L.Conv2DTranspose(32, 3), (None, 8, 8, 64), (576, 288)),
        (L.Conv2DTranspose(32, 3, strides=2), (None, 8, 8, 64), (144, 288)),
        (L.Conv1DTranspose(4, 4, strides=2), (None, 8, 6), (12, 16)),
        (L.DepthwiseConv2D(3, depth_multiplier=2), (None, 8, 8, 5), (9, 18)),
        (L.DepthwiseConv2D(3, depth_multiplier=2, strides=2), (None, 8, 8, 5), (9, 4.5)),
        (L.DepthwiseConv1D(5), (None, 20, 3), (5, 5)),
    ],
)
def test_layer_fans(layer, input_shape, expected):
    assert layer_fans(_built(layer, input_shape)) == pytest.approx(expected)


def test_layer_fans_agrees_with_kernel_fans_where_keras_convention_is_true():
    for layer, shape in [(L.Dense(7), (None, 5)), (L.Conv2D(6, 3), (None, 9, 9, 4)), (L.Conv1D(3, 2), (None, 8, 2))]:
        layer = _built(layer, shape)
        assert layer_fans(layer) == kernel_fans(tuple(layer.kernel.shape))
    # ...and differs where it is not: a transposed kernel's axes are swapped, a depthwise kernel sums prod(k) only.
    t = _built(L.Conv2DTranspose(16, 3), (None, 8, 8, 4))
    assert layer_fans(t) == pytest.approx(kernel_fans(tuple(t.kernel.shape))[::-1])
    d = _built(L.DepthwiseConv2D(3), (None, 8, 8, 4))
    assert layer_fans(d)[0] == 9 and kernel_fans(tuple(d.kernel.shape))[0] == 36


def test_layer_fans_errors():
    with pytest.raises(ValueError, match="`layer` must be built"):
        layer_fans(L.Dense(4))
    with pytest.raises(ValueError, match="`layer` must be a Dense.*BatchNormalization"):
        layer_fans(_built(L.BatchNormalization(), (None, 4)))


# ----------------------------------------------------------------------------------------------------------------
# Dense nets against theory (He et al. 2015, Eq 7-10; Glorot & Bengio 2010, Eq 5-14)


def test_linear_net_keeps_variance_at_every_layer():
    """20 linear layers of 256 under GlorotFanIn keep Var(s) = 1 within 10% (mean of 8 nets); theory agrees."""
    mean = _seeds_mean("GlorotFanIn", None, DEPTH, range(8))
    for kind in ("preact", "grad_preact"):
        measured = _values(mean, kind, "measured")
        assert len(measured) == DEPTH
        if kind == "preact":
            np.testing.assert_allclose(measured, 1.0, rtol=0.10)
            np.testing.assert_allclose(_values(mean, kind, "predicted"), 1.0, rtol=0.03)
        else:  # constant through the linear chain: the anchor at the top sets the level
            np.testing.assert_allclose(measured / measured[-1], 1.0, rtol=0.10)
        np.testing.assert_allclose(_values(mean, kind, "ratio"), 1.0, rtol=0.10)


@pytest.mark.parametrize(("init", "per_layer"), [("GlorotFanIn", 0.5), ("He", 1.0)])
def test_relu_net_halves_under_fan_in_and_keeps_under_he(init, per_layer):
    """ReLU: Var(s_l) / Var(s_{l-1}) = 1/2 n Var(W) (He et al. Eq 10): 0.5 under GlorotFanIn, 1 under He."""
    table = _run(init, "relu", DEPTH, 0)
    for col in ("measured", "predicted"):
        s = _values(table, "preact", col)
        steps = s[1:] / s[:-1]
        geo = (s[-1] / s[0]) ** (1.0 / (DEPTH - 1))
        assert geo == pytest.approx(per_layer, abs=0.05 * per_layer / 0.5), (col, geo)
        assert np.median(steps) == pytest.approx(per_layer, abs=0.05 * per_layer / 0.5), (col, steps)
    # The first layer sees the Gaussian input: E[relu(s)^2] = Var(s) / 2 exactly.
    assert _values(table, "activation", "predicted")[0] / _values(table, "preact", "predicted")[0] == pytest.approx(
        0.5 - 0.5 / np.pi, rel=2e-3
    )


@pytest.mark.parametrize("init", ["GlorotFanIn", "He"])
def test_relu_net_measured_matches_predicted(init):
    """Forward within 10% at every layer of each net; backward within 10% at every layer on the mean of 4 nets."""
    for seed in range(4):
        table = _run(init, "relu", DEPTH, seed)
        fwd = table[table["kind"] != "grad_preact"]
        np.testing.assert_allclose(fwd["ratio"], 1.0, rtol=0.10, err_msg=f"seed {seed}")
        assert set(table["kind"]) == set(THEORY_KINDS) and len(table) == 3 * DEPTH
    mean = _seeds_mean(init, "relu", DEPTH, range(4))
    np.testing.assert_allclose(_values(mean, "grad_preact", "ratio"), 1.0, rtol=0.10)


def test_tanh_standard_shrinks_and_normalized_holds():
    """Glorot & Bengio Fig 6/7 at initialization (tanh, 6 layers): under the standard init U[-1/sqrt(n), 1/sqrt(n)]
    the activation variance and the back-propagated gradient variance shrink about 3x per layer (n Var(W) = 1/3);
    under the normalized init much less; measured and predicted agree within 10% (forward and backward)."""
    depth = 6
    tables = {init: _run(init, "tanh", depth, 0) for init in ("StandardUniform", "GlorotAvg")}
    for init, table in tables.items():
        np.testing.assert_allclose(table["ratio"], 1.0, rtol=0.10, err_msg=init)
    for col in ("measured", "predicted"):
        act = {i: _values(t, "activation", col) for i, t in tables.items()}
        grad = {i: _values(t, "grad_preact", col) for i, t in tables.items()}
        std_act, avg_act = act["StandardUniform"], act["GlorotAvg"]
        assert np.all(std_act[1:] / std_act[:-1] < 0.36), std_act
        assert np.all(avg_act[1:] / avg_act[:-1] > 0.55), avg_act
        std_grad, avg_grad = grad["StandardUniform"], grad["GlorotAvg"]  # toward the input: layer l-1 / layer l
        assert np.all(std_grad[:-1] / std_grad[1:] < 0.4), std_grad
        assert np.all(avg_grad[:-1] / avg_grad[1:] > 0.4), avg_grad
        assert std_grad[0] / std_grad[-1] < 0.01 < 0.1 < avg_grad[0] / avg_grad[-1]


# ----------------------------------------------------------------------------------------------------------------
# Conv nets: borders, strides, pooling, BatchNormalization, transposed and depthwise kernels


def _conv_net(seed: int) -> keras.Model:
    he = [He(seed=seed * 100 + i) for i in range(5)]
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            L.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=he[0]),
            L.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=he[1]),
            L.MaxPooling2D(2),
            L.Conv2D(32, 3, padding="same", kernel_initializer=he[2]),
            L.BatchNormalization(),
            L.ReLU(),
            L.Conv2DTranspose(
                16, 3, strides=2, padding="same", activation="tanh", kernel_initializer=GlorotAvg(seed=seed)
            ),
            L.AveragePooling2D(2),
            L.Flatten(),
            L.Dense(10, kernel_initializer=he[4]),
        ]
    )


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF-only test; JAX: test_monitor_backends.py")
def test_conv_net_against_the_monitor():
    """A small conv net, measured by VarianceMonitor (batch statistics in BatchNormalization, as predicted).

    Forward within 10% at every monitored layer; backward within 15% (its spread over seeds is 5-16%: 16-32
    channels and 10 logits). Names and depths line up with the monitor's."""
    from keras_initkit.monitor import VarianceMonitor

    model = _conv_net(0)
    model.compile(loss=lambda y, p: keras.ops.mean(y * p, axis=-1))  # dC/dy independent of the forward pass
    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 8, 8, 3)).astype("float32")
    y = np.sign(rng.standard_normal((256, 10))).astype("float32")
    measured = VarianceMonitor(probe=(x, y), stats=["var"]).measure(model)
    predicted = predict_variance(model)
    table = compare(measured, predicted)
    names = [la.name for la in model.layers if not isinstance(la, (L.MaxPooling2D, L.AveragePooling2D, L.Flatten))]
    assert list(table[table["kind"] == "preact"]["layer"]) == names
    assert list(predicted[predicted["kind"] == "preact"]["depth"]) == list(range(len(names)))
    assert len(table) == 3 * len(names) and table["anchor"].sum() == 1
    fwd, bwd = table[table["kind"] != "grad_preact"], table[table["kind"] == "grad_preact"]
    np.testing.assert_allclose(fwd["ratio"], 1.0, rtol=0.10)
    np.testing.assert_allclose(bwd["ratio"], 1.0, rtol=0.15)


def _conv_measure(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Var(s) of each layer by running the model's layers (linear convs: s is the output)."""
    out, h = [], keras.ops.convert_to_tensor(x)
    for layer in model.layers:
        h = layer(h)
        out.append(float(np.var(keras.ops.convert_to_numpy(h).astype(np.float64))))
    return np.asarray(out)


def test_same_padding_borders_on_small_maps():
    """Five 'same'-padded 3x3 convs on 4x4 maps: a border output sums 4 or 6 of 9 taps, which read larger inputs
    than the average; ignoring positions gives +6% per layer here. Linear convs: Var(s) by a plain forward pass."""
    x = np.random.default_rng(5).standard_normal((512, 4, 4, 16)).astype("float32")
    ratios = []
    for seed in range(2):
        init = [GlorotFanIn(seed=seed * 10 + i) for i in range(5)]
        model = keras.Sequential(
            [keras.Input((4, 4, 16))] + [L.Conv2D(32, 3, padding="same", kernel_initializer=w) for w in init]
        )
        predicted = predict_variance(model).query("kind == 'preact'")["value"].to_numpy()
        ratios.append(_conv_measure(model, x) / predicted)
    np.testing.assert_allclose(np.mean(ratios, axis=0), 1.0, rtol=0.06)


def test_depthwise_transposed_causal_and_reshape():
    """First layers on independent inputs, where the theory is exact up to sampling: strided depthwise (one input
    channel, 9 taps, zero padding), stride-2 transposed conv (outputs sum 1, 2 or 4 taps by parity), and a causal
    dilated Conv1D behind a Reshape with input mean 1 (the padding makes the mean depend on the position)."""
    rng = np.random.default_rng(6)
    cases = [
        (L.DepthwiseConv2D(3, depth_multiplier=2, strides=2, padding="same", depthwise_initializer=He(seed=1)), 0.0),
        (L.Conv2DTranspose(8, 3, strides=2, padding="same", kernel_initializer=He(seed=2)), 0.0),
        (L.Conv1D(8, 3, padding="causal", dilation_rate=2, kernel_initializer=He(seed=3)), 1.0),
    ]
    for layer, mean in cases:
        x = (rng.standard_normal((1024, 6, 6, 8)) + mean).astype("float32")
        layers = [L.Reshape((36, 8)), layer] if isinstance(layer, L.Conv1D) else [layer]
        model = keras.Sequential([keras.Input((6, 6, 8)), *layers])
        predicted = predict_variance(model, input_mean=mean).query("kind == 'preact'")["value"].iloc[0]
        assert _conv_measure(model, x)[-1] / predicted == pytest.approx(1.0, rel=0.02), layer.name


# ----------------------------------------------------------------------------------------------------------------
# predict_variance: frame, options, errors


def test_predict_variance_frame():
    model = keras.Sequential([keras.Input((12,)), L.Dense(8), L.Dropout(0.5), L.Dense(4, activation="softmax")])
    frame = predict_variance(model, input_var=2.0)
    assert list(frame.columns) == ["layer", "depth", "kind", "stat", "value"]
    assert frame["depth"].dtype == np.int64 and set(frame["stat"]) == {"var"}
    assert list(frame["kind"]) == ["preact", "activation", "grad_preact", "preact", "grad_preact"]  # no softmax row
    assert frame["value"].iloc[4] == 1.0  # top_grad_var at the top
    w = keras.ops.convert_to_numpy(model.layers[0].kernel)
    assert frame["value"].iloc[0] == pytest.approx(2.0 * 12 * np.mean(w**2), rel=1e-6)  # Var(s) = n Var(W) Var(x)
    # Dropout(0.5) in training mode doubles the zero-mean signal's second moment and the gradient through it.
    infer = predict_variance(model, input_var=2.0, training=False)
    assert frame["value"].iloc[3] == pytest.approx(2.0 * infer["value"].iloc[3], rel=1e-9)
    assert frame["value"].iloc[2] == pytest.approx(2.0 * infer["value"].iloc[2], rel=1e-9)
    assert predict_variance(model, top_grad_var=3.0)["value"].iloc[2] == pytest.approx(3 * frame["value"].iloc[2])


def test_batchnorm_modes():
    model = keras.Sequential([keras.Input((32,)), L.Dense(64, kernel_initializer=He(seed=0)), L.BatchNormalization()])
    train = predict_variance(model, input_var=5.0, input_mean=1.0)
    infer = predict_variance(model, input_var=5.0, input_mean=1.0, training=False)
    preact_train, preact_infer = (f[f["kind"] == "preact"]["value"].to_numpy() for f in (train, infer))
    assert preact_train[1] == pytest.approx(1.0, abs=1e-3)  # batch statistics: each channel normalized
    eps = model.layers[-1].epsilon  # moving statistics at init: mean 0, variance 1
    assert preact_infer[1] == pytest.approx(preact_infer[0] / (1 + eps))


def test_predict_variance_errors():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3)])
    for kwargs, match in [
        ({"input_var": -1.0}, "`input_var` must be finite, >= 0"),
        ({"input_var": np.nan}, "`input_var`"),
        ({"input_var": np.ones(5)}, "`input_var` must be a number or an array of one value per input feature"),
        ({"input_mean": np.inf}, "`input_mean` must be finite"),
        ({"top_grad_var": 0.0}, "`top_grad_var`"),
        ({"top_grad_var": [1.0, 2.0]}, "`top_grad_var` must be a number"),
        ({"top_grad_var": {"nope": 1.0}}, "`top_grad_var` as a dict must name exactly"),
    ]:
        with pytest.raises(ValueError, match=match):
            predict_variance(model, **kwargs)
    with pytest.raises(ValueError, match="`model` must be a keras.Model"):
        predict_variance(L.Dense(3))
    with pytest.raises(ValueError, match="cannot predict.*LayerNormalization"):
        predict_variance(keras.Sequential([keras.Input((4,)), L.Dense(3), L.LayerNormalization()]))
    with pytest.raises(ValueError, match="fixed shape"):
        predict_variance(keras.Sequential([keras.Input((None, 3)), L.Conv1D(2, 3)]))
    with pytest.raises(ValueError, match="softmax"):
        predict_variance(keras.Sequential([keras.Input((4,)), L.Dense(3, activation="softmax"), L.Dense(2)]))


def _graph(kind: str) -> keras.Model:
    """Small branching models, each with its own merge rule (He-initialized, width 256)."""
    keras.utils.set_random_seed(7)
    inp = keras.Input((WIDTH,))
    if kind == "add":  # residual: x + f(x), then relu
        h = L.Dense(WIDTH, activation="relu", kernel_initializer=He(), name="d0")(inp)
        r = L.Dense(WIDTH, activation="relu", kernel_initializer=He(), name="d1")(h)
        r = L.Dense(WIDTH, kernel_initializer=He(), name="d2")(r)
        out = L.Dense(WIDTH, kernel_initializer=He(), name="top")(L.Activation("relu", name="post")(L.Add()([h, r])))
    elif kind == "concatenate":  # unequal widths, then a mixing layer
        a = L.Dense(64, activation="tanh", kernel_initializer=GlorotAvg(), name="a")(inp)
        b = L.Dense(192, activation="relu", kernel_initializer=He(), name="b")(inp)
        out = L.Dense(WIDTH, kernel_initializer=He(), name="top")(L.Concatenate()([a, b]))
    elif kind == "multiply":  # two branches from the input, uncorrelated on average over the weights
        a = L.Dense(WIDTH, activation="tanh", kernel_initializer=GlorotAvg(), name="a")(inp)
        b = L.Dense(WIDTH, kernel_initializer=GlorotAvg(), name="b")(inp)
        out = L.Dense(WIDTH, kernel_initializer=GlorotAvg(), name="top")(L.Multiply()([a, b]))
    elif kind == "shared":  # one layer called twice
        d = L.Dense(WIDTH, activation="tanh", kernel_initializer=GlorotAvg(), name="shared")
        out = L.Dense(WIDTH, kernel_initializer=GlorotAvg(), name="top")(d(L.Dense(WIDTH, name="d0")(d(inp))))
    else:  # "padding": zero padding then a valid conv; pooled to one head
        x = L.Reshape((16, 16, 1))(inp)
        x = L.Conv2D(32, 3, activation="relu", kernel_initializer=He(), name="c0")(L.ZeroPadding2D(2)(x))
        x = L.Conv2D(32, 3, kernel_initializer=He(), name="c1")(L.ZeroPadding2D(((0, 3), (1, 0)))(x))
        out = L.Dense(16, kernel_initializer=He(), name="top")(L.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out, name=kind)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF-only test; JAX: test_monitor_backends.py")
@pytest.mark.parametrize("kind", ["add", "concatenate", "multiply", "shared", "padding"])
def test_branching_graphs_against_the_monitor(kind):
    """Merge rules against VarianceMonitor: forward within 10% and backward within 15% at every monitored layer
    (before graphs: Add, Concatenate, Multiply, ZeroPadding refused; the shared layer silently 1.83x off)."""
    from keras_initkit.monitor import VarianceMonitor

    model = _graph(kind)
    model.compile(loss=lambda y, p: keras.ops.mean(y * p, axis=-1))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, WIDTH)).astype("float32")
    y = np.sign(rng.standard_normal((512, *model.output.shape[1:]))).astype("float32")
    table = compare(VarianceMonitor(probe=(x, y), stats=["var"]).measure(model), predict_variance(model))
    assert len(table) == 3 * len(select_layers(model, None))
    fwd, bwd = table[table["kind"] != "grad_preact"], table[table["kind"] == "grad_preact"]
    np.testing.assert_allclose(fwd["ratio"], 1.0, rtol=0.10, err_msg=fwd.to_string())
    np.testing.assert_allclose(bwd["ratio"], 1.0, rtol=0.15, err_msg=bwd.to_string())


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TF-only test; JAX: test_monitor_backends.py")
def test_side_output_and_subclassed_model():
    """A side output is a second sink: the trunk's forward signal is not fed through it (before: ratio 0.027, no
    error), and each sink may get its own top_grad_var. A subclassed model is predicted in its forward order."""
    from keras_initkit.monitor import VarianceMonitor

    keras.utils.set_random_seed(8)
    inp = keras.Input((WIDTH,))
    h = L.Dense(WIDTH, activation="relu", kernel_initializer=He(), name="trunk")(inp)
    side = L.Dense(10, kernel_initializer=He(), name="side")(h)
    main = L.Dense(WIDTH, activation="relu", kernel_initializer=He(), name="main")(h)
    model = keras.Model(inp, [L.Dense(3, kernel_initializer=He(), name="head")(main), side])
    x = np.random.default_rng(4).standard_normal((512, WIDTH)).astype("float32")
    forward = VarianceMonitor(probe=x, stats=["var"], kinds=("preact", "activation"))
    table = compare(forward.measure(model), predict_variance(model, top_grad_var={"side": 1.0, "head": 2.0}))
    np.testing.assert_allclose(table["ratio"], 1.0, rtol=0.10, err_msg=table.to_string())
    grads = predict_variance(model, top_grad_var={"side": 1.0, "head": 2.0}).query("kind == 'grad_preact'")
    assert grads.set_index("layer")["value"][["side", "head"]].tolist() == [1.0, 2.0]

    class HeadFirst(keras.Model):
        def __init__(self):
            super().__init__()
            self.head = L.Dense(8, kernel_initializer=He(), name="head")
            self.body = L.Dense(WIDTH, activation="relu", kernel_initializer=He(), name="body")

        def call(self, x):
            return self.head(self.body(x))

    sub = HeadFirst()
    sub(x[:1])
    predicted = predict_variance(sub)
    assert predicted.drop_duplicates("layer")[["layer", "depth"]].values.tolist() == [["body", 0], ["head", 1]]
    measured = VarianceMonitor(probe=x, stats=["var"], kinds=("preact", "activation")).measure(sub)
    np.testing.assert_allclose(compare(measured, predicted)["ratio"], 1.0, rtol=0.10)


def test_one_error_names_every_layer_the_theory_cannot_predict_and_a_prefix_is_predicted():
    inp = keras.Input((8,))
    h = L.Dense(8, name="d0")(inp)
    h = L.Dense(8, activation="relu", name="d1")(h)
    a = L.LayerNormalization(name="norm")(h)
    b = L.Maximum(name="max")([h, L.Dense(8, name="d2")(h)])
    model = keras.Model(inp, L.Dense(2, name="out")(L.Add(name="add")([a, b])))
    with pytest.raises(ValueError, match=r"2 layer\(s\).*'norm' \(LayerNormalization.*'max' \(Maximum") as err:
        predict_variance(model)
    assert "`layers=['d0', 'd1']` predicts the prefix" in str(err.value)
    prefix = predict_variance(model, layers=["d0", "d1", "d2"])
    assert prefix.drop_duplicates("layer")["layer"].tolist() == ["d0", "d1", "d2"]


# ----------------------------------------------------------------------------------------------------------------
# compare


def _frames():
    measured = pd.DataFrame(
        {
            "step": [0] * 6 + [10] * 6,
            "layer": ["a", "a", "a", "b", "b", "b"] * 2,
            "depth": [0, 0, 0, 1, 1, 1] * 2,
            "kind": ["preact", "activation", "grad_preact"] * 4,
            "stat": "var",
            "value": [2.0, 1.0, 6.0, 4.0, 2.0, 4.0] + [9.0] * 6,
        }
    )
    predicted = pd.DataFrame(
        {
            "layer": ["a", "a", "a", "b", "b", "b"],
            "depth": [0, 0, 0, 1, 1, 1],
            "kind": ["preact", "activation", "grad_preact"] * 2,
            "stat": "var",
            "value": [2.0, 0.5, 1.0, 4.0, 4.0, 2.0],
        }
    )
    return measured, predicted


def test_compare_anchors_the_backward_chain_at_the_top():
    measured, predicted = _frames()
    table = compare(measured, predicted)
    assert list(table.columns) == ["layer", "depth", "kind", "measured", "predicted", "ratio", "anchor"]
    assert list(table["kind"]) == ["preact", "preact", "activation", "activation", "grad_preact", "grad_preact"]
    grad = table[table["kind"] == "grad_preact"].set_index("layer")
    assert grad.loc["b", "anchor"] and not grad.loc["a", "anchor"] and table["anchor"].sum() == 1
    assert grad.loc["b", "ratio"] == 1.0 and grad.loc["a", "predicted"] == 2.0  # scaled by 4 / 2
    assert grad.loc["a", "ratio"] == 3.0
    fwd = table[table["kind"] != "grad_preact"]
    assert list(fwd["ratio"]) == [1.0, 1.0, 2.0, 0.5]
    raw = compare(measured, predicted, anchor=None)
    assert list(raw[raw["kind"] == "grad_preact"]["ratio"]) == [6.0, 2.0] and not raw["anchor"].any()
    later = compare(measured, predicted, step=10)
    assert later["measured"].eq(9.0).all()


def test_compare_errors():
    measured, predicted = _frames()
    with pytest.raises(ValueError, match="`anchor` must be one of"):
        compare(measured, predicted, anchor="bottom")
    with pytest.raises(ValueError, match="several rows for layer 'a'"):
        compare(measured, predicted, step=None)
    with pytest.raises(ValueError, match="Missing \\['kind'\\]"):
        compare(measured.drop(columns="kind"), predicted)
    with pytest.raises(ValueError, match="no rows .* at step 5"):
        compare(measured, predicted, step=5)
    with pytest.raises(ValueError, match="share no"):
        compare(measured, predicted.assign(layer=predicted["layer"] + "_other"))
    with pytest.raises(ValueError, match="`measured` must be a pandas DataFrame"):
        compare([1, 2], predicted)
