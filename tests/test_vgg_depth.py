"""Tests of studies/vgg_depth.py: the pre-registration's hash pin, the claim rules on synthetic tables (PASS, FAIL,
INCONCLUSIVE for each), the grid, the recipe's copy, and the SMOKE profile end to end."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import vgg_depth as v

from keras_initkit.study.models import build_vgg, layer_names, transfer_layers, weight_layers

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3, 4)


def test_preregistration_hash_is_pinned():
    """CLAIMS, RULES, the thresholds and QUICK are those PREREGISTRATION.md records (an edit changes the hash)."""
    text = (ROOT / "docs" / "results" / "vgg_depth" / "PREREGISTRATION.md").read_text()
    pinned = re.search(r"sha256: `([0-9a-f]{64})`", text)
    assert pinned is not None, "PREREGISTRATION.md must state `sha256: `<hex>``"
    assert v.preregistration_hash() == pinned.group(1)


def test_quick_uses_fresh_seeds_and_enough_of_them():
    # pilots used seeds 0-9, the lost earlier attempt 100-104, v2's confirmatory run 200-204: v3's seeds are none
    seeds = set(v.QUICK.seeds)
    used = {*range(10), *range(100, 105), *range(200, 205)}
    assert len(seeds) >= v.MIN_SEEDS and not seeds & used


# ----------------------------------------------------------------------------------------------- outcomes, rules


def _curve(losses, start=0, every=10):
    return pd.DataFrame({"step": start + every * np.arange(len(losses)), "loss": losses})


def test_curve_outcome():
    out = v.curve_outcome(_curve([2.3, 1.5, 0.7, 0.45]), 0.5)
    assert out["escaped"] and out["steps_to_threshold"] == 30 and out["final_loss"] == pytest.approx(0.45)
    flat = v.curve_outcome(_curve([math.log(10)] * 11), 0.5)
    assert not flat["escaped"] and math.isnan(flat["steps_to_threshold"])
    nan = v.curve_outcome(_curve([2.3, 0.4, np.nan]), 0.5)
    assert nan["diverged"] and not nan["escaped"]
    late = v.curve_outcome(_curve([2.3, 2.3, 0.4], start=600), 0.5)  # counted from the curve's own start
    assert late["steps_to_threshold"] == 20


def test_floor_outcome_is_the_floor_rule():
    y = np.arange(360) % 10  # balanced: majority error 0.9, floor 0.9 - 2 sqrt(0.09 / 360) = 0.8684
    chance = v.floor_outcome(np.arange(360) % 10 == 0, y)  # 10% right: at chance
    assert chance["chance_err"] == pytest.approx(0.9) and chance["floor_err"] == pytest.approx(0.8684, abs=1e-4)
    assert not chance["learned"]
    assert v.floor_outcome(np.arange(360) % 5 == 0, y)["learned"]  # 20% right: error 0.8 < floor


def _layers(rhos: dict[tuple[str, str], float], n_layers=8, seeds=SEEDS, grad_ratio=1e-4):
    """A synthetic at-init "layers" table: Var(preact) = rho^depth per (net, init), conv2 gradient std ratio vs He."""
    rows = []
    for seed in seeds:
        for (net, init), rho in rhos.items():
            n = n_layers if net == "grid" else 13
            for depth, name in enumerate(layer_names(n)):
                value = rho**depth
                g = grad_ratio if init == "fixed" else 1.0
                common = dict(layer=name, depth=depth, net=net, n_layers=n, init=init, seed=seed, part="init")
                rows.append(dict(common, kind="preact", stat="var", value=value, predicted=value))
                rows.append(dict(common, kind="grad_preact", stat="std", value=g, predicted=np.nan))
                rows.append(dict(common, kind="grad_preact", stat="var", value=g * g, predicted=g * g))
                rows.append(dict(common, kind="grad_kernel", stat="std", value=g, predicted=np.nan))
    return pd.DataFrame(rows)


GOOD_H1 = {
    ("grid", "glorot_fan_in"): 0.45,
    ("grid", "he_fan_in"): 0.9,
    ("vgg", "fixed"): 0.1,
    ("vgg", "he_fan_in"): 0.9,
}


def test_claim_h1_pass_fail_inconclusive():
    good = v.claim_h1(v.depth_factors(_layers(GOOD_H1)), 13)
    assert good["status"] == "PASS", good["measured"]
    for change in [{("grid", "glorot_fan_in"): 0.9}, {("grid", "he_fan_in"): 0.5}, {("vgg", "fixed"): 0.012},
                   {("vgg", "fixed"): 0.3}]:  # fmt: skip
        assert v.claim_h1(v.depth_factors(_layers({**GOOD_H1, **change})), 13)["status"] == "FAIL", change
    few = v.claim_h1(v.depth_factors(_layers(GOOD_H1, seeds=(0, 1))), 13)
    assert few["status"] == "INCONCLUSIVE" and "gives PASS" in few["measured"]
    assert v.claim_h1(v.depth_factors(_layers({("grid", "he_fan_in"): 0.9})), 13)["status"] == "N/A"


# per seed: (steps_to_threshold, escaped, learned)
FAST = (200.0, True, True)
SLOW = (1500.0, True, True)
NEVER = (np.nan, False, False)  # never escaped, did not learn
MOVED = (np.nan, False, True)  # learned, never at the threshold


def _final(cells: dict[tuple, list[tuple[float, bool, bool]]], steps=3000):
    """A synthetic "final" table: (part, net, n_layers, init, phase) -> per seed (steps, escaped, learned)."""
    rows = []
    for (part, net, n_layers, init, phase), seeds in cells.items():
        for seed, (st, escaped, learned) in enumerate(seeds):
            rows.append(dict(part=part, net=net, n_layers=n_layers, init=init, phase=phase, seed=seed, steps=steps,
                             steps_to_threshold=st, escaped=escaped, learned=learned, a_steps=0,
                             test_err=0.1 if learned else 0.9, floor_err=0.868))  # fmt: skip
    return pd.DataFrame(rows)


def _grid(n_layers, he, xavier):
    return _final({("train", "grid", n_layers, "he_fan_in", "scratch"): he,
                   ("train", "grid", n_layers, "glorot_fan_in", "scratch"): xavier})  # fmt: skip


def test_claim_h2_pass_fail_inconclusive():
    assert v.claim_h2(_grid(30, [FAST] * 5, [NEVER] * 5), 30)["status"] == "PASS"
    assert v.claim_h2(_grid(30, [FAST] * 5, [NEVER] * 4 + [MOVED]), 30)["status"] == "FAIL"  # Xavier learned once
    assert v.claim_h2(_grid(30, [FAST] * 4 + [MOVED], [NEVER] * 5), 30)["status"] == "FAIL"  # He never escaped
    stuck = v.claim_h2(_grid(30, [FAST] * 4 + [NEVER], [NEVER] * 5), 30)  # neither learned in seed 4
    assert stuck["status"] == "INCONCLUSIVE" and "per seed PPPPI" in stuck["measured"]
    assert v.claim_h2(_grid(30, [FAST] * 3, [NEVER] * 3), 30)["status"] == "INCONCLUSIVE"  # 3 seeds
    assert v.claim_h2(_grid(30, [FAST] * 5, [NEVER] * 5), 22)["status"] == "N/A"


def test_claim_h3_pass_fail_inconclusive():
    ok = v.claim_h3(_grid(22, [FAST] * 5, [SLOW] * 4 + [NEVER]), 22)  # one Xavier never: counted as the budget
    assert ok["status"] == "PASS", ok["measured"]
    assert "updates Xavier - He" in ok["measured"]
    assert v.claim_h3(_grid(22, [FAST] * 5, [SLOW] * 2 + [NEVER] * 3), 22)["status"] == "FAIL"  # Xavier never, mostly
    assert v.claim_h3(_grid(22, [SLOW] * 5, [FAST] * 5), 22)["status"] == "FAIL"  # Xavier first
    assert v.claim_h3(_grid(22, [FAST] * 4 + [NEVER], [SLOW] * 4 + [NEVER]), 22)["status"] == "INCONCLUSIVE"
    assert v.claim_h3(_grid(30, [FAST] * 5, [SLOW] * 5), 22)["status"] == "N/A"


def _vgg(fixed, he, a=None, recipe=None):
    cells = {("train", "vgg", 13, "fixed", "scratch"): fixed, ("train", "vgg", 13, "he_fan_in", "scratch"): he}
    if a is not None:
        cells[("recipe", "vgg", 9, "recipe", "A")] = a
        cells[("recipe", "vgg", 13, "recipe", "recipe_fixed")] = recipe
    return _final(cells, steps=300)


def test_claim_h4_pass_fail_inconclusive():
    rhos = {("vgg", "he_fan_in"): 0.85, ("vgg", "fixed"): 0.1}
    ratios = v.gradient_ratio(_layers(rhos, grad_ratio=2e-5))
    assert v.claim_h4(_vgg([NEVER] * 5, [FAST] * 5), ratios, 13)["status"] == "PASS"
    assert v.claim_h4(_vgg([NEVER] * 4 + [MOVED], [FAST] * 5), ratios, 13)["status"] == "FAIL"  # fixed learned
    tiny = v.gradient_ratio(_layers(rhos, grad_ratio=1e-11))  # orders smaller, but not the paper's order
    assert v.claim_h4(_vgg([NEVER] * 5, [FAST] * 5), tiny, 13)["status"] == "FAIL"
    big = v.gradient_ratio(_layers(rhos, grad_ratio=0.05))
    assert v.claim_h4(_vgg([NEVER] * 5, [FAST] * 5), big, 13)["status"] == "FAIL"
    both = v.claim_h4(_vgg([NEVER] * 5, [FAST] * 4 + [NEVER]), ratios, 13)  # He at the floor too in seed 4
    assert both["status"] == "INCONCLUSIVE"
    assert v.claim_h4(_vgg([NEVER] * 5, [FAST] * 5), ratios, 11)["status"] == "N/A"


def test_gradient_ratio_is_relative_to_he_same_seed():
    layers = _layers({("vgg", "he_fan_in"): 0.9, ("vgg", "fixed"): 0.1}, seeds=(0, 1), grad_ratio=1e-3)
    he_grad = (layers["seed"] == 1) & (layers["init"] == "he_fan_in") & (layers["kind"] == "grad_preact")
    layers.loc[he_grad & (layers["stat"] == "std"), "value"] = 2.0
    r = v.gradient_ratio(layers)
    fixed = r[(r["init"] == "fixed") & (r["kind"] == "grad_preact")].set_index("seed")["ratio"]
    assert fixed[0] == pytest.approx(1e-3) and fixed[1] == pytest.approx(5e-4)
    # a gradient that underflowed to 0 in float32 has no measured ratio (and fails "of the paper's order")
    layers.loc[(layers["seed"] == 0) & (layers["init"] == "fixed") & (layers["kind"] == "grad_preact"), "value"] = 0.0
    r = v.gradient_ratio(layers)
    row = r[(r["init"] == "fixed") & (r["kind"] == "grad_preact") & (r["seed"] == 0)].iloc[0]
    assert row["underflow"] and math.isnan(row["ratio"])


def _correct(final: pd.DataFrame, accuracy: dict[str, float], images=360) -> pd.DataFrame:
    """Per-image rows for the VGG nets of `final`: net (phase or init) -> fraction right (the first images)."""
    rows = []
    for r in final.itertuples():
        name = r.phase if r.part == "recipe" else r.init
        right = np.arange(images) < int(accuracy.get(name, 0.1) * images)
        rows.append(pd.DataFrame(dict(part=r.part, net=r.net, n_layers=r.n_layers, init=r.init, seed=r.seed,
                                      phase=r.phase, image=np.arange(images), correct=right)))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


ACC = {"recipe_fixed": 0.9, "fixed": 0.1, "he_fan_in": 0.93, "A": 0.9}


def test_claim_h5_pass_fail_inconclusive():
    final = _vgg([NEVER] * 5, [FAST] * 5, a=[FAST] * 5, recipe=[FAST] * 5)
    ok = v.claim_h5(final, _correct(final, ACC), 13)
    assert ok["status"] == "PASS", ok["measured"]
    assert "McNemar p=" in ok["measured"] and "recipe vs He from scratch" in ok["measured"]
    assert "13 layers from A learned 5/5" in ok["measured"]
    assert "(5/5 escaped within 300 after 200 ± 0" in ok["measured"]
    learned_only = _vgg([NEVER] * 5, [FAST] * 5, a=[FAST] * 5, recipe=[MOVED] * 5)  # learned, never at the threshold
    moved = v.claim_h5(learned_only, _correct(learned_only, ACC), 13)
    assert moved["status"] == "PASS" and "(0/5 escaped within 300 updates after A's)" in moved["measured"]
    assert "non-finite" not in moved["measured"]
    bad = _vgg([NEVER] * 5, [FAST] * 5, a=[FAST] * 4 + [NEVER], recipe=[FAST] * 5)  # net A at the floor once
    assert v.claim_h5(bad, _correct(bad, ACC), 13)["status"] == "FAIL"
    lucky = _vgg([NEVER] * 4 + [MOVED], [FAST] * 5, a=[FAST] * 5, recipe=[FAST] * 5)  # N(0, 0.01) learns once
    assert v.claim_h5(lucky, _correct(lucky, ACC), 13)["status"] == "FAIL"
    same = v.claim_h5(final, _correct(final, {**ACC, "recipe_fixed": 0.1}), 13)  # no paired difference
    assert same["status"] == "FAIL"
    stuck = _vgg([NEVER] * 5, [FAST] * 4 + [NEVER], a=[FAST] * 5, recipe=[FAST] * 4 + [NEVER])
    assert v.claim_h5(stuck, _correct(stuck, ACC), 13)["status"] == "INCONCLUSIVE"
    assert v.claim_h5(_vgg([NEVER] * 5, [FAST] * 5), _correct(final, ACC), 13)["status"] == "N/A"


# ------------------------------------------------------------------------------------------------------ the grid


def test_trials_grid():
    cfg = v.QUICK
    ts = v.trials(cfg)
    assert all({"part", "net", "n_layers", "init", "seed", "steps"} == set(t) for t in ts)
    init = [t for t in ts if t["part"] == "init"]
    assert len(init) == (len(cfg.depths) + 1) * len(cfg.seeds)
    grid = [t for t in ts if t["part"] == "train" and t["net"] == "grid"]
    assert len(grid) == len(cfg.depths) * len(cfg.train_inits) * len(cfg.seeds)
    vgg = [t for t in ts if t["part"] == "train" and t["net"] == "vgg"]
    assert {(t["n_layers"], t["init"]) for t in vgg} == {(n, i) for n in (cfg.vgg_depth, cfg.recipe_depth)
                                                           for i in cfg.vgg_inits}  # fmt: skip
    assert len([t for t in ts if t["part"] == "recipe"]) == len(cfg.seeds) >= v.MIN_SEEDS
    assert len({tuple(sorted(t.items())) for t in ts}) == len(ts)


def test_quick_matches_vggs_attenuation():
    """1/2 n Var(W) of std 0.01 in the VGG nets is inside VGG's own range (64 .. 512 channels)."""
    cfg = v.QUICK
    for width in cfg.vgg_widths:
        assert v.VGG_LOW <= 0.5 * 9 * width * cfg.fixed_std**2 <= v.VGG_HIGH
    assert 0.5 * 9 * cfg.widths[0] * cfg.fixed_std**2 < v.VGG_LOW  # the grid's narrow nets would not be


def test_check_config_errors():
    for field, value, rule in [
        ("seeds", (), "must not be empty"),
        ("inits", ("he",), "must be names from"),
        ("recipe_fills", ("he",), "must be names from"),
        ("depths", (1, 8), "must be >= len"),
        ("steps", 405, "must be a multiple of `record_every`"),
        ("recipe_copy_convs", 9, "must be in \\[0, 3\\]"),
        ("recipe_depth", 4, "must exceed `recipe_a_depth`"),
        ("vgg_input_scale", 0.0, "must be > 0"),
    ]:
        with pytest.raises(ValueError, match=f"`{field}` {rule}.*Received: {field}="):
            v.trials(dataclasses.replace(v.QUICK, **{field: value}))
    with pytest.raises(ValueError, match="part"):
        v.run_trial(v.QUICK, {"part": "nope", "net": "grid", "n_layers": 8, "init": "he_fan_in", "seed": 0, "steps": 0})
    with pytest.raises(ValueError, match="`net` must be one of"):
        v.run_trial(v.SMOKE, {"part": "train", "net": "wide", "n_layers": 4, "init": "he_fan_in", "seed": 0,
                              "steps": 10})  # fmt: skip


# --------------------------------------------------------------------------------------------------- end to end

TINY = v.SMOKE  # the whole pipeline in seconds


def test_run_smoke_profile_end_to_end():
    out = v.run(TINY)
    for name in ("layers", "curves", "final", "correct", "claims", "escape", "training", "recipe", "depth_factors",
                 "gradient_ratio"):  # fmt: skip
        assert name in out and len(out[name]), name
    claims = out["claims"].set_index("claim")
    assert list(claims.index) == ["H1", "H2", "H3", "H4", "H5"]
    assert claims.at["H3", "status"] == "N/A"  # no 22-layer net in this grid
    assert set(claims.drop("H3")["status"]) == {"INCONCLUSIVE"}  # one seed
    layers = out["layers"]
    assert set(layers["net"]) == {"grid", "vgg"}
    grid = layers[layers["net"] == "grid"]
    assert set(grid["init"]) == set(TINY.inits) and set(grid["n_layers"]) == {4}
    pre = grid[(grid["kind"] == "preact") & (grid["stat"] == "var")]
    assert pre["predicted"].notna().all() and (pre["value"] > 0).all()
    first = pre[pre["depth"] == 0]  # the first layer's variance is the theory's within sampling error
    np.testing.assert_allclose(first["value"], first["predicted"], rtol=0.3)
    final = out["final"]
    assert set(final["phase"]) == {"scratch", "A", "recipe_fixed"}
    assert (final.loc[final["phase"] == "recipe_fixed", "copied"] == "conv1_1,fc1").all()
    recipe = final[final["part"] == "recipe"].set_index("phase")["n_layers"]
    assert recipe["A"] == TINY.recipe_a_depth and recipe["recipe_fixed"] == TINY.recipe_depth
    assert {"test_err", "floor_err", "learned", "escaped"} <= set(final.columns)
    assert len(out["correct"]) == len(final) * 360
    curves = out["curves"]
    deep = curves[curves["phase"] == "recipe_fixed"]
    a_end = curves.loc[curves["phase"] == "A", "step"].max()
    assert deep["step"].min() == a_end and deep["step"].max() <= a_end + TINY.vgg_steps
    figures = v.plot(out, out)
    assert set(figures) == {"variance_forward", "variance_backward", "loss_curves", "escape_curve", "steps_heatmap",
                            "vgg_nets"}  # fmt: skip
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def test_vgg_input_scale_reaches_the_nets():
    scaled = v._scaled(dataclasses.replace(TINY, vgg_input_scale=3.0), "vgg")
    plain = v._scaled(TINY, "grid")
    np.testing.assert_allclose(scaled["x_test"], 3.0 * plain["x_test"], rtol=1e-6)
    np.testing.assert_allclose(scaled["probe_x"], 3.0 * plain["probe_x"], rtol=1e-6)


def test_cached_net_gives_the_fresh_build_tables():
    """A trial run on the per-process cached net (after other trials) equals the same trial on a fresh net."""
    trial = {"part": "train", "net": "grid", "n_layers": 4, "init": "he_fan_in", "seed": 0, "steps": 20}
    v._MODELS.clear()
    fresh = v.run_trial(TINY, trial)
    v.run_trial(TINY, {**trial, "init": "fixed", "seed": 1})
    again = v.run_trial(TINY, trial)
    pd.testing.assert_frame_equal(fresh["curves"], again["curves"], rtol=1e-5)
    assert len(v._MODELS) == 1


def test_paper_profile_grid_and_nets():
    cfg = v.PAPER
    ts = v.trials(cfg)
    assert sum(t["part"] == "train" and t["net"] == "grid" for t in ts) == len(cfg.depths) * 2 * len(cfg.seeds)
    for n_layers in (*cfg.depths, cfg.recipe_a_depth, cfg.vgg_depth):
        model = build_vgg((32, 32, 3), 10, n_layers, widths=cfg.widths, fc_layers=cfg.fc_layers, fc_width=8)
        assert len(weight_layers(model)) == n_layers
    a = build_vgg((32, 32, 3), 10, cfg.recipe_a_depth, widths=cfg.vgg_widths, fc_layers=cfg.fc_layers, fc_width=8)
    deep = build_vgg((32, 32, 3), 10, cfg.recipe_depth, widths=cfg.vgg_widths, fc_layers=cfg.fc_layers, fc_width=8)
    assert len(transfer_layers(a, deep, cfg.recipe_copy_convs)) == cfg.recipe_copy_convs + cfg.fc_layers


def test_fallback_data_when_files_are_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache: no CIFAR-10 here
    cfg = dataclasses.replace(TINY, data="cifar10", fallback_data="digits")
    assert v._data(cfg).name == "digits"
    with pytest.raises(FileNotFoundError):
        v._data(dataclasses.replace(cfg, fallback_data=None))


def test_vgg_figure_has_a_colour_for_every_net():
    """The QUICK grid has six VGG runs (A, the recipe's net, N(0, 0.01) and He at two n_layers): one colour each."""
    rows = []
    for part, phase, init, n in [("recipe", "A", "recipe", 4), ("recipe", "recipe_fixed", "recipe", 6),
                                 ("train", "scratch", "fixed", 6), ("train", "scratch", "he_fan_in", 6),
                                 ("train", "scratch", "fixed", 13), ("train", "scratch", "he_fan_in", 13)]:  # fmt: skip
        for step in (0, 10, 20):
            rows.append(dict(net="vgg", part=part, phase=phase, init=init, n_layers=n, seed=0, step=step, loss=2.3))
    fig = v.plot_vgg(pd.DataFrame(rows))
    import matplotlib.pyplot as plt

    plt.close(fig)
