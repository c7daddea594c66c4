"""Layer selection in forward order and window geometry (true fans: tests/test_theory.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_initkit.layers import call_graph, leaf_layers, select_layers, window_axis


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


class _HeadFirst(keras.Model):
    """Creates its head before its body: attribute order is not the forward order."""

    def __init__(self):
        super().__init__(name="head_first")
        self.head = keras.layers.Dense(2, name="head")
        self.body = keras.layers.Dense(4, activation="relu", name="body")
        self.unused = keras.layers.Dense(3, name="unused")

    def call(self, x):
        return self.head(self.body(x))


def test_subclassed_model_depth_follows_the_forward_pass():
    model = _HeadFirst()
    model(np.zeros((1, 3), "float32"))
    assert [t.name for t in select_layers(model, None)] == ["body", "head", "unused"]  # never called: last
    assert [(t.index, t.name) for t in select_layers(model, ["head", "body"])] == [(0, "body"), (1, "head")]


def test_functional_branches_shared_and_nested_in_forward_order():
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="in1")], name="inner")
    sub = _HeadFirst()
    inp = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    h = shared(inp)
    side = keras.layers.Dense(2, name="side")(h)
    h = inner(shared(h))  # shared: called twice
    model = keras.Model(inp, [sub(h), side], name="outer")
    graph = call_graph(model)
    calls = [(c.layer.name, c.first, c.parents) for c in graph.calls]
    assert calls == [
        ("shared", True, ["outer"]),
        ("shared", False, ["outer"]),
        ("in1", True, ["outer", "inner"]),
        ("body", True, ["outer", "head_first"]),
        ("head", True, ["outer", "head_first"]),
        ("side", True, ["outer"]),
    ]
    first, second = graph.calls[0], graph.calls[1]
    assert second.inputs == first.outputs and graph.calls[-1].inputs == first.outputs
    assert graph.calls[2].inputs == second.outputs
    assert graph.outputs == [graph.calls[4].outputs[0], graph.calls[5].outputs[0]]
    assert [la.name for la, _ in leaf_layers(model)] == ["shared", "in1", "body", "head", "side", "unused"]


def test_call_graph_needs_a_built_model():
    with pytest.raises(ValueError, match="`model` must be built"):
        call_graph(_HeadFirst())
    assert [la.name for la, _ in leaf_layers(_HeadFirst())] == ["head", "body", "unused"]  # not built: tracking order
