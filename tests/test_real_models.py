"""The theory and the forward order on models nobody here wrote: tiny keras.applications VGG16, ResNet50,
MobileNetV2 (weights=None, 32x32 inputs), a functional model with a side output and a shared layer, a subclassed
model, and one the theory cannot predict (EfficientNetB0: one ValueError naming every layer it has no rule for).

Measured with `VarianceMonitor.measure` on 32 N(0, 1) images, forward kinds (the theory's `training=True`: batch
statistics in BatchNormalization, as the monitor). Tolerances are the measured spread plus a margin, per model.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from keras_initkit import He
from keras_initkit.layers import call_graph, select_layers
from keras_initkit.theory import compare, predict_variance

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="TF-only test; JAX: test_monitor_backends.py"
)
L = keras.layers
APPS = {
    "VGG16": lambda: keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg"),
    "ResNet50": lambda: keras.applications.ResNet50(
        weights=None, input_shape=(32, 32, 3), include_top=False, pooling="avg"
    ),
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35, include_top=False, pooling="avg"
    ),
}


def _x(shape, n=32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, *shape)).astype("float32")


def _measured_vs_predicted(model, x):
    from keras_initkit.monitor import VarianceMonitor

    measured = VarianceMonitor(probe=x, stats=["var"], kinds=("preact", "activation")).measure(model)
    predicted = predict_variance(model)
    order = predicted.drop_duplicates("layer")[["layer", "depth"]].values.tolist()
    assert order == measured.drop_duplicates("layer")[["layer", "depth"]].values.tolist()
    return compare(measured, predicted)


@functools.cache
def _app(name):
    keras.utils.set_random_seed(0)
    return APPS[name]()


# (median ratio tolerance, [min, max] of all ratios): measured 1.00-1.16 (VGG16, deepest 512-channel 2x2 maps),
# 0.98-1.52 (ResNet50: 1.52 at conv2_block1_0_conv, the shortcut read after the 3x3 max pool), 0.92-1.10
# (MobileNetV2).
BOUNDS = {"VGG16": (0.05, (0.95, 1.25)), "ResNet50": (0.02, (0.95, 1.6)), "MobileNetV2": (0.02, (0.88, 1.15))}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(APPS))
def test_applications_forward_order_and_theory(name):
    model = _app(name)
    targets = select_layers(model, None)
    graph = call_graph(model)  # forward order: every monitored layer after the ones it reads from
    made, depth = graph.producers(), {id(t.layer): t.index for t in targets}
    reads: dict[int, set] = {}
    for c in graph.calls:
        reads[c.outputs[0]] = set().union(*(reads.get(r, set()) for r in c.inputs))
        if id(c.layer) in depth:
            assert all(d < depth[id(c.layer)] for d in reads[c.outputs[0]])
            reads[c.outputs[0]] = reads[c.outputs[0]] | {depth[id(c.layer)]}
    assert len(made) == len(graph.calls)
    table = _measured_vs_predicted(model, _x((32, 32, 3)))
    assert len(table) == 2 * len(targets)
    median_tol, (lo, hi) = BOUNDS[name]
    assert abs(np.median(table["ratio"]) - 1.0) < median_tol, table.to_string()
    assert table["ratio"].between(lo, hi).all(), table.sort_values("ratio").to_string()


def test_side_output_and_shared_layer():
    keras.utils.set_random_seed(1)
    inp = keras.Input((16, 16, 3))
    h = L.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=He(), name="stem")(inp)
    shared = L.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=He(), name="shared")
    side = L.Dense(4, kernel_initializer=He(), name="side")(L.GlobalAveragePooling2D()(h))
    h = shared(L.MaxPooling2D()(shared(h)))
    main = L.Dense(10, kernel_initializer=He(), name="main")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, [side, main])
    assert [t.name for t in select_layers(model, None)] == ["stem", "side", "shared", "main"]  # first call
    table = _measured_vs_predicted(model, _x((16, 16, 3), 256))
    np.testing.assert_allclose(table["ratio"], 1.0, rtol=0.10, err_msg=table.to_string())


class _Net(keras.Model):
    """Subclassed: the classifier is created before the body, and the body has a residual Add."""

    def __init__(self):
        super().__init__(name="net")
        self.classify = L.Dense(10, kernel_initializer=He(), name="classify")
        self.conv1 = L.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=He(), name="conv1")
        self.conv2 = L.Conv2D(16, 3, padding="same", kernel_initializer=He(), name="conv2")
        self.add = L.Add(name="add")
        self.pool = L.GlobalAveragePooling2D(name="pool")

    def call(self, x):
        h = self.conv1(x)
        return self.classify(self.pool(self.add([h, self.conv2(h)])))


def test_subclassed_model():
    keras.utils.set_random_seed(2)
    model = _Net()
    x = _x((16, 16, 3), 256)
    model(x[:1])
    assert [t.name for t in select_layers(model, None)] == ["conv1", "conv2", "classify"]
    table = _measured_vs_predicted(model, x)
    np.testing.assert_allclose(table["ratio"], 1.0, rtol=0.10, err_msg=table.to_string())


@pytest.mark.slow
def test_one_clear_error_where_the_theory_does_not_apply():
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), include_top=False)
    with pytest.raises(ValueError, match=r"layer\(s\) the theory cannot predict: 'rescaling' \(Rescaling") as err:
        predict_variance(model)
    assert "'normalization' (Normalization: no rule for this layer)" in str(err.value)
