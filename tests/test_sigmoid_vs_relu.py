"""Tests of studies/sigmoid_vs_relu.py: the Jacobian helper against hand computations, the claim rules on synthetic
tables (PASS and FAIL), the grid, and the SMOKE profile end to end through run(cfg) and the runner."""

import dataclasses
import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import sigmoid_vs_relu as study

# ------------------------------------------------------------------------------------------------ helpers


def _init_rows(variances: list[float], kind: str = "activation") -> pd.DataFrame:
    """A monitor's at-init table of one tanh trial: Var per hidden layer (depth 0, 1, ...), plus rows depth_factors
    must leave out: another stat, a later step, the output layer."""
    trial = {"dataset": "d", "activation": "tanh", "init": "standard", "lr": 0.1, "n_hidden": len(variances), "seed": 0,
             "row": "Tanh"}  # fmt: skip
    rows = [{"layer": f"hidden_{i + 1}", "depth": i, "kind": kind, "stat": "var", "step": 0, "value": v}
            for i, v in enumerate(variances)]  # fmt: skip
    n = len(variances)
    rows += [{"layer": "hidden_1", "depth": 0, "kind": kind, "stat": "std", "step": 0, "value": 100.0},
             {"layer": "hidden_2", "depth": 1, "kind": kind, "stat": "var", "step": 100, "value": 100.0},
             {"layer": "output", "depth": n, "kind": kind, "stat": "var", "step": 0, "value": 100.0}]  # fmt: skip
    return pd.DataFrame([{**r, **trial} for r in rows])


def test_depth_factors_is_the_geometric_factor_per_hidden_layer_at_init():
    out = study.depth_factors(_init_rows([1.0, 1 / 3, 1 / 9, 1 / 27]))
    assert len(out) == 1 and set(study.TRIAL_KEYS) <= set(out.columns)
    assert out.at[0, "factor"] == pytest.approx(1 / 3) and out.at[0, "factor_down"] == pytest.approx(3.0)
    assert study.depth_factors(_init_rows([2.0, 2.0, 2.0])).at[0, "factor"] == pytest.approx(1.0)
    # the package's one rule: a non-positive variance is left out of the fit; NaN when fewer than two remain
    assert study.depth_factors(_init_rows([1.0, 1 / 3, 0.0, 1 / 27])).at[0, "factor"] == pytest.approx(1 / 3)
    assert math.isnan(study.depth_factors(_init_rows([1.0, 0.0])).at[0, "factor"])


def test_row_labels_follow_table_1():
    labels = [study.row_label(a, i) for a, i in study.TABLE1_ROWS]
    assert labels == ["Sigmoid", "Tanh", "Tanh N", "Softsign", "Softsign N", "ReLU He"]
    assert set(study.PAPER_TABLE1) <= set(labels)


def test_choose_lr_takes_the_lowest_mean_validation_error_per_family():
    final = pd.DataFrame(
        {
            "dataset": ["d"] * 6,
            "activation": ["tanh"] * 4 + ["relu"] * 2,
            "lr": [0.1, 0.1, 0.01, 0.01, 0.1, 0.01],
            "n_hidden": [4] * 6,
            "val_err": [10.0, 12.0, 9.0, 9.0, 5.0, 5.0],
        }
    )
    chosen = study.choose_lr(final).query("chosen").set_index("activation")["lr"]
    assert chosen["tanh"] == 0.01
    assert chosen["relu"] == 0.01  # a tie keeps the smallest rate, once
    assert len(chosen) == 2


# ------------------------------------------------------------------------------------------------ claims


def _factors(values: dict[tuple[str, str, str], list[float]]) -> pd.DataFrame:
    rows = []
    for (activation, init, kind), factors in values.items():
        for seed, f in enumerate(factors):
            rows.append(
                {"dataset": "d", "activation": activation, "init": init, "lr": 0.1, "n_hidden": 4, "seed": seed,
                 "row": study.row_label(activation, init), "kind": kind, "factor": f, "factor_down": 1 / f}
            )  # fmt: skip
    return pd.DataFrame(rows)


GOOD_FACTORS = {
    ("tanh", "standard", "activation"): [0.32, 0.33, 0.31],
    ("tanh", "normalized", "activation"): [0.72, 0.75, 0.70],
    ("tanh", "standard", "grad_preact"): [3.1, 3.3, 3.0],  # grows towards the output: shrinks going down
    ("tanh", "normalized", "grad_preact"): [1.3, 1.4, 1.2],
    ("tanh", "standard", "grad_kernel"): [0.95, 1.05, 0.9],
    ("tanh", "normalized", "grad_kernel"): [0.85, 0.8, 0.9],
    ("relu", "he", "preact"): [0.95, 1.02, 0.9],
}


@pytest.mark.parametrize("claim", [study.claim_g2, study.claim_g3, study.claim_g4])
def test_factor_claims_pass_on_paper_like_factors(claim):
    assert claim(_factors(GOOD_FACTORS))["status"] == "PASS"


@pytest.mark.parametrize(
    "claim, key, values",
    [
        (study.claim_g2, ("tanh", "normalized", "activation"), [0.72, 0.5, 0.7]),  # one seed shrinks
        (study.claim_g2, ("tanh", "standard", "activation"), [0.7, 0.7, 0.7]),  # standard does not shrink
        (study.claim_g3, ("tanh", "standard", "grad_preact"), [1.1, 1.0, 1.2]),
        (study.claim_g3, ("tanh", "normalized", "grad_preact"), [3.0, 3.0, 3.0]),
        (study.claim_g4, ("tanh", "standard", "grad_kernel"), [0.3, 0.3, 0.3]),
        (study.claim_g4, ("tanh", "normalized", "grad_kernel"), [1.0, 2.0, 1.0]),
    ],
)
def test_factor_claims_fail_when_a_trial_breaks_the_rule(claim, key, values):
    assert claim(_factors({**GOOD_FACTORS, key: values}))["status"] == "FAIL"


def test_factor_claims_are_na_without_tanh_trials():
    only_relu = _factors({("relu", "he", "preact"): [1.0]})
    for claim in (study.claim_g2, study.claim_g3, study.claim_g4):
        assert claim(only_relu)["status"] == "N/A"


def _g1(cross_steps, lower_min, top_end=0.01, n_hidden=4, steps=4000):
    return pd.DataFrame(
        {"dataset": "shapeset", "activation": "sigmoid", "init": "standard", "lr": 0.1, "n_hidden": n_hidden,
         "seed": range(len(cross_steps)), "steps": steps, "top_start": 0.5, "top_early": 0.2,
         "top_cross_step": cross_steps, "top_min": 0.01, "top_end": top_end, "lower_min": lower_min, "lower_end": 0.6}
    )  # fmt: skip


def test_claim_g1_pass_and_fail():
    assert study.claim_g1(_g1([300, 500, 400], [0.49, 0.5, 0.48]), 4)["status"] == "PASS"
    assert study.claim_g1(_g1([300, 2000, 400], [0.49, 0.5, 0.48]), 4)["status"] == "FAIL"  # not early
    assert study.claim_g1(_g1([300, -1, 400], [0.49, 0.5, 0.48]), 4)["status"] == "FAIL"  # never below 0.1
    assert study.claim_g1(_g1([300, 500, 400], [0.49, 0.3, 0.48]), 4)["status"] == "FAIL"  # a lower layer dropped
    assert study.claim_g1(_g1([300], [0.49]), 5)["status"] == "N/A"
    both = pd.concat([_g1([300, 400], [0.5, 0.5]), _g1([100, 200], [0.5, 0.5], top_end=0.5, n_hidden=5)])
    assert study.claim_g1(both, 4)["status"] == "FAIL"  # the 5-layer net escaped


def _jac(standard, normalized):
    rows = []
    for init, values in (("standard", standard), ("normalized", normalized)):
        for seed, v in enumerate(values):
            rows.append({"dataset": "d", "activation": "tanh", "init": init, "lr": 0.1, "n_hidden": 4, "seed": seed,
                         "row": study.row_label("tanh", init), "mean_sv": v})  # fmt: skip
    return pd.DataFrame(rows)


def test_claim_g5_pass_and_fail():
    assert study.claim_g5(_jac([0.48, 0.5, 0.47], [0.75, 0.78, 0.8]))["status"] == "PASS"
    assert study.claim_g5(_jac([0.48, 0.66, 0.47], [0.75, 0.78, 0.8]))["status"] == "FAIL"  # a trial crosses
    assert study.claim_g5(_jac([0.35, 0.36, 0.34], [0.75, 0.78, 0.8]))["status"] == "FAIL"  # > 20% from 0.5
    assert study.claim_g5(_jac([0.5], []))["status"] == "N/A"


def _final(errors: dict[str, list[float]], dataset="shapeset") -> pd.DataFrame:
    labels = {study.row_label(a, i): (a, i) for a, i in study.TABLE1_ROWS}
    rows = []
    for row, values in errors.items():
        for seed, e in enumerate(values):
            a, i = labels[row]
            rows.append({"dataset": dataset, "activation": a, "init": i, "lr": 0.1, "n_hidden": 4, "seed": seed,
                         "row": row, "test_err": e, "val_err": e})  # fmt: skip
    return pd.DataFrame(rows)


GOOD_ERRORS = {
    "Sigmoid": [82.0, 83.0, 82.5],
    "Tanh": [40.0, 42.0, 41.0],
    "Tanh N": [30.0, 31.0, 29.0],
    "Softsign": [33.0, 34.0, 32.0],
    "Softsign N": [32.0, 33.0, 31.5],
    "ReLU He": [28.0, 29.0, 27.0],
}


def test_claim_g6_pass_and_each_failing_part():
    assert study.claim_g6(_final(GOOD_ERRORS))["status"] == "PASS"
    tied = {**GOOD_ERRORS, "Tanh N": [39.0, 43.0, 41.5]}  # mean lower, but within the SE
    assert study.claim_g6(_final(tied))["status"] == "FAIL"
    not_worst = {**GOOD_ERRORS, "Tanh": [90.0, 91.0, 90.5]}
    assert study.claim_g6(_final(not_worst))["status"] == "FAIL"
    softsign_moves = {**GOOD_ERRORS, "Softsign": [50.0, 51.0, 52.0]}
    assert study.claim_g6(_final(softsign_moves))["status"] == "FAIL"
    sigmoid_tied_worst = {**GOOD_ERRORS, "Tanh": [82.0, 84.0, 83.0], "Tanh N": [60.0, 61.0, 62.0]}
    assert study.claim_g6(_final(sigmoid_tied_worst))["status"] == "PASS"  # within the SE counts as tied
    two = pd.concat([_final(GOOD_ERRORS), _final(not_worst, dataset="digits")])
    assert study.claim_g6(two)["status"] == "FAIL"  # every data set must agree
    assert study.claim_g6(_final({"Sigmoid": [80.0]}))["status"] == "N/A"


def test_claim_g7_pass_and_fail():
    factors, final = _factors(GOOD_FACTORS), _final(GOOD_ERRORS)
    assert study.claim_g7(factors, final)["status"] == "PASS"
    shrinking = _factors({**GOOD_FACTORS, ("relu", "he", "preact"): [0.5, 0.5, 0.5]})
    assert study.claim_g7(shrinking, final)["status"] == "FAIL"
    stuck = _final({**GOOD_ERRORS, "ReLU He": [82.0, 83.0, 82.0]})
    assert study.claim_g7(factors, stuck)["status"] == "FAIL"
    assert study.claim_g7(factors, _final({"Sigmoid": [80.0]}))["status"] == "N/A"


def test_summarize_without_finished_trials_gives_na_claims():
    claims = study.summarize(study.QUICK, {})["claims"]
    assert list(claims["status"]) == ["N/A"] * 7


def test_every_claim_has_a_statement_and_a_rule():
    assert set(study.CLAIMS) == set(study.RULES) == {f"G{i}" for i in range(1, 8)}


# ------------------------------------------------------------------------------------------------ the grid


def test_quick_grid_holds_every_row_seed_and_data_set():
    grid = study.trials(study.QUICK)
    assert len(grid) == len(study.QUICK.datasets) * len(study.QUICK.rows) * len(study.QUICK.seeds)
    assert all(json.loads(json.dumps(t)) == t and "seed" in t for t in grid)
    assert len({json.dumps(t, sort_keys=True) for t in grid}) == len(grid)


def test_fig2_trials_are_added_when_its_depth_differs():
    cfg = dataclasses.replace(study.QUICK, datasets=("shapeset",), n_hidden=5, g1_hidden=4)
    grid = study.trials(cfg)
    fig2 = [t for t in grid if t["n_hidden"] == 4]
    assert len(fig2) == len(cfg.seeds)
    assert all((t["activation"], t["init"]) == ("sigmoid", "standard") for t in fig2)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rows": (("tanh", "xavier"),)}, "rows"),
        ({"learning_rates": (("tanh", (0.1,)),)}, "learning_rates"),
        ({"steps": (("shapeset", 150), ("digits", 200))}, "steps"),
        ({"n_stats": 400}, "n_stats"),
        ({"n_hidden": 1}, "n_hidden"),
    ],
)
def test_bad_configs_raise_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        study.trials(dataclasses.replace(study.QUICK, **change))


# ------------------------------------------------------------------------------------------------ end to end

SMOKE = study.SMOKE  # the whole pipeline in seconds
SMOKE_TRIALS = len(study.trials(SMOKE))


def test_smoke_profile_end_to_end():
    assert study.PROFILES["smoke"] is SMOKE
    assert SMOKE_TRIALS == len(SMOKE.rows) == 6 and SMOKE.n_hidden == SMOKE.g1_hidden  # a handful, every claim
    keras.utils.set_random_seed(0)
    out = study.run(SMOKE)
    final = out["final"]
    steps = dict(SMOKE.steps)["shapeset"]
    assert len(final) == SMOKE_TRIALS and final["test_err"].between(0, 100).all() and (final["steps"] == steps).all()
    for name in ("final", "init", "hist", "jacobian", "training", "curves"):
        assert set(study.TRIAL_KEYS) <= set(out[name].columns), name
    init = out["init"]
    assert {"preact", "activation", "grad_preact", "grad_kernel"} <= set(init["kind"])
    assert set(init["layer"]) == {f"hidden_{i + 1}" for i in range(SMOKE.n_hidden)}
    assert set(out["hist"]["kind"]) == set(study.HIST_KINDS)
    # the histogram of each tensor sums to 1 (every element falls in a bin at init)
    sums = out["hist"].groupby(["row", "layer", "kind"])["value"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=1e-4)
    assert sorted(out["jacobian"]["depth"].unique()) == list(range(1, SMOKE.n_hidden))
    assert (out["jacobian"]["mean_sv"] > 0).all()
    assert sorted(out["training"]["step"].unique()) == list(range(0, steps + 1, SMOKE.record_every))
    assert list(out["curves"]["step"].unique()) == list(range(SMOKE.record_every, steps + 1, SMOKE.record_every))
    # the standard init's variance shrinks layer by layer at this tiny width too (n Var(W) = 1/3)
    factors = out["depth_factors"].set_index("row")["activation"]
    assert factors["Tanh"] < factors["Tanh N"]
    claims = out["claims"].set_index("claim")
    assert list(claims.index) == [f"G{i}" for i in range(1, 8)]
    assert set(claims["status"]) <= {"PASS", "FAIL", "N/A"}
    assert "N/A" not in set(claims["status"])  # every row of Table 1 is in the grid: every claim is tested
    assert list(out["table1"]["row"]) == ["Sigmoid", "Tanh", "Tanh N", "Softsign", "Softsign N", "ReLU He"]


def test_smoke_profile_through_the_runner_writes_report_and_figures(tmp_path):
    from keras_initkit.study import run_study

    result = run_study(study, profile="smoke", out_dir=tmp_path, progress=False)
    root = tmp_path / study.NAME / "smoke"
    assert result.counts["ok"] == SMOKE_TRIALS
    report = (root / "REPORT.md").read_text()
    for claim in study.CLAIMS:
        assert f"| {claim} " in report
    figures = {p.stem for p in (root / "figures").glob("*.png")}
    assert {"fig2_sigmoid_activations", "fig6_activation_histograms", "fig7_backprop_gradient_histograms",
            "fig8_weight_gradient_histograms", "variance_activation", "variance_grad_preact",
            "variance_grad_kernel", "variance_preact", "jacobian_singular_values", "table1_test_error",
            "learning_curves"} <= figures  # fmt: skip
    claims = pd.read_csv(root / "claims.csv")
    assert list(claims["claim"]) == [f"G{i}" for i in range(1, 8)]

    # an interrupted run: one trial's file is gone (killed in flight); the rerun on the process engine runs that
    # trial only, and the tables equal the first run's
    import shutil

    raw = {p.stem: pd.read_parquet(p) for p in (root / "raw").glob("*.parquet")}
    trials = sorted((root / "trials").iterdir())
    shutil.rmtree(trials[0])
    again = run_study(study, profile="smoke", out_dir=tmp_path, engine="process", jobs=2, progress=False)
    assert again.counts["ok"] == SMOKE_TRIALS
    assert json.loads((root / "meta.json").read_text())["trials"]["resumed"] == SMOKE_TRIALS - 1
    for name, frame in raw.items():
        back = pd.read_parquet(root / "raw" / f"{name}.parquet")
        timing = [c for c in frame.columns if c.endswith("wall_s") or c.endswith("cpu_s")]
        pd.testing.assert_frame_equal(back.drop(columns=timing), frame.drop(columns=timing), check_exact=False)
