"""Tests of studies/lsuv_init.py: the pre-registration's hash pin, the claim rules on synthetic tables (PASS, FAIL,
INCONCLUSIVE), the grid, and the SMOKE profile end to end."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import lsuv_init as s

from keras_initkit.study.grid import protocol_hash

PREREGISTRATION = Path(__file__).resolve().parents[1] / "docs" / "results" / "lsuv_init" / "PREREGISTRATION.md"


def test_protocol_is_the_preregistered_one():
    pinned = re.search(r"sha256 of \(CLAIMS, RULES, QUICK\): `([0-9a-f]{64})`", PREREGISTRATION.read_text())
    assert pinned, f"no pinned hash in {PREREGISTRATION}"
    protocol = {"claims": s.CLAIMS, "rules": s.RULES, "quick": dataclasses.asdict(s.QUICK)}
    assert protocol_hash(protocol) == pinned.group(1), "CLAIMS, RULES or QUICK changed after the pre-registration"


def test_confirmatory_seeds_are_fresh():
    assert len(s.QUICK.seeds) >= 5 and not set(s.QUICK.seeds) & set(range(5))  # the pilots used seeds 0-4


# ----------------------------------------------------------------------------------------------- outcomes, rules


def _curve(losses, every=10):
    return pd.DataFrame({"step": every * np.arange(len(losses)), "loss": losses})


def test_curve_outcome_floor_rule():
    ln10 = math.log(10)
    out = s.curve_outcome(_curve([2.3, 1.5, 0.7, 0.45]), 10, 0.5)
    assert out["converged"] and out["steps_to_threshold"] == 30 and out["learned"]
    flat = s.curve_outcome(_curve([ln10] * 11), 10, 0.5)
    assert not flat["learned"] and not flat["converged"] and math.isnan(flat["steps_to_threshold"])
    near = s.curve_outcome(_curve([ln10] * 10 + [0.985 * ln10]), 10, 0.5)  # within 2% of ln 10: did not learn
    assert not near["learned"]
    slow = s.curve_outcome(_curve([2.3] * 6 + [2.0] * 5), 10, 0.5)  # learned, never at the threshold
    assert slow["learned"] and not slow["converged"]
    nan = s.curve_outcome(_curve([2.3, 1.0, np.nan]), 10, 0.5)
    assert nan["diverged"] and not nan["learned"] and not nan["converged"]


def _variances(values: dict[str, float], seeds=(0, 1), n_layers=5):
    rows = [dict(n_layers=n_layers, init=init, seed=seed, layer=f"l{d}", depth=d, kind="preact", stat="var", value=v)
            for init, v in values.items() for seed in seeds for d in range(n_layers)]  # fmt: skip
    return pd.DataFrame(rows)


def test_claim_m1_pass_fail_and_na():
    good = s.claim_m1(s.heldout_variances(_variances({"lsuv_orth": 1.2, "lsuv_fixed": 0.8, "fixed": 1e-9})))
    assert good["status"] == good["verdict"] == "PASS", good["measured"]
    layers = _variances({"lsuv_orth": 1.0, "lsuv_fixed": 1.0})
    layers.loc[3, "value"] = 1.3  # one layer of one net outside the band
    bad = s.claim_m1(s.heldout_variances(layers))
    assert bad["status"] == "FAIL" and "l3" in bad["measured"]
    none = s.claim_m1(s.heldout_variances(_variances({"he_fan_in": 1.0})))
    assert none["verdict"] == none["status"] == "N/A"


# per seed: (steps_to_threshold, converged, learned)
REACH = (200.0, True, True)
STALL = (np.nan, False, False)
SLOW = (np.nan, False, True)


def _final(cells: dict[str, list[tuple[float, bool, bool]]]):
    rows = [dict(init=init, seed=seed, steps_to_threshold=st, converged=c, learned=le, final_loss=0.1 if le else 2.3)
            for init, seeds in cells.items() for seed, (st, c, le) in enumerate(seeds)]  # fmt: skip
    return pd.DataFrame(rows)


def _m2(lsuv, fixed, xavier):
    return s.claim_m2(_final({"lsuv_orth": lsuv, "lsuv_fixed": [REACH] * len(lsuv), "fixed": fixed,
                              "glorot_fan_in": xavier}))  # fmt: skip


def test_claim_m2_verdicts():
    assert _m2([REACH] * 5, [STALL] * 5, [STALL] * 5)["verdict"] == "PASS"
    assert _m2([REACH] * 5, [STALL] * 5, [STALL] * 4 + [REACH])["verdict"] == "FAIL"  # Xavier trains in one seed
    assert _m2([REACH] * 4 + [SLOW], [STALL] * 5, [STALL] * 5)["verdict"] == "FAIL"  # LSUV learns, misses threshold
    stalled = _m2([REACH] * 4 + [STALL], [STALL] * 5, [STALL] * 5)  # every net of seed 4 did not learn
    assert stalled["verdict"] == "INCONCLUSIVE" and stalled["status"] == "N/A"
    both = _m2([STALL] * 5, [STALL] * 5, [STALL] * 4 + [SLOW])  # LSUV stalls where a baseline learned
    assert both["verdict"] == "FAIL"
    assert s.claim_m2(_final({"lsuv_orth": [REACH]}))["verdict"] == "N/A"


def _m3(lsuv, he, steps=1600):
    pairs = s.paired_ratio(_final({"lsuv_orth": lsuv, "he_fan_in": he}), steps)
    return s.claim_m3(pairs), pairs


def test_claim_m3_verdicts():
    fast = [(300.0, True, True)] * 5
    assert _m3(fast, [(200.0, True, True)] * 5)[0]["verdict"] == "PASS"  # 1.5x
    claim, pairs = _m3(fast, [(100.0, True, True)] * 5)  # 3x He's updates
    assert claim["verdict"] == "FAIL" and (pairs["ratio"] == 3.0).all()
    assert _m3([SLOW] + fast[1:], [REACH] * 5)[0]["verdict"] == "FAIL"  # LSUV misses the threshold, He learned
    claim, pairs = _m3([(900.0, True, True)] * 5, [SLOW] * 5)  # He missed: counted as the budget, 1600
    assert claim["verdict"] == "PASS" and (pairs["he_steps"] == 1600).all()
    inconclusive = _m3([STALL] + fast[1:], [STALL] + [REACH] * 4)[0]  # neither learned in seed 0
    assert inconclusive["verdict"] == "INCONCLUSIVE" and inconclusive["status"] == "N/A"
    assert s.claim_m3(s.paired_ratio(_final({"lsuv_orth": fast}), 1600))["verdict"] == "N/A"


def test_lsuv_cost_table():
    final = pd.DataFrame([dict(init="lsuv_orth", seed=k, lsuv_s=2.0 + k, train_s=5.0, lsuv_passes=3) for k in (0, 1)])
    trace = pd.DataFrame([dict(init="lsuv_orth", seed=k, layer=la, iteration=it)
                          for k in (0, 1) for la, it in (("a", 0), ("b", 1), ("c", 2))])  # fmt: skip
    cost = s.lsuv_cost(final, trace).iloc[0]
    assert cost["lsuv_s_mean"] == 2.5 and cost["passes_per_layer_mean"] == 1.0 and cost["passes_per_layer_max"] == 2
    assert cost["layers_without_pass"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------------------------- grid, configs


def test_trials_grid_and_config_errors():
    grid = s.trials(s.QUICK)
    assert len(grid) == len(s.INITS) * len(s.QUICK.seeds)
    assert [t["init"] for t in grid[: 2 * len(s.QUICK.seeds)]] == ["fixed"] * 5 + ["glorot_fan_in"] * 5  # longest first
    with pytest.raises(ValueError, match=r"`inits` must be names from .* Received: inits=\('lsuv',\)"):
        s.trials(dataclasses.replace(s.QUICK, inits=("lsuv",)))
    with pytest.raises(ValueError, match="`steps` must be a multiple of `record_every`=10. Received: steps=15"):
        s.trials(dataclasses.replace(s.QUICK, steps=15))
    with pytest.raises(ValueError, match="`n_layers` must be >= len"):
        s.trials(dataclasses.replace(s.QUICK, n_layers=1))
    with pytest.raises(ValueError, match="trial `init` must be one of"):
        s.run_trial(s.SMOKE, dict(n_layers=4, init="orthogonal", seed=0, steps=20))


def test_run_smoke_profile_end_to_end():  # ~8 s
    out = s.run(s.SMOKE)
    claims = out["claims"].set_index("claim")
    assert list(claims.index) == ["M1", "M2", "M3"]
    assert set(claims["verdict"]) <= {"PASS", "FAIL", "INCONCLUSIVE", "N/A"}
    assert claims.at["M1", "verdict"] == "PASS", claims.at["M1", "measured"]  # LSUV on a 4-layer net
    lsuv = out["lsuv"]
    assert set(lsuv["init"]) == set(s.LSUV_INITS) and (lsuv["seconds"] > 0).all()
    assert set(out["final"]["init"]) == set(s.INITS)
    assert set(out["lsuv_cost"]["init"]) == set(s.LSUV_INITS)
    figures = s.plot(out, out)
    assert set(figures) == {"heldout_variance", "loss_curves"}
