"""The monitor's acceptance checks, written backend-neutral (Keras, numpy): each `check_*` raises AssertionError when
it fails. tests/test_monitor_backends.py runs them in its own process under TensorFlow and, for JAX, all at once in
one subprocess (Keras picks its backend at import):

    KERAS_BACKEND=jax python tests/monitor_backend_checks.py OUT_DIR   # OUT_DIR/results.json, OUT_DIR/*.csv

results.json maps each check's name to null (passed) or its traceback; `frames(OUT_DIR)` writes the monitor's
records of fixed (numpy) weights, which the test compares with TensorFlow's numbers. Small nets: the whole JAX run
is a few seconds of work plus compilation.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
import warnings
from pathlib import Path

import keras
import numpy as np

from keras_initkit import GlorotFanIn, He, compare, lsuv, predict_variance, time_statistics
from keras_initkit.doctor import diagnose
from keras_initkit.monitor import COLUMNS, KINDS, STATS, VarianceMonitor

README = Path(__file__).resolve().parents[1] / "README.md"


def _loss(from_logits=True):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _data(n, d, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype("float32"), rng.integers(0, classes, n)


def _mlp(widths, activation, init, d_in, classes=3, bias=True, lr=0.05):
    layers = [keras.Input((d_in,))]
    layers += [
        keras.layers.Dense(w, activation=activation, use_bias=bias, kernel_initializer=init(i), name=f"h{i}")
        for i, w in enumerate(widths)
    ]
    layers.append(keras.layers.Dense(classes, name="out", kernel_initializer=init(len(widths)), use_bias=bias))
    model = keras.Sequential(layers)
    model.compile(keras.optimizers.SGD(lr), _loss())
    return model


def _numpy_weights(model, seed, scale=0.6):
    """Set every weight from numpy: the same numbers under every backend (Keras' own RNG differs per backend)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([(rng.standard_normal(w.shape) * scale).astype("float32") for w in layer.get_weights()])


def _get(df, layer, kind, stat):
    rows = df[(df.layer == layer) & (df.kind == kind) & (df.stat == stat)]
    assert len(rows) == 1, (layer, kind, stat, len(rows))
    return float(rows.value.iloc[0])


# ---- theory: deep nets at initialization -------------------------------------------------------------------------


def check_deep_linear_keeps_variance():
    depth, width = 20, 256
    model = _mlp([width] * depth, None, lambda i: GlorotFanIn(seed=i), width, bias=False)
    x, y = _data(512, width)
    df = VarianceMonitor(probe=(x, y), stats=["var"]).measure(model)
    var = [_get(df, f"h{i}", "preact", "var") for i in range(depth)]
    assert np.allclose(var, 1.0, rtol=0.10), np.round(var, 3)


def _relu_ratio(init, ratio, tolerance):
    # He et al. Eq 10: Var(s_l+1) = n Var(W) E[relu(s_l)^2] = n Var(W) Var(s_l) / 2. Width 1024 keeps the finite-width
    # fluctuation of one layer's ratio near 0.015 (0.5 scale), so +-0.05 is about 3 standard deviations.
    depth, width = 6, 1024
    model = _mlp([width] * depth, "relu", lambda i: init(seed=i), width, bias=False)
    x, y = _data(512, width, seed=1)
    df = VarianceMonitor(probe=(x, y), stats=["var"], layers="h.*").measure(model)
    var = np.array([_get(df, f"h{i}", "preact", "var") for i in range(depth)])
    ratios = var[1:] / var[:-1]
    assert np.allclose(ratios, ratio, atol=tolerance), np.round(ratios, 3)
    geometric = (var[-1] / var[0]) ** (1 / (depth - 1))
    assert abs(geometric - ratio) <= tolerance / 2, (geometric, ratio)


def check_relu_ratio_xavier_fan_in_halves():
    _relu_ratio(GlorotFanIn, 0.5, 0.05)


def check_relu_ratio_he_keeps():
    _relu_ratio(He, 1.0, 0.10)


# ---- exactness: against numpy by hand, and against Keras' own gradient --------------------------------------------


def _hand(model, x, y, activation):
    """s, f(s), dC/ds, dC/df(s), W, dC/dW of every Dense layer, forward and backward in float64 numpy (softmax
    cross-entropy from logits, mean over the batch)."""
    act = {"tanh": (np.tanh, lambda s: 1 - np.tanh(s) ** 2), "relu": (lambda s: np.maximum(s, 0), lambda s: s > 0)}
    h, out = np.asarray(x, np.float64), {}
    for layer in model.layers:
        w, b = (np.asarray(v, np.float64) for v in layer.get_weights())
        s = h @ w + b
        f, df = act[activation] if layer.name != "out" else (lambda s: s, lambda s: np.ones_like(s))
        out[layer.name] = {"preact": s, "activation": f(s), "kernel": w, "_in": h, "_df": df(s)}
        h = f(s)
    p = np.exp(h - h.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(p.shape[1])[y]) / len(y)  # dC/d logits
    for layer in reversed(model.layers):
        t = out[layer.name]
        t["grad_activation"] = grad
        t["grad_preact"] = grad * t["_df"]
        t["grad_kernel"] = t["_in"].T @ t["grad_preact"]
        grad = t["grad_preact"] @ t["kernel"].T
    return {n: {k: v for k, v in t.items() if not k.startswith("_")} for n, t in out.items()}


def _numpy_stats(x, kind, activation):
    out = {"mean": x.mean(), "var": x.var(), "std": x.std()}
    out.update({f"p{q}": np.percentile(x, q) for q in (15, 50, 85)})
    if kind == "activation" and activation == "relu":
        out["dead"] = np.mean(np.all(x.reshape(-1, x.shape[-1]) == 0, axis=0))
    if kind == "activation" and activation == "tanh":
        out["saturated"] = np.mean(np.abs(x) > 0.99)
    return out


def _every_kind_and_stat(activation):
    model = _mlp([24, 16], activation, lambda i: "zeros", 10)
    _numpy_weights(model, seed=3)
    x, y = _data(64, 10, seed=2)
    df = VarianceMonitor(probe=(x, y), quantile_sample=None).measure(model)
    assert tuple(df.columns) == COLUMNS and set(df.kind) == set(KINDS) and not df.diverged.any()
    checked = 0
    for layer, tensors in _hand(model, x, y, activation).items():
        act = activation if layer != "out" else "linear"
        for kind, value in tensors.items():
            for stat, ref in _numpy_stats(value, kind, act).items():
                got = _get(df, layer, kind, stat)
                tol = 1e-6 * max(1.0, float(np.abs(value).max()))
                assert abs(got - ref) <= 2e-3 * abs(ref) + tol, (layer, kind, stat, got, ref)
                checked += 1
    assert checked >= 3 * 6 * 6
    special = {"tanh": "saturated", "relu": "dead"}[activation]
    assert set(df[df.kind == "activation"].stat) == set(STATS) - {"saturated", "dead"} | {special}


def check_every_kind_and_stat_equal_numpy_tanh():
    _every_kind_and_stat("tanh")


def check_every_kind_and_stat_equal_numpy_relu():
    _every_kind_and_stat("relu")


def check_gradients_are_keras_own():
    """dC/dW as recorded = the gradient Keras' own train step applies: one SGD step of rate lr on the probe batch
    moves each kernel by -lr dC/dW."""
    lr = 100.0
    model = _mlp([16, 8], "tanh", lambda i: "zeros", 6, lr=lr)
    _numpy_weights(model, seed=4, scale=0.5)
    x, y = _data(32, 6, seed=5)
    df = VarianceMonitor(probe=(x, y), quantile_sample=None, stats=["mean", "var", "p15", "p85"]).measure(model)
    before = {layer.name: np.asarray(layer.get_weights()[0], np.float64) for layer in model.layers}
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    for layer in model.layers:
        g = (before[layer.name] - np.asarray(layer.get_weights()[0], np.float64)) / lr
        for stat, ref in (("mean", g.mean()), ("var", g.var()), ("p15", np.percentile(g, 15))):
            got = _get(df, layer.name, "grad_kernel", stat)
            assert abs(got - ref) <= 1e-3 * abs(ref) + 1e-5 * np.abs(g).max(), (layer.name, stat, got, ref)


def check_fused_activation_equals_unfused():
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
    _numpy_weights(fused, seed=6)
    split.get_layer("d").set_weights(fused.get_layer("d").get_weights())
    split.get_layer("out").set_weights(fused.get_layer("out").get_weights())
    for m in (fused, split):
        m.compile("sgd", _loss())
    x, y = _data(40, 12, seed=4)
    a = VarianceMonitor(probe=(x, y)).measure(fused)
    b = VarianceMonitor(probe=(x, y)).measure(split)
    assert _get(b, "d", "activation", "var") == _get(b, "d", "preact", "var")
    for kind in KINDS[:4]:
        stats = set(a[(a.layer == "d") & (a.kind == kind)].stat)
        assert stats == set(b[(b.layer == "act") & (b.kind == kind)].stat)
        assert stats == set(STATS) - ({"dead"} if kind == "activation" else {"dead", "saturated"})
        for stat in stats:
            u, v = _get(a, "d", kind, stat), _get(b, "act", kind, stat)
            assert abs(u - v) <= 1e-5 * abs(v) + 1e-9, (kind, stat, u, v)


def check_nan_run_is_flagged_without_crashing_fit():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="d"), keras.layers.Dense(1, name="o")])
    model.compile(keras.optimizers.SGD(1e18), "mse")
    x = np.random.default_rng(0).standard_normal((64, 6)).astype("float32") * 100
    monitor = VarianceMonitor(probe=(x[:16], np.ones((16, 1), "float32")), every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.ones((64, 1), "float32"), batch_size=8, epochs=1, callbacks=[monitor], verbose=0)
    assert any("NaN/Inf" in str(w.message) for w in caught), [str(w.message) for w in caught]
    df = monitor.to_frame()
    assert sorted(df.step.unique()) == list(range(9))
    assert not df[df.step == 0].diverged.any()
    last = df[df.step == 8]
    assert last.diverged.all() and not np.isfinite(last[last.stat == "var"].value).all()


def check_variance_exact_for_large_mean_and_scale():
    """Var of N(1e4, 1) and N(0, 1e18) in float32 to 1e-6 relative (TensorFlow: float64 sums; JAX: scaled, corrected
    float32 sums), and a NaN/Inf element flags the tensor as diverged."""
    from keras_initkit import backends
    from keras_initkit.stats import TensorView

    ops = backends.ops()
    rng = np.random.default_rng(0)
    for loc, scale in ((1e4, 1.0), (0.0, 1e18), (0.0, 1e-15), (1e3, 1e-2)):
        x = (rng.standard_normal(50_000) * scale + loc).astype("float32")
        view = TensorView(ops.convert_to_tensor(x), kind="preact", activation=None, unit_axis=-1, quantile_sample=None)
        ref = np.asarray(x, np.float64).var()
        assert abs(float(view.var) / ref - 1) < 1e-6 and not bool(view.diverged), (loc, scale, float(view.var), ref)
    for bad in (np.nan, np.inf):
        x = rng.standard_normal(100).astype("float32")
        x[7] = bad
        view = TensorView(ops.convert_to_tensor(x), kind="preact", activation=None, unit_axis=-1, quantile_sample=None)
        assert bool(view.diverged), bad


# ---- the rest of the toolkit on top of the monitor ------------------------------------------------------------------


def check_theory_compare_within_ten_percent():
    model = _mlp([256] * 5, "relu", lambda i: He(seed=i), 64)
    x, y = _data(512, 64, seed=8)
    predicted = predict_variance(model, input_var=1.0)
    table = compare(VarianceMonitor(probe=(x, y)).measure(model), predicted).query("kind == 'preact'")
    hidden = table[table.layer != "out"]  # the 3-unit output's variance is itself a 3-sample estimate
    assert len(hidden) == 5 and hidden.ratio.between(0.9, 1.1).all(), table


def check_lsuv_and_doctor():
    model = _mlp([64] * 8, "tanh", lambda i: keras.initializers.RandomNormal(stddev=0.01, seed=i), 32)
    x, y = _data(256, 32, seed=9)
    before, _ = diagnose(model, x, y)
    trace = lsuv(model, x, seed=0)
    after, _ = diagnose(model, x, y)
    assert (before.verdict == "vanishing").sum() > 5, before
    assert (after.verdict == "ok").all(), after
    assert len(trace) and set(trace.layer) >= {f"h{i}" for i in range(8)}


def check_recurrent_time_frame():
    model = _rnn_model(lstm=False)
    x, y = _data(16, 5 * 3, seed=10)
    monitor = VarianceMonitor(probe=(x.reshape(16, 5, 3), y), every=2)
    model.fit(x.reshape(16, 5, 3), y, batch_size=8, epochs=2, verbose=0, callbacks=[monitor])
    tf_ = monitor.time_frame()
    assert sorted(tf_.step.unique()) == [0, 2, 4]
    assert set(tf_.kind) == {"hidden", "grad_hidden"} and set(tf_.layer) == {"rnn", "rnn2"}
    assert np.isfinite(tf_.value).all() and len(tf_) == 3 * 2 * 2 * 3 * 5
    # the last record (at the final weights) is time_statistics' measurement, the same probe pass
    last = tf_[tf_.step == 4].drop(columns="step")
    ref = time_statistics(model, x.reshape(16, 5, 3), y)
    both = last.merge(ref, on=["layer", "t", "lag", "kind", "stat"], suffixes=("", "_ref"))
    assert len(both) == len(ref) == len(last)
    np.testing.assert_allclose(both["value"], both["value_ref"], rtol=1e-5, atol=1e-12)


def check_training_is_bit_identical_with_the_monitor():
    """An observer never changes what it observes: fit with the monitor recording at every step (a softmax output
    with a cross-entropy on probabilities, BatchNormalization, a recurrent layer) gives the same weights, bit for
    bit, as fit without it."""
    x, y = _data(48, 12, seed=15)
    x = x.reshape(48, 4, 3)
    weights = []
    for attach in (False, True):
        model = keras.Sequential(
            [
                keras.Input((4, 3)),
                keras.layers.SimpleRNN(8, return_sequences=True, name="rnn"),
                keras.layers.Flatten(),
                keras.layers.Dense(16, activation="tanh", name="d1"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.Dense(3, activation="softmax", name="out"),
            ]
        )
        _numpy_weights(model, seed=16, scale=0.5)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), _loss(from_logits=False))
        callbacks = [VarianceMonitor(probe=(x[:16], y[:16]), every=1)] if attach else []
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
        if attach:
            assert sorted(callbacks[0].to_frame().step.unique()) == list(range(7))
        weights.append([np.asarray(w) for w in model.get_weights()])
    for a, b in zip(*weights, strict=True):
        assert np.array_equal(a, b), np.abs(a - b).max()


def check_train_batch_where_the_backend_allows():
    x, y = _data(40, 6)
    model = _mlp([8], "relu", lambda i: "glorot_uniform", 6)
    if keras.backend.backend() == "tensorflow":
        monitor = VarianceMonitor(source="train_batch", every=1, stats=["var"])
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
        assert sorted(monitor.to_frame().step.unique()) == [0, 1, 2]
        return
    try:
        VarianceMonitor(source="train_batch")
    except ValueError as e:
        assert "train_batch" in str(e) and keras.backend.backend() in str(e), e
    else:
        raise AssertionError("source='train_batch' was accepted under " + keras.backend.backend())


def check_readme_examples():
    """The README's examples of the initializers, the monitor and the theory, as written, in a scratch folder (the
    current directory). Its doctor/lsuv example is `check_lsuv_and_doctor`'s, on a smaller net."""
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text[: text.index("## Fix a model")], flags=re.S)
    assert len(blocks) == 3 and "VarianceMonitor(" in blocks[1], "README lost its examples"
    import matplotlib

    matplotlib.use("Agg")
    exec(compile("\n".join(blocks), "README.md", "exec"), {"__name__": "readme"})
    for name in ("m.keras", "layers.parquet", "variance.png"):
        assert Path(name).stat().st_size > 0, name


CHECKS = {name[len("check_") :]: fn for name, fn in sorted(globals().items()) if name.startswith("check_")}


# ---- numbers to compare across backends ------------------------------------------------------------------------------


def _rnn_model(lstm=True):
    top = keras.layers.LSTM(4, name="lstm") if lstm else keras.layers.SimpleRNN(4, name="rnn2")
    model = keras.Sequential(
        [
            keras.Input((5, 3)),
            keras.layers.SimpleRNN(6, return_sequences=True, name="rnn"),
            top,
            keras.layers.Dense(3, name="out"),
        ]
    )
    _numpy_weights(model, seed=11, scale=0.5)
    model.compile(keras.optimizers.SGD(0.1), _loss())
    return model


def frames(out: Path) -> None:
    """The monitor's records of fixed weights and probes, as CSV in `out`: mlp.csv (every kind and stat, histograms,
    a tracked unit; a fused tanh, BatchNormalization, ReLU, a softmax output with a cross-entropy on probabilities) and
    rnn.csv / rnn_time.csv (a SimpleRNN and an LSTM: the table and the per-time-step table) and rnn_timestats.csv
    (`time_statistics` of that model, with a loss given)."""
    out = Path(out)
    model = keras.Sequential(
        [
            keras.Input((10,)),
            keras.layers.Dense(32, activation="tanh", name="d1"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(name="r"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    _numpy_weights(model, seed=12, scale=0.7)
    model.compile(keras.optimizers.SGD(0.1), _loss(from_logits=False))
    x, y = _data(64, 10, seed=13)
    monitor = VarianceMonitor(probe=(x, y), quantile_sample=None, histograms=True, bins=8, track_unit=1)
    monitor.measure(model).to_csv(out / "mlp.csv", index=False)
    monitor.histogram_frame().to_csv(out / "mlp_hist.csv", index=False)
    monitor.unit_frame().to_csv(out / "mlp_unit.csv", index=False)
    rnn = _rnn_model()
    x, y = _data(16, 15, seed=14)
    monitor = VarianceMonitor(probe=(x.reshape(16, 5, 3), y), quantile_sample=None)
    monitor.measure(rnn).to_csv(out / "rnn.csv", index=False)
    monitor.time_frame().to_csv(out / "rnn_time.csv", index=False)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    time_statistics(rnn, x.reshape(16, 5, 3), y, loss=loss, stats=("mean", "var", "norm", "rms")).to_csv(
        out / "rnn_timestats.csv", index=False
    )


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # the README writes its files here
    results, seconds = {}, {}
    for name, fn in [*CHECKS.items(), ("frames", lambda: frames(out))]:
        start = time.perf_counter()
        try:
            fn()
            results[name] = None
        except Exception:  # noqa: BLE001 - every check is reported, none stops the others
            results[name] = traceback.format_exc()
        seconds[name] = round(time.perf_counter() - start, 2)
    (out / "results.json").write_text(
        json.dumps({"backend": keras.backend.backend(), "results": results, "seconds": seconds})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
