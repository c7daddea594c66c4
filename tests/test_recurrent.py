"""Gradients through time against exact references: a linear orthogonal RNN, hand GradientTapes on a manually
unrolled cell, the layers' own return_sequences outputs, IRNN, and the mean-field chi of a wide tanh RNN."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from keras_initkit.recurrent import (
    TIME_COLUMNS,
    MeanField,
    TimeTaps,
    mean_field_chi,
    recurrent_targets,
    time_statistics,
)

T, D, B = 12, 5, 8


def _xy(b=B, t=T, d=D, seed=0, nonneg=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, t, d)).astype("float32")
    return (np.abs(x) if nonneg else x), rng.standard_normal((b, 1)).astype("float32")


def _model(rnn, t=T, d=D, head=1):
    model = keras.Sequential([keras.Input((t, d)), rnn, keras.layers.Dense(head, name="head")])
    model.compile(loss="mse")
    return model


def _series(df, kind, stat, layer=None):
    rows = df[(df.kind == kind) & (df.stat == stat) & ((df.layer == layer) if layer else True)]
    return rows.sort_values("t").value.to_numpy()


def _stats_of(seq, w=None):
    """Reference per-step stats (numpy, float64) of (batch, T, units), over the examples with w == 1."""
    seq = np.asarray(seq, dtype=np.float64)
    w = np.ones(seq.shape[:2]) if w is None else np.asarray(w, dtype=np.float64)
    cnt = w.sum(0)
    mean = (seq.mean(-1) * w).sum(0) / cnt
    var = (((seq - mean[None, :, None]) ** 2).mean(-1) * w).sum(0) / cnt
    norm = (np.linalg.norm(seq, axis=-1) * w).sum(0) / cnt
    return {"mean": mean, "var": var, "norm": norm}


def _unrolled_grads(cell, x, y, head, go_backwards=False):
    """dC/dh_t by hand: the cell stepped in Python, each h_t watched; loss = mse(head(h_{T-1}), y)."""
    xs = tf.convert_to_tensor(x)
    states = [tf.zeros((x.shape[0], cell.units))] * (2 if isinstance(cell, keras.layers.LSTMCell) else 1)
    order = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
    hs = []
    with tf.GradientTape(persistent=True) as tape:
        for i in order:
            h, states = cell(xs[:, i], states)
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            tape.watch(h)
            states[0] = h
            hs.append(h)
        loss = keras.losses.MeanSquaredError()(y, head(hs[-1]))
    return np.stack([tape.gradient(loss, h).numpy() for h in hs], 1), np.stack([h.numpy() for h in hs], 1)


# ----------------------------------------------------------------------------------------------------------------
# Exact references.


def test_linear_orthogonal_rnn_scales_by_g_per_step():
    # h_t = W h_{t-1} + U x_t, W = g * orthogonal, loss on the last output: dC/dh_{T-1-k} = (W^T)^k dC/dh_{T-1},
    # and an orthogonal matrix keeps every norm, so ||dC/dh_{T-1-k}|| = g^k ||dC/dh_{T-1}|| per example.
    g = 0.8
    rnn = keras.layers.SimpleRNN(
        16, activation=None, use_bias=False, recurrent_initializer=keras.initializers.Orthogonal(gain=g, seed=1)
    )
    model = _model(rnn, t=20)
    x, y = _xy(t=20)
    df = time_statistics(model, x, y)
    assert tuple(df.columns) == TIME_COLUMNS
    grad = df[(df.kind == "grad_hidden") & (df.stat == "norm")].set_index("lag").value.sort_index()
    np.testing.assert_allclose(grad.to_numpy() / grad.loc[0], g ** np.arange(20), rtol=1e-4)
    assert (df.lag == 19 - df.t).all()


@pytest.mark.parametrize(("kind", "go_backwards"), [("simple", False), ("lstm", True), ("gru", False)])
def test_grad_hidden_equals_a_hand_unrolled_tape(kind, go_backwards):
    keras.utils.set_random_seed(3)
    layer = {"simple": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[kind]
    rnn = layer(6, go_backwards=go_backwards)
    model = _model(rnn)
    x, y = _xy()
    df = time_statistics(model, x, y, stats=("mean", "var", "norm"))
    grads, hs = _unrolled_grads(rnn.cell, x, y, model.get_layer("head"), go_backwards)
    ref_g, ref_h = _stats_of(grads), _stats_of(hs)
    for stat in ("mean", "var", "norm"):
        np.testing.assert_allclose(_series(df, "grad_hidden", stat), ref_g[stat], rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(_series(df, "hidden", stat), ref_h[stat], rtol=1e-5, atol=1e-7)


def test_last_step_gradient_is_the_gradient_wrt_the_layer_output():
    keras.utils.set_random_seed(4)
    inp = keras.Input((T, D))
    rnn = keras.layers.LSTM(7, name="lstm")
    model = keras.Model(inp, keras.layers.Dense(2, name="head")(rnn(inp)))
    model.compile(loss="mse")
    x, _ = _xy()
    y = np.random.default_rng(1).standard_normal((B, 2)).astype("float32")
    df = time_statistics(model, x, y)
    h = tf.convert_to_tensor(rnn(x))
    with tf.GradientTape() as tape:
        tape.watch(h)
        loss = model.compute_loss(x=x, y=y, y_pred=model.get_layer("head")(h))
    ref = _stats_of(tape.gradient(loss, h).numpy()[:, None, :])
    last = df[(df.kind == "grad_hidden") & (df.lag == 0)].set_index("stat").value
    for stat in ("mean", "var", "norm"):
        np.testing.assert_allclose(last[stat], ref[stat][0], rtol=1e-5)


@pytest.mark.parametrize("layer", [keras.layers.SimpleRNN, keras.layers.GRU])
def test_hidden_equals_the_return_sequences_outputs_and_output_is_unchanged(layer):
    keras.utils.set_random_seed(5)
    rnn = layer(9, return_sequences=True)
    model = keras.Sequential([keras.Input((T, D)), rnn, keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    model.compile(loss="mse")
    x, y = _xy()
    df = time_statistics(model, x, y)
    ref = _stats_of(rnn(x).numpy())
    for stat in ("mean", "var", "norm"):
        np.testing.assert_allclose(_series(df, "hidden", stat), ref[stat], rtol=1e-6, atol=1e-8)
    with TimeTaps(recurrent_targets(model)) as taps:
        y_taps = model(x).numpy()
    np.testing.assert_array_equal(y_taps, model(x).numpy())  # bit-identical on CPU (allclose 1e-6 on a GPU)
    assert "inner_loop" not in rnn.__dict__ and "call" not in rnn.cell.__dict__ and rnn.return_sequences
    assert taps.taps[0].hidden.shape == (B, T, 9)


def test_masked_steps_carry_the_state_and_are_left_out():
    # Example 1 has its last 4 steps masked (post-padding): with a summed loss its gradients are those of its
    # unpadded prefix; the statistics of a step are over the examples not masked there.
    keras.utils.set_random_seed(6)
    rnn = keras.layers.SimpleRNN(5, name="rnn")
    model = keras.Sequential([keras.Input((T, D)), keras.layers.Masking(0.0), rnn, keras.layers.Dense(1)])
    loss = keras.losses.MeanSquaredError(reduction="sum")
    x, y = _xy(b=2)
    x[1, T - 4 :] = 0.0
    df = time_statistics(model, x, y, loss=loss)
    full = time_statistics(model, x[:1], y[:1], loss=loss)
    short = time_statistics(model, x[1:, : T - 4], y[1:], loss=loss)
    for kind in ("hidden", "grad_hidden"):
        got, a, b = _series(df, kind, "norm"), _series(full, kind, "norm"), _series(short, kind, "norm")
        np.testing.assert_allclose(got[T - 4 :], a[T - 4 :], rtol=1e-5)
        np.testing.assert_allclose(got[: T - 4], (a[: T - 4] + b) / 2, rtol=1e-5)
    # every example masked at one step: NaN there
    x[:, 3] = 0.0
    with TimeTaps(recurrent_targets(model)) as taps:
        model(x)
    vals = taps.values(None, ("norm",), kinds=("hidden",))
    assert list(vals) == [("rnn", "hidden")] and np.isnan(vals[("rnn", "hidden")][0].numpy()[3])


def test_bidirectional_both_directions_nested_and_functional():
    keras.utils.set_random_seed(7)
    bi = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True, name="lstm"), name="bidirectional")
    inner = keras.Sequential([keras.Input((T, D)), bi], name="encoder")
    inp = keras.Input((T, D))
    out = keras.layers.Dense(1)(keras.layers.GRU(3, name="gru")(inner(inp)))
    model = keras.Model(inp, out)
    model.compile(loss="mse")
    x, y = _xy()
    df = time_statistics(model, x, y)
    names = ["bidirectional/forward_lstm", "bidirectional/backward_lstm", "gru"]
    assert list(dict.fromkeys(df.layer)) == names
    assert np.isfinite(df.value).all() and len(df) == 3 * 2 * 3 * T
    # the backward direction in processing order: its own outputs as it returns them
    for layer, name in ((bi.forward_layer, names[0]), (bi.backward_layer, names[1])):
        ref = _stats_of(layer(x).numpy())
        np.testing.assert_allclose(_series(df, "hidden", "norm", name), ref["norm"], rtol=1e-5)
    assert [t.name for t in recurrent_targets(model, ["bidirectional"])] == names[:2]
    assert [t.name for t in recurrent_targets(model, ".*backward.*|gru")] == names[1:]
    with TimeTaps(recurrent_targets(model)):
        y_taps = model(x).numpy()
    np.testing.assert_allclose(y_taps, model(x).numpy(), rtol=0, atol=1e-6)


def test_rnn_of_a_cell_and_stacked_cells():
    keras.utils.set_random_seed(8)
    stacked = keras.layers.RNN([keras.layers.GRUCell(4), keras.layers.SimpleRNNCell(6)], name="stacked")
    model = _model(stacked)
    x, y = _xy()
    df = time_statistics(model, x, y)
    with tf.GradientTape() as tape:
        h = stacked(x)
        tape.watch(h)
        loss = model.compute_loss(x=x, y=y, y_pred=model.get_layer("head")(h))
    np.testing.assert_allclose(_series(df, "hidden", "norm")[-1], _stats_of(h.numpy()[:, None])["norm"][0], rtol=1e-6)
    g = _series(df, "grad_hidden", "norm")
    np.testing.assert_allclose(g[-1], _stats_of(tape.gradient(loss, h).numpy()[:, None])["norm"][0], rtol=1e-5)
    assert np.all(g[:-1] > 0)  # reaches earlier steps through the top cell's state


# ----------------------------------------------------------------------------------------------------------------
# Qualitative behaviour.


def test_lstm_with_a_large_forget_bias_keeps_gradients_longer_than_tanh():
    keras.utils.set_random_seed(9)
    t = 40
    x, y = _xy(t=t, b=16)
    ratio = {}
    for name in ("rnn", "lstm", "gru"):
        layer = keras.layers.SimpleRNN(32) if name == "rnn" else getattr(keras.layers, name.upper())(32)
        model = _model(layer, t=t)
        if name == "lstm":
            bias = layer.cell.bias.numpy()
            bias[32:64] = 5.0  # forget gate: sigmoid(5) = 0.993
            layer.cell.bias.assign(bias)
        g = _series(time_statistics(model, x, y, stats=("norm",), kinds=("grad_hidden",)), "grad_hidden", "norm")
        assert np.isfinite(g).all() and (g > 0).all()
        ratio[name] = g[0] / g[-1]  # lag T-1 over lag 0
    assert ratio["lstm"] > 100 * ratio["rnn"], ratio


def test_irnn_keeps_the_gradient_norm():
    # IRNN (Le et al. 2015): relu, identity recurrent kernel, zero bias. With non-negative inputs and kernel every
    # pre-activation is > 0, so relu' = 1 and dC/dh_t = dC/dh_{T-1} at every step.
    rnn = keras.layers.SimpleRNN(
        16,
        activation="relu",
        recurrent_initializer=keras.initializers.Identity(),
        kernel_initializer=keras.initializers.RandomUniform(0.0, 0.1, seed=2),
    )
    model = _model(rnn, t=30)
    x, y = _xy(t=30, nonneg=True)
    g = _series(time_statistics(model, x, y, stats=("norm",)), "grad_hidden", "norm")
    np.testing.assert_allclose(g[-2] / g[0], 1.0, rtol=1e-5)  # lag 1 vs lag T-1
    np.testing.assert_allclose(g / g[-1], 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Theory.


def test_mean_field_chi_matches_a_wide_tanh_rnn_at_init():
    # n = 512, W = sqrt(sigma_w^2) * orthogonal, U ~ N(0, 1 / d): measured per-step factor of E||dC/dh||^2 over
    # lags 0-29 (steps 20-49, q_t at its fixed point) against chi. Measured: 0.554 vs chi 0.556 (seeds 0, 1).
    sigma_w2, n, t, d = 1.5, 512, 50, 32
    keras.utils.set_random_seed(0)
    rnn = keras.layers.SimpleRNN(
        n,
        kernel_initializer=keras.initializers.RandomNormal(stddev=1 / np.sqrt(d)),
        recurrent_initializer=keras.initializers.Orthogonal(gain=np.sqrt(sigma_w2)),
    )
    model = _model(rnn, t=t, d=d)
    x, y = _xy(b=64, t=t, d=d)
    df = time_statistics(model, x, y, stats=("rms", "var"))
    mf = mean_field_chi("tanh", sigma_w2, sigma_u2=1.0, input_var=1.0)
    g = df[(df.kind == "grad_hidden") & (df.stat == "rms")].set_index("lag").value
    lags = np.arange(30)
    rate = np.exp(np.polyfit(lags, np.log(g.loc[lags].to_numpy() ** 2), 1)[0])
    assert rate == pytest.approx(mf.chi, rel=0.02)
    h_var = df[(df.kind == "hidden") & (df.stat == "var") & (df.lag < 30)].value.mean()
    assert h_var == pytest.approx((mf.q_star - 1.0) / sigma_w2, rel=0.03)  # E[tanh(z)^2] at q*
    np.testing.assert_allclose(mf.decay([0, 2]), [1.0, mf.chi])


def test_mean_field_chi_fixed_point_and_edges():
    mf = mean_field_chi("tanh", 1.0)
    assert isinstance(mf, MeanField) and 0 < mf.chi < 1
    z, w = np.polynomial.hermite_e.hermegauss(80)  # an independent quadrature of E[g(z)], z ~ N(0, 1)
    w = w / w.sum()
    assert mf.q_star == pytest.approx(1.0 + w @ np.tanh(np.sqrt(mf.q_star) * z) ** 2, rel=1e-7)
    assert mf.chi == pytest.approx(w @ np.cosh(np.sqrt(mf.q_star) * z) ** -4, rel=1e-5)  # f' by a difference
    # linear: q* = drive / (1 - sigma_w^2), chi = sigma_w^2
    lin = mean_field_chi("linear", 0.5, sigma_u2=2.0, input_var=0.5, sigma_b2=0.5)
    assert lin.q_star == pytest.approx(3.0, rel=1e-9) and lin.chi == pytest.approx(0.5, rel=1e-9)
    with pytest.raises(ValueError, match="did not converge"):
        mean_field_chi("linear", 1.0, max_iter=50)
    for kwargs, arg in (({"sigma_w2": -1.0}, "sigma_w2"), ({"input_var": float("nan")}, "input_var")):
        with pytest.raises(ValueError, match=f"`{arg}` must be a finite number >= 0"):
            mean_field_chi("tanh", **{"sigma_w2": 1.0, **kwargs})
    with pytest.raises(ValueError, match="must be > 0"):
        mean_field_chi("tanh", 1.0, sigma_u2=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Model kinds and errors.


class RecurrentNet(keras.Model):
    def __init__(self, spare=False):
        super().__init__()
        self.head = keras.layers.Dense(1)
        self.rnn = keras.layers.GRU(4, name="gru")
        self.spare = keras.layers.LSTM(2, name="spare") if spare else None  # never called
        if spare:
            self.spare.build((None, T, D))

    def call(self, x):
        return self.head(self.rnn(x))


def test_subclassed_model_and_errors():
    model = RecurrentNet()
    x, y = _xy()
    model(x)
    model.compile(loss="mse")
    df = time_statistics(model, x, y, stats=["norm"])
    assert set(df.layer) == {"gru"} and len(df) == 2 * T and np.isfinite(df.value).all()
    plain = keras.Sequential([keras.Input((T, D)), keras.layers.SimpleRNN(3), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="`loss` is required"):
        time_statistics(plain, x, y)
    assert set(time_statistics(plain, x, y, loss="mse").kind) == {"hidden", "grad_hidden"}
    assert set(time_statistics(plain, x, kinds="hidden").kind) == {"hidden"}
    with pytest.raises(ValueError, match="`y` is required"):
        time_statistics(plain, x, loss="mse")
    with pytest.raises(ValueError, match="`stats` must be distinct names"):
        time_statistics(plain, x, y, loss="mse", stats=("median",))
    with pytest.raises(ValueError, match="`kinds` must be"):
        time_statistics(plain, x, y, loss="mse", kinds=("grad",))
    with pytest.raises(ValueError, match="names recurrent layers the model does not have"):
        time_statistics(plain, x, y, loss="mse", layers=["lstm"])
    dense = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="selects no recurrent layer"):
        recurrent_targets(dense)
    conv = keras.Sequential([keras.Input((T, 6, 6, 1)), keras.layers.ConvLSTM2D(2, 3)])
    with pytest.raises(ValueError, match="ConvLSTM"):
        recurrent_targets(conv)
    # a selected layer that the forward pass never calls
    spare = RecurrentNet(spare=True)
    spare(x)
    spare.compile(loss="mse")
    with pytest.raises(ValueError, match=r"does not call: \['spare'\]"):
        time_statistics(spare, x, y)
    assert isinstance(time_statistics(spare, x, y, layers="gru"), pd.DataFrame)
