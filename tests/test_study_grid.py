"""Trial grids, ids and seeds (keras_initkit/study/grid.py): the keys resume depends on."""

import dataclasses
import hashlib

import pytest

from keras_initkit.study.grid import canonical_json, derive_seed, expand_grid, trial_id


@dataclasses.dataclass(frozen=True)
class _Cfg:
    width: int = 8
    acts: tuple[str, ...] = ("relu", "tanh")


def test_expand_grid_order_and_exclude():
    grid = expand_grid({"act": ["relu", "tanh"], "init": ["he", "glorot"], "seed": [0, 1]})
    assert len(grid) == 8
    assert grid[0] == {"act": "relu", "init": "he", "seed": 0}
    assert grid[1] == {"act": "relu", "init": "he", "seed": 1}  # last axis varies fastest
    assert grid[-1] == {"act": "tanh", "init": "glorot", "seed": 1}
    kept = expand_grid(
        {"act": ["relu", "sigmoid"], "init": ["he", "glorot"]}, exclude=lambda t: t == {"act": "sigmoid", "init": "he"}
    )
    assert kept == [
        {"act": "relu", "init": "he"},
        {"act": "relu", "init": "glorot"},
        {"act": "sigmoid", "init": "glorot"},
    ]


def test_expand_grid_empty_axis_is_an_error():
    with pytest.raises(ValueError, match="seed=\\[\\]"):
        expand_grid({"act": ["relu"], "seed": []})


def test_trial_id_is_pinned_stable_and_sensitive():
    # Pinned: a change here would orphan every finished trial file of every user (resume keys on these ids).
    assert trial_id({"a": 1, "seed": 0}) == "13f862ac4907"
    assert trial_id({"a": 1, "seed": 0}, {"n": 3}) == "484df646af64"
    assert trial_id({"seed": 0, "a": 1}) == trial_id({"a": 1, "seed": 0})  # key order does not matter
    assert trial_id({"a": 1, "seed": 1}) != trial_id({"a": 1, "seed": 0})
    assert trial_id({"a": 1}, _Cfg()) != trial_id({"a": 1}, _Cfg(width=9))  # a changed Config never reuses results
    assert trial_id({"a": 1}, _Cfg()) == trial_id({"a": 1}, _Cfg())
    assert len(trial_id({"a": 1}, length=20)) == 20
    expected = hashlib.sha256(canonical_json({"trial": {"a": 1}, "cfg": _Cfg()}).encode()).hexdigest()[:12]
    assert trial_id({"a": 1}, _Cfg()) == expected


def test_canonical_json_of_dataclass_and_sets():
    assert canonical_json(_Cfg()) == '{"acts":["relu","tanh"],"width":8}'
    assert canonical_json({"s": {3, 1}}) == '{"s":[1,3]}'
    with pytest.raises(TypeError, match="object"):
        canonical_json({"x": object()})


def test_derive_seed_pinned_range_and_distinct():
    assert derive_seed(0, "x", 1) == 2026599505
    assert derive_seed(7) == 989699928
    seeds = {derive_seed(s, "layer", i) for s in range(20) for i in range(20)}
    assert len(seeds) == 400  # no collisions among 400 (base, layer) pairs
    assert all(0 <= s < 2**31 for s in seeds)
    assert derive_seed(3, "dense", 0) != derive_seed(3, "dense", 1) != derive_seed(4, "dense", 1)
