"""The studies' initializer names: one table name -> a fresh, seeded `keras_initkit.initializers` instance.

Every study names its inits with short strings (trial keys, table columns); `make_initializer(name, seed)` is the
one place those names are turned into initializers, so that "he" means the same in every study. Each call returns a
new instance (one per layer: a study derives each layer's seed, e.g. `derive_seed(seed, "layer", index)`).

    kernel_initializer=make_initializer("he_fan_in", derive_seed(seed, "layer", 3))
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import keras

from keras_initkit.initializers import FixedNormal, GlorotAvg, GlorotFanIn, He, StandardUniform

# name -> (factory of (seed, fixed_std), what it is). "fixed" is the only one that reads `fixed_std`.
_INITS: dict[str, tuple[Callable[[int, float], keras.initializers.Initializer], str]] = {
    "fixed": (lambda seed, std: FixedNormal(std, seed=seed), "N(0, fixed_std^2) (VGG's fixed Gaussian)"),
    "glorot_fan_in": (lambda seed, std: GlorotFanIn(seed=seed), "GlorotFanIn: Var(W) = 1/fan_in (He's 'Xavier')"),
    "glorot_avg": (lambda seed, std: GlorotAvg(seed=seed), "GlorotAvg: Var(W) = 2/(fan_in + fan_out)"),
    "he_fan_in": (lambda seed, std: He(mode="fan_in", seed=seed), "He, fan_in: Var(W) = 2/fan_in"),
    "he_fan_out": (lambda seed, std: He(mode="fan_out", seed=seed), "He, fan_out: Var(W) = 2/fan_out"),
    "standard": (lambda seed, std: StandardUniform(seed=seed), "StandardUniform: U[-1/sqrt(n), 1/sqrt(n)]"),
    "normalized": (lambda seed, std: GlorotAvg(seed=seed), "Glorot & Bengio's normalized init (GlorotAvg)"),
    "he": (lambda seed, std: He(seed=seed), "He (fan_in Gaussian), as 'he_fan_in'"),
}
INIT_NAMES: tuple[str, ...] = tuple(_INITS)
INIT_DESCRIPTIONS: dict[str, str] = {name: text for name, (_, text) in _INITS.items()}


def make_initializer(name: str, seed: int, *, fixed_std: float = 0.01) -> keras.initializers.Initializer:
    """A fresh initializer instance for one layer, by its study name.

    Example:
    >>> keras.layers.Dense(10, kernel_initializer=make_initializer("glorot_avg", seed=7))

    Args:
        name: one of INIT_NAMES: "fixed" (FixedNormal(fixed_std)), "glorot_fan_in", "glorot_avg", "he_fan_in",
            "he_fan_out" (the VGG study's), "standard" (StandardUniform), "normalized" (GlorotAvg), "he" (He,
            fan_in) (Glorot & Bengio's names).
        seed: the int seed of this layer's draw.
        fixed_std: the standard deviation of "fixed" (ignored by the others).

    Returns:
        A new `keras.initializers.Initializer`.
    """
    if name not in _INITS:
        raise ValueError(f"`name` must be one of {INIT_NAMES}. Received: name={name!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"`seed` must be an int. Received: seed={seed!r}")
    return _INITS[name][0](int(seed), fixed_std)
