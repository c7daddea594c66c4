"""Tests of studies/batchnorm.py: the BN inference-mode helpers against the training-mode net, the nets, the claim
rules on synthetic tables (PASS and FAIL), the grid, and the SMOKE profile end to end through run(cfg)."""

import dataclasses
import json

import keras
import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import batchnorm as study

# ------------------------------------------------------------------------------------------------ BN helpers


def _mlp(batchnorm=True, seed=0):
    cfg = dataclasses.replace(study.SMOKE, n_hidden=3, width=8, init_std=0.5)
    return study.paper_mlp(cfg, 12, 3, seed=seed, batchnorm=batchnorm)


def _bn_net(seed: int, n: int):
    """A BN net with non-trivial gamma and beta (so that the checks below do not pass by symmetry), and n inputs."""
    rng = np.random.default_rng(seed)
    model = _mlp()
    for bn in study.batchnorm_layers(model):
        bn.gamma.assign(rng.uniform(0.5, 2.0, size=bn.gamma.shape).astype("float32"))
        bn.beta.assign(rng.normal(size=bn.beta.shape).astype("float32"))
    return model, rng.normal(size=(n, 12)).astype("float32")


def _outputs(model, x, training: bool):
    return keras.ops.convert_to_numpy(model(x, training=training))


def _assert_same_statistics(before, model):
    for (m0, v0), (m1, v1) in zip(before, study.bn_statistics(model), strict=True):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)


def test_population_statistics_make_inference_equal_training_on_that_batch():
    model, x = _bn_net(0, 200)
    before = study.bn_statistics(model)
    stats = study.population_statistics(model, x)
    _assert_same_statistics(before, model)  # nothing moved
    # layer 1's statistics are those of x W by hand
    w = keras.ops.convert_to_numpy(model.get_layer("dense_1").kernel).astype("float64")
    np.testing.assert_allclose(stats[0][0], (x @ w).mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats[0][1], (x @ w).var(axis=0), rtol=1e-4, atol=1e-5)
    study.set_bn_statistics(model, stats)
    np.testing.assert_allclose(_outputs(model, x, False), _outputs(model, x, True), rtol=1e-4, atol=1e-5)


def test_initial_moving_averages_differ_from_the_training_net():
    # The reason for re-estimating: Keras' moving averages start at mean 0, variance 1.
    model, x = _bn_net(1, 200)
    assert np.abs(_outputs(model, x, False) - _outputs(model, x, True)).max() > 1e-2


def test_inference_accuracy_uses_reestimated_statistics_and_restores_the_moving_averages():
    model, x = _bn_net(2, 300)
    y = _outputs(model, x, True).argmax(axis=1)  # labels the training-mode net gets all right on the batch x
    own = study.accuracy(model, x, y)
    before = study.bn_statistics(model)
    acc, acc_ema = study.inference_accuracy(model, x, y, x_stats=x)
    assert acc == 1.0
    assert acc_ema == own
    _assert_same_statistics(before, model)


def test_inference_accuracy_without_bn_is_plain_accuracy():
    rng = np.random.default_rng(3)
    model = _mlp(batchnorm=False)
    x = rng.normal(size=(50, 12)).astype("float32")
    y = rng.integers(0, 3, 50)
    pred = keras.ops.convert_to_numpy(model(x, training=False)).argmax(axis=1)
    expected = float((pred == y).mean())
    assert study.inference_accuracy(model, x, y, x_stats=x) == (pytest.approx(expected), pytest.approx(expected))
    assert study.population_statistics(model, x) == []


def test_accuracy_counts_non_finite_logits_as_wrong():
    model = _mlp(batchnorm=False)
    model.get_layer("output").kernel.assign(np.full((8, 3), np.nan, "float32"))
    x = np.ones((4, 12), "float32")
    assert study.accuracy(model, x, np.zeros(4, int)) == 0.0
    assert not study.weights_finite(model)


def test_set_bn_statistics_rejects_a_wrong_count():
    with pytest.raises(ValueError, match="stats"):
        study.set_bn_statistics(_mlp(), [])


def test_mlp_with_and_without_bn_start_from_the_same_kernels():
    plain, bn = _mlp(batchnorm=False, seed=4), _mlp(batchnorm=True, seed=4)
    for name in ("dense_1", "dense_2", "dense_3", "output"):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(plain.get_layer(name).kernel),
            keras.ops.convert_to_numpy(bn.get_layer(name).kernel),
        )
    assert not bn.get_layer("dense_1").use_bias and plain.get_layer("dense_1").use_bias
    assert [la.name for la in study.batchnorm_layers(bn)] == ["bn_1", "bn_2", "bn_3"]
    sigmoids = [[la.name for la in m.layers if la.name.startswith("sigmoid")] for m in (bn, plain)]
    assert sigmoids == [["sigmoid_1", "sigmoid_2", "sigmoid_3"]] * 2
    # the kernels have the configured std (8 x 12 + 8 x 8 x 2 + 8 x 3 weights)
    w = np.concatenate([keras.ops.convert_to_numpy(v).ravel() for v in plain.weights if len(v.shape) == 2])
    assert w.std() == pytest.approx(0.5, rel=0.15)


# ------------------------------------------------------------------------------------------------ tables


def test_steps_to_is_the_first_step_at_or_above_the_target():
    curve = pd.DataFrame({"step": [0, 10, 20, 30], "acc": [0.1, 0.5, 0.9, 0.8]})
    assert study.steps_to(curve, 0.9) == 20
    assert study.steps_to(curve, 0.5) == 10
    assert study.steps_to(curve, 0.95) == -1


def _curves_and_final(spec):
    """spec: (bn, mult, seed) -> (accuracies at steps 0, 10, ..., diverged)."""
    curves, final = [], []
    for (bn, mult, seed), (accs, diverged) in spec.items():
        trial = {"part": "mlp", "bn": bn, "lr_mult": mult, "seed": seed, "lr": mult}
        curves += [{**trial, "step": 10 * i, "acc": a} for i, a in enumerate(accs)]
        final.append({**trial, "final_acc": float(np.mean(accs[-2:])), "final_acc_ema": 0.0, "max_acc": max(accs),
                      "diverged": diverged, "num_classes": 10})  # fmt: skip
    return pd.DataFrame(curves), pd.DataFrame(final)


def test_target_and_outcomes():
    curves, final = _curves_and_final(
        {
            (False, 1.0, 0): ([0.1, 0.5, 0.9, 0.92], False),
            (False, 1.0, 1): ([0.1, 0.3, 0.88, 0.9], False),
            (True, 1.0, 0): ([0.1, 0.95, 0.96, 0.97], False),
            (False, 30.0, 0): ([0.1, 0.1, 0.1, 0.12], False),
            (False, 5.0, 0): ([0.1, 0.5, 0.8, 0.85], False),
            (True, 30.0, 0): ([0.1, np.nan, 0.1, 0.1], True),
        }
    )
    target = study.target_accuracy(final)
    assert target == pytest.approx(0.89)  # the lower of the two no-BN x1 finals (0.91, 0.89)
    out = study.trial_outcomes(curves, final, target).set_index(["bn", "lr_mult", "seed"])
    assert out.at[(False, 1.0, 0), "steps_to_target"] == 20
    assert out.at[(True, 1.0, 0), "steps_to_target"] == 10
    assert out.at[(False, 1.0, 1), "outcome"] == "trains"  # the target is never above a baseline seed's final
    assert out.at[(False, 30.0, 0), "outcome"] == "stalls"  # 0.11 < (0.1 + 0.89) / 2
    assert out.at[(False, 5.0, 0), "outcome"] == "worse"
    assert out.at[(True, 30.0, 0), "outcome"] == "diverged"
    speed = study.speed_table(out.reset_index(), target).set_index(["net", "lr_mult"])
    assert speed.at[("BN", 1.0), "speedup"] == pytest.approx(25.0 / 10.0)
    assert speed.at[("no BN", 1.0), "reached"] == 2


def _outcomes(rows):
    """rows: (bn, mult, seed, steps_to_target, final_acc, outcome)."""
    out = pd.DataFrame(rows, columns=["bn", "lr_mult", "seed", "steps_to_target", "final_acc", "outcome"])
    out["diverged"] = out["outcome"] == "diverged"
    out["net"] = [study.net_label(b) for b in out["bn"]]
    out["lr"] = out["lr_mult"]
    return out


GOOD = [
    (False, 1.0, 0, 800, 0.97, "trains"),
    (False, 1.0, 1, 900, 0.96, "trains"),
    (False, 1.0, 2, 700, 0.97, "trains"),
    (True, 1.0, 0, 100, 0.99, "trains"),
    (True, 1.0, 1, 150, 0.99, "trains"),
    (True, 1.0, 2, 125, 0.98, "trains"),
    (False, 30.0, 0, -1, 0.10, "stalls"),
    (False, 30.0, 1, -1, 0.11, "stalls"),
    (False, 30.0, 2, -1, np.nan, "diverged"),
    (True, 30.0, 0, 200, 0.98, "trains"),
    (True, 30.0, 1, 250, 0.98, "trains"),
    (True, 30.0, 2, 225, 0.97, "trains"),
]


def _replace(rows, key, new):
    return [new if r[:3] == key else r for r in rows]


def test_claim_b1_pass_and_fail():
    out = _outcomes(GOOD)
    speed = study.speed_table(out, 0.96)
    claim = study.claim_b1(speed, out, 0.96)
    assert claim["status"] == "PASS" and "ratio" in claim["measured"]
    overlap = _outcomes(_replace(GOOD, (True, 1.0, 2), (True, 1.0, 2, 750, 0.98, "trains")))  # slower than 700
    assert study.claim_b1(study.speed_table(overlap, 0.96), overlap, 0.96)["status"] == "FAIL"
    never = _outcomes(_replace(GOOD, (True, 1.0, 0), (True, 1.0, 0, -1, 0.5, "worse")))
    assert study.claim_b1(study.speed_table(never, 0.96), never, 0.96)["status"] == "FAIL"
    only_bn = out[out["bn"]]
    assert study.claim_b1(study.speed_table(only_bn, 0.96), only_bn, 0.96)["status"] == "N/A"


def test_claim_b3_and_b4_pass_and_fail():
    out = _outcomes(GOOD)
    assert study.claim_b3(out)["status"] == "PASS"
    assert study.claim_b4(out)["status"] == "PASS"
    # BN at x30 misses the target in one seed: B3 fails; B4 too (no other raised rate)
    bn_miss = _outcomes(_replace(GOOD, (True, 30.0, 1), (True, 30.0, 1, -1, 0.9, "worse")))
    assert study.claim_b3(bn_miss)["status"] == "FAIL"
    assert study.claim_b4(bn_miss)["status"] == "FAIL"
    # no BN trains as well at x30 as at x1: B3 and B4 fail
    fine = [(False, 30.0, s, 600, 0.97, "trains") for s in range(3)]
    nobn_fine = _outcomes([r for r in GOOD if r[:2] != (False, 30.0)] + fine)
    assert study.claim_b3(nobn_fine)["status"] == "FAIL"
    assert study.claim_b4(nobn_fine)["status"] == "FAIL"
    # no BN at x30 does worse but still trains partly: B3 passes (lower final accuracy), B4 fails (not stalled)
    worse = [(False, 30.0, s, -1, a, "worse") for s, a in enumerate((0.80, 0.82, 0.81))]
    nobn_worse = _outcomes([r for r in GOOD if r[:2] != (False, 30.0)] + worse)
    assert study.claim_b3(nobn_worse)["status"] == "PASS"
    assert study.claim_b4(nobn_worse)["status"] == "FAIL"
    base_only = out[out["lr_mult"] == 1.0]
    assert study.claim_b3(base_only)["status"] == "N/A" and study.claim_b4(base_only)["status"] == "N/A"


def _percentiles(series):
    """series: (bn, seed) -> p50 values over records; p15 = p50 - 1, p85 = p50 + 1 (one unit and its layer)."""
    rows = []
    for (bn, seed), p50 in series.items():
        for scope in ("unit", "layer"):
            for i, v in enumerate(p50):
                for q, off in (("p15", -1.0), ("p50", 0.0), ("p85", 1.0)):
                    rows.append({"step": 50 * i, "layer": "sigmoid_3", "depth": 2, "stat": q, "value": v + off,
                                 "bn": bn, "lr_mult": 1.0, "seed": seed, "scope": scope})  # fmt: skip
            rows.append({"step": 0, "layer": "sigmoid_1", "depth": 0, "stat": "p50", "value": 99.0,
                         "bn": bn, "lr_mult": 1.0, "seed": seed, "scope": scope})  # fmt: skip
    return pd.DataFrame(rows)


def test_drift_table_and_claim_b2():
    steady, moving = [0.0, 0.2, 0.1, 0.3], [0.0, -1.0, -2.0, -1.5]
    drift = study.drift_table(
        _percentiles({(False, 0): moving, (False, 1): moving, (True, 0): steady, (True, 1): steady})
    )
    row = drift[(drift["seed"] == 0) & (~drift["bn"]) & (drift["scope"] == "unit")].iloc[0]
    assert row["layer"] == "sigmoid_3"  # the last hidden layer only
    assert row["drift_p50"] == pytest.approx(2.0) and row["drift"] == pytest.approx(2.0)
    assert row["p15_start"] == pytest.approx(-1.0) and row["p85_end"] == pytest.approx(-0.5)
    assert study.claim_b2(drift)["status"] == "PASS"  # 2.0 vs 0.3
    half = [0.0, -0.5, -0.2, -0.45]  # drift 0.5 < 2 x 0.3
    drift = study.drift_table(_percentiles({(False, 0): half, (False, 1): half, (True, 0): steady, (True, 1): steady}))
    assert study.claim_b2(drift)["status"] == "FAIL"
    one_seed = {(False, 0): moving, (False, 1): steady, (True, 0): steady, (True, 1): moving}
    assert study.claim_b2(study.drift_table(_percentiles(one_seed)))["status"] == "FAIL"  # seed 1 reversed
    assert study.claim_b2(study.drift_table(_percentiles({(True, 0): steady})))["status"] == "N/A"


def _deep(accs):
    """accs: (init, bn) -> final accuracies over seeds."""
    return pd.DataFrame(
        [
            {"init": i, "bn": bn, "seed": s, "final_acc": a, "final_acc_ema": a, "final_loss": 1.0, "diverged": False}
            for (i, bn), values in accs.items()
            for s, a in enumerate(values)
        ]
    )


def test_claim_x1_pass_and_fail():
    good = {("fixed", False): [0.10, 0.09], ("he", False): [0.90, 0.92], ("fixed", True): [0.9, 0.91],
            ("he", True): [0.93, 0.94]}  # fmt: skip
    assert study.claim_x1(_deep(good))["status"] == "PASS"
    flipped = {**good, ("fixed", True): [0.1, 0.1], ("he", True): [0.95, 0.95]}  # BN does not close the gap
    assert study.claim_x1(_deep(flipped))["status"] == "FAIL"
    reversed_gap = {**good, ("fixed", True): [0.95, 0.95], ("he", True): [0.10, 0.12]}  # |gap| as large, other way
    assert study.claim_x1(_deep(reversed_gap))["status"] == "FAIL"
    assert study.claim_x1(_deep({("fixed", False): [0.1]}))["status"] == "N/A"
    table = study.deep_table(_deep(good)).set_index(["init", "net"])
    assert table.at[("he", "no BN"), "final_acc_mean"] == pytest.approx(0.91)


def test_every_claim_has_a_statement_and_a_rule():
    assert set(study.CLAIMS) == set(study.RULES) == {"B1", "B2", "B3", "B4", "X1"}


# ------------------------------------------------------------------------------------------------ the grid


def test_quick_grid():
    grid = study.trials(study.QUICK)
    mlp = [t for t in grid if t["part"] == "mlp"]
    deep = [t for t in grid if t["part"] == "deep"]
    assert len(mlp) == 2 * len(study.QUICK.lr_multipliers) * len(study.QUICK.seeds)
    assert len(deep) == 2 * len(study.QUICK.deep_inits) * len(study.QUICK.deep_seeds)
    assert all(json.loads(json.dumps(t)) == t and "seed" in t for t in grid)
    assert len({json.dumps(t, sort_keys=True) for t in grid}) == len(grid)
    assert study.trials(dataclasses.replace(study.QUICK, deep_seeds=())) == mlp


@pytest.mark.parametrize(
    "change, match",
    [
        ({"data": "imagenet"}, "data"),
        ({"steps": 110}, "steps"),
        ({"record_every": 30}, "record_every"),
        ({"lr_multipliers": (5.0, 30.0)}, "lr_multipliers"),
        ({"final_evals": 1000}, "final_evals"),
        ({"track_unit": 100}, "track_unit"),
        ({"deep_inits": ("xavier",)}, "deep_inits"),
        ({"deep_steps": 410}, "deep_steps"),
        ({"seeds": ()}, "seeds"),
    ],
)
def test_bad_configs_raise_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        study.trials(dataclasses.replace(study.QUICK, **change))


# ------------------------------------------------------------------------------------------------ end to end


def test_smoke_profile_end_to_end():
    import matplotlib

    matplotlib.use("Agg")
    assert study.PROFILES["smoke"] is study.SMOKE
    out = study.run(study.SMOKE)
    final = out["final"].set_index("net")
    assert set(final.index) == {"BN", "no BN"} and (final["steps"] == 60).all()
    assert final["final_acc"].between(0, 1).all() and not final["diverged"].any()
    curves = out["curves"]
    assert sorted(curves["step"].unique()) == [0, 20, 40, 60]
    # the BN net learns digits in 60 steps at lr 1; the moving averages lag behind (momentum 0.99)
    assert final.at["BN", "final_acc"] > 0.5
    p = out["percentiles"]
    assert set(p["scope"]) == {"unit", "layer"} and set(p["layer"]) == {"sigmoid_1", "sigmoid_2"}
    assert set(study.PERCENTILES) <= set(p["stat"])
    # the BN net's sigmoid input at init: each unit normalized on the probe batch, so its p15/p85 are near -+1
    unit0 = p[(p["scope"] == "unit") & (p["step"] == 0) & (p["net"] == "BN")].pivot_table(
        index="layer", columns="stat", values="value"
    )
    assert unit0["p50"].abs().max() < 0.5 and unit0["p85"].min() > 0.5 and unit0["p15"].max() < -0.5
    claims = out["claims"].set_index("claim")
    assert list(claims.index) == ["B1", "B2", "B3", "B4", "X1"]
    assert claims.at["B1", "status"] in ("PASS", "FAIL") and claims.at["B2", "status"] in ("PASS", "FAIL")
    assert claims.at["B3", "status"] == "N/A" and claims.at["X1", "status"] == "N/A"  # not in this grid
    assert len(out["deep_final"]) == 2 and out["deep"]["seeds"].sum() == 2
    tables = {k: out[k] for k in ("curves", "percentiles", "final", "deep_curves", "deep_final")}
    figures = study.plot(tables, out)
    assert {"accuracy", "percentiles_unit", "percentiles_layer", "drift", "steps_to_target", "deep"} <= set(figures)
