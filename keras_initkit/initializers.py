"""Weight initializers of the signal-propagation literature, as Keras 3 initializers.

Every class is a thin preset of `keras.initializers.VarianceScaling` (or `RandomNormal`): it only fixes the
numbers, Keras does the sampling with `keras.random`, so each one runs unchanged under the TensorFlow, JAX and
PyTorch backends, on CPU or GPU.

Fans follow Keras' convention for a kernel of shape `shape` (the one `VarianceScaling` uses):

| layer | kernel shape | fan_in | fan_out |
|---|---|---|---|
| Dense | (in, out) | in | out |
| Conv1D/2D/3D | (*k, in, out) | prod(k) * in | prod(k) * out |
| Conv2DTranspose | (*k, filters, in) | prod(k) * filters | prod(k) * in |
| DepthwiseConv2D | (*k, in, multiplier) | prod(k) * in | prod(k) * multiplier |

Two of these differ from the layer's true fans (the number of inputs summed into one output, and the number of
outputs one input feeds). A transposed convolution stores its kernel with the axes swapped, so Keras' "fan_in" is
the fan-out of its forward pass: use `mode="fan_out"` (`He`) or `GlorotFanOut` to preserve the forward signal
through a stride-1 `Conv2DTranspose`. A depthwise kernel sums over prod(k) inputs only, so Keras' fan_in is
`in` times too large; `keras_initkit.theory.layer_fans(layer)` gives the true fans of any layer.
"""

from __future__ import annotations

import math
import numbers
import random as python_random
from collections.abc import Sequence

import keras

__all__ = [
    "GlorotAvg",
    "GlorotFanIn",
    "GlorotFanOut",
    "He",
    "StandardUniform",
    "FixedNormal",
    "DeltaOrthogonal",
    "kernel_fans",
]

_PACKAGE = "keras_initkit"
DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
MODES = ("fan_in", "fan_out", "fan_avg")
# Our "normal" is the papers' untruncated Gaussian; Keras calls that "untruncated_normal" (its "normal" truncates).
_KERAS_DISTRIBUTION = {
    "normal": "untruncated_normal",
    "truncated_normal": "truncated_normal",
    "uniform": "uniform",
}


def _check_choice(name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {tuple(allowed)}. Received: {name}={value!r}")


def _is_real(value) -> bool:
    # Python and numpy scalars (np.float32, np.int64) count; bools and strings do not.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_positive(name: str, value) -> float:
    if not _is_real(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"`{name}` must be a finite positive number. Received: {name}={value!r}")
    return float(value)


def _check_seed(seed):
    """None, an int (numpy integers accepted) or a `keras.random.SeedGenerator`, as Keras' initializers take."""
    if seed is None or isinstance(seed, (keras.random.SeedGenerator, dict)):
        return seed
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    raise ValueError(
        f"`seed` must be None, an int or a `keras.random.SeedGenerator`. Received: seed={seed!r} "
        f"of type {type(seed).__name__}"
    )


def _check_axes(name: str, axes):
    if axes is None:
        return None
    if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
        raise ValueError(f"`{name}` must be None or a sequence of ints. Received: {name}={axes!r}")
    if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in axes):
        raise ValueError(f"`{name}` must be None or a sequence of ints. Received: {name}={axes!r}")
    return [int(a) for a in axes]


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError("`shape` must have rank >= 1 (a kernel, not a scalar). Received: shape=()")
    if any(d is None or int(d) <= 0 for d in shape):
        raise ValueError(f"`shape` must have only positive dimensions. Received: shape={shape}")
    return tuple(int(d) for d in shape)


def kernel_fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel shape, by Keras' convention (see the module docstring).

    Example:
    >>> kernel_fans((3, 3, 64, 128))
    (576, 1152)
    """
    shape = _check_shape(shape)
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


class _FreshSeed:
    """Unseeded means a new draw at each call (reproducible under `keras.utils.set_random_seed`).

    Keras' own initializers fix a random int seed at construction when `seed=None`, so one instance shared by
    several layers gives every layer the same kernel. Here an unseeded instance reads a fresh seed each time its
    `seed` is read: at each call, and when a layer clones it (EinsumDense passes `seed=init.seed` to its clone).
    It is drawn from Python's `random`, as Keras draws its default seeds, so `set_random_seed` makes it
    reproducible. An int seed stays deterministic (Keras semantics).
    """

    @property
    def seed(self):
        if self._init_seed is None:
            return python_random.randint(1, int(1e9))
        return self._seed

    @seed.setter
    def seed(self, value):
        self._seed = value


class _Preset(_FreshSeed, keras.initializers.VarianceScaling):
    """VarianceScaling with validated shapes, fresh unseeded draws and a config of exactly the constructor arguments.

    `input_axes` / `output_axes` are Keras' own (VarianceScaling): the kernel axes whose sizes multiply into the fans.
    EinsumDense, MultiHeadAttention and GroupedQueryAttention set them when they build, so the presets use the true
    fans of those layers (e.g. a query projection's fan-in is the model width, not width x heads).
    """

    def __init__(self, scale, mode, distribution, seed, input_axes=None, output_axes=None):
        super().__init__(
            scale=scale,
            mode=mode,
            distribution=distribution,
            seed=_check_seed(seed),
            input_axes=_check_axes("input_axes", input_axes),
            output_axes=_check_axes("output_axes", output_axes),
        )

    def __call__(self, shape, dtype=None):
        return super().__call__(_check_shape(shape), dtype=dtype)

    def _axes_config(self) -> dict:
        return {"input_axes": self.input_axes, "output_axes": self.output_axes}

    def get_config(self):  # pragma: no cover - overridden by every preset
        raise NotImplementedError


def _seed_of(init: keras.initializers.Initializer):
    # Keras keeps the seed exactly as given in `_init_seed` and serializes it this way (RandomInitializer).
    return keras.saving.serialize_keras_object(init._init_seed)


class _Glorot(_Preset):
    _mode = "fan_avg"

    def __init__(self, distribution: str = "uniform", gain: float = 1.0, seed=None, input_axes=None, output_axes=None):
        _check_choice("distribution", distribution, DISTRIBUTIONS)
        self.gain = _check_positive("gain", gain)
        self._distribution = distribution
        super().__init__(
            scale=self.gain**2,
            mode=self._mode,
            distribution=_KERAS_DISTRIBUTION[distribution],
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
        )

    def get_config(self) -> dict:
        return {"distribution": self._distribution, "gain": self.gain, "seed": _seed_of(self), **self._axes_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GlorotAvg(_Glorot):
    """Glorot & Bengio's "normalized" (Xavier) initializer: the fan average.

    Var(W) = gain^2 * 2 / (fan_in + fan_out). With the default uniform distribution,
    W ~ U[-gain * sqrt(6 / (fan_in + fan_out)), +gain * sqrt(6 / (fan_in + fan_out))] (their Eq 16).

    Examples:
    >>> init = GlorotAvg(seed=0)
    >>> w = init(shape=(256, 128))
    >>> layer = keras.layers.Dense(256, activation="tanh", kernel_initializer=GlorotAvg(gain=gain("tanh")))

    Args:
        distribution: "uniform" (the paper's), "normal" (untruncated Gaussian) or "truncated_normal"
            (truncated at 2 std, rescaled so the variance is the stated one).
        gain: finite positive factor on the standard deviation, e.g. `keras_initkit.gain("tanh")`.
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.
        input_axes, output_axes: kernel axes that make up the fans (Keras' VarianceScaling arguments; set by
            EinsumDense and the attention layers when they build). None: Keras' convention from the shape.

    Reference:
    - [Glorot & Bengio, 2010](https://proceedings.mlr.press/v9/glorot10a.html)
    """

    _mode = "fan_avg"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GlorotFanIn(_Glorot):
    """Xavier with fan-in only: Caffe's "xavier" filler, the "Xavier" of He et al. 2015.

    Var(W) = gain^2 / fan_in: keeps the forward variance of a linear (or tanh near 0) net constant.
    With ReLU it halves the pre-activation variance at each layer (He et al. 2015, Eq 7).

    Examples:
    >>> w = GlorotFanIn(seed=0)(shape=(3, 3, 64, 128))
    >>> layer = keras.layers.Conv2D(64, 3, kernel_initializer=GlorotFanIn())

    Args:
        distribution: "uniform" (Caffe's), "normal" or "truncated_normal".
        gain: finite positive factor on the standard deviation.
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.
        input_axes, output_axes: kernel axes that make up the fans (Keras' VarianceScaling arguments; set by
            EinsumDense and the attention layers when they build). None: Keras' convention from the shape.

    Reference:
    - [Jia et al., 2014, Caffe](https://arxiv.org/abs/1408.5093)
    - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """

    _mode = "fan_in"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GlorotFanOut(_Glorot):
    """Xavier with fan-out only: the backward-preserving half of Glorot & Bengio's compromise.

    Var(W) = gain^2 / fan_out: keeps the variance of back-propagated gradients constant in a linear net
    (Glorot & Bengio 2010, Eq 11).

    Examples:
    >>> w = GlorotFanOut(seed=0)(shape=(100, 50))
    >>> layer = keras.layers.Dense(50, kernel_initializer=GlorotFanOut())

    Args:
        distribution: "uniform", "normal" or "truncated_normal".
        gain: finite positive factor on the standard deviation.
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.
        input_axes, output_axes: kernel axes that make up the fans (Keras' VarianceScaling arguments; set by
            EinsumDense and the attention layers when they build). None: Keras' convention from the shape.

    Reference:
    - [Glorot & Bengio, 2010](https://proceedings.mlr.press/v9/glorot10a.html)
    """

    _mode = "fan_out"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class He(_Preset):
    """He / Kaiming initializer for ReLU, leaky ReLU and PReLU.

    Var(W) = 2 / ((1 + a^2) * fan), with a = `negative_slope` and fan = fan_in (forward, He et al. Eq 10) or
    fan_out (backward, Eq 14; the fan their ImageNet runs used).

    Examples:
    >>> w = He(seed=0)(shape=(3, 3, 64, 128))
    >>> layer = keras.layers.Conv2D(64, 3, activation="relu", kernel_initializer=He())
    >>> leaky = He(negative_slope=0.2)  # for keras.layers.LeakyReLU(negative_slope=0.2)

    Args:
        mode: "fan_in" or "fan_out" ("fan_avg" is accepted too).
        negative_slope: slope a >= 0 of the rectifier for negative inputs (0 for ReLU).
        distribution: "normal" (the paper's untruncated Gaussian), "truncated_normal" or "uniform".
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.
        input_axes, output_axes: kernel axes that make up the fans (Keras' VarianceScaling arguments; set by
            EinsumDense and the attention layers when they build). None: Keras' convention from the shape.

    Reference:
    - [He et al., 2015](https://arxiv.org/abs/1502.01852)
    """

    def __init__(
        self,
        mode: str = "fan_in",
        negative_slope: float = 0.0,
        distribution: str = "normal",
        seed=None,
        input_axes=None,
        output_axes=None,
    ):
        _check_choice("mode", mode, MODES)
        _check_choice("distribution", distribution, DISTRIBUTIONS)
        if not _is_real(negative_slope) or not math.isfinite(negative_slope) or not negative_slope >= 0:
            raise ValueError(
                f"`negative_slope` must be a finite number >= 0. Received: negative_slope={negative_slope!r}"
            )
        self.negative_slope = float(negative_slope)
        self._distribution = distribution
        super().__init__(
            scale=2.0 / (1.0 + self.negative_slope**2),
            mode=mode,
            distribution=_KERAS_DISTRIBUTION[distribution],
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
        )

    def get_config(self) -> dict:
        return {
            "mode": self.mode,
            "negative_slope": self.negative_slope,
            "distribution": self._distribution,
            "seed": _seed_of(self),
            **self._axes_config(),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StandardUniform(_Preset):
    """Glorot & Bengio's "standard" initializer: W ~ U[-1/sqrt(fan_in), 1/sqrt(fan_in)].

    Var(W) = 1 / (3 * fan_in), so fan_in * Var(W) = 1/3: the heuristic of the time that Glorot & Bengio show
    makes activations and back-propagated gradients shrink with depth (their Eq 1, Fig 6-7).

    Examples:
    >>> w = StandardUniform(seed=0)(shape=(1000, 1000))
    >>> layer = keras.layers.Dense(1000, activation="sigmoid", kernel_initializer=StandardUniform())

    Args:
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.
        input_axes, output_axes: kernel axes that make up the fans (Keras' VarianceScaling arguments; set by
            EinsumDense and the attention layers when they build). None: Keras' convention from the shape.

    Reference:
    - [Glorot & Bengio, 2010](https://proceedings.mlr.press/v9/glorot10a.html)
    """

    def __init__(self, seed=None, input_axes=None, output_axes=None):
        super().__init__(
            scale=1.0 / 3.0,
            mode="fan_in",
            distribution="uniform",
            seed=seed,
            input_axes=input_axes,
            output_axes=output_axes,
        )

    def get_config(self) -> dict:
        return {"seed": _seed_of(self), **self._axes_config()}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FixedNormal(_FreshSeed, keras.initializers.RandomNormal):
    """A fixed-scale Gaussian, W ~ N(0, stddev^2), whatever the layer's size: VGG's and AlexNet's N(0, 0.01).

    Var(W) = stddev^2. He et al. 2015 show that with std 0.01 a deep plain ReLU net's signal collapses and it
    does not train from scratch; VGG trained its shallow net A this way and initialized deeper nets from it.

    Examples:
    >>> w = FixedNormal(seed=0)(shape=(3, 3, 64, 64))
    >>> layer = keras.layers.Conv2D(64, 3, activation="relu", kernel_initializer=FixedNormal(0.01))

    Args:
        stddev: finite positive standard deviation (0.01 by default).
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.

    Reference:
    - [Simonyan & Zisserman, 2014](https://arxiv.org/abs/1409.1556)
    - [Krizhevsky et al., 2012](https://papers.nips.cc/paper/4824)
    """

    def __init__(self, stddev: float = 0.01, seed=None):
        super().__init__(mean=0.0, stddev=_check_positive("stddev", stddev), seed=_check_seed(seed))

    def __call__(self, shape, dtype=None):
        return super().__call__(_check_shape(shape), dtype=dtype)

    def get_config(self) -> dict:
        return {"stddev": self.stddev, "seed": _seed_of(self)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DeltaOrthogonal(_FreshSeed, keras.initializers.Orthogonal):
    """Delta-orthogonal convolution kernel: zero except the centre tap, whose (c_in, c_out) matrix is orthogonal.

    Every singular value of the centre matrix equals `gain` (rows or columns orthonormal, scaled, whichever is
    fewer), so at initialization a convolution is an orthogonal map of the channels at each position: the
    dynamical isometry with which Xiao et al. train vanilla CNNs of 10,000 layers. The orthogonal matrix is Keras'
    own `keras.initializers.Orthogonal`; a rank-2 (Dense) shape gets just that matrix.

    Examples:
    >>> w = DeltaOrthogonal(seed=0)(shape=(3, 3, 64, 64))  # w[1, 1] is orthogonal, every other tap is 0
    >>> layer = keras.layers.Conv2D(64, 3, padding="same", kernel_initializer=DeltaOrthogonal(gain=gain("tanh")))

    Args:
        gain: finite positive factor: every singular value of the centre matrix.
        seed: an int (the same values on every call, Keras semantics), None (a new draw at each call, reproducible
            under `keras.utils.set_random_seed`, so one instance may be shared by several layers) or a
            `keras.random.SeedGenerator`.

    Reference:
    - [Xiao et al., 2018](https://arxiv.org/abs/1806.05393)
    """

    def __init__(self, gain: float = 1.0, seed=None):
        super().__init__(gain=_check_positive("gain", gain), seed=_check_seed(seed))

    def __call__(self, shape, dtype=None):
        shape = _check_shape(shape)
        if len(shape) < 2:
            raise ValueError(f"`shape` must have rank >= 2 (a kernel (*k, c_in, c_out)). Received: shape={shape}")
        *taps, c_in, c_out = shape
        centre = super().__call__((c_in, c_out), dtype=dtype)
        if not taps:
            return centre
        centre = keras.ops.reshape(centre, (1,) * len(taps) + (c_in, c_out))
        # The centre tap of an even-sized kernel is index k // 2, as in Xiao et al.'s code.
        return keras.ops.pad(centre, [(k // 2, k - 1 - k // 2) for k in taps] + [(0, 0), (0, 0)])

    def get_config(self) -> dict:
        return {"gain": self.gain, "seed": _seed_of(self)}
