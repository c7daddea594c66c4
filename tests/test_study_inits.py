"""keras_initkit.study.inits: every study init name gives its initializer, seeded and fresh."""

from __future__ import annotations

import numpy as np
import pytest

from keras_initkit.initializers import FixedNormal, GlorotAvg, GlorotFanIn, He, StandardUniform
from keras_initkit.study.inits import INIT_DESCRIPTIONS, INIT_NAMES, make_initializer

# name -> (class, Var(W) for a 400 x 200 kernel)
EXPECTED = {
    "fixed": (FixedNormal, 0.05**2),
    "glorot_fan_in": (GlorotFanIn, 1 / 400),
    "glorot_avg": (GlorotAvg, 2 / 600),
    "he_fan_in": (He, 2 / 400),
    "he_fan_out": (He, 2 / 200),
    "standard": (StandardUniform, 1 / 1200),
    "normalized": (GlorotAvg, 2 / 600),
    "he": (He, 2 / 400),
}


def test_every_name_is_covered():
    assert set(INIT_NAMES) == set(EXPECTED) == set(INIT_DESCRIPTIONS)


@pytest.mark.parametrize("name", INIT_NAMES)
def test_make_initializer_class_variance_and_seed(name):
    cls, var = EXPECTED[name]
    init = make_initializer(name, 3, fixed_std=0.05)
    assert type(init) is cls and init is not make_initializer(name, 3, fixed_std=0.05)
    w = np.asarray(init((400, 200)))
    assert abs(w.var() - var) < 5 * var * np.sqrt(2 / w.size)
    np.testing.assert_array_equal(w, np.asarray(make_initializer(name, 3, fixed_std=0.05)((400, 200))))
    assert not np.array_equal(w, np.asarray(make_initializer(name, 4, fixed_std=0.05)((400, 200))))


def test_make_initializer_errors():
    with pytest.raises(ValueError, match="`name` must be one of .*Received: name='xavier'"):
        make_initializer("xavier", 0)
    with pytest.raises(ValueError, match="`seed` must be an int. Received: seed=None"):
        make_initializer("he", None)
