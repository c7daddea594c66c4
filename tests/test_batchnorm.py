"""Tests of studies/batchnorm.py: the pinned pre-registration, the BN inference-mode helpers against the
training-mode net, the nets, every claim rule on synthetic tables (PASS, FAIL and INCONCLUSIVE), the grid and its
errors, and the SMOKE profile end to end through run(cfg)."""

import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import batchnorm as study

from keras_initkit.study.metrics import accuracy

PREREGISTRATION = Path(__file__).resolve().parents[1] / "docs" / "results" / "batchnorm" / "PREREGISTRATION.md"

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
    own = accuracy(model, x, y)
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
    assert accuracy(model, x, np.zeros(4, int)) == 0.0
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


# ------------------------------------------------------------------------------------------------ protocol


def test_preregistration_hash_is_pinned():
    pinned = re.search(r"sha256: `([0-9a-f]{64})`", PREREGISTRATION.read_text())
    assert pinned is not None, "PREREGISTRATION.md must state `sha256: `<hex>``"
    assert study.preregistration_hash() == pinned.group(1), "CLAIMS, RULES, THRESHOLDS or QUICK changed"


def test_quick_uses_fresh_seeds_and_enough_of_them():
    assert study.QUICK.seeds == (200, 201, 202, 203, 204)
    assert not set(study.QUICK.seeds) & set(range(10)) and not set(study.QUICK.seeds) & set(range(100, 105))
    assert len(study.QUICK.seeds) >= study.MIN_SEEDS
    assert study.QUICK.validation == 0  # the confirmatory run reads the held-out set, never the pilots' split


def test_every_claim_has_a_statement_and_a_rule():
    assert set(study.CLAIMS) == set(study.RULES) == {"B1", "B2", "B3", "B4", "B5", "X1"}


def test_split_moves_training_images_to_the_held_out_set():
    d = study.split(study.QUICK, True)
    assert len(d["x"]) == 1437 - 537 and len(d["x_test"]) == 360 + 537 and d["x"].shape[1] == 64
    v = study.split(dataclasses.replace(study.QUICK, validation=200), True)
    assert len(v["x"]) == 700 and len(v["x_test"]) == 200
    np.testing.assert_array_equal(v["x_test"], d["x"][700:])  # validation: training images, never held-out ones
    with pytest.raises(ValueError, match="test_extra"):
        study.split(dataclasses.replace(study.QUICK, test_extra=1437), True)


# ------------------------------------------------------------------------------------------------ tables


def test_steps_to_is_the_first_step_after_the_start_at_or_above_the_target():
    curve = pd.DataFrame({"step": [0, 10, 20, 30], "acc": [0.95, 0.5, 0.9, 0.8]})
    assert study.steps_to(curve, 0.9) == 20  # step 0 does not count
    assert study.steps_to(curve, 0.5) == 10
    assert study.steps_to(curve, 0.96) == -1


def _curves_and_final(spec, n_test=100, chance=0.9):
    """spec: (part, bn, mult, seed) -> (accuracies at steps 0, 10, ..., diverged)."""
    curves, final = [], []
    for (part, bn, mult, seed), (accs, diverged) in spec.items():
        trial = {"part": part, "bn": bn, "lr_mult": mult, "seed": seed, "lr": mult}
        curves += [{**trial, "step": 10 * i, "acc": a} for i, a in enumerate(accs)]
        final.append({**trial, "final_acc": accs[-1], "final_acc_ema": 0.0, "max_acc": max(accs), "diverged": diverged,
                      "chance_error": chance, "n_test": n_test, "steps": 10 * (len(accs) - 1)})  # fmt: skip
    return pd.DataFrame(curves), pd.DataFrame(final)


def test_target_outcomes_and_the_floor_rule():
    curves, final = _curves_and_final({
        ("mlp", False, 1.0, 0): ([0.1, 0.5, 0.9, 0.92], False),
        ("mlp", False, 1.0, 1): ([0.1, 0.3, 0.88, 0.89], False),
        ("mlp", True, 1.0, 0): ([0.1, 0.95, 0.96, 0.97], False),
        ("mlp", False, 30.0, 0): ([0.1, 0.1, 0.1, 0.14], False),  # within 2 SE of chance (floor acc 0.16)
        ("mlp", False, 5.0, 0): ([0.1, 0.5, 0.8, 0.85], False),
        ("mlp", True, 30.0, 0): ([0.1, np.nan, 0.1, 0.1], True),
        ("sig", True, 5.0, 0): ([0.1, 0.5, 0.9, 0.95], False),
    })  # fmt: skip
    target = study.target_accuracy(final)
    assert target == pytest.approx(0.89)  # the lower of the two no-BN x1 finals (the sig net does not count)
    out = study.trial_outcomes(curves, final, target).set_index(["part", "bn", "lr_mult", "seed"])
    assert out.at[("mlp", False, 1.0, 0), "steps_to_target"] == 20
    assert out.at[("mlp", True, 1.0, 0), "steps_to_target"] == 10
    assert out.at[("mlp", False, 1.0, 1), "outcome"] == "trains"  # the target is never above a baseline's final
    assert out.at[("mlp", False, 30.0, 0), "outcome"] == "no learning"
    assert not out.at[("mlp", False, 30.0, 0), "learned"]
    assert out.at[("mlp", False, 30.0, 0), "steps_counted"] == 30  # never: the budget
    assert out.at[("mlp", False, 5.0, 0), "outcome"] == "worse"
    assert out.at[("mlp", True, 30.0, 0), "outcome"] == "diverged"
    assert out.at[("sig", True, 5.0, 0), "outcome"] == "trains"
    speed = study.speed_table(out.reset_index(), target).set_index(["net", "lr_mult"])
    assert speed.at[("BN", 1.0), "speedup"] == pytest.approx(25.0 / 10.0)
    assert speed.at[("no BN", 1.0), "reached"] == 2 and len(speed) == 5  # the 3-layer net only


SEEDS = (0, 1, 2, 3, 4)


def _out(rows):
    """rows: (part, bn, mult, seed, steps_to_target, final_acc[, learned[, diverged]]), budget 2000."""
    full = [(*r, *(True, False)[len(r) - 6 :]) for r in rows]
    out = pd.DataFrame(full, columns=["part", "bn", "lr_mult", "seed", "steps_to_target", "final_acc", "learned",
                                      "diverged"])  # fmt: skip
    out["steps_counted"] = out["steps_to_target"].where(out["steps_to_target"] >= 0, 2000)
    out["outcome"] = np.where(out["diverged"], "diverged", np.where(~out["learned"], "no learning", np.where(
        out["steps_to_target"] >= 0, "trains", "worse")))  # fmt: skip
    out["net"] = [study.net_label(b) for b in out["bn"]]
    out["lr"] = out["lr_mult"]
    out["floor_acc"] = 0.16
    return out


def _steps(part, bn, mult, steps, acc=0.97, **kw):
    return [(part, bn, mult, s, n, acc, *kw.get("flags", (True, False))) for s, n in zip(SEEDS, steps, strict=True)]


NO1 = _steps("mlp", False, 1.0, [800, 900, 700, 850, 750])
BN1 = _steps("mlp", True, 1.0, [100, 150, 125, 110, 130])


def test_claim_b1_pass_fail_inconclusive():
    assert study.claim_b1(_out(NO1 + BN1), 0.96)["status"] == "PASS"
    never = _out(NO1 + _steps("mlp", True, 1.0, [100, 150, -1, 110, 130]))
    assert study.claim_b1(never, 0.96)["status"] == "FAIL"
    slower = _out(NO1 + _steps("mlp", True, 1.0, [900, 1000, 800, 900, 800]))
    assert study.claim_b1(slower, 0.96)["status"] == "FAIL"
    mixed = _out(NO1 + _steps("mlp", True, 1.0, [200, 1800, 300, 1700, 400]))  # faster on average, CI spans 1
    claim = study.claim_b1(mixed, 0.96)
    assert claim["status"] == "INCONCLUSIVE" and "95% CI" in claim["measured"]
    floor = _out(_steps("mlp", False, 1.0, [800, 900, 700, 850, 750], flags=(False, False)) + BN1)
    assert study.claim_b1(floor, 0.96)["status"] == "INCONCLUSIVE"  # no BN x1 did not learn: no target
    assert study.claim_b1(_out(NO1[:4] + BN1[:4]), 0.96)["status"] == "INCONCLUSIVE"  # 4 seeds


def test_claim_b5_pass_fail_inconclusive():
    bn5 = _steps("mlp", True, 5.0, [50, 60, 40, 55, 45])
    assert study.claim_b5(_out(BN1 + bn5), 0.96)["status"] == "PASS"
    slower = _steps("mlp", True, 5.0, [300, 400, 250, 200, 300])
    assert study.claim_b5(_out(BN1 + slower), 0.96)["status"] == "FAIL"
    diverged = _steps("mlp", True, 5.0, [50, 60, -1, 55, 45])
    assert study.claim_b5(_out(BN1 + diverged), 0.96)["status"] == "FAIL"
    mixed = _steps("mlp", True, 5.0, [20, 300, 25, 250, 30])
    assert study.claim_b5(_out(BN1 + mixed), 0.96)["status"] == "INCONCLUSIVE"
    floor = _steps("mlp", True, 1.0, [100, 150, 125, 110, 130], flags=(False, False))
    assert study.claim_b5(_out(floor + bn5), 0.96)["status"] == "INCONCLUSIVE"


def _correct(cells, n=200):
    """cells: (part, bn, mult, init) -> accuracy; per seed, image i is correct iff u_i < accuracy for one draw u
    shared by every cell of the seed (so that a better cell is right on a superset of the images)."""
    rows = []
    for s in SEEDS:
        u = np.random.default_rng(s).random(n)
        for (part, bn, mult, init), acc in cells.items():
            rows += [{"part": part, "bn": bn, "lr_mult": mult, "init": init, "seed": s, "image": i,
                      "correct": bool(u[i] < acc)} for i in range(n)]  # fmt: skip
    return pd.DataFrame(rows)


def test_claim_b3_pass_fail_inconclusive():
    def claim(no5_acc, bn5_steps=(200, 250, 225, 240, 210), no5_flags=(True, False)):
        out = _out(
            NO1
            + BN1
            + _steps("mlp", True, 5.0, bn5_steps)
            + _steps("mlp", False, 5.0, [-1] * 5, acc=no5_acc, flags=no5_flags)
        )
        correct = _correct({("mlp", False, 1.0, "normal"): 0.95, ("mlp", False, 5.0, "normal"): no5_acc})
        return study.claim_b3(out, correct)

    passed = claim(0.80)
    assert passed["status"] == "PASS" and "CI" in passed["measured"] and "McNemar" in passed["measured"]
    assert claim(0.80, bn5_steps=(200, -1, 225, 240, 210))["status"] == "FAIL"  # BN x5 misses the target
    assert claim(0.99)["status"] == "FAIL"  # no BN x5 is better than x1
    assert claim(0.95)["status"] == "INCONCLUSIVE"  # no BN x5 the same as x1: not shown worse
    assert claim(0.95, no5_flags=(False, True))["status"] == "PASS"  # diverged counts as worse
    floor = _out(_steps("mlp", False, 1.0, [-1] * 5, acc=0.1, flags=(False, False)) + BN1
                 + _steps("mlp", True, 5.0, [200] * 5) + _steps("mlp", False, 5.0, [-1] * 5, acc=0.1))  # fmt: skip
    correct = _correct({("mlp", False, 1.0, "normal"): 0.1, ("mlp", False, 5.0, "normal"): 0.1})
    assert study.claim_b3(floor, correct)["status"] == "INCONCLUSIVE"
    assert study.claim_b3(_out(NO1 + BN1), correct)["status"] == "INCONCLUSIVE"  # no raised rate


def test_claim_b4_pass_fail_inconclusive():
    def claim(bn_acc, no_acc, bn_learned=True, no_learned=False):
        out = _out(_steps("sig", True, 5.0, [-1] * 5, acc=bn_acc, flags=(bn_learned, False))
                   + _steps("sig", False, 5.0, [-1] * 5, acc=no_acc, flags=(no_learned, False)))  # fmt: skip
        return study.claim_b4(
            out, _correct({("sig", True, 5.0, "normal"): bn_acc, ("sig", False, 5.0, "normal"): no_acc})
        )

    assert claim(0.9, 0.1)["status"] == "PASS"
    assert claim(0.9, 0.6, no_learned=True)["status"] == "FAIL"  # no BN learned too
    assert claim(0.1, 0.6, bn_learned=False, no_learned=True)["status"] == "FAIL"
    assert claim(0.1, 0.1, bn_learned=False)["status"] == "INCONCLUSIVE"  # neither learned
    assert study.claim_b4(_out(NO1 + BN1), _correct({}))["status"] == "INCONCLUSIVE"  # no deeper net


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
    steady, moving, half = [0.0, 0.2, 0.1, 0.3], [0.0, -1.0, -2.0, -1.5], [0.0, -0.5, -0.2, -0.45]

    def drift(no, bn, seeds=SEEDS):
        return study.drift_table(_percentiles({**{(False, s): no for s in seeds}, **{(True, s): bn for s in seeds}}))

    d = drift(moving, steady)
    row = d[(d["seed"] == 0) & (~d["bn"]) & (d["scope"] == "unit")].iloc[0]
    assert row["layer"] == "sigmoid_3"  # the last hidden layer only
    assert row["drift_p50"] == pytest.approx(2.0) and row["drift"] == pytest.approx(2.0)
    assert row["p15_start"] == pytest.approx(-1.0) and row["p85_end"] == pytest.approx(-0.5)
    assert study.claim_b2(d)["status"] == "PASS"  # 2.0 vs 0.3
    assert study.claim_b2(drift(half, steady))["status"] == "FAIL"  # 0.5 < 2 x 0.3
    assert study.claim_b2(drift(moving, steady, SEEDS[:3]))["status"] == "INCONCLUSIVE"


def _deep(accs, threads=1, n=200):
    """accs: (init, bn) -> accuracy of every seed; the deep_final rows and the correct table."""
    final = pd.DataFrame([{"part": "deep", "init": i, "bn": bn, "lr_mult": 1.0, "seed": s, "final_acc": a,
                           "final_acc_ema": a, "final_loss": 1.0, "diverged": False, "chance_error": 0.9,
                           "n_test": n, "intra_op_threads": threads}
                          for (i, bn), a in accs.items() for s in SEEDS])  # fmt: skip
    return final, _correct({("deep", bn, 1.0, i): a for (i, bn), a in accs.items()}, n)


def test_claim_x1_pass_fail_inconclusive():
    good = {("fixed", False): 0.1, ("he", False): 0.9, ("fixed", True): 0.88, ("he", True): 0.9}
    assert study.claim_x1(*_deep(good))["status"] == "PASS"
    assert study.claim_x1(*_deep({**good, ("fixed", True): 0.1}))["status"] == "FAIL"  # BN does not close the gap
    assert study.claim_x1(*_deep({**good, ("fixed", True): 0.9, ("he", True): 0.1}))["status"] == "FAIL"  # reversed
    assert study.claim_x1(*_deep(good, threads=2))["status"] == "INCONCLUSIVE"  # thread-dependent run
    no_gap = {**good, ("he", False): 0.1}  # He does not learn without BN either: nothing to shrink
    assert study.claim_x1(*_deep(no_gap))["status"] == "INCONCLUSIVE"
    final, correct = _deep(good)
    assert study.claim_x1(final[final["seed"] < 4], correct)["status"] == "INCONCLUSIVE"
    table = study.deep_table(final).set_index(["init", "net"])
    assert table.at[("he", "no BN"), "final_acc_mean"] == pytest.approx(0.9)
    assert table.at[("fixed", "no BN"), "learned"] == 0 and table.at[("he", "BN"), "learned"] == 5


# ------------------------------------------------------------------------------------------------ the grid


def test_quick_grid():
    q = study.QUICK
    grid = study.trials(q)
    by_part = {p: [t for t in grid if t["part"] == p] for p in study.PARTS}
    assert len(by_part["mlp"]) == 2 * len(q.lr_multipliers) * len(q.seeds)
    assert len(by_part["sig"]) == 2 * len(q.sig_multipliers) * len(q.seeds)
    assert len(by_part["deep"]) == 2 * len(q.deep_inits) * len(q.seeds)
    assert all(json.loads(json.dumps(t)) == t and "seed" in t for t in grid)
    assert len({json.dumps(t, sort_keys=True) for t in grid}) == len(grid)
    assert study.trials(dataclasses.replace(q, deep_depth=0, sig_depth=0)) == by_part["mlp"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"data": "imagenet"}, "data"),
        ({"steps": 110}, "steps"),
        ({"record_every": 30}, "record_every"),
        ({"lr_multipliers": (5.0, 30.0)}, "lr_multipliers"),
        ({"sig_multipliers": ()}, "sig_multipliers"),
        ({"track_unit": 100}, "track_unit"),
        ({"deep_inits": ("xavier",)}, "deep_inits"),
        ({"deep_steps": 410}, "deep_steps"),
        ({"test_extra": -1}, "test_extra"),
        ({"seeds": ()}, "seeds"),
    ],
)
def test_bad_configs_raise_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        study.trials(dataclasses.replace(study.QUICK, **change))


# ------------------------------------------------------------------------------------------------ end to end


def test_smoke_profile_end_to_end():  # ~30 s
    import matplotlib

    matplotlib.use("Agg")
    assert study.PROFILES["smoke"] is study.SMOKE
    out = study.run(study.SMOKE)
    final = out["final"].set_index(["part", "net", "lr_mult"])
    assert len(final) == 8 and (final["steps"] == 60).all() and final["final_acc"].between(0, 1).all()
    assert final.at[("mlp", "BN", 1.0), "final_acc"] > 0.5  # the BN net learns digits in 60 steps at the base rate
    assert sorted(out["curves"]["step"].unique()) == [0, 20, 40, 60]
    n_test = int(final["n_test"].iloc[0])
    assert n_test == 897 and len(out["correct"]) == n_test * (8 + len(out["deep_final"]))
    acc = out["correct"].groupby(["part", "bn", "lr_mult", "init", "seed"])["correct"].mean()
    assert acc[("mlp", True, 1.0, "normal", 0)] == pytest.approx(final.at[("mlp", "BN", 1.0), "final_acc"])
    packed = out["correct_hex"].set_index(["part", "bn", "lr_mult", "init", "seed"])
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed.at[("mlp", True, 1.0, "normal", 0), "hex"]), np.uint8))
    assert bits[:n_test].mean() == pytest.approx(acc[("mlp", True, 1.0, "normal", 0)]) and len(packed) == 12
    p = out["percentiles"]
    assert set(p["scope"]) == {"unit", "layer"} and set(p["layer"]) == {"sigmoid_1", "sigmoid_2"}
    assert set(p["part"]) == {"mlp"}  # the deeper sigmoid net is not monitored
    # the BN net's sigmoid input at init: each unit normalized on the probe batch, so its p15/p85 are near -+1
    unit0 = p[(p["scope"] == "unit") & (p["step"] == 0) & (p["net"] == "BN")].pivot_table(
        index="layer", columns="stat", values="value"
    )
    assert unit0["p50"].abs().max() < 0.5 and unit0["p85"].min() > 0.5 and unit0["p15"].max() < -0.5
    claims = out["claims"].set_index("claim")
    assert list(claims.index) == ["B1", "B2", "B3", "B4", "B5", "X1"]
    assert (claims["status"] == "INCONCLUSIVE").all()  # one seed
    assert len(out["deep_final"]) == 4 and out["deep"]["seeds"].sum() == 4
    tables = {k: out[k] for k in ("curves", "percentiles", "final", "deep_curves", "deep_final", "correct")}
    figures = study.plot(tables, out)
    assert {"accuracy", "percentiles_unit", "percentiles_layer", "drift", "steps_to_target", "deep",
            "deeper_sigmoid"} <= set(figures)  # fmt: skip
