"""Model builders the studies share: a fully connected net (`build_mlp`), a plain VGG-style ReLU conv net
(`build_vgg`, Simonyan & Zisserman 2014 without their widths), and the VGG recipe's layer copy (`transfer_layers`).

Every weight layer gets its own initializer instance, `make_initializer(name, derive_seed(seed, "layer", index))`
with `index` the weight layer's position, input side first (the output layer too), biases 0. Two nets built with
the same seed and init have the same weights; with and without BatchNormalization they start from the same kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from keras_initkit.study.grid import derive_seed
from keras_initkit.study.inits import INIT_NAMES, make_initializer


def _check_inits(names) -> None:
    bad = [n for n in names if n not in INIT_NAMES]
    if bad:
        raise ValueError(f"`init` must name inits from {INIT_NAMES}. Received: {bad}")


def _layer_initializer(init: str, seed: int, index: int, fixed_std: float) -> keras.initializers.Initializer:
    return make_initializer(init, derive_seed(seed, "layer", index), fixed_std=fixed_std)


def build_mlp(
    input_dim: int,
    num_classes: int,
    n_hidden: int,
    width: int,
    *,
    activation: str = "relu",
    init: str = "he_fan_in",
    seed: int = 0,
    fixed_std: float = 0.01,
    batchnorm: bool = False,
    bn_momentum: float = 0.99,
    activation_layers: bool = False,
    hidden_name: str = "hidden",
    name: str | None = None,
) -> keras.Model:
    """A fully connected net: `n_hidden` Dense layers of `width` units, then the linear `output` layer (logits, the
    softmax in the loss); input named "x".

    Two layouts of a hidden layer i = 1..n_hidden:
    - default: `<hidden_name>_i` = Dense(width, activation) (Glorot & Bengio's nets);
    - `activation_layers=True` or `batchnorm=True`: `<hidden_name>_i` = linear Dense -> [`bn_i` BatchNormalization,
      the Dense then without bias (BN's beta replaces it, Ioffe & Szegedy 3.2)] -> `<activation>_i` Activation
      (the layer whose input is the "sigmoid input" of Ioffe & Szegedy Fig 1).

    Example:
    >>> model = build_mlp(64, 10, n_hidden=4, width=128, activation="tanh", init="normalized", seed=0)

    Args:
        input_dim: features of a (flattened) example.
        num_classes: units of the output layer.
        n_hidden: hidden layers (>= 1).
        width: units per hidden layer.
        activation: a Keras activation name of the hidden layers.
        init: a `make_initializer` name for every weight layer, the output layer included.
        seed: base seed of the per-layer initializer seeds (weight layer i: derive_seed(seed, "layer", i)).
        fixed_std: std of the "fixed" init.
        batchnorm: BatchNormalization before every hidden activation.
        bn_momentum: momentum of the BN moving averages.
        activation_layers: separate Activation layers (implied by `batchnorm`).
        hidden_name: name prefix of the hidden Dense layers.
        name: the model's name (default "mlp_<activation>_<init>", "_bn" appended with BN).
    """
    for arg, value in (("n_hidden", n_hidden), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"`{arg}` must be an int >= 1. Received: {arg}={value!r}")
    _check_inits([init])
    separate = activation_layers or batchnorm
    inputs = keras.Input((input_dim,), name="x")
    x = inputs
    for i in range(n_hidden):
        x = keras.layers.Dense(
            width,
            activation=None if separate else activation,
            use_bias=not batchnorm,
            kernel_initializer=_layer_initializer(init, seed, i, fixed_std),
            bias_initializer="zeros",
            name=f"{hidden_name}_{i + 1}",
        )(x)
        if batchnorm:
            x = keras.layers.BatchNormalization(momentum=bn_momentum, name=f"bn_{i + 1}")(x)
        if separate:
            x = keras.layers.Activation(activation, name=f"{activation}_{i + 1}")(x)
    outputs = keras.layers.Dense(
        num_classes,
        kernel_initializer=_layer_initializer(init, seed, n_hidden, fixed_std),
        bias_initializer="zeros",
        name="output",
    )(x)
    return keras.Model(inputs, outputs, name=name or f"mlp_{activation}_{init}{'_bn' if batchnorm else ''}")


def stage_sizes(n_conv: int, n_stages: int) -> list[int]:
    """Convs per stage: an even split, the remainder to the deepest stages (VGG grows its later stages)."""
    if n_conv < n_stages:
        raise ValueError(f"`depth` leaves {n_conv} convs for {n_stages} stages; each stage needs one at least")
    base, extra = divmod(n_conv, n_stages)
    return [base + (1 if s >= n_stages - extra else 0) for s in range(n_stages)]


def layer_names(depth: int, widths: Sequence[int] = (32,), fc_layers: int = 1) -> list[str]:
    """Weight-layer names of `build_vgg(depth, ...)`, input side first: conv<stage>_<i> ..., fc1 ... fc<fc_layers>."""
    if fc_layers < 1:
        raise ValueError(f"`fc_layers` must be >= 1 (the classifier). Received: fc_layers={fc_layers}")
    sizes = stage_sizes(depth - fc_layers, len(widths))
    convs = [f"conv{s + 1}_{i + 1}" for s, n in enumerate(sizes) for i in range(n)]
    return convs + [f"fc{j + 1}" for j in range(fc_layers)]


def build_vgg(
    input_shape: Sequence[int],
    num_classes: int,
    depth: int,
    *,
    widths: Sequence[int] = (32,),
    fc_layers: int = 1,
    fc_width: int = 64,
    init: str | dict[str, str] = "he_fan_in",
    seed: int = 0,
    fixed_std: float = 0.01,
    batchnorm: bool = False,
) -> keras.Model:
    """A plain VGG-style ReLU net of `depth` weight layers: 3x3 "same" convs in stages of `widths` channels, a 2x2
    max-pool after every stage but the last, Flatten, `fc_layers` dense layers (the last the linear classifier).

    No residuals; biases start at 0; every weight layer gets its own initializer instance seeded from
    (seed, "layer", index). With `batchnorm=True` each conv and hidden dense layer is linear and bias-free, followed by
    BatchNormalization (`bn...`) and a ReLU layer (`relu...`) (Ioffe & Szegedy's placement, before the nonlinearity).

    Args:
        input_shape: (height, width, channels).
        num_classes: units of the classifier.
        depth: weight layers, convs + dense; at least len(widths) + fc_layers.
        widths: channels of each conv stage.
        fc_layers: dense layers of the head, classifier included.
        fc_width: units of the hidden dense layers.
        init: a `make_initializer` name for every layer, or a dict layer name -> name (layers left out use
            "he_fan_in").
        seed: base seed of the per-layer initializer seeds.
        fixed_std: std of the "fixed" initializer.
        batchnorm: insert BatchNormalization before every ReLU.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise ValueError(f"`depth` must be an int. Received: depth={depth!r}")
    if depth < len(widths) + fc_layers:
        raise ValueError(
            f"`depth` must be >= len(widths) + fc_layers = {len(widths) + fc_layers}. Received: depth={depth}"
        )
    names = layer_names(int(depth), widths, fc_layers)
    per_layer = init if isinstance(init, dict) else dict.fromkeys(names, init)
    unknown = [n for n in per_layer if n not in names]
    if unknown:
        raise ValueError(f"`init` names layers the net does not have: {unknown}. Layers: {names}")
    _check_inits(per_layer.values())

    def initializer(index: int, name: str):
        return _layer_initializer(per_layer.get(name, "he_fan_in"), seed, index, fixed_std)

    def relu_block(x, layer, tag: str):
        if not batchnorm:
            return layer(x)
        x = layer(x)
        x = keras.layers.BatchNormalization(name=f"bn{tag}")(x)
        return keras.layers.Activation("relu", name=f"relu{tag}")(x)

    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    sizes = stage_sizes(depth - fc_layers, len(widths))
    index = 0
    for s, (n, width) in enumerate(zip(sizes, widths, strict=True)):
        for _ in range(n):
            name = names[index]
            conv = keras.layers.Conv2D(
                width,
                3,
                padding="same",
                activation=None if batchnorm else "relu",
                use_bias=not batchnorm,
                kernel_initializer=initializer(index, name),
                bias_initializer="zeros",
                name=name,
            )
            x = relu_block(x, conv, name[4:])
            index += 1
        if s < len(widths) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{s + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for j in range(fc_layers):
        name = names[index]
        last = j == fc_layers - 1
        dense = keras.layers.Dense(
            num_classes if last else fc_width,
            activation=None if (last or batchnorm) else "relu",
            use_bias=last or not batchnorm,
            kernel_initializer=initializer(index, name),
            bias_initializer="zeros",
            name=name,
        )
        x = dense(x) if last else relu_block(x, dense, name[2:])
        index += 1
    return keras.Model(inputs, x, name=f"vgg{depth}{'_bn' if batchnorm else ''}")


def weight_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The conv and dense layers of a `build_vgg` or `build_mlp` net, input side first."""
    return [la for la in model.layers if isinstance(la, (keras.layers.Conv2D, keras.layers.Dense))]


def transfer_layers(source: keras.Model, target: keras.Model, n_convs: int) -> list[str]:
    """The VGG recipe's copy (Simonyan & Zisserman 3.1): the first `n_convs` conv layers of `source` and all its dense
    layers into the layers of the same name in `target` (same stage and position in the stage), weights and biases.

    Returns the names copied. Raises ValueError when a layer is missing from `target` or its shapes differ.
    """
    convs = [la for la in weight_layers(source) if isinstance(la, keras.layers.Conv2D)]
    if not 0 <= n_convs <= len(convs):
        raise ValueError(f"`n_convs` must be in [0, {len(convs)}] (the source's convs). Received: n_convs={n_convs}")
    chosen = convs[:n_convs] + [la for la in weight_layers(source) if isinstance(la, keras.layers.Dense)]
    target_names = {la.name for la in target.layers}
    copied = []
    for layer in chosen:
        if layer.name not in target_names:
            raise ValueError(
                f"`target` has no layer {layer.name!r} to receive the copy. It has: {sorted(target_names)}"
            )
        dst = target.get_layer(layer.name)
        src_w, dst_w = layer.get_weights(), dst.get_weights()
        shapes = [w.shape for w in src_w], [w.shape for w in dst_w]
        if shapes[0] != shapes[1]:
            raise ValueError(f"layer {layer.name!r}: shapes differ, source {shapes[0]} vs target {shapes[1]}")
        dst.set_weights(src_w)
        copied.append(layer.name)
    return copied
