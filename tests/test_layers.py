"""Layer selection in forward order and window geometry (true fans: tests/test_theory.py)."""

from __future__ import annotations

import keras
import numpy as np

from keras_initkit.layers import leaf_layers, select_layers, window_axis


def test_leaf_layers_through_nested_models_in_forward_order():
    inner = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="a"), keras.layers.ReLU(name="r")], name="inner"
    )
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="b")], name="outer")
    assert [(la.name, p) for la, p in leaf_layers(model)] == [
        ("a", ["outer", "inner"]),
        ("r", ["outer", "inner"]),
        ("b", ["outer"]),
    ]


def test_targets_know_how_their_nonlinearity_is_reached():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(4, activation="tanh", name="d"),
            keras.layers.ReLU(negative_slope=0.1, name="lr"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dropout(0.1, name="drop"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    got = [(t.index, t.name, t.mode, t.activation, t.kernel is not None) for t in select_layers(model, None)]
    assert got == [
        (0, "d", "fused", "tanh", True),
        (1, "lr", "input", "leaky_relu", False),
        (2, "bn", "identity", None, False),
        (3, "out", "fused", "linear", True),
    ]


def test_same_padding_window_reads_inside_the_input_only():
    ax = window_axis(3, 1, 1, "same", 5, 5, False)  # kernel 3, stride 1: one tap off each border
    assert ax.valid.sum(axis=1).tolist() == [2, 3, 3, 3, 2]
    np.testing.assert_array_equal(ax.src[2], [1, 2, 3])
