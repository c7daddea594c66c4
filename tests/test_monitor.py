"""VarianceMonitor against theory (deep linear / ReLU nets at init) and against hand GradientTape computations."""

from __future__ import annotations

import glob
import importlib.util
import warnings

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from keras_initkit.monitor import COLUMNS, KINDS, STATS, VarianceMonitor

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(n, d, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype("float32"), rng.integers(0, classes, n)


def _mlp(widths, activation, init, d_in, classes=3, bias=True):
    layers = [keras.Input((d_in,))]
    layers += [
        keras.layers.Dense(w, activation=activation, use_bias=bias, kernel_initializer=init(i), name=f"h{i}")
        for i, w in enumerate(widths)
    ]
    layers.append(keras.layers.Dense(classes, name="out", kernel_initializer=init(len(widths))))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(0.05), LOSS)
    return model


def _get(df, layer, kind, stat):
    rows = df[(df.layer == layer) & (df.kind == kind) & (df.stat == stat)]
    assert len(rows) == 1, (layer, kind, stat, len(rows))
    return float(rows.value.iloc[0])


def _hand(model, x, y):
    """s, f(s), dC/ds, dC/df(s), W, dC/dW of every Dense layer by a plain GradientTape, with the compiled loss."""
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        h, out = x, {}
        for layer in model.layers:
            s = tf.matmul(h, layer.kernel) + (layer.bias if layer.bias is not None else 0.0)
            tape.watch(s)
            a = layer.activation(s)
            tape.watch(a)
            out[layer.name] = {"preact": s, "activation": a, "kernel": layer.kernel}
            h = a
        loss = LOSS(y, h)
    for t in out.values():
        t["grad_preact"], t["grad_activation"], t["grad_kernel"] = tape.gradient(
            loss, [t["preact"], t["activation"], t["kernel"].value]
        )
    return {n: {k: np.asarray(v) for k, v in t.items()} for n, t in out.items()}


def _numpy_stats(x, kind, activation):
    x = np.asarray(x, dtype=np.float64)
    out = {"mean": x.mean(), "var": x.var(), "std": x.std()}
    out.update({f"p{q}": np.percentile(x, q) for q in (15, 50, 85)})
    if kind == "activation" and activation == "relu":
        out["dead"] = np.mean(np.all(x.reshape(-1, x.shape[-1]) == 0, axis=0))
    if kind == "activation" and activation == "tanh":
        out["saturated"] = np.mean(np.abs(x) > 0.99)
    return out


# ---- theory: deep nets at initialization -------------------------------------------------------------------------
# The deep linear net and the ReLU ratios (He et al. Eq 10) are the acceptance checks of
# tests/monitor_backend_checks.py, run under TensorFlow, JAX and PyTorch by tests/test_monitor_backends.py.


# ---- exactness against hand computations ---------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_every_kind_and_stat_matches_hand_gradient_tape(activation):
    keras.utils.set_random_seed(3)
    model = _mlp([24, 16], activation, lambda i: keras.initializers.RandomNormal(stddev=0.6, seed=i), 10)
    x, y = _data(64, 10, seed=2)
    df = VarianceMonitor(probe=(x, y), quantile_sample=None).measure(model)  # exact percentiles
    assert tuple(df.columns) == COLUMNS
    assert set(df.kind) == set(KINDS)
    assert not df.diverged.any()
    hand = _hand(model, x, y)
    checked = 0
    for layer, tensors in hand.items():
        act = activation if layer != "out" else "linear"
        for kind, value in tensors.items():
            for stat, ref in _numpy_stats(value, kind, act).items():
                got = _get(df, layer, kind, stat)
                assert got == pytest.approx(ref, rel=2e-3, abs=1e-6 * max(1.0, float(np.abs(value).max()))), (
                    layer,
                    kind,
                    stat,
                )
                checked += 1
    assert checked >= 3 * 6 * 6
    # the statistics that apply to one activation only are there, and exercised (not trivially 0)
    special = {"tanh": "saturated", "relu": "dead"}
    assert set(df[df.kind == "activation"].stat) == set(STATS) - {"saturated", "dead"} | {special[activation]}
    if activation == "tanh":  # std 0.6 weights saturate tanh in part
        assert _get(df, "h0", "activation", "saturated") > 0.0


def test_fused_activation_preact_equals_unfused_dense_plus_activation():
    keras.utils.set_random_seed(0)
    fused = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(20, activation="sigmoid", name="d"), keras.layers.Dense(3, name="out")]
    )
    split = keras.Sequential(
        [
            keras.Input((12,)),
            keras.layers.Dense(20, name="d"),
            keras.layers.Activation("sigmoid", name="act"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    split.get_layer("d").set_weights(fused.get_layer("d").get_weights())
    split.get_layer("out").set_weights(fused.get_layer("out").get_weights())
    for m in (fused, split):
        m.compile("sgd", LOSS)
    x, y = _data(40, 12, seed=4)
    a = VarianceMonitor(probe=(x, y)).measure(fused)
    b = VarianceMonitor(probe=(x, y)).measure(split)
    # the unfused Dense has the identity as nonlinearity: its output is s
    assert _get(b, "d", "activation", "var") == pytest.approx(_get(b, "d", "preact", "var"))
    for kind in KINDS[:4]:
        stats = set(a[(a.layer == "d") & (a.kind == kind)].stat)
        assert stats == set(b[(b.layer == "act") & (b.kind == kind)].stat)
        assert stats == set(STATS) - ({"dead"} if kind == "activation" else {"dead", "saturated"})
        for stat in stats:
            assert _get(a, "d", kind, stat) == pytest.approx(_get(b, "act", kind, stat), rel=1e-5, abs=1e-9)
    # the dense layer's weight kinds are the same with or without the fused activation
    assert _get(a, "d", "grad_kernel", "var") == pytest.approx(_get(b, "d", "grad_kernel", "var"), rel=1e-5)


def test_probe_pass_leaves_model_state_untouched():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(name="batch_normalization"),  # named: other tests' layers take the default
            keras.layers.Dropout(0.5),
            keras.layers.Dense(3),
        ]
    )
    model.compile("sgd", LOSS)
    before = [np.array(v) for v in model.variables]
    x, y = _data(32, 6)
    df = VarianceMonitor(probe=(x + 3.0, y)).measure(model)
    after = [np.array(v) for v in model.variables]
    assert all(np.array_equal(u, v) for u, v in zip(before, after, strict=True))
    # training mode: BatchNormalization normalizes with the probe's own batch statistics
    assert _get(df, "batch_normalization", "activation", "var") == pytest.approx(1.0, rel=0.01)


# ---- layer selection and model kinds -------------------------------------------------------------------------------


def _small_model():
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(8, name="d2"),
            keras.layers.ReLU(name="r"),
            keras.layers.Flatten(name="f"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.compile("sgd", LOSS)
    return model


@pytest.mark.parametrize(
    "layers, expected",
    [
        (None, ["d1", "bn", "d2", "r", "out"]),
        (["out", "d1"], ["d1", "out"]),
        ("d.", ["d1", "d2"]),
        (keras.layers.Dense, ["d1", "d2", "out"]),
        ([keras.layers.BatchNormalization, "r"], ["bn", "r"]),
    ],
)
def test_layer_selection_forms(layers, expected):
    x, y = _data(16, 6)
    df = VarianceMonitor(probe=(x, y), layers=layers, stats=["var"]).measure(_small_model())
    order = df.drop_duplicates("layer").sort_values("depth")
    assert list(order.layer) == expected
    assert list(order.depth) == list(range(len(expected)))
    has_kernel = set(df[df.kind == "kernel"].layer)
    assert has_kernel == {n for n in expected if n.startswith("d") or n == "out"}


@pytest.mark.parametrize(
    "layers, match",
    [(["nope"], "does not have"), ("zzz.*", "selects no layer"), (3, "must be None"), ([], "must be None")],
)
def test_layer_selection_errors(layers, match):
    x, y = _data(16, 6)
    with pytest.raises(ValueError, match=match):
        VarianceMonitor(probe=(x, y), layers=layers).measure(_small_model())


def test_nested_functional_model_matches_flat_model():
    keras.utils.set_random_seed(1)
    block = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(8, activation="tanh", name="b1"),
            keras.layers.Dense(8, activation="tanh", name="b2"),
        ],
        name="block",
    )
    inp = keras.Input((5,))
    h = keras.layers.Dense(8, activation="tanh", name="stem")(inp)
    out = keras.layers.Dense(3, name="head")(block(h))
    nested = keras.Model(inp, out)
    flat = keras.Sequential(
        [
            keras.Input((5,)),
            keras.layers.Dense(8, activation="tanh", name="stem"),
            keras.layers.Dense(8, activation="tanh", name="b1"),
            keras.layers.Dense(8, activation="tanh", name="b2"),
            keras.layers.Dense(3, name="head"),
        ]
    )
    for name in ("stem", "head"):
        flat.get_layer(name).set_weights(nested.get_layer(name).get_weights())
    for name in ("b1", "b2"):
        flat.get_layer(name).set_weights(block.get_layer(name).get_weights())
    for m in (nested, flat):
        m.compile("sgd", LOSS)
    x, y = _data(32, 5)
    a = VarianceMonitor(probe=(x, y)).measure(nested)
    b = VarianceMonitor(probe=(x, y)).measure(flat)
    assert list(a.drop_duplicates("layer").layer) == ["stem", "b1", "b2", "head"]
    merged = a.merge(b, on=["layer", "depth", "kind", "stat"])
    assert len(merged) == len(a) == len(b)
    np.testing.assert_allclose(merged.value_x, merged.value_y, rtol=1e-5, atol=1e-9)


# ---- lifecycle, schedule, sources ----------------------------------------------------------------------------------


def _fit(model, monitor, steps, batch=8, epochs=1, d=6, **kw):
    x, y = _data(steps * batch, d, seed=7)
    model.fit(x, y, batch_size=batch, epochs=epochs, callbacks=[monitor], verbose=0, shuffle=False, **kw)
    return monitor.to_frame()


@pytest.mark.parametrize("source", ["probe", "train_batch"])
@pytest.mark.parametrize("every, steps, expected", [("log", 10, [0, 1, 2, 4, 8]), (3, 10, [0, 3, 6, 9])])
def test_schedule_steps(source, every, steps, expected):
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y) if source == "probe" else None, every=every, stats=["var"], source=source)
    df = _fit(_small_model(), monitor, steps)
    assert sorted(df.step.unique()) == expected


@pytest.mark.parametrize("source, expected", [("probe", [0, 4, 8]), ("train_batch", [0, 4])])
def test_steps_per_execution(source, expected):
    # Two executions of 4 steps. The probe records after each (steps done: 4, 8); the training batch is recorded
    # at the scheduled step of each execution (0 and 4), as with one step per execution: the schedule is honoured.
    model = _small_model()
    model.compile("sgd", LOSS, steps_per_execution=4)
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y) if source == "probe" else None, every=4, stats=["var"], source=source)
    assert sorted(_fit(model, monitor, steps=8).step.unique()) == expected


class _StopAt(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.model.stop_training = True


@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_steps_exact_when_training_stops_mid_epoch(source):
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y), every=3, on_epoch_end=True, stats=["var"], source=source)
    xs, ys = _data(80, 6, seed=7)  # 10 batches; stopped after batch 6: 7 steps done
    _small_model().fit(xs, ys, batch_size=8, callbacks=[_StopAt(6), monitor], verbose=0, shuffle=False)
    steps = sorted(monitor.to_frame().step.unique())
    # 0, 3, 6 by schedule (after 3 and 6 updates, or the training batches of steps 3 and 6), 7 at the epoch's end
    assert steps == [0, 3, 6, 7]


def test_steps_exact_on_data_of_unknown_length():
    x, y = _data(80, 6, seed=7)

    def batches():
        for i in range(10):
            yield x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8]

    spec = (tf.TensorSpec((None, 6), tf.float32), tf.TensorSpec((None,), tf.int64))
    data = tf.data.Dataset.from_generator(batches, output_signature=spec)  # unknown cardinality: the epoch ends
    monitor = VarianceMonitor(probe=(x[:16], y[:16]), every=5, on_epoch_end=True, stats=["var"])  # by running out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Keras: "Your input ran out of data", the end of an epoch here
        _small_model().fit(data, epochs=2, callbacks=[monitor], verbose=0)
    got = monitor.to_frame().drop_duplicates(["step", "epoch"])[["step", "epoch"]].values.tolist()
    assert got == [[0, 0], [5, 0], [10, 0], [15, 1], [20, 1]]


def test_at_init_off_and_epoch_end_records():
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y), every=4, at_init=False, on_epoch_end=True, stats=["var"])
    df = _fit(_small_model(), monitor, steps=3, epochs=2)  # 3 steps per epoch: 4 by schedule, 3 and 6 at epoch ends
    got = df.drop_duplicates(["step", "epoch"])[["step", "epoch"]].values.tolist()
    assert got == [[3, 0], [4, 1], [6, 1]]


@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_reuse_across_fits_continues_the_table(source):
    # Steps are the optimizer's iterations: a second fit continues the table (no second "at init" row for trained
    # weights); `reset()` starts over, and the steps still count the optimizer's updates.
    model = _small_model()
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y), every=2, stats=["var"], source=source)
    first = _fit(model, monitor, steps=4)
    second = _fit(model, monitor, steps=4)
    one = [0, 2, 4] if source == "probe" else [0, 2]
    assert sorted(first.step.unique()) == one
    assert sorted(second.step.unique()) == one + ([6, 8] if source == "probe" else [4, 6])
    pd.testing.assert_frame_equal(second[second.step <= one[-1]], first)
    monitor.reset()
    assert monitor.to_frame().empty
    third = _fit(model, monitor, steps=2)
    assert sorted(third.step.unique()) == ([10] if source == "probe" else [8])


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=pytest.mark.slow)])  # XLA: the GPU default
def test_train_batch_source_equals_probe_on_the_same_batch(jit_compile):
    def build(jit):
        keras.utils.set_random_seed(2)
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(16, activation="tanh", name="d1"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.ReLU(name="r"),
                keras.layers.Dense(3, name="out"),
            ]
        )
        model.compile(keras.optimizers.SGD(0.1), LOSS, jit_compile=jit)
        return model

    model = build(jit_compile)
    x, y = _data(16, 6, seed=7)
    stats = ["mean", "var", "p15", "dead"]  # every statistic is checked against numpy in the hand test above
    at_init = VarianceMonitor(probe=(x, y), track_unit=2, stats=stats).measure(model)
    if jit_compile:  # the probe is XLA-compiled like the model's train step: same numbers as without XLA
        plain = VarianceMonitor(probe=(x, y), track_unit=2, stats=stats).measure(build(False))
        np.testing.assert_allclose(at_init.value, plain.value, rtol=2e-4, atol=1e-7)
    monitor = VarianceMonitor(every=1, source="train_batch", track_unit=2, stats=stats)
    model.fit(x, y, batch_size=16, epochs=2, callbacks=[monitor], verbose=0, shuffle=False)
    df = monitor.to_frame()
    assert sorted(df.step.unique()) == [0, 1]
    merged = at_init.merge(df[df.step == 0], on=["layer", "depth", "kind", "stat"])
    assert len(merged) == len(at_init) and set(merged.kind) == set(KINDS)
    np.testing.assert_allclose(merged.value_x, merged.value_y, rtol=2e-4, atol=1e-7)
    units = monitor.unit_frame()
    assert set(units.unit) == {2} and set(units.kind) == {"preact", "activation"}
    # the model is left as it was: its own train function again, no patched attribute
    assert "train_step" not in model.__dict__ and "apply_gradients" not in model.optimizer.__dict__
    assert all("call" not in layer.__dict__ for layer in model.layers)


def test_train_batch_last_smaller_batch_keeps_the_percentiles():
    # 100 samples in batches of 32: the last batch (4 samples) comes through a train function traced for a batch
    # of unknown size, where the strided quantile sample once lost its rank (the fit crashed at the percentiles).
    x, y = _data(100, 6, seed=5)
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(64, activation="relu", name="h"), keras.layers.Dense(3, name="out")]
    )
    model.compile(keras.optimizers.SGD(0.0), LOSS)  # the weights stay: each batch's tensors are known exactly
    monitor = VarianceMonitor(every=1, source="train_batch", stats=["var", "p15", "p50", "p85"])
    model.fit(x, y, batch_size=32, epochs=1, callbacks=[monitor], verbose=0, shuffle=False)
    df = monitor.to_frame()
    assert sorted(df.step.unique()) == [0, 1, 2, 3]
    assert not df.diverged.any() and np.isfinite(df.value).all()
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in model.get_layer("h").get_weights())
    for step, batch in ((0, x[:32]), (3, x[96:])):  # 32 x 64 = 2048 elements (sampled), 4 x 64 = 256 (exact)
        s = batch @ kernel + bias
        last = df[df.step == step]
        assert _get(last, "h", "preact", "var") == pytest.approx(s.var(), rel=1e-4)
        if step == 3:
            for q in (15, 50, 85):
                assert _get(last, "h", "preact", f"p{q}") == pytest.approx(np.percentile(s, q), rel=1e-4, abs=1e-6)


def test_train_batch_rejects_a_custom_train_step():
    class Custom(keras.Model):
        def train_step(self, data):
            return super().train_step(data)

    inp = keras.Input((6,))
    model = Custom(inp, keras.layers.Dense(3)(inp))
    model.compile("sgd", LOSS)
    with pytest.raises(ValueError, match="overrides it"):
        _fit(model, VarianceMonitor(source="train_batch"), steps=2)


# ---- kinds: recording a subset ----------------------------------------------------------------------------------


FORWARD = ("preact", "activation", "kernel")


def _rows(df, kinds):
    return df[df.kind.isin(kinds)].reset_index(drop=True)


def test_forward_kinds_only_without_labels_and_without_warning():
    x, y = _data(16, 6)
    model = _small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fwd = VarianceMonitor(probe=x, kinds=FORWARD).measure(model)
    assert set(fwd.kind) == set(FORWARD)
    # the same values as when every kind is recorded (with labels: the gradient pass runs too)
    full = VarianceMonitor(probe=(x, y)).measure(model)
    pd.testing.assert_frame_equal(fwd, _rows(full, FORWARD), check_exact=True)


@pytest.mark.parametrize("kinds", [("grad_preact",), ("activation", "grad_kernel"), "kernel"])
def test_any_subset_of_kinds_keeps_the_values_of_those_recorded(kinds):
    x, y = _data(16, 6)
    model = _small_model()
    full = VarianceMonitor(probe=(x, y), histograms=True, track_unit=1).measure(model)
    part = VarianceMonitor(probe=(x, y), histograms=True, track_unit=1, kinds=kinds).measure(model)
    wanted = (kinds,) if isinstance(kinds, str) else kinds
    assert set(part.kind) == set(wanted)
    pd.testing.assert_frame_equal(part, _rows(full, wanted), check_exact=True)


def test_train_batch_subset_of_kinds_keeps_the_values_of_those_recorded():
    frames = {}
    for kinds in (None, ("activation", "grad_preact")):
        keras.utils.set_random_seed(3)
        monitor = VarianceMonitor(every=2, source="train_batch", track_unit=0, kinds=kinds)
        _fit(_small_model(), monitor, steps=4)
        frames[kinds] = (monitor.to_frame(), monitor.unit_frame())
    (full, full_unit), (part, part_unit) = frames.values()
    assert set(part.kind) == {"activation", "grad_preact"} and set(part_unit.kind) == {"activation"}
    pd.testing.assert_frame_equal(part, _rows(full, ("activation", "grad_preact")), check_exact=True)
    pd.testing.assert_frame_equal(part_unit, _rows(full_unit, ("activation",)), check_exact=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kinds": ["weights"]}, r"`kinds` must be None or a non-empty subset of .* Received: kinds=\['weights'\]"),
        ({"kinds": []}, r"`kinds` must be None or a non-empty subset"),
        ({"kinds": 3}, r"`kinds` must be None or a non-empty subset"),
        ({"kinds": ["preact"], "histograms": ["kernel"]}, r"`histograms` must name recorded kinds"),
        ({"kinds": ["grad_preact"], "probe": np.zeros((4, 6), "float32")}, r"`kinds` names gradient kinds"),
    ],
)
def test_kinds_errors(kwargs, match):
    args = {"probe": (np.zeros((4, 6), "float32"), np.zeros(4))} | kwargs
    with pytest.raises(ValueError, match=match):
        VarianceMonitor(**args)


# ---- divergence, missing labels, outputs ----------------------------------------------------------------------------


def test_nan_run_is_flagged_without_crashing_fit():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="d"), keras.layers.Dense(1, name="o")])
    model.compile(keras.optimizers.SGD(1e18), "mse")
    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32") * 100
    monitor = VarianceMonitor(probe=(x[:16], np.ones((16, 1), "float32")), every=1)
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        model.fit(x, np.ones((64, 1), "float32"), batch_size=8, epochs=1, callbacks=[monitor], verbose=0)
    df = monitor.to_frame()
    assert sorted(df.step.unique()) == list(range(9))
    assert not df[df.step == 0].diverged.any()
    last = df[df.step == 8]
    assert last.diverged.all() and not np.isfinite(last[last.stat == "var"].value).all()


def test_probe_without_labels_records_forward_kinds_only():
    x, _ = _data(16, 6)
    with pytest.warns(UserWarning, match="no labels"):
        df = VarianceMonitor(probe=x).measure(_small_model())
    assert set(df.kind) == {"preact", "activation", "kernel"}


def test_save_parquet_and_csv(tmp_path):
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y), every=2)
    df = _fit(_small_model(), monitor, steps=2)
    for suffix in ("parquet", "csv"):
        path = tmp_path / "sub" / f"layers.{suffix}"
        monitor.save(path)
        back = pd.read_parquet(path) if suffix == "parquet" else pd.read_csv(path)
        assert tuple(back.columns) == COLUMNS and len(back) == len(df)
        np.testing.assert_allclose(back.value, df.value, rtol=1e-6)
        assert (back.diverged == df.diverged).all()
    assert not glob.glob(str(tmp_path / "sub" / ".tmp-*"))
    with pytest.raises(ValueError, match="must end in .parquet or .csv"):
        monitor.save(tmp_path / "layers.txt")


@pytest.mark.parametrize("source", ["probe", "train_batch"])
def test_memory_grows_by_scalars_per_record_whatever_the_batch(source):
    # Issue 3: the table grows by (layers x kinds x stats) scalars a record, histograms included (fixed bins), and
    # nothing holds a raw tensor: the stored size does not depend on the probe or batch size.
    sizes = {}
    for n in (16, 64):
        x, y = _data(n, 6)
        monitor = VarianceMonitor(probe=(x, y), every=1, histograms=True, bins=10, source=source)
        _fit(_small_model(), monitor, steps=4, batch=n)
        records = monitor._records
        assert len(records) == (5 if source == "probe" else 4)  # steps 0-4 after updates, or batches 0-3
        per_record = {vec.nbytes for *_, vec in records}
        assert len(per_record) == 1 and all(isinstance(vec, np.ndarray) for *_, vec in records)
        sizes[n] = per_record.pop()
        df = monitor.to_frame()
        assert len(df) == len(records) * len(df.drop_duplicates(["layer", "kind", "stat"]))
    assert sizes[16] == sizes[64]


def test_histograms_match_numpy_with_fixed_edges():
    keras.utils.set_random_seed(5)
    model = _mlp([16], "tanh", lambda i: keras.initializers.RandomNormal(stddev=0.5, seed=i), 8)
    x, y = _data(50, 8, seed=3)
    monitor = VarianceMonitor(probe=(x, y), histograms=["preact", "activation"], bins=8, bin_range={"preact": (-3, 3)})
    df = monitor.measure(model)
    hist = monitor.histogram_frame()
    hand = _hand(model, x, y)
    s = hand["h0"]["preact"]
    ref, edges = np.histogram(s, bins=8, range=(-3, 3))
    h = hist[(hist.layer == "h0") & (hist.kind == "preact")].sort_values("bin")
    np.testing.assert_allclose(h.value, ref / s.size, atol=1e-7)
    np.testing.assert_allclose(h.left, edges[:-1], atol=1e-6)
    np.testing.assert_allclose(h.right, edges[1:], atol=1e-6)
    # tanh outputs are binned on the activation's range [-1, 1]
    a = hist[(hist.layer == "h0") & (hist.kind == "activation")].sort_values("bin")
    ref_a, _ = np.histogram(hand["h0"]["activation"], bins=8, range=(-1, 1))
    np.testing.assert_allclose(a.value, ref_a / s.size, atol=1e-7)
    # the same fractions are the hist_<i> rows of the tidy frame
    tidy = df[(df.layer == "h0") & (df.kind == "preact") & df.stat.str.startswith("hist_")]
    np.testing.assert_allclose(tidy.value, h.value)


def test_track_unit_percentiles_match_numpy():
    keras.utils.set_random_seed(6)
    model = _mlp([12], "sigmoid", lambda i: keras.initializers.RandomNormal(stddev=1.0, seed=i), 8)
    x, y = _data(300, 8, seed=5)
    monitor = VarianceMonitor(probe=(x, y), track_unit=4)
    monitor.measure(model)
    units = monitor.unit_frame()
    s = _hand(model, x, y)["h0"]["preact"][:, 4]
    for q in (15, 50, 85):
        got = units[(units.layer == "h0") & (units.kind == "preact") & (units.stat == f"p{q}")].value.item()
        assert got == pytest.approx(np.percentile(s, q), rel=1e-5)


def test_quantile_sample_estimates_large_tensor_percentiles():
    model = _mlp([2000], None, lambda i: keras.initializers.RandomNormal(stddev=1.0, seed=i), 4, bias=False)
    x, y = _data(256, 4, seed=9)  # preact has 512,000 elements, sampled at 512 (the default) or 2048
    s = _hand(model, x, y)["h0"]["preact"]
    sd = float(s.std())
    # The standard error of a 15/50/85th percentile of m Gaussian samples is <= 0.068 sd at m = 512, 0.035 sd at
    # 2048: 3 of them.
    for sample, tol in ((None, 0.2), (2048, 0.1)):
        kwargs = {} if sample is None else {"quantile_sample": sample}
        df = VarianceMonitor(probe=(x, y), layers=["h0"], **kwargs).measure(model)
        for q in (15, 50, 85):
            assert _get(df, "h0", "preact", f"p{q}") == pytest.approx(np.percentile(s, q), abs=tol * sd)
    exact = VarianceMonitor(probe=(x, y), layers=["h0"], quantile_sample=None).measure(model)
    assert _get(exact, "h0", "preact", "p85") == pytest.approx(np.percentile(s, 85), rel=1e-4)


def test_dead_units_counted():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10, activation="relu", name="d")])
    model.compile("sgd", "mse")
    w, b = model.get_layer("d").get_weights()
    b[:3] = -1e3  # three units are never positive on the probe
    model.get_layer("d").set_weights([w, b])
    x = np.random.default_rng(0).standard_normal((32, 4)).astype("float32")
    df = VarianceMonitor(probe=(x, np.zeros((32, 10), "float32"))).measure(model)
    assert _get(df, "d", "activation", "dead") == pytest.approx(0.3)


def test_tensorboard_scalars_written_or_skipped_cleanly(tmp_path):
    x, y = _data(16, 6)
    monitor = VarianceMonitor(probe=(x, y), every=2, stats=["var"], log_dir=tmp_path / "tb")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.warns(UserWarning, match="TensorBoard is not installed"):
            df = _fit(_small_model(), monitor, steps=2)
        assert len(df) > 0 and not (tmp_path / "tb").exists()
    else:
        _fit(_small_model(), monitor, steps=2)
        assert glob.glob(str(tmp_path / "tb" / "events.out.tfevents.*"))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every": 0}, "`every` must be"),
        ({"every": "sometimes"}, "`every` must be"),
        ({"source": "gradients"}, "`source` must be"),
        ({"probe": None}, "`probe` is required"),
        ({"stats": ["mean", "kurtosis"]}, "`stats` must be"),
        ({"histograms": ["weights"]}, "`histograms` must be"),
        ({"bins": 0}, "`bins` must be"),
        ({"bin_range": (1, 0)}, "`bin_range` must be"),
        ({"track_unit": -1}, "`track_unit` must be"),
        ({"quantile_sample": 1}, "`quantile_sample` must be"),
    ],
)
def test_argument_errors(kwargs, match):
    args = {"probe": (np.zeros((4, 6), "float32"), np.zeros(4))} | kwargs
    with pytest.raises(ValueError, match=match):
        VarianceMonitor(**args)


def test_empty_table_has_the_contract_columns():
    monitor = VarianceMonitor(probe=np.zeros((4, 6), "float32"))
    assert tuple(monitor.to_frame().columns) == COLUMNS and len(monitor.to_frame()) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.histogram_frame().empty and monitor.unit_frame().empty
