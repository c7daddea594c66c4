"""Data sets: Shapeset-3x2 against its spec, digits, the MNIST / CIFAR-10 file loaders, and `load`."""

from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest
from matplotlib.path import Path as MplPath

from keras_initkit import datasets as ds

N = 20_000  # the big Shapeset sample shared by the statistical tests


@pytest.fixture(scope="module")
def sample():
    return ds.shapeset(N, seed=7, return_masks=True)


# ------------------------------------------------------------------------------------------------ Shapeset


def test_shapeset_shapes_dtype_and_range(sample):
    x, y, masks = sample
    assert x.shape == (N, 32, 32, 1) and x.dtype == np.float32
    assert y.shape == (N,) and np.issubdtype(y.dtype, np.integer)
    assert masks.shape == (N, 2, 32, 32) and masks.dtype == bool
    assert x.min() >= -1.0 and x.max() <= 1.0
    assert set(np.unique(y)) == set(range(9)) and len(ds.SHAPESET_CLASSES) == 9


def test_shapeset_class_frequencies_within_binomial_tolerance(sample):
    _, y, _ = sample
    expected = np.array([1 / 6] * 3 + [1 / 9] * 3 + [1 / 18] * 3)
    freq = np.bincount(y, minlength=9) / N
    sigma = np.sqrt(expected * (1 - expected) / N)
    assert np.all(np.abs(freq - expected) < 4 * sigma), (freq, expected)
    # and the labels agree with the masks: classes 0-2 have one object, 3-8 two
    two = sample[2][:, 1].any(axis=(1, 2))
    np.testing.assert_array_equal(two, y >= 3)


def test_shapeset_overlap_rule(sample):
    _, _, masks = sample
    two = masks[:, 1].any(axis=(1, 2))
    first, second = masks[two, 0], masks[two, 1]
    overlap = (first & second).sum(axis=(1, 2))
    area1 = first.sum(axis=(1, 2))
    assert np.all(overlap <= 0.5 * area1)
    # the rule is not vacuous: objects do overlap, some close to the limit
    assert (overlap > 0).mean() > 0.2
    assert (overlap / area1).max() > 0.45


def test_shapeset_objects_inside_image_and_nonempty(sample):
    _, _, masks = sample
    assert masks[:, 0].any(axis=(1, 2)).all()
    border = masks[..., 0, :].any() or masks[..., -1, :].any() or masks[..., :, 0].any() or masks[..., :, -1].any()
    assert not border
    # positions spread over the image: object centroids cover every quarter of it
    ys, xs = np.nonzero(masks[:2000, 0].sum(axis=0))
    assert xs.min() < 8 and xs.max() > 24 and ys.min() < 8 and ys.max() > 24


def test_shapeset_object_areas_match_the_scale_rule(sample):
    # area = sx * sy * size^2 * (area of the regular k-gon of circumradius 1/2), sx, sy ~ U(0.2, 0.8): E[sx sy] = 1/4
    _, y, masks = sample
    area = masks[:, 0].sum(axis=(1, 2))
    for shape, k in enumerate((3, 4, 20)):
        polygon = k / 2 * 0.25 * math.sin(2 * math.pi / k)
        expected = 0.25 * 32**2 * polygon
        got = area[y == shape]
        lo, hi = 0.2**2 * 32**2 * polygon, 0.8**2 * 32**2 * polygon
        assert abs(got.mean() - expected) < 0.04 * expected, (shape, got.mean(), expected)
        assert got.min() > 0.5 * lo and got.max() < 1.2 * hi


def test_shapeset_labels_name_the_objects(sample):
    for n_obj in (1, 2):
        for t1 in range(3):
            for t2 in range(3):
                y = int(ds._label(np.array([n_obj]), np.array([t1]), np.array([t2]))[0])
                objects = [ds.SHAPES[t1]] + ([ds.SHAPES[t2]] if n_obj == 2 else [])
                assert sorted(ds.SHAPESET_CLASSES[y].split("+")) == sorted(objects)
    # and in the generated images: the first object's mean area is that of the shapes the label names
    _, y, masks = sample
    area = masks[:, 0].sum(axis=(1, 2))
    shape_area = {s: area[y == i].mean() for i, s in enumerate(ds.SHAPES)}
    for label in range(3, 9):
        names = ds.SHAPESET_CLASSES[label].split("+")
        expected = np.mean([shape_area[s] for s in names])
        assert abs(area[y == label].mean() - expected) < 0.05 * expected, ds.SHAPESET_CLASSES[label]


def test_shapeset_grey_levels(sample):
    x, _, masks = sample
    g = (x[..., 0] + 1) / 2  # back to grey levels
    union = masks.any(axis=1)
    swapped = []
    for i in range(500):
        bg = np.unique(g[i][~union[i]])
        fg1 = np.unique(g[i][masks[i, 0] & ~masks[i, 1]])
        fg2 = np.unique(g[i][masks[i, 1]])
        assert len(bg) == 1 and len(fg1) <= 1 and len(fg2) <= 1  # flat background, one grey per object
        dark_bg = bg[0] <= 0.45 + 1e-6
        assert dark_bg or bg[0] >= 0.55 - 1e-6
        for fg in (fg1, fg2):
            if len(fg):  # the object is on the other side of the 0.45 / 0.55 split
                assert (fg[0] >= 0.55 - 1e-6) if dark_bg else (fg[0] <= 0.45 + 1e-6)
        swapped.append(not dark_bg)
    assert abs(np.mean(swapped) - 0.5) < 4 * math.sqrt(0.25 / 500)
    # a single shape is visible: its pixels differ from the background by at least 0.1 in grey
    single = ~masks[:500, 1].any(axis=(1, 2))
    for i in np.flatnonzero(single)[:50]:
        assert abs(g[i][masks[i, 0]].mean() - g[i][~masks[i, 0]].mean()) >= 0.1 - 1e-6


def test_shapeset_deterministic_and_seeded():
    x1, y1 = ds.shapeset(1100, seed=3)
    x2, y2 = ds.shapeset(1100, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = ds.shapeset(1100, seed=4)
    assert not np.array_equal(x1, x3)
    # a prefix of a longer stream is the shorter stream (across the 1024-image chunk boundary too)
    x4, y4 = ds.shapeset(1030, seed=3)
    np.testing.assert_array_equal(x4, x1[:1030])
    np.testing.assert_array_equal(y4, y1[:1030])


def test_shapeset_other_size():
    x, y, masks = ds.shapeset(300, seed=0, size=16, return_masks=True)
    assert x.shape == (300, 16, 16, 1) and masks.shape == (300, 2, 16, 16)
    assert masks[:, 0].any(axis=(1, 2)).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0, "seed": 0}, "`n` must be an integer >= 1"),
        ({"n": 10, "seed": -1}, "`seed` must be an integer >= 0"),
        ({"n": 10, "seed": 0, "size": 8}, "`size` must be an integer >= 16. Received: size=8"),
        ({"n": 2.5, "seed": 0}, "Received: n=2.5"),
    ],
)
def test_shapeset_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds.shapeset(**kwargs)


def test_rasterize_matches_matplotlib_point_in_polygon():
    rng = np.random.default_rng(0)
    size = 32
    centres = np.stack(np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="xy"), -1).reshape(-1, 2)
    for shape in range(3):
        verts = ds._polygons(rng, shape, 40, size)
        verts[::2] = verts[::2, ::-1]  # clockwise too
        masks = ds._rasterize(verts, size)
        for v, mask in zip(verts, masks, strict=True):
            ref = MplPath(v).contains_points(centres).reshape(size, size)  # row y, column x
            assert (mask != ref).sum() <= 1, shape  # at most a pixel centre lying on an edge


# -------------------------------------------------------------------------------------------------- digits


def test_digits():
    x, y = ds.digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    from sklearn.datasets import load_digits

    np.testing.assert_allclose(x[..., 0], load_digits().images / 8 - 1, atol=1e-6)


# -------------------------------------------------------------------------------------------- MNIST, CIFAR


def _write_mnist(file, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    raw = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    raw["x_train"][0, 0, 0], raw["x_train"][0, 0, 1] = 0, 255
    file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(file, **raw)
    return raw


def _write_cifar(folder, n=4, seed=0):
    """The real layout: python pickles of dicts with bytes keys, b'data' uint8 (N, 3072) as R, G, B planes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    raw = {}
    for name in ds._CIFAR_FILES:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        raw[name] = (data, labels)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return raw


def test_mnist_from_explicit_file_and_folder(tmp_path):
    raw = _write_mnist(tmp_path / "m" / "mnist.npz")
    for path in (tmp_path / "m" / "mnist.npz", tmp_path / "m", str(tmp_path / "m")):
        (x_train, y_train), (x_test, y_test) = ds.mnist(path)
        assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (5, 28, 28, 1) and x_train.dtype == np.float32
        np.testing.assert_allclose(x_train[..., 0], raw["x_train"] / 127.5 - 1, atol=1e-6)
        np.testing.assert_allclose(x_test[..., 0], raw["x_test"] / 127.5 - 1, atol=1e-6)
        np.testing.assert_array_equal(y_train, raw["y_train"])
        np.testing.assert_array_equal(y_test, raw["y_test"])
        assert x_train.min() == -1.0 and x_train.max() == 1.0


def test_mnist_from_keras_home_and_home(tmp_path, monkeypatch):
    raw = _write_mnist(tmp_path / "kh" / "datasets" / "mnist.npz", seed=1)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    (_, y_train), _ = ds.mnist()
    np.testing.assert_array_equal(y_train, raw["y_train"])

    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    raw = _write_mnist(tmp_path / "home" / ".keras" / "datasets" / "mnist.npz", seed=2)
    (_, y_train), _ = ds.mnist()
    np.testing.assert_array_equal(y_train, raw["y_train"])


def test_mnist_missing_file_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        ds.mnist()
    text = str(err.value)
    assert str(tmp_path / "empty" / "datasets" / "mnist.npz") in text
    assert "never downloads" in text and "keras.datasets.mnist.load_data()" in text and "mnist.npz" in text

    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "nohome"))
    with pytest.raises(FileNotFoundError) as err:
        ds.mnist(tmp_path / "nowhere.npz")
    assert str(tmp_path / "nowhere.npz") in str(err.value)


def test_mnist_bad_file(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="not an MNIST npz"):
        ds.mnist(tmp_path / "mnist.npz")


def test_cifar10_from_folder_in_real_format(tmp_path):
    raw = _write_cifar(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):
        (x_train, y_train), (x_test, y_test) = ds.cifar10(path)
        assert x_train.shape == (20, 32, 32, 3) and x_test.shape == (4, 32, 32, 3) and x_train.dtype == np.float32
        data = np.concatenate([raw[f"data_batch_{i}"][0] for i in range(1, 6)])
        # pixel (row r, column c, channel ch) is byte ch * 1024 + r * 32 + c of its row
        i, r, c, ch = 7, 3, 29, 2
        assert x_train[i, r, c, ch] == pytest.approx(data[i, ch * 1024 + r * 32 + c] / 127.5 - 1, abs=1e-6)
        np.testing.assert_allclose(
            x_test, raw["test_batch"][0].reshape(4, 3, 32, 32).transpose(0, 2, 3, 1) / 127.5 - 1, atol=1e-6
        )
        np.testing.assert_array_equal(y_train, sum((raw[f"data_batch_{i}"][1] for i in range(1, 6)), []))
        np.testing.assert_array_equal(y_test, raw["test_batch"][1])
        assert x_train.min() >= -1 and x_train.max() <= 1


@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar-10-batches-py-target/cifar-10-batches-py"])
def test_cifar10_from_keras_home(tmp_path, monkeypatch, layout):
    raw = _write_cifar(tmp_path / "kh" / "datasets" / layout, n=2, seed=3)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    _, (_, y_test) = ds.cifar10()
    np.testing.assert_array_equal(y_test, raw["test_batch"][1])


def test_cifar10_missing_folder_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as err:
        ds.cifar10()
    text = str(err.value)
    assert str(tmp_path / "empty" / "datasets" / "cifar-10-batches-py") in text
    assert str(tmp_path / "empty" / "datasets" / "cifar-10-batches-py-target" / "cifar-10-batches-py") in text
    assert "cifar-10-python.tar.gz" in text and "data_batch_1" in text


def test_cifar10_refuses_foreign_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(folder, n=1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": print}, f)
    with pytest.raises(pickle.UnpicklingError, match="Refusing"):
        ds.cifar10(folder)


# ---------------------------------------------------------------------------------------------------- load


def test_load_shapeset_independent_streams():
    d = ds.load("shapeset", n_train=300, n_test=200, seed=5, size=16)
    assert isinstance(d, ds.Dataset) and d.name == "shapeset" and d.num_classes == 9
    assert d.x_train.shape == (300, 16, 16, 1) and d.x_test.shape == (200, 16, 16, 1) and d.input_shape == (16, 16, 1)
    assert not np.array_equal(d.x_train[:200], d.x_test)  # train and test are different streams
    again = ds.load("shapeset", n_train=300, n_test=200, seed=5, size=16)
    np.testing.assert_array_equal(d.x_train, again.x_train)
    np.testing.assert_array_equal(d.x_test, again.x_test)
    other = ds.load("shapeset", n_train=300, n_test=200, seed=6, size=16)
    assert not np.array_equal(d.x_train, other.x_train)


def test_load_digits_fixed_split():
    d = ds.load("digits")
    assert d.x_train.shape == (1437, 8, 8, 1) and d.x_test.shape == (360, 8, 8, 1) and d.num_classes == 10
    x, _ = ds.digits()
    key = lambda a: sorted(map(bytes, a.reshape(len(a), -1)))  # noqa: E731
    assert key(np.concatenate([d.x_train, d.x_test])) == key(x)  # a partition of the 1797 images
    small = ds.load("digits", n_train=100, n_test=50, seed=9)
    np.testing.assert_array_equal(small.x_train, d.x_train[:100])
    np.testing.assert_array_equal(small.y_test, d.y_test[:50])


def test_load_mnist_and_cifar_with_path(tmp_path):
    _write_mnist(tmp_path / "mnist.npz")
    d = ds.load("mnist", n_train=10, path=tmp_path / "mnist.npz")
    assert d.x_train.shape == (10, 28, 28, 1) and d.x_test.shape == (5, 28, 28, 1) and d.y_train.dtype == np.int64
    _write_cifar(tmp_path / "cifar-10-batches-py", n=2)
    d = ds.load("cifar10", n_test=1, path=tmp_path)
    assert d.x_train.shape == (10, 32, 32, 3) and d.x_test.shape == (1, 32, 32, 3) and d.num_classes == 10
    assert d.x_train.dtype == np.float32 and -1 <= d.x_train.min() and d.x_train.max() <= 1


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        (
            "imagenet",
            {},
            r"`name` must be one of \('shapeset', 'digits', 'mnist', 'cifar10'\). Received: name='imagenet'",
        ),
        ("digits", {"n_train": 5000}, "`n_train` must be <= 1437.*Received: n_train=5000"),
        ("digits", {"n_test": 361}, "`n_test` must be <= 360.*Received: n_test=361"),
        ("digits", {"n_train": 0}, "`n_train` must be an integer >= 1"),
        ("shapeset", {"n_test": -1}, "`n_test` must be an integer >= 0"),
        ("digits", {"size": 16}, "`size` applies to 'shapeset' only"),
        ("shapeset", {"path": "x"}, "`path` applies to 'mnist' and 'cifar10' only"),
        ("digits", {"seed": -3}, "`seed` must be an integer >= 0"),
    ],
)
def test_load_errors(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ds.load(name, **kwargs)


def test_load_mnist_too_many(tmp_path):
    _write_mnist(tmp_path / "mnist.npz")
    with pytest.raises(ValueError, match="`n_train` must be <= 12"):
        ds.load("mnist", n_train=13, path=tmp_path)


def test_load_missing_mnist_raises_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        ds.load("mnist")
    assert ds.DATASETS == ("shapeset", "digits", "mnist", "cifar10")


def test_adding_problem_markers_target_and_baselines():
    from keras_initkit.datasets import ADDING_BASELINE_MSE, ADDING_RECENT_MSE, adding_problem

    x, y = adding_problem(200_000, 30, seed=5)
    assert x.shape == (200_000, 30, 2) and y.shape == (200_000,) and x.dtype == y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers[:, :15].sum(axis=1) == 1).all() and (markers[:, 15:].sum(axis=1) == 1).all()
    np.testing.assert_allclose(y, (values * markers).sum(axis=1), rtol=1e-6)
    # Exact baselines, on a large sample: constant 1 -> 1/6; the recent (second-half) value + 1/2 -> 1/12.
    se = np.sqrt(np.var((y - 1.0) ** 2) / len(y))
    assert abs(np.mean((y - 1.0) ** 2) - ADDING_BASELINE_MSE) < 4 * se
    recent = (values[:, 15:] * markers[:, 15:]).sum(axis=1) + 0.5
    se = np.sqrt(np.var((y - recent) ** 2) / len(y))
    assert abs(np.mean((y - recent) ** 2) - ADDING_RECENT_MSE) < 4 * se
    # Every first-half and second-half position is used, about uniformly.
    counts = np.bincount(markers[:, :15].argmax(axis=1), minlength=15)
    assert counts.min() > 0.9 * len(y) / 15


def test_adding_problem_is_deterministic_and_validates():
    from keras_initkit.datasets import adding_problem

    a, b = adding_problem(64, 11, seed=1), adding_problem(64, 11, seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], adding_problem(64, 11, seed=2)[0])
    # An odd length: first marker in t < 5, second in 5 <= t < 11.
    assert (a[0][:, :5, 1].sum(axis=1) == 1).all() and (a[0][:, 5:, 1].sum(axis=1) == 1).all()
    for kwargs, text in [
        ({"n": 0, "length": 10, "seed": 0}, "`n` must be an integer >= 1. Received: n=0"),
        ({"n": 4, "length": 1, "seed": 0}, "`length` must be an integer >= 2. Received: length=1"),
        ({"n": 4, "length": 10, "seed": -1}, "`seed` must be an integer >= 0. Received: seed=-1"),
    ]:
        with pytest.raises(ValueError, match=re.escape(text)):
            adding_problem(**kwargs)
