"""keras_initkit.study.summary: the one rule of each shared summary helper, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from keras_initkit.study.summary import UNDERFLOW, claim_row, layer_factor, layer_factors, se_diff, spread, with_trial


def test_spread_default_format_and_finite_values_only():
    assert spread([1.0, 2.0, 3.0]) == "2 ± 1 [1, 3] (n=3)"
    assert spread([0.5, 0.25, float("nan"), float("inf")]) == "0.375 ± 0.18 [0.25, 0.5] (n=2)"  # n counts kept values
    assert spread([7.0]) == "7 ± 0 [7, 7] (n=1)"
    assert spread(pd.Series([120.0, 130.0, 145.0]), ".0f") == "132 ± 13 [120, 145] (n=3)"


def test_spread_empty_and_all_non_finite():
    assert spread([]) == "no trial"
    assert spread([float("nan"), float("nan")]) == "no finite value (2 non-finite)"


def test_spread_confidence_interval():
    from scipy import stats

    v = np.array([1.0, 2.0, 4.0, 5.0])
    half = stats.t.ppf(0.975, 3) * v.std(ddof=1) / 2
    assert spread(v, ci=0.95).endswith(f", 95% CI [{3 - half:.3g}, {3 + half:.3g}]")
    assert "CI" not in spread([1.0], ci=0.95)
    with pytest.raises(ValueError, match="`ci` must be a level in \\(0, 1\\)"):
        spread(v, ci=95)


def test_se_diff():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    assert se_diff(a, b) == pytest.approx(math.sqrt(1.0 / 3 + 2.0 / 2))
    assert se_diff([1.0], [5.0]) == 0.0  # single seeds: no spread to estimate
    assert se_diff(pd.Series(a), np.array([3.0])) == pytest.approx(math.sqrt(1.0 / 3))


def test_layer_factor_one_rule_for_non_positive_and_non_finite_values():
    assert layer_factor([0, 1, 2, 3], [1.0, 0.5, 0.25, 0.125]) == pytest.approx(0.5)
    # left out of the fit, never NaN for the whole trial: a zero, a negative, NaN, inf, and values below UNDERFLOW
    assert layer_factor([0, 1, 2, 3, 4], [1.0, 0.5, 0.0, -1.0, np.nan]) == pytest.approx(0.5)
    assert layer_factor([0, 1, 2, 3], [1.0, 1e-20, UNDERFLOW, 1e-40]) == pytest.approx(1e-20)
    assert layer_factor([0, 1, 2], [4.0, np.inf, 1.0]) == pytest.approx(0.5)
    assert math.isnan(layer_factor([0, 1], [1.0, 0.0]))  # one value left
    with pytest.raises(ValueError, match="same length"):
        layer_factor([0, 1, 2], [1.0, 0.5])


def test_layer_factors_per_group():
    rows = []
    for seed, rho in ((0, 0.5), (1, 2.0)):
        for depth in range(4):
            rows.append(dict(seed=seed, kind="preact", depth=depth, value=rho**depth, predicted=0.9**depth))
    out = layer_factors(pd.DataFrame(rows).sample(frac=1, random_state=0), ["seed", "kind"], predicted="predicted")
    assert list(out.columns) == ["seed", "kind", "factor", "predicted", "factor_down", "n_fit"]
    np.testing.assert_allclose(out["factor"], [0.5, 2.0])
    np.testing.assert_allclose(out["factor_down"], [2.0, 0.5])
    np.testing.assert_allclose(out["predicted"], [0.9, 0.9])
    assert list(out["n_fit"]) == [4, 4]
    empty = layer_factors(pd.DataFrame(columns=["seed", "depth", "value"]), ["seed"])
    assert empty.empty and list(empty.columns) == ["seed", "factor", "factor_down", "n_fit"]
    with pytest.raises(ValueError, match="must have the columns \\['index'\\]"):
        layer_factors(pd.DataFrame(rows), ["seed"], x="index")


def test_claim_row_and_with_trial():
    claims, rules = {"A1": "statement"}, {"A1": "rule"}
    row = claim_row(claims, rules, "A1", "PASS", "3/3", "paper")
    assert row == {"claim": "A1", "statement": "statement", "rule": "rule", "measured": "3/3", "paper": "paper",
                   "status": "PASS"}  # fmt: skip
    with pytest.raises(ValueError, match="`status` must be one of"):
        claim_row(claims, rules, "A1", "ok", "", "")
    with pytest.raises(ValueError, match="`claim` must be a key"):
        claim_row(claims, rules, "A2", "PASS", "", "")
    frame = pd.DataFrame({"value": [1.0, 2.0], "init": ["a", "b"]})
    out = with_trial(frame, {"init": "all", "seed": 3}, ("init", "seed"), keep=("init",), phase="x")
    assert list(out.columns) == ["value", "init", "seed", "phase"] and list(out["init"]) == ["a", "b"]
    assert (out["seed"] == 3).all() and "seed" not in frame


def test_floor_rule_majority_error_and_learned():
    from keras_initkit.study.summary import floor_error, learned, majority_error

    assert majority_error([0, 0, 0, 1, 2, 2]) == pytest.approx(0.5)
    # a balanced 10-class test set of 360 images: majority-class error 0.9
    p0, n = 0.9, 360
    floor = floor_error(p0, n)
    assert floor == pytest.approx(0.9 - 2 * math.sqrt(0.9 * 0.1 / 360))
    assert learned(floor - 1e-9, p0, n) and not learned(floor, p0, n) and not learned(float("nan"), p0, n)
    np.testing.assert_array_equal(learned([0.1, 0.89, 0.95], p0, n), [True, False, False])
    with pytest.raises(ValueError, match="`chance` must be an error fraction in \\[0, 1\\]. Received: chance=1.5"):
        floor_error(1.5, 10)
    with pytest.raises(ValueError, match="`n` must be a positive number of test examples. Received: n=0"):
        floor_error(0.5, 0)
    with pytest.raises(ValueError, match="`labels` must not be empty"):
        majority_error([])


def test_mcnemar_exact_against_hand_binomial():
    from keras_initkit.study.summary import mcnemar

    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 0], bool)
    b = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 0], bool)
    out = mcnemar(a, b)  # a right alone on 5 images, b alone on 1: two-sided p = 2 * P(X >= 5 | n=6, 1/2) = 14/64
    assert (out["a_only"], out["b_only"]) == (5, 1) and out["p"] == pytest.approx(14 / 64)
    assert mcnemar(a, a) == {"a_only": 0, "b_only": 0, "p": 1.0}
    pooled = mcnemar(np.stack([a, a]), np.stack([b, b]))  # (seeds, images): pairs pooled
    assert (pooled["a_only"], pooled["b_only"]) == (10, 2)
    with pytest.raises(ValueError, match="`a` and `b` must be aligned"):
        mcnemar(a, b[:5])


def test_paired_bootstrap_ci_covers_the_difference_and_detects_none():
    from keras_initkit.study.summary import paired_bootstrap, paired_text

    rng = np.random.default_rng(1)
    b = rng.random((5, 400)) < 0.7
    a = b | (rng.random((5, 400)) < 0.2)  # a is right wherever b is, and on ~6% more images
    out = paired_bootstrap(a, b)
    assert out["diff"] == pytest.approx(a.mean() - b.mean())
    assert 0 < out["lo"] < out["diff"] < out["hi"] and out["p"] < 0.01 and (out["seeds"], out["images"]) == (5, 400)
    same = paired_bootstrap(b, b)
    assert same["diff"] == 0 and same["lo"] == 0 and same["hi"] == 0 and same["p"] == 1.0
    noise = paired_bootstrap(rng.random((5, 400)) < 0.7, rng.random((5, 400)) < 0.7)
    assert noise["lo"] < 0 < noise["hi"] and noise["p"] > 0.05
    assert paired_bootstrap(a, b) == out  # a fixed resampling seed: the same tables give the same CI
    text = paired_text(a, b)
    assert text.startswith(f"acc diff {out['diff']:+.3g} (95% CI [") and "McNemar p=" in text
    assert "5 seeds x 400 images" in text
    with pytest.raises(ValueError, match="`level` must be in \\(0, 1\\)"):
        paired_bootstrap(a, b, level=95)


def test_claim_row_accepts_inconclusive():
    row = claim_row({"C": "s"}, {"C": "r"}, "C", "INCONCLUSIVE", "both at the floor", "p")
    assert row["status"] == "INCONCLUSIVE"
    with pytest.raises(ValueError, match="`status` must be one of"):
        claim_row({"C": "s"}, {"C": "r"}, "C", "MAYBE", "m", "p")
