"""keras_initkit: weight initialization and signal propagation for Keras 3.

Initializers from the papers (Glorot & Bengio 2010, He et al. 2015, VGG), activation gains, a callback that logs
per-layer activation and gradient variance during `model.fit`, the theory that predicts them, and plots.

Every name loads on first use, so `import keras_initkit` (and `python -m keras_initkit --help`) does not import
Keras or TensorFlow. The initializers still register with Keras' serialization as soon as Keras is there: at once
when Keras is already imported, otherwise the moment it is (a one-shot import hook), so a model saved with
`keras_initkit>GlorotAvg` loads with `keras.models.load_model` after a plain `import keras_initkit`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys

__version__ = "0.1.0"

BACKENDS = ("tensorflow", "jax", "torch")
NO_BACKEND = (
    "keras_initkit needs Keras 3 and a backend, but {}. Install the package with an extra: pip install "
    '"keras_initkit[cpu]" (TensorFlow for CPU), "keras_initkit[gpu]" (TensorFlow with CUDA) or "keras_initkit[jax]".'
)

_LAZY = {
    "DeltaOrthogonal": "initializers",
    "FixedNormal": "initializers",
    "GlorotAvg": "initializers",
    "GlorotFanIn": "initializers",
    "GlorotFanOut": "initializers",
    "He": "initializers",
    "StandardUniform": "initializers",
    "kernel_fans": "initializers",
    "GAIN_TABLE": "activations",
    "gain": "activations",
    "moments": "activations",
    "VarianceMonitor": "monitor",
    "lsuv": "data_init",
    "STATS": "stats",
    "predict_variance": "theory",
    "time_statistics": "recurrent",
    "mean_field_chi": "recurrent",
    "compare": "theory",
    "layer_fans": "layers",
    "THEORY_KINDS": "theory",
    "variance_vs_depth": "plots",
    "stat_over_training": "plots",
    "layer_histograms": "plots",
    "percentile_bands": "plots",
}
_SUBMODULES = (
    "activations",
    "data_init",
    "datasets",
    "doctor",
    "fileio",
    "gaussian",
    "initializers",
    "layers",
    "monitor",
    "plots",
    "recurrent",
    "stats",
    "study",
    "theory",
)

__all__ = sorted(_LAZY)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a module without a spec
        return False


def _check_backend() -> None:
    """Fail at import, naming the extras, when Keras or the backend it would use is not installed."""
    if "keras" in sys.modules:
        return
    chosen = os.environ.get("KERAS_BACKEND")
    if not _installed("keras"):
        missing = "keras is not installed"
    elif chosen in BACKENDS and not _installed(chosen):
        missing = f"{chosen} (KERAS_BACKEND={chosen}) is not installed"
    elif chosen not in BACKENDS and not any(_installed(b) for b in BACKENDS):
        missing = f"none of its backends ({', '.join(BACKENDS)}) is installed"
    else:
        return
    raise ImportError(NO_BACKEND.format(missing))


def _register() -> None:
    """Import the initializers, which registers them with Keras' serialization (Keras is imported by then)."""
    importlib.import_module("keras_initkit.initializers")


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it wraps the loader of the `keras` module so `_register` runs right after Keras loads."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras" or self not in sys.meta_path:
            return None
        later = sys.meta_path[sys.meta_path.index(self) + 1 :]
        for finder in later:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register()

        loader.exec_module = exec_then_register  # this spec's own loader instance only
        return spec


def _install_registration() -> None:
    if "keras" in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterKeras())


_check_backend()
_install_registration()


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"keras_initkit.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"keras_initkit.{name}")
    raise AttributeError(f"module 'keras_initkit' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY, *_SUBMODULES})
