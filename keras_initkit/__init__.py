"""keras_initkit: weight initialization and signal propagation for Keras 3.

Initializers from the papers (Glorot & Bengio 2010, He et al. 2015, VGG), activation gains, a callback that logs
per-layer activation and gradient variance during `model.fit`, the theory that predicts them, and plots.
"""

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
]
