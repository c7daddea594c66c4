"""Tests of studies/rnn_memory.py: the models, the lag factors, the claim rules (PASS, FAIL, INCONCLUSIVE), the
pre-registration hash, a SMOKE run end to end."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from keras_initkit.studies import rnn_memory as r

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(r.MIN_SEEDS)
T = 20


# ----------------------------------------------------------------------------------------------- pre-registration


def test_preregistration_hash_is_pinned():
    """CLAIMS, RULES, the thresholds and QUICK are those PREREGISTRATION.md records (an edit changes the hash)."""
    text = (ROOT / "docs" / "results" / "rnn_memory" / "PREREGISTRATION.md").read_text()
    pinned = re.search(r"sha256: `([0-9a-f]{64})`", text)
    assert pinned is not None, "PREREGISTRATION.md must state `sha256: `<hex>``"
    assert r.preregistration_hash() == pinned.group(1)


def test_quick_uses_fresh_seeds_and_enough_of_them():
    assert len(r.QUICK.seeds) >= r.MIN_SEEDS and min(r.QUICK.seeds) >= 100


# ------------------------------------------------------------------------------------------------------ models


def test_build_models():
    lstm = r.build("lstm_fb5", 6, 4, seed=0)
    bias = lstm.get_layer("recurrent").cell.bias.numpy()
    np.testing.assert_array_equal(bias[4:8], 5.0)
    np.testing.assert_array_equal(np.delete(bias, range(4, 8)), 0.0)
    assert r.forget_bias("lstm") == 1.0 and r.forget_bias("rnn") is None
    irnn = r.build("irnn", 6, 4, seed=0).get_layer("recurrent")
    np.testing.assert_array_equal(irnn.cell.recurrent_kernel.numpy(), np.eye(4))
    w = r.build("rnn_g0.5", 6, 4, seed=0).get_layer("recurrent").cell.recurrent_kernel.numpy()
    np.testing.assert_allclose(w @ w.T, 0.25 * np.eye(4), atol=1e-6)


def test_check_config_names_the_field():
    with pytest.raises(ValueError, match=r"`models` must .* Received: models=\('gru2',\)"):
        r.trials(r.Config(models=("gru2",)))
    with pytest.raises(ValueError, match="`steps` must be a multiple"):
        r.trials(r.Config(steps=150, record_every=100))


# --------------------------------------------------------------------------------------- synthetic tables, rules


def _lags(curves: dict[str, float], phase: str = "init", length: int = T, seeds=SEEDS) -> pd.DataFrame:
    """A "lags" table: grad_norm = rho^lag per model (lag 0 at 10x lag 1, like an LSTM's read-out jump)."""
    rows = []
    for model, rho in curves.items():
        for seed in seeds:
            for lag in range(length):
                value = 10.0 if lag == 0 else rho ** (lag - 1)
                rows.append(dict(part="train", model=model, length=length, seed=seed, phase=phase, lag=lag,
                                 grad_norm=value))  # fmt: skip
    return pd.DataFrame(rows)


def _final(mse: dict[tuple[str, int], float], se: float = 0.005, diverged: dict | None = None) -> pd.DataFrame:
    rows = [dict(model=m, length=n, seed=s, test_mse=v, test_mse_se=se, diverged=(diverged or {}).get(m, False))
            for (m, n), v in mse.items() for s in SEEDS]  # fmt: skip
    return pd.DataFrame(rows)


def test_lag_factors():
    f = r.lag_factors(_lags({"rnn": 0.9, "rnn_g0.5": 0.4}))
    rnn = f[f["model"] == "rnn"].iloc[0]
    assert rnn["rho"] == pytest.approx(0.9) and rnn["retention"] == pytest.approx(0.9 ** (T // 2 - 1))
    assert rnn["end_ratio"] == pytest.approx(0.9 ** (T - 2))
    g = f[f["model"] == "rnn_g0.5"].iloc[0]
    assert g["bound_ratio"] == pytest.approx(10.0 / 10.0)  # lag 0 against itself; later lags far below 0.5^k x 10


def test_claim_r1_pass_fail_inconclusive():
    chi = 0.9**2
    ok = r.lag_factors(_lags({"rnn": 0.9, "rnn_g0.5": 0.04}))
    assert r.claim_r1(ok, chi, T)["verdict"] == "PASS"
    off_rate = r.lag_factors(_lags({"rnn": 0.6, "rnn_g0.5": 0.04}))
    assert r.claim_r1(off_rate, chi, T)["verdict"] == "FAIL"
    above_bound = r.lag_factors(_lags({"rnn": 0.9, "rnn_g0.5": 0.9}))
    assert r.claim_r1(above_bound, chi, T)["verdict"] == "FAIL"
    few = r.lag_factors(_lags({"rnn": 0.9, "rnn_g0.5": 0.04}, seeds=range(2)))
    row = r.claim_r1(few, chi, T)
    assert row["verdict"] == "INCONCLUSIVE" and row["status"] == "N/A" and row["measured"].startswith("INCONCLUSIVE")


def _r2(init_big: float, trained_lstm: float, lstm_mse: float):
    lags = pd.concat([_lags({"lstm": 0.5, "lstm_fb5": init_big}),
                      _lags({"lstm": trained_lstm, "rnn": 0.5}, phase="trained")])  # fmt: skip
    return r.claim_r2(r.lag_factors(lags), _final({("lstm", T): lstm_mse}), T)["verdict"]


def test_claim_r2_pass_fail_inconclusive():
    # at T = 20 the retention is read at lag 10: 0.5^9 = 2e-3 at init, 0.98^9 = 0.83 trained (~400x)
    assert _r2(init_big=0.99, trained_lstm=0.98, lstm_mse=0.01) == "PASS"
    assert _r2(init_big=0.4, trained_lstm=0.98, lstm_mse=0.01) == "FAIL"  # a large bias does not flatten it
    assert _r2(init_big=0.99, trained_lstm=0.6, lstm_mse=0.01) == "FAIL"  # 0.6^9 / 0.5^9 = 5: not 100x
    assert _r2(init_big=0.99, trained_lstm=0.98, lstm_mse=1 / 6) == "INCONCLUSIVE"  # the LSTM did not learn


def test_claim_r3_pass_fail_inconclusive():
    assert r.claim_r3(r.lag_factors(_lags({"irnn": 1.0})), T)["verdict"] == "PASS"
    assert r.claim_r3(r.lag_factors(_lags({"irnn": 0.99})), T)["verdict"] == "FAIL"  # 0.99^18 = 0.83
    assert r.claim_r3(r.lag_factors(_lags({"irnn": 0.996})), T)["verdict"] == "FAIL"  # end 0.93, but rho 0.996
    assert r.claim_r3(r.lag_factors(_lags({"irnn": 1.0}, seeds=range(1))), T)["verdict"] == "INCONCLUSIVE"


def test_claim_r4_pass_fail_inconclusive():
    solved = {("lstm", T): 0.01, ("rnn", T): 0.083 + 0.01, ("lstm", 5): 0.01, ("rnn", 5): 0.02}
    assert r.claim_r4(_final(solved), T, 5)["verdict"] == "PASS"
    both_plateau = {**solved, ("lstm", T): 0.09}
    assert r.claim_r4(_final(both_plateau), T, 5)["verdict"] == "FAIL"
    control_fails = {**solved, ("rnn", 5): 0.12}
    assert r.claim_r4(_final(control_fails), T, 5)["verdict"] == "FAIL"
    at_floor = {**solved, ("lstm", T): 1 / 6 - 0.001, ("rnn", T): 1 / 6 + 0.001}  # within 2 SE of 1/6: neither learned
    row = r.claim_r4(_final(at_floor), T, 5)
    assert row["verdict"] == "INCONCLUSIVE" and "learned 0/5" in row["measured"]


def test_claim_r5_pass_fail():
    mse = {("irnn", T): 0.05, ("irnn_noclip", T): 0.16}
    assert r.claim_r5(_final(mse, diverged={"irnn_noclip": True}), T)["verdict"] == "PASS"
    one_clipped = _final(mse, diverged={"irnn_noclip": True})
    one_clipped.loc[(one_clipped["model"] == "irnn") & (one_clipped["seed"] == 0), "diverged"] = True
    assert r.claim_r5(one_clipped, T)["verdict"] == "PASS"  # a minority of the clipped runs may diverge
    assert r.claim_r5(_final(mse), T)["verdict"] == "FAIL"
    both = _final(mse, diverged={"irnn_noclip": True, "irnn": True})
    assert r.claim_r5(both, T)["verdict"] == "FAIL"
    assert r.claim_r5(_final({("irnn", T): 0.05}), T)["verdict"] == "INCONCLUSIVE"


def test_mean_field_of_the_default_rnn_is_below_one():
    mf = r.rnn_mean_field(r.SMOKE, r.SMOKE.length)
    assert 0 < mf.chi < 1 and math.isfinite(mf.q_star)


# ------------------------------------------------------------------------------------------------------ smoke


@pytest.mark.slow
def test_smoke_end_to_end(tmp_path):
    from keras_initkit.study.runner import run_study

    res = run_study(r, r.SMOKE, profile="smoke", out_dir=tmp_path, progress=False)
    claims = res.summary["claims"]
    assert list(claims["claim"]) == ["R1", "R2", "R3", "R4", "R5"]
    assert set(claims["verdict"]) <= {"PASS", "FAIL", "INCONCLUSIVE"}
    assert (claims["verdict"] == "INCONCLUSIVE").all()  # one seed: fewer than MIN_SEEDS on every claim
    folder = tmp_path / "rnn_memory" / "smoke"
    assert (folder / "REPORT.md").exists()
    assert {p.stem for p in (folder / "figures").glob("*.png")} >= {"gradient_vs_lag", "mse_curves"}
