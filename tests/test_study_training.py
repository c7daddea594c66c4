"""keras_initkit.study.training: the mini-batch stream, the curve recorder and fit loop, the compiled-model cache."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest

from keras_initkit.study import training
from keras_initkit.study.metrics import cross_entropy
from keras_initkit.study.models import build_mlp
from keras_initkit.study.training import CurveRecorder, ModelCache, batches, compile_sgd, fit_curve, reset_optimizer


def _data(n=64, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    return x, (x[:, 0] > 0).astype("int64") + (x[:, 1] > 1).astype("int64") % k


def test_batches_are_permutations_per_pass_and_deterministic():
    x = np.arange(12, dtype="float32")[:, None]
    y = np.arange(12)
    take = lambda seed: [b[1].numpy().tolist() for b in batches(x, y, 4, seed).take(6)]  # noqa: E731
    first = take(1)
    assert first == take(1) and first != take(2)
    for p in (first[:3], first[3:]):  # each pass of 3 batches covers every example once
        assert sorted(sum(p, [])) == list(range(12))
    assert first[:3] != first[3:]  # a fresh permutation each pass
    with pytest.raises(ValueError, match="`batch_size` must be an int in \\[1, len\\(x\\)=12\\]"):
        batches(x, y, 13, 0)
    with pytest.raises(ValueError, match="same length"):
        batches(x, y[:5], 4, 0)


def _draws():
    """What a trial draws from the global seeds: Python, NumPy, Keras' unseeded keras.random, a layer's default
    initializer, the tf.data shuffle order (with an op seed, and TensorFlow's global seed)."""
    import random

    x = np.arange(12, dtype="float32")[:, None]
    return (
        random.random(),
        float(np.random.rand()),
        keras.ops.convert_to_numpy(keras.random.normal((3,))).tolist(),
        keras.ops.convert_to_numpy(keras.initializers.GlorotUniform()((2, 2))).tolist(),
        [b[1].numpy().tolist() for b in batches(x, np.arange(12), 4, 7).take(3)],
    )


def test_set_random_seed_and_clear_session_are_keras_own_but_keep_the_kernel_cache(monkeypatch):
    from tensorflow.python import pywrap_tfe

    clears = []
    original = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", lambda handle: clears.append(handle))
    keras.utils.set_random_seed(12)
    keras_12 = _draws()
    keras.backend.clear_session()
    keras.utils.set_random_seed(11)
    keras_11 = _draws()
    assert len(clears) == 3 and keras_11 != keras_12  # Keras' calls each clear the cache ...
    training.set_random_seed(12)
    assert _draws() == keras_12  # every global seed is set as Keras sets it (TensorFlow's too: the shuffle order)
    training.clear_session()
    training.set_random_seed(11)
    assert _draws() == keras_11
    assert len(clears) == 3  # ... these do not
    assert keras.backend.get_uid("dense") == 1  # clear_session reset the layer-name counters
    monkeypatch.undo()
    assert pywrap_tfe.TFE_ContextClearCaches is original


def test_kernel_cache_kept_restores_the_clear_on_error():
    from tensorflow.python import pywrap_tfe

    original = pywrap_tfe.TFE_ContextClearCaches
    with pytest.raises(RuntimeError, match="boom"), training._kernel_cache_kept():
        assert pywrap_tfe.TFE_ContextClearCaches is not original
        raise RuntimeError("boom")
    assert pywrap_tfe.TFE_ContextClearCaches is original


def _model(seed=0):
    x, _ = _data()
    model = build_mlp(x.shape[1], 3, 2, 8, activation="tanh", init="normalized", seed=seed)
    return compile_sgd(model, 0.1, steps_per_execution=5)


def test_fit_curve_rows_offset_start_and_evaluate():
    x, y = _data()
    model = _model()
    before = cross_entropy(model, x, y)
    curve = fit_curve(
        model, x, y, steps=20, every=5, batch_size=8, seed=0, offset=100, loss="train_loss",
        start=lambda m: {"train_loss": cross_entropy(m, x, y)}, evaluate=lambda m: {"n": 1.0},
    )  # fmt: skip
    assert list(curve.columns) == ["step", "train_loss", "n"]
    assert curve["step"].tolist() == [100, 105, 110, 115, 120]
    assert curve["train_loss"].iloc[0] == pytest.approx(before) and np.isnan(curve["n"].iloc[0])
    assert curve["train_loss"].iloc[1:].notna().all() and (curve["n"].iloc[1:] == 1.0).all()
    again = fit_curve(_model(), x, y, steps=20, every=5, batch_size=8, seed=0, start=True, evaluate=lambda m: {})
    assert again["step"].tolist() == [0, 5, 10, 15, 20] and np.isnan(again["loss"].iloc[0])
    np.testing.assert_allclose(again["loss"].iloc[1:], curve["train_loss"].iloc[1:], rtol=1e-6)  # same seeds
    with pytest.raises(ValueError, match="`steps` must be an int >= 0, a multiple of `every`=5"):
        fit_curve(model, x, y, steps=12, every=5, batch_size=8, seed=0)


def test_curve_recorder_stops_below_and_resets():
    x, y = _data()
    model = _model()
    rec = CurveRecorder(5, stop_below=10.0)  # the first chunk's loss is below 10: one chunk only
    model.fit(batches(x, y, 8, 0), epochs=4, steps_per_epoch=5, callbacks=[rec], shuffle=False, verbose=0)
    assert rec.frame()["step"].tolist() == [5]
    model.fit(batches(x, y, 8, 0), epochs=1, steps_per_epoch=5, callbacks=[rec], shuffle=False, verbose=0)
    assert len(rec.frame()) == 1  # reset at on_train_begin
    with pytest.raises(ValueError, match="`every` must be an int >= 1"):
        CurveRecorder(0)


def test_model_cache_gives_fresh_weights_and_state():
    x, y = _data()
    cache = ModelCache()
    compiled = []

    def get(seed, lr=None):
        return cache.fresh(("mlp",), lambda: build_mlp(6, 3, 2, 8, init="he", seed=seed),
                           lambda m: compiled.append(compile_sgd(m, 0.1, momentum=0.9)), lr)  # fmt: skip

    first = get(0).model
    fit_curve(first, x, y, steps=10, every=5, batch_size=8, seed=0)
    assert first.optimizer.iterations.numpy() == 10
    entry = get(1, lr=0.05)
    assert entry.model is first and len(compiled) == 1 and len(cache) == 1
    for a, b in zip(entry.model.get_weights(), build_mlp(6, 3, 2, 8, init="he", seed=1).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert entry.model.optimizer.iterations.numpy() == 0
    assert all(not np.any(v.numpy()) for v in entry.model.optimizer.variables if v.name not in ("learning_rate",))
    assert float(entry.model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    entry.extra["monitor"] = "kept"
    assert get(2).extra["monitor"] == "kept"
    # a trial on the cached model gives the curve of a fresh build
    fresh = compile_sgd(build_mlp(6, 3, 2, 8, init="he", seed=3), 0.1, momentum=0.9)
    a = fit_curve(fresh, x, y, steps=10, every=5, batch_size=8, seed=4)
    b = fit_curve(get(3, lr=0.1).model, x, y, steps=10, every=5, batch_size=8, seed=4)
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)
    cache.clear()
    assert len(cache) == 0


def test_reset_optimizer_keeps_or_sets_the_rate():
    model = _model()
    x, y = _data()
    fit_curve(model, x, y, steps=5, every=5, batch_size=8, seed=0)
    reset_optimizer(model)
    assert model.optimizer.iterations.numpy() == 0
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.1)
    reset_optimizer(model, 0.5)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.5)
    assert isinstance(model, keras.Model)
