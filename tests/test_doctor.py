"""`python -m keras_initkit doctor`: exit 0 on a healthy He ReLU net, 1 on a 30-layer N(0, 0.01) ReLU net (and 0
again after `lsuv`), 2 on bad input with one line on stderr; its JSON; .npz input; --help before TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_study_cli import _help

from keras_initkit import FixedNormal, He, lsuv
from keras_initkit.datasets import load
from keras_initkit.doctor import DOCTOR_COLUMNS, EXIT_FLAGGED, EXIT_OK, main, recommended_initializer
from keras_initkit.study.cli import EXIT_USAGE

ENV = {**os.environ, "MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
DOCTOR = [sys.executable, "-m", "keras_initkit", "doctor"]


def _mlp(n_layers: int, init) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,))]
        + [keras.layers.Dense(64, activation="relu", kernel_initializer=init) for _ in range(n_layers)]
        + [keras.layers.Dense(10, activation="softmax", kernel_initializer=init)]
    )
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved .keras files: a healthy 8-layer He ReLU MLP, a 30-layer N(0, 0.01) one, and the latter after lsuv."""
    folder = tmp_path_factory.mktemp("doctor")
    x = load("digits").x_train[:256].reshape(256, -1)
    paths = {"he": folder / "he.keras", "small": folder / "small.keras", "lsuv": folder / "small_lsuv.keras"}
    _mlp(8, He()).save(paths["he"])
    bad = _mlp(30, FixedNormal(0.01))
    bad.save(paths["small"])
    lsuv(bad, x, seed=0)
    bad.save(paths["lsuv"])
    return {k: str(v) for k, v in paths.items()}


def _doctor(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_healthy_he_relu_net_exits_0(models, capsys):
    rc, out, err = _doctor(capsys, models["he"], "--data", "digits", "--json")
    assert rc == EXIT_OK, out + err
    rows = json.loads(out)
    assert rows and all(tuple(r) == DOCTOR_COLUMNS for r in rows)
    assert {r["kind"] for r in rows} == {"forward", "backward"}
    assert {r["verdict"] for r in rows} == {"ok"}
    assert len(rows) == 2 * 9  # 9 Dense layers, forward and backward
    fwd = [r for r in rows if r["kind"] == "forward"]
    assert all(abs(r["measured"] / r["predicted"] - 1) < 0.2 for r in fwd)  # the theory applies to this MLP


def test_a_30_layer_small_normal_relu_net_exits_1_through_python_m(models):
    done = subprocess.run(
        [*DOCTOR, models["small"], "--data", "digits", "--batch", "128", "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == EXIT_FLAGGED, done.stderr
    rows = json.loads(done.stdout)
    assert all(tuple(r) == DOCTOR_COLUMNS for r in rows)
    by = {(r["kind"], r["depth"]): r for r in rows}
    assert by[("forward", 0)]["verdict"] == "ok" and by[("backward", 30)]["verdict"] == "ok"  # the references
    assert all(by[("forward", d)]["verdict"] == "vanishing" for d in range(1, 31))
    assert all(by[("backward", d)]["verdict"] == "vanishing" for d in range(0, 29))
    assert by[("forward", 5)]["advice"] == "He() for its kernel (relu), or keras_initkit.lsuv(model, x)"
    assert by[("forward", 30)]["advice"].startswith("GlorotAvg() for its kernel (softmax)")
    assert 1e-3 < by[("forward", 1)]["factor"] < 1e-2  # 64 * 1e-4 / 2 per ReLU layer (He et al. Eq 7)


def test_after_lsuv_the_same_net_exits_0_and_the_text_table_says_so(models, capsys):
    rc, out, err = _doctor(capsys, models["lsuv"], "--data", "digits")
    assert rc == EXIT_OK, out + err
    assert "reshaped (8, 8, 1) -> (64,)" in out.splitlines()[0]
    assert "0 of 62 rows flagged" in out
    header = out.splitlines()[1].split()
    assert header == list(DOCTOR_COLUMNS)


def test_an_npz_file_with_and_without_labels(models, tmp_path, capsys):
    data = load("digits")
    with_y, without_y = tmp_path / "xy.npz", tmp_path / "x.npy"
    np.savez(with_y, x=data.x_test[:64].reshape(64, -1), y=data.y_test[:64])
    np.save(without_y, data.x_test[:64])
    rc, out, _ = _doctor(capsys, models["he"], "--data", str(with_y), "--json")
    assert rc == EXIT_OK and {r["kind"] for r in json.loads(out)} == {"forward", "backward"}
    rc, out, _ = _doctor(capsys, models["small"], "--data", str(without_y))
    assert rc == EXIT_FLAGGED
    lines = out.splitlines()
    rows = lines[3 : lines.index("Note: no labels: forward rows only")]
    assert len(rows) == 31 and all(row.split()[2] == "forward" for row in rows)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing model", "argument MODEL: no such file. Received: 'missing.keras'"),
        ("not a model", "argument MODEL: cannot load"),
        ("unknown data", "argument --data: must be a data set name"),
        ("unreadable data", "argument --data: cannot read"),
        ("wrong shape", "argument --data: examples of shape (7,) do not fit the model's input shape (64,)"),
        ("NaN data", "argument --data: inputs must be finite"),
        ("batch 0", "argument --batch: must be an integer >= 1. Received: 0"),
    ],
)
def test_bad_input_exits_2_with_one_line(models, tmp_path, capsys, case, message):
    model, data = models["he"], "digits"
    if case == "missing model":
        model = "missing.keras"
    elif case == "not a model":
        model = str(tmp_path / "junk.keras")
        open(model, "w").write("not a zip")
    elif case == "unknown data":
        data = "cifar100"
    elif case == "unreadable data":
        data = str(tmp_path / "junk.npy")
        open(data, "w").write("not numpy")
    elif case in ("wrong shape", "NaN data"):
        data = str(tmp_path / "x.npy")
        np.save(data, np.full((16, 64), np.nan) if case == "NaN data" else np.zeros((16, 7)))
    argv = [model, "--data", data] + (["--batch", "0"] if case == "batch 0" else [])
    rc, out, err = _doctor(capsys, *argv)
    assert rc == EXIT_USAGE and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_recommended_initializer():
    assert recommended_initializer("relu") == "He()"
    assert recommended_initializer("leaky_relu", 0.2) == "He(negative_slope=0.2)"
    assert recommended_initializer("tanh") == 'GlorotAvg(gain=gain("tanh"))'
    assert recommended_initializer("sigmoid") == recommended_initializer(None) == "GlorotAvg()"
    assert recommended_initializer("gelu") == 'GlorotFanIn(gain=gain("gelu"))'


def test_help_states_the_rules_before_tensorflow_is_imported():
    text = " ".join(_help("doctor", "--help").split())  # fails if Keras, TensorFlow, pandas or numpy was imported
    for rule in ("below 1e-2 times the reference", "above 1e2 times it", "0 nothing flagged, 1 something flagged, 2"):
        assert rule in text


def test_a_layer_the_theory_cannot_predict_gives_no_prediction(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.LayerNormalization()]
        + [keras.layers.Dense(32, activation="tanh") for _ in range(3)]
    )
    path = str(tmp_path / "ln.keras")
    model.save(path)
    rc, out, err = _doctor(capsys, path, "--data", "digits", "--batch", "32")
    assert rc in (EXIT_OK, EXIT_FLAGGED), err
    lines = out.splitlines()
    assert "(32 examples)" in lines[0] and "reshaped" not in lines[0]
    assert "Note: no labels" not in out and "the model is not compiled with a loss: forward rows only" in out
    assert "no prediction: `model` has 1 layer(s) the theory cannot predict" in out
    assert out.count("no prediction") == 1 + 4  # the note, and each of the 4 monitored layers
