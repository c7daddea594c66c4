"""keras_initkit.study.data: the per-process cached loader and its fallback."""

from __future__ import annotations

import pytest

from keras_initkit.study.data import load_data


def test_load_data_cached_and_arguments_for_their_data_set_only():
    a = load_data("digits", n_train=100, n_test=50, size=16, path=None)  # size: Shapeset's only, not passed here
    assert a is load_data("digits", n_train=100, n_test=50, size=16)
    assert a.name == "digits" and len(a.x_train) == 100 and len(a.x_test) == 50
    s = load_data("shapeset", n_train=20, n_test=5, size=16, seed=1)
    assert s.x_train.shape[1:3] == (16, 16)


def test_load_data_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache: no CIFAR-10 here
    assert load_data("cifar10", fallback="digits", n_train=10, n_test=10).name == "digits"
    with pytest.raises(FileNotFoundError):
        load_data("cifar10", n_train=10, n_test=10)
