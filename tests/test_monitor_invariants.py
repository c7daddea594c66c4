"""What attaching the monitor must never change, and what it must accept or refuse: the same weights as plain `fit`,
Keras' own gradients, recurrent layers, the step count, datasets as probes, argument errors."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_initkit.monitor import VarianceMonitor
from keras_initkit.plots import variance_vs_depth

# (output units, output activation, loss): softmax/sigmoid outputs whose loss Keras computes from the logits, and
# the same outputs given as logits.
OUTPUTS = {
    "softmax": (10, "softmax", keras.losses.SparseCategoricalCrossentropy()),
    "softmax_logits": (10, None, keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
    "sigmoid": (1, "sigmoid", keras.losses.BinaryCrossentropy()),
    "sigmoid_logits": (1, None, keras.losses.BinaryCrossentropy(from_logits=True)),
}


def _data(n=32, d=8, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype("float32"), rng.integers(0, classes, n)


def _model(output: str, std: float, hidden="relu"):
    units, activation, loss = OUTPUTS[output]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation=hidden, name="h"),
            keras.layers.Dense(
                units,
                activation=activation,
                name="out",
                kernel_initializer=keras.initializers.RandomNormal(stddev=std, seed=1),
            ),
        ]
    )
    model.compile(keras.optimizers.SGD(0.1), loss)
    return model


class _Weights(keras.callbacks.Callback):
    """Every weight after every step."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([np.array(w) for w in self.model.weights])


def _trained(output, std, monitor=None):
    x, y = _data(classes=OUTPUTS[output][0] if OUTPUTS[output][0] > 1 else 2)
    model = _model(output, std)
    weights = _Weights()
    callbacks = [weights] if monitor is None else [monitor, weights]
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    return weights.steps


@pytest.mark.parametrize("std", [1.0, 10.0], ids=["unsaturated", "saturated"])
@pytest.mark.parametrize("output", list(OUTPUTS))
def test_monitor_never_changes_training(output, std):
    # Issue 13: the taps dropped Keras' link from a softmax/sigmoid output to its logits, so the loss was computed
    # from clipped probabilities (one step on a saturated softmax differed by 57%).
    plain = _trained(output, std)
    x, y = _data(classes=OUTPUTS[output][0] if OUTPUTS[output][0] > 1 else 2)
    for source in ("probe", "train_batch"):
        monitor = VarianceMonitor(probe=(x[:16], y[:16]), every=1, source=source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Keras: from_logits=True with a sigmoid/softmax output
            seen = _trained(output, std, monitor)
        assert len(seen) == len(plain) == 4
        for step, (a, b) in enumerate(zip(plain, seen, strict=True)):
            for u, v in zip(a, b, strict=True):
                assert np.array_equal(u, v), (source, step, float(np.abs(u - v).max()))


def _softmax_grad(model, x, y):
    """Keras' dC/ds at the softmax output: (p - onehot(y)) / N."""
    h = np.maximum(x @ model.get_layer("h").kernel.numpy() + model.get_layer("h").bias.numpy(), 0)
    s = h @ model.get_layer("out").kernel.numpy() + model.get_layer("out").bias.numpy()
    s = s.astype(np.float64)
    p = np.exp(s - s.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p - np.eye(10)[y]) / len(y)


@pytest.mark.parametrize("std", [1.0, 10.0], ids=["unsaturated", "saturated"])
def test_recorded_softmax_gradient_is_keras_own(std):
    x, y = _data(16)
    ref = _softmax_grad(_model("softmax", std), x, y)
    probe = VarianceMonitor(probe=(x, y), stats=["mean", "var"]).measure(_model("softmax", std))
    monitor = VarianceMonitor(every=1, source="train_batch", stats=["mean", "var"])
    _model("softmax", std).fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    train = monitor.to_frame().query("step == 0")
    for df in (probe, train):
        out = df[df.layer == "out"]
        # the loss reads the logits: Keras computes no dC/df(s) for the output, so none is recorded
        assert "grad_activation" not in set(out.kind) and "grad_activation" in set(df[df.layer == "h"].kind)
        got = out[out.kind == "grad_preact"].set_index("stat").value
        assert got["var"] == pytest.approx(ref.var(), rel=1e-4)
        assert got["mean"] == pytest.approx(ref.mean(), abs=1e-9)


RECURRENT = {
    "SimpleRNN": lambda: keras.layers.SimpleRNN(4, name="rnn"),
    "LSTM": lambda: keras.layers.LSTM(4, name="rnn"),
    "GRU": lambda: keras.layers.GRU(4, name="rnn"),
    "RNN(cell)": lambda: keras.layers.RNN(keras.layers.LSTMCell(4), name="rnn"),
    "Bidirectional": lambda: keras.layers.Bidirectional(keras.layers.GRU(3), name="rnn"),
}


@pytest.mark.parametrize("source", ["probe", "train_batch"])
@pytest.mark.parametrize("kind", list(RECURRENT))
def test_recurrent_layers_are_monitored(kind, source):
    # Issue 13: "property 'activation' of 'LSTM' object has no setter" at the first fit.
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 5, 3)).astype("float32"), rng.integers(0, 3, 16)
    model = keras.Sequential([keras.Input((5, 3)), RECURRENT[kind](), keras.layers.Dense(3, name="out")])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    monitor = VarianceMonitor(probe=(x, y), every=1, stats=["var"], source=source)
    cell = getattr(model.get_layer("rnn"), "cell", None)
    at_init = None if cell is None else float(np.var(cell.kernel.numpy()))
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[monitor])
    df = monitor.to_frame()
    rnn = df[df.layer == "rnn"]
    expected = {"preact", "activation", "grad_preact", "grad_activation"}
    if kind != "Bidirectional":  # the cell's input kernel
        expected |= {"kernel", "grad_kernel"}
        assert rnn[(rnn.kind == "kernel") & (rnn.step == 0)].value.item() == pytest.approx(at_init, rel=1e-5)
    assert set(rnn.kind) == expected
    # s is the layer's output (no activation swapped in)
    one = rnn[rnn.step == rnn.step.min()].set_index("kind").value
    assert one["preact"] == one["activation"]


@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_model_without_input_is_measured_and_trains_the_same(source):
    x, y = _data(32, classes=3)

    def fit(monitor):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, verbose=0, callbacks=[monitor] if monitor else [])
        return model.get_weights()

    monitor = VarianceMonitor(probe=(x[:8], y[:8]) if source == "probe" else None, every=1, source=source)
    plain, seen = fit(None), fit(monitor)
    assert all(np.array_equal(a, b) for a, b in zip(plain, seen, strict=True))
    df = monitor.to_frame()
    assert sorted(df.step.unique()) == ([0, 1, 2, 3, 4] if source == "probe" else [0, 1, 2, 3])
    assert {"kernel", "grad_kernel"} <= set(df.kind)


@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_steps_per_execution_warns_with_the_effective_schedule(source):
    x, y = _data(16, 6, classes=3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="out")])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=4)
    monitor = VarianceMonitor(probe=(x, y) if source == "probe" else None, every=1, stats=["var"], source=source)
    with pytest.warns(UserWarning, match="steps_per_execution=4.*every=1") as record:
        model.fit(*_data(64, 6, classes=3), batch_size=8, verbose=0, callbacks=[monitor])
    assert len([w for w in record if "steps_per_execution" in str(w.message)]) == 1
    assert sorted(monitor.to_frame().step.unique()) == ([0, 4, 8] if source == "probe" else [0, 4])


def test_probe_may_be_a_dataset_or_a_generator():
    x, y = _data(16, 6, classes=3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="out")])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ref = VarianceMonitor(probe=(x, y)).measure(model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    generator = ((x, y) for _ in range(3))
    for probe in (dataset, generator):
        monitor = VarianceMonitor(probe=probe)  # the first batch, taken once here
        np.testing.assert_array_equal(monitor.measure(model).value, ref.value)
    with pytest.raises(ValueError, match="`probe` as a tf.data.Dataset must yield a batch"):
        VarianceMonitor(probe=tf.data.Dataset.from_tensor_slices((x, y)).take(0))


def test_interrupted_train_batch_run_restores_keras_train_function():
    x, y = _data(16, 6, classes=3)
    model = _classifier()
    monitor = VarianceMonitor(every=1, source="train_batch")
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[monitor])
    own, st = model.train_function, monitor._train.state
    recording = st.recording

    def interrupted(iterator):  # Ctrl-C while the recorded step runs
        raise KeyboardInterrupt

    st.recording = interrupted
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, batch_size=8, verbose=0, callbacks=[monitor])
    assert model.train_function is own
    st.recording = recording
    model.fit(x, y, batch_size=8, verbose=0, callbacks=[monitor])  # and the monitor runs again
    assert model.train_function is own and sorted(monitor.to_frame().step.unique()) == [0, 1, 2, 3]


# ---- arguments: at construction, and in on_train_begin for what needs the model ----------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"layers": "(unclosed"}, r"`layers` as a string must be a valid regex .* Received: layers='\(unclosed'"),
        ({"layers": 3}, r"`layers` must be None.* Received: layers=3"),
        ({"log_dir": 123}, r"`log_dir` must be None, a str or a path. Received: log_dir=123"),
        ({"stats": {"var": 3}}, r"`stats` as a mapping must map names to callables"),
        ({"probe": (np.zeros((0, 6), "float32"), np.zeros(0))}, r"`probe` must hold at least one sample"),
        ({"probe": (np.zeros((4, 6), "float32"), np.zeros(3))}, r"`probe` arrays must hold the same number"),
        ({"probe": (np.zeros((4, 6), "float32"), np.zeros(4), np.ones(5))}, r"`probe` arrays must hold the same"),
    ],
)
def test_construction_errors(kwargs, match):
    args = {"probe": (np.zeros((4, 6), "float32"), np.zeros(4))} | kwargs
    with pytest.raises(ValueError, match=match):
        VarianceMonitor(**args)


def _classifier():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, name="out")])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"probe": (np.zeros((4, 5), "float32"), np.zeros(4))}, r"`probe` x must match the model's input shape"),
        ({"probe": (np.zeros((4, 6), "float32"), np.array([0, 1, 2, 3]))}, r"`probe` labels must lie in \[0, 3\)"),
        ({"layers": "zzz.*"}, r"`layers` selects no layer"),
        ({"layers": ["nope"]}, r"`layers` names layers the model does not have"),
        ({"stats": {"bad": lambda view: "high"}}, r"`stats` entry 'bad' must return a numeric scalar tensor"),
    ],
)
@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_errors_that_need_the_model_come_at_train_begin(kwargs, match, source):
    args = {"probe": (np.zeros((4, 6), "float32"), np.zeros(4)), "source": source} | kwargs
    monitor = VarianceMonitor(**args)

    class Failed(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            raise AssertionError("training started")

    x, y = _data(8, 6, classes=3)
    with pytest.raises(ValueError, match=match):
        _classifier().fit(x, y, batch_size=8, verbose=0, callbacks=[monitor, Failed()])


def test_variance_vs_depth_defaults_on_a_monitor_frame():
    x, y = _data(16, 6, classes=3)
    monitor = VarianceMonitor(probe=(x, y))
    monitor.measure(_classifier())
    fig = variance_vs_depth(monitor.to_frame())  # issue 13: failed on its default hue="init"
    assert len(fig.axes) == 1


def _recurrent_model():
    inp = keras.Input((12, 2))
    h = keras.layers.LSTM(8, return_sequences=True, name="lstm")(inp)
    h = keras.layers.Bidirectional(keras.layers.GRU(4, name="gru"), name="bidirectional")(h)
    model = keras.Model(inp, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def test_time_frame_records_every_step_of_every_recurrent_layer_and_matches_time_statistics():
    from keras_initkit import time_statistics
    from keras_initkit.datasets import adding_problem

    x, y = adding_problem(96, 12, seed=1)
    keras.utils.set_random_seed(0)
    model = _recurrent_model()
    monitor = VarianceMonitor(probe=(x[:32], y[:32]), every=1)
    model.fit(x, y, batch_size=32, epochs=1, callbacks=[monitor], verbose=0)
    frame = monitor.time_frame()
    assert list(frame.columns) == ["step", "layer", "t", "lag", "kind", "stat", "value"]
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3]
    assert set(frame["layer"]) == {"lstm", "bidirectional/forward_gru", "bidirectional/backward_gru"}
    assert set(frame["kind"]) == {"hidden", "grad_hidden"} and set(frame["t"]) == set(range(12))
    assert ((frame["lag"] + frame["t"]) == 11).all() and np.isfinite(frame["value"]).all()
    # The last record (after 3 updates) equals the standalone measurement at the final weights.
    last = frame[frame["step"] == 3].drop(columns="step")
    ref = time_statistics(model, x[:32], y[:32])
    both = last.merge(ref, on=["layer", "t", "lag", "kind", "stat"], suffixes=("", "_ref"))
    assert len(both) == len(ref) == len(last)
    np.testing.assert_allclose(both["value"], both["value_ref"], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_recurrent_training_is_bit_identical_with_the_monitor(source):
    from keras_initkit.datasets import adding_problem

    x, y = adding_problem(96, 12, seed=2)
    weights = []
    for attach in (False, True):
        keras.utils.set_random_seed(0)
        model = _recurrent_model()
        callbacks = [VarianceMonitor(probe=(x[:32], y[:32]), every=1, source=source)] if attach else []
        model.fit(x, y, batch_size=32, epochs=1, shuffle=False, callbacks=callbacks, verbose=0)
        weights.append([np.asarray(w) for w in model.weights])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)
