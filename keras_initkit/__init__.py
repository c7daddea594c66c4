"""keras_initkit: weight initialization and signal propagation for Keras 3.

Initializers from the papers (Glorot & Bengio 2010, He et al. 2015, VGG), activation gains, a callback that logs
per-layer activation and gradient variance during `model.fit`, the theory that predicts them, and plots.

The initializers and gains import eagerly (they register with Keras' serialization on import); the monitor, theory,
plots and data sets load on first use (no seaborn import until a plot is drawn).
"""

from __future__ import annotations

import importlib

from keras_initkit.activations import GAIN_TABLE, gain, moments
from keras_initkit.initializers import (
    FixedNormal,
    GlorotAvg,
    GlorotFanIn,
    GlorotFanOut,
    He,
    StandardUniform,
    kernel_fans,
)

__version__ = "0.1.0"

_LAZY = {
    "VarianceMonitor": "monitor",
    "STATS": "monitor",
    "predict_variance": "theory",
    "compare": "theory",
    "layer_fans": "theory",
    "THEORY_KINDS": "theory",
    "variance_vs_depth": "plots",
    "stat_over_training": "plots",
    "layer_histograms": "plots",
    "percentile_bands": "plots",
}
_SUBMODULES = ("activations", "datasets", "initializers", "monitor", "plots", "study", "theory")

__all__ = [
    "FixedNormal",
    "GAIN_TABLE",
    "GlorotAvg",
    "GlorotFanIn",
    "GlorotFanOut",
    "He",
    "StandardUniform",
    "gain",
    "kernel_fans",
    "moments",
    *sorted(_LAZY),
]


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
