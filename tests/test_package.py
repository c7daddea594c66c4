"""The top-level namespace and the package: every public name resolves, nothing heavy loads on import, the
initializers still register with Keras whichever is imported first, a missing backend names the extras, and the
wheel installs the studies as keras_initkit.studies (never a top-level `studies`)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import keras
import pytest

import keras_initkit as ki

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=timeout)


def test_every_public_name_resolves():
    for name in ki.__all__:
        assert getattr(ki, name) is not None, name
    assert ki.VarianceMonitor is ki.monitor.VarianceMonitor
    assert ki.predict_variance is ki.theory.predict_variance
    assert ki.variance_vs_depth is ki.plots.variance_vs_depth
    assert ki.GlorotAvg is ki.initializers.GlorotAvg and ki.gain is ki.activations.gain
    assert ki.datasets.load is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        ki.no_such_thing  # noqa: B018


def test_import_loads_neither_keras_nor_plots():
    code = (
        "import sys, keras_initkit\n"
        "heavy = {'keras', 'tensorflow', 'jax', 'numpy', 'pandas', 'keras_initkit.plots'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr


def test_a_saved_model_loads_after_import_keras_initkit_whichever_comes_first(tmp_path):
    path = tmp_path / "model.keras"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, kernel_initializer=ki.GlorotAvg(seed=1))])
    model.save(path)
    # keras_initkit first: the initializers register the moment Keras is imported
    code = (
        "import sys, keras_initkit\n"
        "assert 'keras' not in sys.modules\n"
        "import keras\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        "assert type(model.layers[0].kernel_initializer).__name__ == 'GlorotAvg'\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr[-3000:]
    # Keras first (this process): registered at import
    assert keras.saving.get_registered_object("keras_initkit>GlorotAvg") is ki.GlorotAvg
    assert type(keras.models.load_model(path).layers[0].kernel_initializer) is ki.GlorotAvg


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # as if the backends were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('tensorflow', 'jax', 'torch'):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
sys.meta_path.insert(0, Block())
try:
    import keras_initkit
except ImportError as e:
    print(e)
else:
    raise SystemExit('imported')
"""


@pytest.mark.parametrize(
    "backend, missing",
    [(None, "none of its backends (tensorflow, jax, torch) is installed"), ("jax", "jax (KERAS_BACKEND=jax)")],
)
def test_without_a_backend_the_import_names_the_extras(backend, missing):
    env = {k: v for k, v in ENV.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER],
        env={**env, **({"KERAS_BACKEND": backend} if backend else {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    message = done.stdout.strip()
    assert missing in message and 'pip install "keras_initkit[cpu]"' in message and '"keras_initkit[gpu]"' in message


def test_plots_load_on_first_use_only():
    code = "import sys, keras_initkit; assert not {'keras_initkit.plots'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_license_matches_the_declared_one():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow  # 10-40 s: builds a wheel from a copy of the sources
def test_the_wheel_installs_studies_inside_the_package(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("keras_initkit", "studies"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("keras_initkit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    studies = sorted(n for n in names if n.startswith("keras_initkit/studies/"))
    assert {f"keras_initkit/studies/{s}.py" for s in ("__init__", "vgg_depth", "sigmoid_vs_relu", "batchnorm")} <= set(
        studies
    )
    assert not [n for n in names if n.startswith("studies/")]  # no top-level `studies` package
    assert "keras_initkit/__main__.py" in names and "keras_initkit/py.typed" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "keras-initkit = keras_initkit.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names), names
