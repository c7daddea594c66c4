"""The studies' data: `keras_initkit.datasets.load`, cached per process, with an optional fallback data set.

Every trial of a study in one worker process reads the same arrays: `load_data` loads them once (a small LRU cache
keyed by its arguments). The arguments that apply to one kind of data set only are passed to it only (`size` to
Shapeset, `path` to MNIST and CIFAR-10), so one call serves a data set and its fallback.
"""

from __future__ import annotations

import functools


def load_data(
    name: str,
    *,
    fallback: str | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    path: str | None = None,
    size: int = 32,
):
    """`keras_initkit.datasets.load(name, ...)`, cached per process; `fallback` is loaded instead when the files of
    `name` are absent here (None: a missing file raises FileNotFoundError). The Dataset's `name` says which one it is.

    Args:
        name, n_train, n_test, seed: as `keras_initkit.datasets.load`.
        fallback: a data set name to use when `name`'s files are absent.
        path: the file or folder of "mnist" / "cifar10" (passed to those only).
        size: the image side of "shapeset" (passed to it only).
    """
    try:
        return _load(name, n_train, n_test, seed, path, size)
    except FileNotFoundError:
        if fallback is None:
            raise
        return _load(fallback, n_train, n_test, seed, path, size)


@functools.lru_cache(maxsize=4)
def _load(name: str, n_train, n_test, seed: int, path, size: int):
    from keras_initkit.datasets import load

    kwargs = {"size": size} if name == "shapeset" else {}
    if name in ("mnist", "cifar10"):
        kwargs["path"] = path
    return load(name, n_train=n_train, n_test=n_test, seed=seed, **kwargs)
