"""The monitor's acceptance checks (tests/monitor_backend_checks.py) under every Keras backend.

TensorFlow: in this process. JAX and PyTorch: all checks in ONE subprocess per backend with KERAS_BACKEND set
(Keras picks its backend at import), whose records of fixed weights are compared here with TensorFlow's. JAX is in
the dev extra (CI runs it); torch is not (its wheels are large): its tests are skipped where it is not importable
(`make test-torch` installs it and runs them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import monitor_backend_checks as checks  # noqa: E402 (tests/ is on sys.path under pytest's rootdir insertion)
import numpy as np
import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
CHECKS = sorted(checks.CHECKS)


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _run_under(backend: str, out: Path, cache: Path | None = None, timeout: int = 600) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    if cache is not None:  # most of the JAX run is XLA compilation: kept between runs in pytest's cache folder
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    done = subprocess.run(
        [sys.executable, str(HERE / "monitor_backend_checks.py"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["backend"] == backend
    return report


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory, request):
    if not _installed("jax"):
        pytest.skip("jax is not installed (it is in the dev extra: make install)")
    out = tmp_path_factory.mktemp("jax")
    # pytest's cache folder keeps XLA's compilations between runs; without the cache plugin (-p no:cacheprovider)
    # they are compiled afresh in a temporary folder
    cache = getattr(request.config, "cache", None)
    where = cache.mkdir("jax-compilation") if cache is not None else tmp_path_factory.mktemp("jax-compilation")
    return out, _run_under("jax", out, cache=where)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="this process runs the TensorFlow backend")
@pytest.mark.parametrize("name", CHECKS)
def test_check_under_tensorflow(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checks.CHECKS[name]()


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    if not _installed("torch"):
        pytest.skip("torch is not installed (not in dev, its wheels are large: `make test-torch`)")
    out = tmp_path_factory.mktemp("torch")
    return out, _run_under("torch", out)


@pytest.mark.parametrize("name", [*CHECKS, "frames"])
def test_check_under_jax(name, jax_run):
    _, report = jax_run
    assert report["results"][name] is None, report["results"][name]


@pytest.mark.parametrize("name", [*CHECKS, "frames"])
def test_check_under_torch(name, torch_run):
    _, report = torch_run
    assert report["results"][name] is None, report["results"][name]


@pytest.fixture(scope="module")
def tf_frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("tf")
    checks.frames(out)
    return out


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="compares with this process's TensorFlow")
@pytest.mark.parametrize("frame", ["mlp", "mlp_hist", "mlp_unit", "rnn", "rnn_time", "rnn_timestats"])
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_numbers_equal_tensorflow(backend, frame, tf_frames, request):
    """Same weights, same probe: the same tidy frame (columns, rows, order) and the same numbers to float32."""
    out, report = request.getfixturevalue(f"{backend}_run")
    assert report["results"]["frames"] is None, report["results"]["frames"]
    here = tf_frames
    tf_frame = pd.read_csv(here / f"{frame}.csv")
    other = pd.read_csv(out / f"{frame}.csv")
    assert list(other.columns) == list(tf_frame.columns) and len(tf_frame) > 0
    if frame in ("mlp", "mlp_hist"):
        # A softmax output with a cross-entropy on probabilities: TensorFlow's Keras computes the loss from the
        # logits (no dC/df(s): no rows), JAX's and PyTorch's from the probabilities (their dC/df(s) is recorded, as
        # Keras computes it).
        extra = (other.layer == "out") & (other.kind == "grad_activation")
        assert not ((tf_frame.layer == "out") & (tf_frame.kind == "grad_activation")).any()
        assert extra.any()
        other = other[~extra].reset_index(drop=True)
    assert len(other) == len(tf_frame)
    keys = [c for c in tf_frame.columns if c not in ("value", "diverged", "left", "right")]
    pd.testing.assert_frame_equal(other[keys], tf_frame[keys])
    scale = tf_frame.groupby(["layer", "kind"]).value.transform(lambda v: np.abs(v).max())
    tol = 1e-4 * np.abs(tf_frame.value) + 1e-5 * scale + 1e-7  # scale: float32 round-off of a mean that sums to 0
    bad = ~(np.abs(other.value - tf_frame.value) <= tol)
    assert not bad.any(), tf_frame.assign(**{backend: other.value})[bad]
    if "diverged" in tf_frame:
        assert not tf_frame.diverged.any() and not other.diverged.any()
