"""Tests of studies/vgg_depth.py: the model builder, the recipe's copy, the claim rules, a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import vgg_depth as v

from keras_initkit.study.models import build_vgg, layer_names, transfer_layers, weight_layers

# ----------------------------------------------------------------------------------------------- outcomes, rules


def _curve(losses, start=0, every=10):
    return pd.DataFrame({"step": start + every * np.arange(len(losses)), "loss": losses})


def test_curve_outcome():
    ln10 = math.log(10)
    out = v.curve_outcome(_curve([2.3, 1.5, 0.7, 0.45, 0.2] + [0.1] * 5), 10, 0.5)
    assert out["converged"] and out["steps_to_threshold"] == 30 and not out["stalled"]
    assert out["final_loss"] == pytest.approx(0.1)
    flat = v.curve_outcome(_curve([ln10] * 11), 10, 0.5)
    assert flat["stalled"] and not flat["converged"] and math.isnan(flat["steps_to_threshold"])
    slow = v.curve_outcome(_curve([2.3] * 6 + [2.0] * 5), 10, 0.5)  # moving, never at the threshold: not stalled
    assert not slow["stalled"] and not slow["converged"]
    nan = v.curve_outcome(_curve([2.3, 1.0, np.nan, np.nan]), 10, 0.5)
    assert nan["diverged"] and nan["stalled"] and not nan["converged"]
    late = v.curve_outcome(_curve([2.3, 2.3, 0.4], start=600), 10, 0.5)  # counted from the curve's own start
    assert late["steps_to_threshold"] == 20


def _layers(rhos: dict[str, float], n_layers=8, seeds=(0, 1), grad_ratio=1e-4):
    """A synthetic at-init "layers" table: Var(preact) = rho^depth per init, conv2 gradient std ratio vs He."""
    rows = []
    for seed in seeds:
        for init, rho in rhos.items():
            for depth, name in enumerate(layer_names(n_layers)):
                value = rho**depth
                rows.append(dict(layer=name, depth=depth, kind="preact", stat="var", value=value, predicted=value))
                g = 1.0 if init != "fixed" else grad_ratio
                rows.append(dict(layer=name, depth=depth, kind="grad_preact", stat="std", value=g, predicted=np.nan))
                rows.append(dict(layer=name, depth=depth, kind="grad_kernel", stat="std", value=g, predicted=np.nan))
            for row in rows[-3 * n_layers :]:
                row.update(n_layers=n_layers, init=init, seed=seed, part="init")
    return pd.DataFrame(rows)


def test_claim_h1_pass_and_fail():
    good = v.claim_h1(v.depth_factors(_layers({"glorot_fan_in": 0.45, "he_fan_in": 0.9, "fixed": 0.012})))
    assert good["status"] == "PASS", good["measured"]
    flat_xavier = v.claim_h1(v.depth_factors(_layers({"glorot_fan_in": 0.9, "he_fan_in": 0.9, "fixed": 0.012})))
    assert flat_xavier["status"] == "FAIL"
    he_halves = v.claim_h1(v.depth_factors(_layers({"glorot_fan_in": 0.45, "he_fan_in": 0.5, "fixed": 0.012})))
    assert he_halves["status"] == "FAIL"
    fixed_slow = v.claim_h1(v.depth_factors(_layers({"glorot_fan_in": 0.45, "he_fan_in": 0.9, "fixed": 0.6})))
    assert fixed_slow["status"] == "FAIL"
    assert v.claim_h1(v.depth_factors(_layers({"he_fan_in": 0.9})))["status"] == "N/A"


def _final(cells: dict[tuple[int, str], list[tuple[float, bool, bool]]]):
    """A synthetic "final" table: (n_layers, init) -> per seed (steps_to_threshold, converged, stalled)."""
    rows = []
    for (n_layers, init), seeds in cells.items():
        for seed, (steps, converged, stalled) in enumerate(seeds):
            rows.append(dict(part="train", n_layers=n_layers, init=init, seed=seed, steps_to_threshold=steps,
                             converged=converged, stalled=stalled, final_loss=2.3 if stalled else 0.1))  # fmt: skip
    return pd.DataFrame(rows)


CONVERGED = (120.0, True, False)
STALLED = (np.nan, False, True)
SLOW = (np.nan, False, False)


def test_claim_h2_pass_and_fail():
    ok = _final({(30, "he_fan_in"): [CONVERGED] * 3, (30, "glorot_fan_in"): [STALLED] * 3})
    assert v.claim_h2(ok, 30)["status"] == "PASS"
    one_moves = _final({(30, "he_fan_in"): [CONVERGED] * 3, (30, "glorot_fan_in"): [STALLED, STALLED, SLOW]})
    assert v.claim_h2(one_moves, 30)["status"] == "FAIL"
    he_fails = _final({(30, "he_fan_in"): [CONVERGED, SLOW, CONVERGED], (30, "glorot_fan_in"): [STALLED] * 3})
    assert v.claim_h2(he_fails, 30)["status"] == "FAIL"
    assert v.claim_h2(ok, 22)["status"] == "N/A"


def test_claim_h3_pass_and_fail():
    ok = _final({(22, "he_fan_in"): [(100.0, True, False)] * 3, (22, "glorot_fan_in"): [(300.0, True, False)] * 3})
    assert v.claim_h3(ok, 22)["status"] == "PASS"
    xavier_first = _final(
        {
            (22, "he_fan_in"): [(100.0, True, False)] * 3,
            (22, "glorot_fan_in"): [(300.0, True, False)] * 2 + [(90.0, True, False)],
        }
    )
    assert v.claim_h3(xavier_first, 22)["status"] == "FAIL"
    xavier_stalls = _final({(22, "he_fan_in"): [(100.0, True, False)] * 3, (22, "glorot_fan_in"): [STALLED] * 3})
    assert v.claim_h3(xavier_stalls, 22)["status"] == "FAIL"


def test_claim_h4_pass_and_fail():
    final = _final({(30, "fixed"): [STALLED] * 2})
    rhos = {"he_fan_in": 0.9, "fixed": 0.012}
    ok = v.claim_h4(final, v.gradient_ratio(_layers(rhos, n_layers=14, grad_ratio=1e-5)), h4_depth=14, n_layers=30)
    assert ok["status"] == "PASS", ok["measured"]
    big = v.claim_h4(final, v.gradient_ratio(_layers(rhos, n_layers=14, grad_ratio=0.5)), h4_depth=14, n_layers=30)
    assert big["status"] == "FAIL"
    trains = _final({(30, "fixed"): [STALLED, CONVERGED]})
    moved = v.claim_h4(trains, v.gradient_ratio(_layers(rhos, n_layers=14, grad_ratio=1e-5)), h4_depth=14, n_layers=30)
    assert moved["status"] == "FAIL"


def test_gradient_ratio_is_relative_to_he_same_seed():
    layers = _layers({"he_fan_in": 0.9, "fixed": 0.012}, n_layers=8, seeds=(0, 1), grad_ratio=1e-3)
    layers.loc[(layers["seed"] == 1) & (layers["init"] == "he_fan_in") & (layers["kind"] == "grad_preact"), "value"] = (
        2.0
    )
    r = v.gradient_ratio(layers)
    fixed = r[(r["init"] == "fixed") & (r["kind"] == "grad_preact")].set_index("seed")["ratio"]
    assert fixed[0] == pytest.approx(1e-3) and fixed[1] == pytest.approx(5e-4)
    # a gradient that underflowed to 0 in float32 has no measured ratio, and counts as smaller than any threshold
    layers.loc[(layers["seed"] == 0) & (layers["init"] == "fixed") & (layers["kind"] == "grad_preact"), "value"] = 0.0
    r = v.gradient_ratio(layers)
    row = r[(r["init"] == "fixed") & (r["kind"] == "grad_preact") & (r["seed"] == 0)].iloc[0]
    assert row["underflow"] and math.isnan(row["ratio"])
    final = _final({(30, "fixed"): [STALLED] * 2})
    assert v.claim_h4(final, r, h4_depth=8, n_layers=30)["status"] == "PASS"


# ------------------------------------------------------------------------------------------------------ the grid


def test_trials_grid():
    cfg = v.QUICK
    ts = v.trials(cfg)
    assert all({"part", "n_layers", "init", "seed", "steps"} == set(t) for t in ts)
    init = [t for t in ts if t["part"] == "init"]
    train = [t for t in ts if t["part"] == "train"]
    assert len(init) == len(cfg.depths) * len(cfg.seeds)
    assert len([t for t in ts if t["part"] == "recipe"]) == len(cfg.seeds) >= 3
    for n_layers, init_name in cfg.train_cells:
        assert {t["seed"] for t in train if (t["n_layers"], t["init"]) == (n_layers, init_name)} == set(cfg.seeds)
    others = [t for t in train if (t["n_layers"], t["init"]) not in cfg.train_cells]
    assert others and {t["seed"] for t in others} == {cfg.seeds[0]}
    assert all((t["n_layers"], t["init"]) in cfg.extra_cells for t in others)
    assert len({(t["part"], t["n_layers"], t["init"], t["seed"]) for t in ts}) == len(ts)


def test_check_config_errors():
    with pytest.raises(ValueError, match="inits"):
        v.trials(dataclasses.replace(v.QUICK, inits=("he",)))
    with pytest.raises(ValueError, match="record_every"):
        v.trials(dataclasses.replace(v.QUICK, steps=405))
    with pytest.raises(ValueError, match="train_cells"):
        v.trials(dataclasses.replace(v.QUICK, train_cells=((31, "he_fan_in"),)))
    with pytest.raises(ValueError, match="recipe_depth"):
        v.trials(dataclasses.replace(v.QUICK, recipe_depth=3))
    for field, value, rule in [
        ("seeds", (), "must not be empty"),
        ("recipe_fills", ("he",), "must be names from"),
        ("depths", (1, 8), "must be >= len"),
        ("recipe_copy_convs", 3, "must be in \\[0, 2\\]"),
    ]:
        with pytest.raises(ValueError, match=f"`{field}` {rule}.*Received: {field}="):
            v.trials(dataclasses.replace(v.QUICK, **{field: value}))
    with pytest.raises(ValueError, match="part"):
        v.run_trial(v.QUICK, {"part": "nope", "n_layers": 8, "init": "he_fan_in", "seed": 0, "steps": 0})


# --------------------------------------------------------------------------------------------------- end to end

TINY = v.SMOKE  # the whole pipeline in seconds


def test_run_smoke_profile_end_to_end():
    out = v.run(TINY)
    for name in ("layers", "curves", "final", "claims", "training", "recipe", "depth_factors", "gradient_ratio"):
        assert name in out and len(out[name]), name
    claims = out["claims"]
    assert list(claims["claim"]) == ["H1", "H2", "H3", "H4"]
    assert set(claims["status"]) <= {"PASS", "FAIL", "N/A"}
    assert claims.set_index("claim").at["H3", "status"] == "N/A"  # no 22-layer net in this grid
    layers = out["layers"]
    assert set(layers["init"]) == set(TINY.inits) and set(layers["n_layers"]) == {4}
    assert sorted(set(layers["depth"])) == list(range(4))  # the monitor's layer index, as the monitor writes it
    pre = layers[(layers["kind"] == "preact") & (layers["stat"] == "var")]
    assert pre["predicted"].notna().all() and (pre["value"] > 0).all()
    # the measured first-layer variance is the theory's, within sampling error (32 images x 64 positions x 8 units)
    first = pre[pre["depth"] == 0]
    np.testing.assert_allclose(first["value"], first["predicted"], rtol=0.3)
    final = out["final"]
    assert set(final["phase"]) == {"scratch", "A", "recipe_fixed", "recipe_he_fan_in"}
    assert (final.loc[final["phase"] == "recipe_fixed", "copied"] == "conv1_1,fc1").all()
    # every row's n_layers is its own net's: net A's is recipe_a_depth, the deeper nets' recipe_depth
    recipe = final[final["part"] == "recipe"].set_index("phase")["n_layers"]
    assert recipe["A"] == TINY.recipe_a_depth and (recipe.drop("A") == TINY.recipe_depth).all()
    assert set(out["training"].columns) >= {"phase", "n_layers", "init"} and "depth" not in out["training"]
    curves = out["curves"]
    deep = curves[curves["phase"] == "recipe_fixed"]
    assert deep["step"].min() == TINY.recipe_a_steps and deep["step"].max() == TINY.recipe_a_steps + TINY.steps
    figures = v.plot(out, out)
    assert set(figures) == {"variance_forward", "variance_backward", "loss_curves", "steps_heatmap", "recipe"}
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def test_cached_net_gives_the_fresh_build_tables():
    """A trial run on the per-process cached net (after other trials) equals the same trial on a fresh net."""
    trial = {"part": "train", "n_layers": 4, "init": "he_fan_in", "seed": 0, "steps": 20}
    v._MODELS.clear()
    fresh = v.run_trial(TINY, trial)
    v.run_trial(TINY, {**trial, "init": "fixed", "seed": 1})
    again = v.run_trial(TINY, trial)
    pd.testing.assert_frame_equal(fresh["curves"], again["curves"], rtol=1e-5)
    assert len(v._MODELS) == 1
    lr = [var for var in v.fresh_net(TINY, 4, "fixed", 0)[0].optimizer.variables if var.name == "learning_rate"][0]
    assert float(lr.numpy()) == pytest.approx(TINY.learning_rate)


def test_paper_profile_grid_and_nets():
    cfg = v.PAPER
    ts = v.trials(cfg)
    n_train = len(cfg.depths) * len(cfg.inits) * len(cfg.seeds)  # train_cells=None: every cell, every seed
    assert sum(t["part"] == "train" for t in ts) == n_train
    assert sum(t["part"] == "recipe" for t in ts) == len(cfg.seeds)
    for n_layers in (*cfg.depths, cfg.recipe_a_depth):
        model = build_vgg((32, 32, 3), 10, n_layers, widths=cfg.widths, fc_layers=cfg.fc_layers, fc_width=8)
        assert len(weight_layers(model)) == n_layers
    a = build_vgg((32, 32, 3), 10, cfg.recipe_a_depth, widths=cfg.widths, fc_layers=cfg.fc_layers, fc_width=8)
    deep = build_vgg((32, 32, 3), 10, cfg.recipe_depth, widths=cfg.widths, fc_layers=cfg.fc_layers, fc_width=8)
    assert len(transfer_layers(a, deep, cfg.recipe_copy_convs)) == cfg.recipe_copy_convs + cfg.fc_layers


def test_fallback_data_when_files_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache: no CIFAR-10 here
    cfg = dataclasses.replace(TINY, data="cifar10", fallback_data="digits")
    assert v._data(cfg).name == "digits"
    with pytest.raises(FileNotFoundError):
        v._data(dataclasses.replace(cfg, fallback_data=None))
