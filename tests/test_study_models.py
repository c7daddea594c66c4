"""keras_initkit.study.models: the VGG-style builder, the recipe's copy, the MLP builder."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_initkit.study.models import build_mlp, build_vgg, layer_names, transfer_layers, weight_layers

# --------------------------------------------------------------------------------------------------- the builder


@pytest.mark.parametrize(
    ("depth", "widths", "fc_layers", "convs_per_stage"),
    [(8, (32,), 1, [7]), (30, (32,), 1, [29]), (11, (8, 16, 16, 32, 32), 3, [1, 1, 2, 2, 2]), (14, (4, 8), 2, [6, 6])],
)
def test_build_vgg_layers(depth, widths, fc_layers, convs_per_stage):
    model = build_vgg((32, 32, 3), 10, depth, widths=widths, fc_layers=fc_layers, fc_width=16, init="he_fan_in")
    weights = weight_layers(model)
    convs = [la for la in weights if isinstance(la, keras.layers.Conv2D)]
    dense = [la for la in weights if isinstance(la, keras.layers.Dense)]
    assert len(weights) == depth
    assert len(convs) == depth - fc_layers and len(dense) == fc_layers
    assert [la.name for la in weights] == layer_names(depth, widths, fc_layers)
    for s, n in enumerate(convs_per_stage):
        stage = [la for la in convs if la.name.startswith(f"conv{s + 1}_")]
        assert len(stage) == n and all(la.filters == widths[s] for la in stage)
    assert all(
        la.kernel_size == (3, 3) and la.padding == "same" and la.activation is keras.activations.relu for la in convs
    )
    assert sum(isinstance(la, keras.layers.MaxPooling2D) for la in model.layers) == len(widths) - 1
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in model.layers)
    assert dense[-1].units == 10 and dense[-1].activation is keras.activations.linear
    assert all(la.activation is keras.activations.relu for la in dense[:-1])
    # no residuals: a chain, each layer fed by the one before it
    layers = model.layers[1:]
    assert all(b.input is a.output for a, b in zip(layers[:-1], layers[1:], strict=True))
    # every layer has its own initializer seed: two square conv kernels are not equal
    k1, k2 = (np.asarray(la.kernel) for la in convs[-2:])
    if k1.shape == k2.shape:
        assert not np.allclose(k1, k2)


def test_build_vgg_batchnorm():
    model = build_vgg((8, 8, 1), 10, 5, widths=(8,), fc_layers=2, fc_width=8, init="fixed", batchnorm=True)
    bn = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    relu = [la for la in model.layers if isinstance(la, keras.layers.Activation)]
    assert len(bn) == len(relu) == 4  # 3 convs + 1 hidden dense; none after the classifier
    hidden = weight_layers(model)[:-1]
    assert all(not la.use_bias and la.activation is keras.activations.linear for la in hidden)
    assert weight_layers(model)[-1].use_bias


def test_build_vgg_initializer_scales():
    """Each init gives its stated Var(W) for a 3x3x32x32 conv (fan 288): 1e-4, 1/288, 2/288."""
    expect = {
        "fixed": 1e-4,
        "glorot_fan_in": 1 / 288,
        "glorot_avg": 1 / 288,
        "he_fan_in": 2 / 288,
        "he_fan_out": 2 / 288,
    }
    for init, var in expect.items():
        model = build_vgg((8, 8, 1), 10, 12, widths=(32,), init=init, seed=3)
        w = np.concatenate([np.asarray(la.kernel).ravel() for la in weight_layers(model)[1:-1]])
        se = var * math.sqrt(2.0 / len(w))  # of a sample variance (Gaussian; uniform is smaller)
        assert abs(w.var() - var) < 5 * se, init


def test_build_vgg_errors():
    with pytest.raises(ValueError, match="depth"):
        build_vgg((8, 8, 1), 10, 2, widths=(8, 8), fc_layers=1)
    with pytest.raises(ValueError, match="init"):
        build_vgg((8, 8, 1), 10, 4, widths=(8,), init="xavier")
    with pytest.raises(ValueError, match="init"):
        build_vgg((8, 8, 1), 10, 4, widths=(8,), init={"conv9_9": "fixed"})


def test_transfer_layers_copies_first_convs_and_head():
    a = build_vgg((8, 8, 1), 10, 4, widths=(8, 8), fc_layers=2, fc_width=8, init="he_fan_in", seed=1)
    deep = build_vgg((8, 8, 1), 10, 8, widths=(8, 8), fc_layers=2, fc_width=8, init="fixed", seed=2)
    for la in weight_layers(a):  # trained-looking biases, so that they are checked too
        la.bias.assign(np.full(la.bias.shape, 0.5, "float32"))
    before = {la.name: [w.copy() for w in la.get_weights()] for la in weight_layers(deep)}
    copied = transfer_layers(a, deep, n_convs=1)
    # A's convs: conv1_1, conv2_1 (one per stage); the first is copied, and the dense head fc1, fc2
    assert copied == ["conv1_1", "fc1", "fc2"]
    for la in weight_layers(deep):
        src = a.get_layer(la.name).get_weights() if la.name in copied else before[la.name]
        for w, s in zip(la.get_weights(), src, strict=True):
            np.testing.assert_array_equal(w, s)
    assert not np.array_equal(deep.get_layer("conv2_1").kernel, a.get_layer("conv2_1").kernel)
    # by stage and position: A's conv2_1 (8 -> 8 after the pool) lands on the deep net's conv2_1
    assert transfer_layers(a, deep, n_convs=2)[:2] == ["conv1_1", "conv2_1"]
    np.testing.assert_array_equal(deep.get_layer("conv2_1").kernel, a.get_layer("conv2_1").kernel)


def test_transfer_layers_errors():
    a = build_vgg((8, 8, 1), 10, 3, widths=(8,), init="fixed")
    wide = build_vgg((8, 8, 1), 10, 5, widths=(16,), init="fixed")
    with pytest.raises(ValueError, match="shapes differ"):
        transfer_layers(a, wide, 1)
    with pytest.raises(ValueError, match="n_convs"):
        transfer_layers(a, wide, 3)


def test_build_mlp_layouts_and_seeds():
    plain = build_mlp(16, 10, 3, 8, activation="tanh", init="normalized", seed=4)
    assert [la.name for la in weight_layers(plain)] == ["hidden_1", "hidden_2", "hidden_3", "output"]
    assert plain.name == "mlp_tanh_normalized" and plain.input.name == "x"
    assert all(la.activation is keras.activations.tanh for la in weight_layers(plain)[:-1])
    assert weight_layers(plain)[-1].activation is keras.activations.linear
    bn = build_mlp(16, 10, 3, 8, activation="sigmoid", init="fixed", fixed_std=0.1, seed=4, batchnorm=True,
                   hidden_name="dense", name="mlp_bn")  # fmt: skip
    names = [la.name for la in bn.layers[1:]]
    assert names[:3] == ["dense_1", "bn_1", "sigmoid_1"] and names[-1] == "output" and bn.name == "mlp_bn"
    assert not bn.get_layer("dense_1").use_bias and bn.get_layer("output").use_bias
    no_bn = build_mlp(16, 10, 3, 8, activation="sigmoid", init="fixed", fixed_std=0.1, seed=4, activation_layers=True,
                      hidden_name="dense")  # fmt: skip
    assert [la.name for la in no_bn.layers[1:4]] == ["dense_1", "sigmoid_1", "dense_2"]
    assert no_bn.get_layer("dense_1").use_bias
    for name in ("dense_1", "dense_2", "dense_3", "output"):  # the same kernels with and without BN
        np.testing.assert_array_equal(bn.get_layer(name).kernel, no_bn.get_layer(name).kernel)
    assert np.asarray(bn.get_layer("dense_2").kernel).std() == pytest.approx(0.1, rel=0.3)  # 64 draws
    with pytest.raises(ValueError, match="`init` must name inits"):
        build_mlp(16, 10, 3, 8, init="xavier")
    with pytest.raises(ValueError, match="`n_hidden` must be an int >= 1"):
        build_mlp(16, 10, 0, 8)
