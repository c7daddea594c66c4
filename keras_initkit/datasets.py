"""Data sets for the studies, with no download ever: Shapeset-3x2 generated in code, scikit-learn's digits, and
loaders for the MNIST and CIFAR-10 files a user already has.

`load(name, ...)` is the single entry point a study uses for `--data NAME`; it returns a `Dataset` of float32 NHWC
images in [-1, 1] and int64 labels.

| name | images | classes | source |
|---|---|---|---|
| `"shapeset"` | (size, size, 1), default 32 | 9 | generated (`shapeset`), an online stream: any n |
| `"digits"` | (8, 8, 1) | 10 | `sklearn.datasets.load_digits` (1797 images shipped with scikit-learn) |
| `"mnist"` | (28, 28, 1) | 10 | `mnist.npz` as `keras.datasets.mnist.load_data()` caches it |
| `"cifar10"` | (32, 32, 3) | 10 | the extracted `cifar-10-batches-py` folder (python pickles) |

Shapeset-3x2 (Glorot & Bengio 2010; their generator: github.com/glorotxa/Shapeset, polygongen.py): 1 or 2 objects
among triangle, parallelogram and ellipse (a 20-gon). Each object is a regular polygon of circumradius 1/2 with a
random start angle, stretched by (sx, sy) * size with sx, sy ~ U(0.2, 0.8), rotated by U(0, 2 pi) and placed
uniformly where it stays 1 pixel inside the border. Background grey ~ U(0, 0.45) and foreground grey ~ U(0.55, 1.0),
swapped with probability 1/2. Each object has its own foreground grey, as in the original generator; the second is
drawn on top of the first. The second object is re-drawn (same shape type, new scale, rotation and position) until
it covers at most half of the first object's pixels (an object covering no pixel centre is re-drawn too; that
only happens at small sizes). Pixels are 2 * grey - 1, in [-1, 1]. Rendering is binary per pixel centre (no
anti-aliasing). Departure from polygongen.py: grey levels are continuous (it draws from 256 levels).

Shapeset class index (`SHAPESET_CLASSES`), with its frequency (number of objects uniform on {1, 2}, each type
uniform on the 3 types):

| y | objects | frequency |
|---|---|---|
| 0, 1, 2 | triangle / parallelogram / ellipse alone | 1/6 each |
| 3, 4, 5 | triangle+parallelogram / triangle+ellipse / parallelogram+ellipse | 1/9 each |
| 6, 7, 8 | two triangles / two parallelograms / two ellipses | 1/18 each |
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import numpy as np

from keras_initkit.study.grid import derive_seed

__all__ = [
    "ADDING_BASELINE_MSE",
    "ADDING_RECENT_MSE",
    "DATASETS",
    "SHAPESET_CLASSES",
    "Dataset",
    "adding_problem",
    "cifar10",
    "digits",
    "load",
    "mnist",
    "shapeset",
]

DATASETS = ("shapeset", "digits", "mnist", "cifar10")
SHAPES = ("triangle", "parallelogram", "ellipse")
SHAPESET_CLASSES = (
    "triangle",
    "parallelogram",
    "ellipse",
    "triangle+parallelogram",
    "triangle+ellipse",
    "parallelogram+ellipse",
    "triangle+triangle",
    "parallelogram+parallelogram",
    "ellipse+ellipse",
)

_VERTICES = (3, 4, 20)  # per shape type; the ellipse is a 20-gon as in the paper
_SCALE = (0.2, 0.8)  # object extent per axis, as a fraction of the image side
_BACKGROUND = (0.0, 0.45)
_FOREGROUND = (0.55, 1.0)
_MAX_OVERLAP = 0.5  # of the first object's area
_MARGIN = 1.0  # pixels kept free between an object and the border, as in polygongen.py
_MIN_SIZE = 16
_CHUNK = 1024  # images per independent random stream: shapeset(n, seed)[:m] == shapeset(m, seed)
_MAX_REDRAWS = 1000

_DIGITS_TEST = 360  # fixed test split of the 1797 digits (20%)
_DIGITS_SPLIT_SEED = 0
_SHAPESET_DEFAULT = (10_000, 2_000)  # (n_train, n_test) when not given

_MNIST_HELP = (
    "Get it once on a machine with network with `python -c 'import keras; keras.datasets.mnist.load_data()'` "
    "(it saves ~/.keras/datasets/mnist.npz), or download "
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz and pass its path."
)
_CIFAR_HELP = (
    "Get it once on a machine with network with `python -c 'import keras; keras.datasets.cifar10.load_data()'` "
    "(it extracts the folder under ~/.keras/datasets), or download "
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, extract it with `tar xzf` and pass the path of the "
    "cifar-10-batches-py folder."
)
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split: float32 NHWC images, int64 labels in [0, num_classes)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image, (height, width, channels)."""
        return tuple(self.x_train.shape[1:])


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


# ----------------------------------------------------------------------------------------------- adding problem

ADDING_BASELINE_MSE = 1.0 / 6.0  # predict 1 = E[a + b]: Var(a + b) for a, b ~ U[0, 1] independent
ADDING_RECENT_MSE = 1.0 / 12.0  # know the second marked value b only: predict b + 1/2, leaving Var(a)


def adding_problem(n: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Arjovsky, Shah & Bengio 2016's variant of Hochreiter & Schmidhuber 1997, Exp 4).

    Each sequence has `length` steps of two features: a value ~ U[0, 1] and a marker in {0, 1}. Exactly two steps
    are marked, one uniformly in the first half (t < length // 2) and one uniformly in the second half; the target
    is the sum of the two marked values. Predicting the constant 1 has MSE 1/6 (`ADDING_BASELINE_MSE`); a model
    that only remembers the recent (second-half) value reaches 1/12 (`ADDING_RECENT_MSE`); solving it needs the
    first value, held from its step t1 to the end: a lag of length - 1 - t1 >= length - length // 2 steps.

    Why this variant: its two baselines are exact and distinct, and the first marker's lag spans the whole second
    half, so the memory a model needs is set by `length` alone (in H&S's variant the first marker is among the first
    10 steps whatever the length).

    Returns `(x, y)`: x float32 (n, length, 2), y float32 (n,). A fixed seed gives the same sequences.

    Reference:
    - [Arjovsky, Shah & Bengio, 2016](https://arxiv.org/abs/1511.06464), Sec 4.2
    - [Hochreiter & Schmidhuber, 1997](https://www.bioinf.jku.at/publications/older/2604.pdf), Sec 5.4
    """
    n = _check_int("n", n, 1)
    length = _check_int("length", length, 2)
    rng = np.random.default_rng(_check_int("seed", seed, 0))
    values = rng.uniform(0.0, 1.0, size=(n, length)).astype(np.float32)
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length), np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    y = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=-1), y.astype(np.float32)


# ----------------------------------------------------------------------------------------------------- Shapeset


def _rasterize(vertices: np.ndarray, size: int) -> np.ndarray:
    """Boolean masks (m, size, size) of convex polygons `vertices` (m, k, 2) in pixel units (x, y), either winding.

    A pixel (row y, column x) is inside when its centre (x + 1/2, y + 1/2) passes the half-plane test of every edge.
    Per row, the half-planes of the edges going down (up) bound x from below (above), and horizontal edges bound
    the row range, so the cost is m * k * size for the bounds plus one interval test per pixel.
    """
    v = np.asarray(vertices, dtype=np.float64)
    v = np.where(_signed_area(v)[:, None, None] < 0, v[:, ::-1], v)  # counter-clockwise (y up): interior on the left
    vx, vy = v[..., 0], v[..., 1]
    ex, ey = np.roll(vx, -1, axis=1) - vx, np.roll(vy, -1, axis=1) - vy
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(ey != 0, ex / ey, 0.0)  # x moved per unit of y along the edge
    centre = np.arange(size) + 0.5
    dy = centre - vy[..., None]  # (m, k, size)

    def crossing(on_side, fill):  # x where each edge of one side crosses each row; `fill` for the other edges
        base = np.where(on_side, vx, fill)[..., None]
        return base + np.where(on_side, slope, 0.0)[..., None] * dy

    lower = crossing(ey < 0, -np.inf).max(axis=1)  # (m, size): counter-clockwise, edges going down bound the left
    upper = crossing(ey > 0, np.inf).min(axis=1)
    outside_rows = (centre < vy.min(axis=1, keepdims=True)) | (centre > vy.max(axis=1, keepdims=True))
    first = np.clip(np.ceil(lower - 0.5), 0, size).astype(np.int16)  # first and last column whose centre is inside
    last = np.clip(np.floor(upper - 0.5), -1, size - 1).astype(np.int16)
    first[outside_rows] = size
    columns = np.arange(size, dtype=np.int16)
    return (columns >= first[..., None]) & (columns <= last[..., None])


def _signed_area(v: np.ndarray) -> np.ndarray:
    """Shoelace signed area of polygons (m, k, 2): positive for counter-clockwise in (x, y)."""
    x, y = v[..., 0], v[..., 1]
    return 0.5 * (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)


def _polygons(rng: np.random.Generator, shape: int, m: int, size: int) -> np.ndarray:
    """Vertices (m, k, 2) in pixels of m random objects of one shape type (k = 3, 4 or 20)."""
    k = _VERTICES[shape]
    start = rng.uniform(0.0, 2 * np.pi / k, m)  # a random start angle makes the stretched polygon general
    stretch = rng.uniform(*_SCALE, (m, 2)) * size
    theta = rng.uniform(0.0, 2 * np.pi, m)
    phi = start[:, None] + 2 * np.pi * np.arange(k) / k
    pts = 0.5 * np.stack([np.cos(phi), np.sin(phi)], axis=-1) * stretch[:, None, :]
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    pts = np.stack([c * pts[..., 0] - s * pts[..., 1], s * pts[..., 0] + c * pts[..., 1]], axis=-1)
    low = _MARGIN - pts.min(axis=1)  # (m, 2): the shifts that keep the object inside the image
    high = size - _MARGIN - pts.max(axis=1)
    shift = low + rng.uniform(0.0, 1.0, (m, 2)) * (high - low)
    return pts + shift[:, None, :]


def _draw_objects(rng: np.random.Generator, types: np.ndarray, size: int, accept) -> np.ndarray:
    """Masks (m, size, size) of objects of the given types, each re-drawn until `accept(masks, index)` holds."""
    masks = np.zeros((len(types), size, size), dtype=bool)
    todo = np.arange(len(types))
    for _ in range(_MAX_REDRAWS):
        if len(todo) == 0:
            return masks
        for shape in range(len(SHAPES)):
            idx = todo[types[todo] == shape]
            masks[idx] = _rasterize(_polygons(rng, shape, len(idx), size), size)
        todo = todo[~accept(masks[todo], todo)]
    raise RuntimeError(f"Shapeset: {len(todo)} objects still rejected after {_MAX_REDRAWS} draws (size={size}).")


def _shapeset_chunk(rng: np.random.Generator, m: int, size: int):
    n_obj = rng.integers(1, 3, m)
    types = rng.integers(0, len(SHAPES), (m, 2))
    swap = rng.random(m) < 0.5
    bg = rng.uniform(*_BACKGROUND, m)
    fg = rng.uniform(*_FOREGROUND, (m, 2))
    bg, fg = np.where(swap, 1.0 - bg, bg), np.where(swap[:, None], 1.0 - fg, fg)

    masks = np.zeros((m, 2, size, size), dtype=bool)
    masks[:, 0] = _draw_objects(rng, types[:, 0], size, lambda mk, idx: mk.any(axis=(1, 2)))
    two = np.flatnonzero(n_obj == 2)
    first = masks[two, 0]
    area1 = first.sum(axis=(1, 2))

    def fits(mk, idx):
        overlap = (mk & first[idx]).sum(axis=(1, 2))
        return mk.any(axis=(1, 2)) & (overlap <= _MAX_OVERLAP * area1[idx])

    masks[two, 1] = _draw_objects(rng, types[two, 1], size, fits)

    pixel_bg, pixel_fg = (2.0 * bg - 1.0).astype(np.float32), (2.0 * fg - 1.0).astype(np.float32)
    x = np.where(masks[:, 0], pixel_fg[:, 0, None, None], pixel_bg[:, None, None])
    x = np.where(masks[:, 1], pixel_fg[:, 1, None, None], x)  # the second object on top

    return x, _label(n_obj, types[:, 0], types[:, 1]), masks


def _label(n_obj: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> np.ndarray:
    """Class index (see `SHAPESET_CLASSES`) of images with n_obj objects of shape types t1 (and t2)."""
    pair = np.where(t1 == t2, 6 + t1, 2 + t1 + t2)  # {0,1} -> 3, {0,2} -> 4, {1,2} -> 5
    return np.where(n_obj == 1, t1, pair)


def shapeset(n: int, seed: int, size: int = 32, *, return_masks: bool = False):
    """Shapeset-3x2 images (Glorot & Bengio 2010), generated in code; see the module docstring for the spec.

    Deterministic for a seed; images come in independent streams of 1024, so `shapeset(n, seed)[:m]` equals
    `shapeset(m, seed)`.

    Example:
    >>> x, y = shapeset(1000, seed=0)
    >>> x.shape, x.dtype, int(y.max()) < 9
    ((1000, 32, 32, 1), dtype('float32'), True)

    Args:
        n: number of images.
        seed: non-negative integer seed.
        size: image side in pixels, >= 16.
        return_masks: also return each object's full pixel mask (before the second object hides part of the first),
            a bool array (n, 2, size, size); the second mask is empty for one-object images.

    Returns:
        `(x, y)`: float32 (n, size, size, 1) in [-1, 1] and int64 labels (n,) indexing `SHAPESET_CLASSES`;
        `(x, y, masks)` with `return_masks=True`.

    Reference:
    - [Glorot & Bengio, 2010](https://proceedings.mlr.press/v9/glorot10a.html)
    """
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_int("size", size, _MIN_SIZE)
    x = np.empty((n, size, size, 1), dtype=np.float32)
    y = np.empty(n, dtype=np.int64)
    masks = np.empty((n, 2, size, size), dtype=bool) if return_masks else None
    for chunk, begin in enumerate(range(0, n, _CHUNK)):
        end = min(begin + _CHUNK, n)
        xc, yc, mc = _shapeset_chunk(np.random.default_rng([seed, chunk]), _CHUNK, size)
        x[begin:end, ..., 0], y[begin:end] = xc[: end - begin], yc[: end - begin]
        if return_masks:
            masks[begin:end] = mc[: end - begin]
    return (x, y, masks) if return_masks else (x, y)


# ------------------------------------------------------------------------------------------------------ digits


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 handwritten digits (grey 0..16), as float32 (1797, 8, 8, 1) in [-1, 1] and labels.

    Example:
    >>> x, y = digits()
    >>> x.shape, float(x.min()), float(x.max())
    ((1797, 8, 8, 1), -1.0, 1.0)
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 8.0 - 1.0).astype(np.float32)[..., None]
    return x, bunch.target.astype(np.int64)


# ------------------------------------------------------------------------------------------- MNIST, CIFAR-10


def _cache_dirs() -> list[Path]:
    """Where Keras caches data sets: $KERAS_HOME/datasets when KERAS_HOME is set, else ~/.keras/datasets and the
    /tmp/.keras/datasets Keras falls back to when the home folder is not writable."""
    if "KERAS_HOME" in os.environ:
        return [Path(os.environ["KERAS_HOME"]).expanduser() / "datasets"]
    return [Path("~/.keras/datasets").expanduser(), Path("/tmp/.keras/datasets")]


def _not_found(what: str, looked: list[Path], help_text: str) -> FileNotFoundError:
    places = "\n".join(f"  - {p}" for p in looked)
    return FileNotFoundError(f"{what} not found (this package never downloads). Looked in:\n{places}\n{help_text}")


def _find_mnist(path) -> Path:
    if path is not None:
        p = Path(path).expanduser()
        looked = [p / "mnist.npz", p] if p.is_dir() else [p]
    else:
        looked = [d / "mnist.npz" for d in _cache_dirs()]
    for p in looked:
        if p.is_file():
            return p
    raise _not_found("MNIST file mnist.npz", looked, _MNIST_HELP)


def _find_cifar(path) -> Path:
    if path is not None:
        roots = [Path(path).expanduser()]
    else:
        roots = _cache_dirs()
    looked = []
    for root in roots:
        # the folder itself, or a folder holding it as older Keras (datasets/) or Keras 3 (datasets/*-target/) left it
        for p in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-py-target" / "cifar-10-batches-py"):
            if path is None and p == root:
                continue
            looked.append(p)
            if all((p / f).is_file() for f in _CIFAR_FILES):
                return p
    return_help = f"The folder must hold {', '.join(_CIFAR_FILES)}. " + _CIFAR_HELP
    raise _not_found("CIFAR-10 folder cifar-10-batches-py", looked, return_help)


def _read_mnist(path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    file = _find_mnist(path)
    with np.load(file, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
        if missing:
            raise ValueError(f"{file} is not an MNIST npz: keys {missing} are missing. Received keys: {f.files}")
        arrays = [f[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    for name, x in zip(("x_train", "x_test"), arrays[0::2], strict=True):
        if x.ndim != 3 or x.dtype != np.uint8:
            raise ValueError(f"{file}: `{name}` must be uint8 (N, H, W). Received: {x.dtype} {x.shape}")
    return (arrays[0], arrays[1]), (arrays[2], arrays[3])


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays and lists) and refuses any other global."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("_codecs", "encode"),  # bytes pickled by python 3 with protocol 2
        }
    )

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Refusing to load `{module}.{name}` from a CIFAR-10 batch file.")


def _read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(file, "rb") as f:
        batch = _NumpyUnpickler(f, encoding="bytes").load()
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{file} is not a CIFAR-10 batch: it needs keys b'data' and b'labels'. Received: {list(batch)}"
        )
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{file}: b'data' must be uint8 (N, 3072). Received: {data.dtype} {data.shape}")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows hold the R, G, B planes in turn -> NHWC
    return x, np.asarray(batch["labels"], dtype=np.int64)


def _read_cifar(path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    folder = _find_cifar(path)
    train = [_read_cifar_batch(folder / f) for f in _CIFAR_FILES[:-1]]
    x_test, y_test = _read_cifar_batch(folder / _CIFAR_FILES[-1])
    return (np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])), (x_test, y_test)


def _scale_uint8(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return x[..., None] if x.ndim == 3 else x


def mnist(path=None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """MNIST from a local `mnist.npz` (keys x_train, y_train, x_test, y_test, as `keras.datasets.mnist` saves it).

    Never downloads. Without `path`, looks in $KERAS_HOME/datasets when KERAS_HOME is set, else in ~/.keras/datasets
    and /tmp/.keras/datasets; a missing file raises FileNotFoundError naming every place looked and how to get it.

    Args:
        path: the npz file, or a folder holding mnist.npz.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 (N, 28, 28, 1) in [-1, 1] and int64 labels.
    """
    (x_train, y_train), (x_test, y_test) = _read_mnist(path)
    return (_scale_uint8(x_train), y_train.astype(np.int64)), (_scale_uint8(x_test), y_test.astype(np.int64))


def cifar10(path=None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 from a local extracted `cifar-10-batches-py` folder (data_batch_1..5, test_batch python pickles).

    Never downloads. Without `path`, looks under $KERAS_HOME/datasets when KERAS_HOME is set, else under
    ~/.keras/datasets and /tmp/.keras/datasets, for `cifar-10-batches-py` and Keras 3's
    `cifar-10-batches-py-target/cifar-10-batches-py`; a missing folder raises FileNotFoundError naming every place
    looked and how to get it. The pickles are read with an unpickler that only rebuilds numpy arrays.

    Args:
        path: the cifar-10-batches-py folder, or a folder holding it.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: float32 (N, 32, 32, 3) in [-1, 1] and int64 labels.
    """
    (x_train, y_train), (x_test, y_test) = _read_cifar(path)
    return (_scale_uint8(x_train), y_train), (_scale_uint8(x_test), y_test)


# -------------------------------------------------------------------------------------------------------- load


def _take(name: str, arg: str, value, available: int) -> int:
    if value is None:
        return available
    value = _check_int(arg, value, 1 if arg == "n_train" else 0)
    if value > available:
        raise ValueError(
            f"`{arg}` must be <= {available}, the {arg[2:]} examples {name!r} has. Received: {arg}={value}"
        )
    return value


def load(name: str, *, n_train=None, n_test=None, seed: int = 0, path=None, size: int = 32) -> Dataset:
    """A data set by name (one of `DATASETS`), as float32 NHWC images in [-1, 1] and int64 labels.

    - `"shapeset"`: `n_train` (default 10000) and `n_test` (default 2000) fresh images from independent streams
      whose seeds derive from `seed`; `size` sets the image side.
    - `"digits"`: a fixed split (the same for every seed) of 1437 train / 360 test images.
    - `"mnist"`, `"cifar10"`: the official split, read from `path` or the Keras cache (see `mnist`, `cifar10`).
    For the fixed splits, `n_train` / `n_test` take the first examples, and `seed` is not used.

    Example:
    >>> data = load("shapeset", n_train=500, n_test=100, seed=1)
    >>> data.x_train.shape, data.num_classes
    ((500, 32, 32, 1), 9)
    """
    if name not in DATASETS:
        raise ValueError(f"`name` must be one of {DATASETS}. Received: name={name!r}")
    seed = _check_int("seed", seed, 0)
    if path is not None and name not in ("mnist", "cifar10"):
        raise ValueError(f"`path` applies to 'mnist' and 'cifar10' only. Received: path={path!r} for name={name!r}")
    if size != 32 and name != "shapeset":
        raise ValueError(f"`size` applies to 'shapeset' only. Received: size={size!r} for name={name!r}")

    if name == "shapeset":
        n_train = _check_int("n_train", _SHAPESET_DEFAULT[0] if n_train is None else n_train, 1)
        n_test = _check_int("n_test", _SHAPESET_DEFAULT[1] if n_test is None else n_test, 0)
        x_train, y_train = shapeset(n_train, derive_seed(seed, "shapeset", "train"), size)
        if n_test:
            x_test, y_test = shapeset(n_test, derive_seed(seed, "shapeset", "test"), size)
        else:
            x_test, y_test = x_train[:0], y_train[:0]
        return Dataset(x_train, y_train, x_test, y_test, len(SHAPESET_CLASSES), name)

    if name == "digits":
        x, y = digits()
        order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(x))
        train, test = order[: len(x) - _DIGITS_TEST], order[len(x) - _DIGITS_TEST :]
        (x_train, y_train), (x_test, y_test) = (x[train], y[train]), (x[test], y[test])
        scale = None
    else:
        (x_train, y_train), (x_test, y_test) = (_read_mnist if name == "mnist" else _read_cifar)(path)
        scale = _scale_uint8
    n_tr = _take(name, "n_train", n_train, len(x_train))
    n_te = _take(name, "n_test", n_test, len(x_test))
    x_train, y_train, x_test, y_test = x_train[:n_tr], y_train[:n_tr], x_test[:n_te], y_test[:n_te]
    if scale is not None:  # scale after slicing: the full uint8 CIFAR-10 is 150 MB, as float32 600 MB
        x_train, x_test = scale(x_train), scale(x_test)
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    return Dataset(x_train, y_train, x_test, y_test, 10, name)
