"""Memory through time: tanh RNN vs LSTM vs IRNN on the adding problem (Hochreiter & Schmidhuber 1997; Pascanu,
Mikolov & Bengio 2013; Le, Jaitly & Hinton 2015; Arjovsky, Shah & Bengio 2016).

Unrolled in time an RNN is a very deep feed-forward net whose layers share one matrix, so the error sent back q
steps is a product of q Jacobians diag(f'(z)) W^T: it vanishes when |f'| ||W|| < 1 (Pascanu et al.'s sufficient
condition), and the LSTM's cell carries it as a product of forget gates instead (H&S's constant error carousel).
- At initialization (R1-R3): ||dC/dh_{T-1-lag}|| against the lag on a probe batch, from
  `keras_initkit.recurrent.time_statistics` (exact, one backward pass), beside the mean-field per-step factor
  sqrt(chi) of the tanh RNN (`recurrent.mean_field_chi`), the bound g^lag of a tanh RNN with W_rec = g orthogonal,
  and the per-step factor of the LSTMs' forget gates sigma(b_f). The per-step factor rho of a curve is exp(slope) of
  a least-squares line through ln||dC/dh|| against the lag over lags 1 .. T/2 (`study.summary.layer_factor`).
- Training (R4, R5): test MSE on a fixed test set against the 1/6 baseline (predict 1) and the 1/12 plateau of a
  model that only remembers the recent value; the gradient by lag again after training (does the LSTM retain?).

Data: Arjovsky et al.'s variant of the adding problem (`keras_initkit.datasets.adding_problem`): values U[0, 1],
one marker in each half, target the sum of the two marked values. Chosen because its two baselines are exact and
distinct, and the first marker's lag (>= T/2) is set by T alone. Training set, test set and probe batch are fixed
draws (their seeds in Config); a trial's seed draws the weights and the mini-batch order.

Models (Keras layers, `units` wide, a Dense(1) read-out of the last state, MSE loss, RMSprop with global-norm
clipping as in Arjovsky et al.): "rnn" SimpleRNN(tanh) with Keras' defaults (glorot_uniform input kernel,
orthogonal recurrent kernel, zero bias); "rnn_g<g>" the same with W_rec = g orthogonal (at init only); "lstm" with
Keras' forget bias 1 (`unit_forget_bias`, Jozefowicz et al.); "lstm_fb<b>" with forget bias b; "irnn" (ReLU,
W_rec = I, zero bias, input weights N(0, 0.001^2), Le et al.); "irnn_noclip" the IRNN without clipping.

QUICK (2 CPU cores, ~5 minutes): T = 100 (control T = 10), 32 units, RMSprop 1e-2 with global-norm clipping at 1,
batch 32, 4000 updates, seeds 100-104 (the confirmatory seeds of PREREGISTRATION.md; pilots used 0-4). Arjovsky et
al.'s rate 1e-3 left the LSTM at the baseline after 2000 updates in a timing run; at 1e-2 it learns T = 100 within
the budget. The large forget bias (5, sigma = 0.993) and the tanh RNN with g = 0.5 are measured at init only.

PAPER: T = 400 (control 100), 128 units, 5 seeds, 20k updates (Arjovsky et al.'s Fig 2 setup, for a GPU).
SMOKE: the whole pipeline in seconds (T = 12, 8 units, one seed, 20 updates).

Run: `make study-rnn` (QUICK) or `python -m keras_initkit study rnn_memory --profile quick|paper|smoke
[--engine process --jobs 2]`; results in results/rnn_memory/<profile>/, the QUICK report in
docs/results/rnn_memory/REPORT.md, its pre-registration in docs/results/rnn_memory/PREREGISTRATION.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import keras
import numpy as np
import pandas as pd

from keras_initkit.datasets import ADDING_BASELINE_MSE, ADDING_RECENT_MSE, adding_problem
from keras_initkit.study import entry_points
from keras_initkit.study.grid import derive_seed, protocol_hash
from keras_initkit.study.summary import claim_row, layer_factor, spread, with_trial
from keras_initkit.study.training import ModelCache, fit_curve

NAME = "rnn_memory"

CLAIMS = {
    "R1": "At init, the gradient dC/dh_{T-1-k} of a tanh SimpleRNN (Keras defaults) shrinks exponentially in the lag "
    "k at the mean-field rate sqrt(sigma_w^2 E[tanh'(z)^2]); with W_rec = 0.5 orthogonal it stays below 0.5^k "
    "(Pascanu et al.'s bound).",
    "R2": "The LSTM's cell carries the error as a product of forget gates: at init the per-step factor grows with "
    "the forget bias (default 1 attenuates, a large bias keeps the gradient near flat); training on the adding "
    "problem teaches the LSTM to retain: its gradient at the first marker's lag grows by orders of magnitude.",
    "R3": "IRNN at init (ReLU, W_rec = I, zero bias, small input weights, non-negative inputs): the gradient norm at "
    "the first step equals the one at the last step but one within a few per cent.",
    "R4": "Adding problem at T = 100 on a small budget: the LSTM learns (beats the 1/6 baseline and the 1/12 "
    "recent-value plateau), the tanh RNN does not beat the plateau; at the control length both learn.",
    "R5": "Without gradient clipping the IRNN diverges at the learning rate that trains the LSTM; with global-norm "
    "clipping it stays finite in most seeds (Pascanu et al.'s remedy).",
}

LABELS = {"rnn": "tanh RNN", "lstm": "LSTM b_f=1", "irnn": "IRNN (clipped)", "irnn_noclip": "IRNN (no clipping)"}

# Thresholds of the rules, fixed in PREREGISTRATION.md before the confirmatory run.
R1_TOL = 0.35  # |ln rho / ln sqrt(chi) - 1| <= R1_TOL: the measured rate agrees with the mean field
BOUND_SLACK = 1.0001  # float32 round-off allowed on the g^k bound
R2_FLAT = 0.95  # "near flat": the large-forget-bias LSTM's per-step factor at init is >= this
R2_RETAIN = 100.0  # "orders of magnitude": the LSTM's retention at lag T/2, trained / at init, >= this
R3_TOL = 0.10  # "a few per cent": |norm(lag T-1) / norm(lag 1) - 1| <= R3_TOL ...
R3_RHO_TOL = 0.002  # ... and |rho - 1| <= R3_RHO_TOL (flat per step)
FLOOR_SE = 2.0  # "did not learn": test MSE >= 1/6 - FLOOR_SE standard errors of the test MSE
R5_BLOWUP = 6.0  # "diverged": the final test MSE is not finite or above R5_BLOWUP x 1/6 (= 1)
MIN_SEEDS = 5  # seeds per claim cell; fewer makes the claim INCONCLUSIVE

THRESHOLDS = dict(R1_TOL=R1_TOL, BOUND_SLACK=BOUND_SLACK, R2_FLAT=R2_FLAT, R2_RETAIN=R2_RETAIN, R3_TOL=R3_TOL,
                  R3_RHO_TOL=R3_RHO_TOL,
                  FLOOR_SE=FLOOR_SE, R5_BLOWUP=R5_BLOWUP, MIN_SEEDS=MIN_SEEDS)  # fmt: skip

RULES = {
    "R1": "At init, T = Config.length, every seed: (a) 'rnn': rho < 1 and |ln rho / ln sqrt(chi) - 1| <= "
    f"{R1_TOL} with chi = mean_field_chi('tanh', 1, sigma_u2 = glorot_uniform's fan-in variance x 2, input_var = "
    "the probe's mean square per feature); (b) every 'rnn_g<g>' with g < 1: ||dC/dh|| at lag k / at lag 0 <= "
    f"g^k x {BOUND_SLACK} at every lag.",
    "R2": f"(a) At init every seed: rho(lstm) < rho(lstm_fb<b>) (paired by seed) and rho(lstm_fb<b>) >= {R2_FLAT}; "
    f"(b) at T, retention (norm at lag T/2 / norm at lag 1) of 'lstm' after training / at init (same seed) >= "
    f"{R2_RETAIN:g} in every seed. (b) is INCONCLUSIVE when the LSTM did not learn in some seed.",
    "R3": f"At init every seed, 'irnn': |norm(lag T-1) / norm(lag 1) - 1| <= {R3_TOL} and |rho - 1| <= {R3_RHO_TOL}.",
    "R4": "Test MSE on the fixed test set, every seed. 'Did not learn': MSE >= 1/6 - "
    f"{FLOOR_SE:g} SE (SE = std of the squared errors / sqrt(n_test)). PASS: at T the LSTM's MSE < 1/12 in every "
    "seed and the tanh RNN's MSE >= 1/12 in every seed, LSTM < RNN paired by seed; at the control length both "
    "< 1/12 in every seed. FAIL otherwise; INCONCLUSIVE when both models did not learn at T in some seed.",
    "R5": f"'Diverged': the final test MSE is not finite or above {R5_BLOWUP:g} x 1/6. PASS: 'irnn_noclip' "
    "diverges in a majority of the seeds and 'irnn' (clipped) in a minority; FAIL otherwise.",
}


def preregistration_hash() -> str:
    """sha256 of the canonical JSON of CLAIMS, RULES, THRESHOLDS and QUICK: the value PREREGISTRATION.md records
    (a test pins it, so that an edit of a claim, a rule or the QUICK protocol shows)."""
    return protocol_hash({"claims": CLAIMS, "rules": RULES, "thresholds": THRESHOLDS, "quick": QUICK})


@dataclasses.dataclass(frozen=True)
class Config:
    # sequence length T of the claims (Arjovsky et al.: 100-750)
    length: int = 100
    # control length at which both the tanh RNN and the LSTM should learn (0: no control)
    control_length: int = 10
    # hidden units of every recurrent layer
    units: int = 32
    # models trained at `length` in every seed (names: see the module docstring)
    models: tuple[str, ...] = ("rnn", "lstm", "irnn", "irnn_noclip")
    # models trained at `control_length` in every seed
    control_models: tuple[str, ...] = ("rnn", "lstm")
    # models measured at init only (at `length`): "rnn_g<g>" (tanh, W_rec = g orthogonal), "lstm_fb<b>", ...
    init_models: tuple[str, ...] = ("rnn_g0.5", "lstm_fb5")
    # one trial per (model, length, seed): the seed draws the weights and the mini-batch order
    seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    # updates of every trained model (the budget)
    steps: int = 4000
    # mini-batch size
    batch_size: int = 32
    # RMSprop learning rate, the same for every model (Arjovsky et al.: 1e-3; 1e-2 trains the LSTM at T = 100
    # within the budget in a timing run, 1e-3 did not in 2000 updates)
    learning_rate: float = 1e-2
    # global-norm clipping of the gradient (Arjovsky et al.: 1); the *_noclip models have none
    clipnorm: float = 1.0
    # updates per recorded chunk (test MSE after each; also Keras' steps_per_execution)
    record_every: int = 200
    # training sequences (one fixed draw) and test sequences (another fixed draw)
    n_train: int = 10000
    n_test: int = 1000
    # probe sequences for the gradient by lag (the first n_probe of the test set)
    n_probe: int = 256
    # seeds of the fixed training and test draws (never a trial's seed)
    data_seed: int = 7
    # std of the IRNN's input weights (Le et al.: N(0, 0.001^2))
    irnn_input_std: float = 1e-3


QUICK = Config()
PAPER = Config(length=400, control_length=100, units=128, steps=20000, n_train=100000, n_test=10000,
               n_probe=512, record_every=500)  # fmt: skip
SMOKE = Config(length=12, control_length=6, units=8, seeds=(0,), steps=20, batch_size=8, record_every=10,
               n_train=64, n_test=32, n_probe=16)  # fmt: skip
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}
TRIAL_KEYS = ("part", "model", "length", "seed", "steps")


def label(model: str) -> str:
    """The figure label of a model name."""
    if model.startswith("lstm_fb"):
        return f"LSTM b_f={model.removeprefix('lstm_fb')}"
    if model.startswith("rnn_g"):
        return f"tanh RNN g={model.removeprefix('rnn_g')}"
    return LABELS.get(model, model)


def forget_bias(model: str) -> float | None:
    """The forget-gate bias at init of an LSTM model name (None for the others)."""
    return 1.0 if model == "lstm" else float(model.removeprefix("lstm_fb")) if model.startswith("lstm_fb") else None


def _known(model: str) -> bool:
    try:
        return model in LABELS or forget_bias(model) is not None or float(model.removeprefix("rnn_g")) > 0
    except ValueError:
        return False


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field, the rule and the value when a Config cannot run."""

    def need(ok, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"`{field}` must {rule}. Received: {field}={getattr(cfg, field)!r}")

    for field in ("models", "control_models", "init_models"):
        need(all(_known(m) for m in getattr(cfg, field)), field, "name models (rnn, lstm, lstm_fb<b>, irnn, ...)")
    need(cfg.seeds, "seeds", "not be empty")
    need(cfg.length >= 4, "length", "be >= 4")
    need(cfg.control_length == 0 or cfg.control_length >= 2, "control_length", "be 0 or >= 2")
    for field in ("steps", "record_every", "batch_size", "n_probe", "units"):
        need(getattr(cfg, field) >= 1, field, "be >= 1")
    need(cfg.steps % cfg.record_every == 0, "steps", f"be a multiple of `record_every`={cfg.record_every}")
    need(cfg.n_probe <= cfg.n_test, "n_probe", f"be <= `n_test`={cfg.n_test}")
    need(cfg.batch_size <= cfg.n_train, "batch_size", f"be <= `n_train`={cfg.n_train}")


def trials(cfg: Config) -> list[dict]:
    """The grid: part "train" (model, length, seed: measured at init, trained, measured again) at `length` for
    `models` and at `control_length` for `control_models`; part "init" (measured at init only) for `init_models`.
    Longest first."""
    check_config(cfg)
    lengths = [(cfg.length, cfg.models)] + ([(cfg.control_length, cfg.control_models)] if cfg.control_length else [])
    train = [dict(part="train", model=m, length=n, seed=int(s), steps=cfg.steps)
             for n, models in lengths for m in models for s in cfg.seeds]  # fmt: skip
    cost = lambda t: t["length"] * (4 if t["model"].startswith("lstm") else 1)  # noqa: E731
    init = [dict(part="init", model=m, length=cfg.length, seed=int(s), steps=0)
            for m in cfg.init_models for s in cfg.seeds]  # fmt: skip
    return sorted(train, key=lambda t: -cost(t)) + init


# ---------------------------------------------------------------------------------------------------- one trial


@functools.lru_cache(maxsize=8)
def _data(cfg: Config, length: int) -> dict[str, np.ndarray]:
    """The fixed training and test draws at `length` (cached per process)."""
    x, y = adding_problem(cfg.n_train, length, derive_seed(cfg.data_seed, "train", length))
    x_test, y_test = adding_problem(cfg.n_test, length, derive_seed(cfg.data_seed, "test", length))
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


def build(model: str, length: int, units: int, seed: int, irnn_input_std: float = 1e-3) -> keras.Model:
    """The Keras model of a model name: one recurrent layer of `units`, a Dense(1) read-out of its last state; every
    initializer seeded from `seed`."""
    s = functools.partial(derive_seed, seed, model)
    kw = dict(kernel_initializer=keras.initializers.GlorotUniform(seed=s("kernel")), name="recurrent")
    if model.startswith("lstm"):
        b = forget_bias(model)
        bias = np.zeros(4 * units, np.float32)
        bias[units : 2 * units] = b  # Keras' gate order: i, f, c, o
        rec = keras.initializers.Orthogonal(seed=s("rec"))
        layer = keras.layers.LSTM(units, recurrent_initializer=rec, unit_forget_bias=False,
                                  bias_initializer=keras.initializers.Constant(bias), **kw)  # fmt: skip
    elif model.startswith("irnn"):
        kw["kernel_initializer"] = keras.initializers.RandomNormal(stddev=irnn_input_std, seed=s("kernel"))
        layer = keras.layers.SimpleRNN(units, activation="relu", recurrent_initializer=keras.initializers.Identity(),
                                       bias_initializer="zeros", **kw)  # fmt: skip
    else:
        gain = 1.0 if model == "rnn" else float(model.removeprefix("rnn_g"))
        rec = keras.initializers.Orthogonal(gain=gain, seed=s("rec"))
        layer = keras.layers.SimpleRNN(units, activation="tanh", recurrent_initializer=rec, **kw)
    out = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=s("dense")), name="readout")
    return keras.Sequential([keras.Input((length, 2)), layer, out])


_MODELS = ModelCache()  # per process: one compiled model per (model, length, ...); the train step traced once


def fresh_model(cfg: Config, model: str, length: int, seed: int) -> keras.Model:
    """A compiled model (RMSprop, MSE; clipped unless *_noclip) with `build`'s weights and a fresh optimizer."""
    clip = None if model.endswith("_noclip") else cfg.clipnorm

    def compile(m: keras.Model) -> None:
        opt = keras.optimizers.RMSprop(learning_rate=cfg.learning_rate, global_clipnorm=clip)
        m.compile(optimizer=opt, loss="mse", steps_per_execution=cfg.record_every)

    key = (model, length, cfg.units, cfg.learning_rate, clip, cfg.record_every, cfg.irnn_input_std)
    return _MODELS.fresh(key, lambda: build(model, length, cfg.units, seed, cfg.irnn_input_std), compile).model


def gradient_by_lag(net: keras.Model, x: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """lag, grad_norm: the mean over the probe of ||dC/dh_t|| (`recurrent.time_statistics`), lag = T-1-t."""
    from keras_initkit.recurrent import time_statistics

    df = time_statistics(net, x, y, stats=("norm",), kinds=("grad_hidden",))
    return df[["lag", "value"]].rename(columns={"value": "grad_norm"}).sort_values("lag").reset_index(drop=True)


def predicted_decay(cfg: Config, model: str, length: int, lag) -> np.ndarray:
    """Theory's ||dC/dh at lag|| / ||at lag 0|| at init: sqrt(chi)^lag (mean field) for "rnn", the bound g^lag for
    "rnn_g<g>", sigma(b_f)^lag (the cell path's forget gates) for the LSTMs, 1 for the IRNN (W_rec = I)."""
    lag = np.asarray(lag, dtype=np.float64)
    if model == "rnn":
        return rnn_mean_field(cfg, length).decay(lag)
    if model.startswith("rnn_g"):
        return float(model.removeprefix("rnn_g")) ** lag
    if model.startswith("lstm"):
        return _sigmoid(forget_bias(model)) ** lag
    return np.ones_like(lag)


def mse_on(net: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(MSE, its standard error std(squared errors) / sqrt(n)) on (x, y)."""
    err = (net.predict(x, batch_size=500, verbose=0).reshape(-1).astype(np.float64) - y) ** 2
    return float(err.mean()), float(err.std(ddof=1) / math.sqrt(len(err)))


def _forget_bias_mean(net: keras.Model, model: str) -> float:
    if not model.startswith("lstm"):
        return float("nan")
    bias = net.get_layer("recurrent").cell.bias.numpy()
    n = len(bias) // 4
    return float(bias[n : 2 * n].mean())


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One trial: the gradient by lag at init ("lags", phase "init"); for part "train" also `steps` updates (the
    "curves": step, loss, test_mse), the gradient by lag after training (phase "trained") and a "final" row (test
    MSE and its SE, diverged, the LSTM's mean forget bias, wall time)."""
    part = trial.get("part")
    if part not in ("train", "init"):
        raise ValueError(f"trial `part` must be 'train' or 'init'. Received: part={part!r}")
    start, seed, model, length = time.perf_counter(), int(trial["seed"]), trial["model"], int(trial["length"])
    d = _data(cfg, length)
    probe = (d["x_test"][: cfg.n_probe], d["y_test"][: cfg.n_probe])
    net = fresh_model(cfg, model, length, seed)
    init = gradient_by_lag(net, *probe)
    lags = [init.assign(phase="init", predicted=predicted_decay(cfg, model, length, init["lag"]))]
    tables = {}
    if part == "train":
        curve = fit_curve(
            net, d["x"], d["y"], steps=cfg.steps, every=cfg.record_every, batch_size=cfg.batch_size,
            seed=derive_seed(seed, "order", model, length),
            evaluate=lambda m: {"test_mse": mse_on(m, d["x_test"], d["y_test"])[0]},
        )  # fmt: skip
        losses = curve["loss"].to_numpy(dtype=float)
        mse, se = mse_on(net, d["x_test"], d["y_test"])
        diverged = bool(not np.isfinite(mse) or mse > R5_BLOWUP * ADDING_BASELINE_MSE)
        lags.append(gradient_by_lag(net, *probe).assign(phase="trained"))
        final = pd.DataFrame([dict(test_mse=mse, test_mse_se=se, diverged=diverged, final_loss=losses[-1],
                                   forget_bias=_forget_bias_mean(net, model),
                                   wall_s=time.perf_counter() - start)])  # fmt: skip
        tables = {"curves": with_trial(curve, trial, TRIAL_KEYS), "final": with_trial(final, trial, TRIAL_KEYS)}
    return {"lags": with_trial(pd.concat(lags, ignore_index=True), trial, TRIAL_KEYS), **tables}


# ------------------------------------------------------------------------------------------ summaries and claims


def probe_input_var(cfg: Config, length: int) -> float:
    """Mean square per input feature of the probe batch (values U[0, 1], markers 2/T)."""
    return float(np.mean(_data(cfg, length)["x_test"][: cfg.n_probe] ** 2))


def rnn_mean_field(cfg: Config, length: int):
    """`mean_field_chi` of the default tanh SimpleRNN: sigma_w^2 = 1 (orthogonal), glorot_uniform input kernel
    (2, units): per-entry variance 2 / (2 + units), so sigma_u^2 = 2 x that (d_in = 2)."""
    from keras_initkit.recurrent import mean_field_chi

    sigma_u2 = 2 * 2.0 / (2 + cfg.units)
    return mean_field_chi("tanh", 1.0, sigma_u2=sigma_u2, input_var=probe_input_var(cfg, length))


def lag_factors(lags: pd.DataFrame) -> pd.DataFrame:
    """Per (model, length, seed, phase): rho (exp slope of ln grad_norm vs lag over lags 1 .. T/2), retention
    (norm at lag T/2 / lag 1), end_ratio (norm at lag T-1 / lag 1) and, for "rnn_g<g>", bound_ratio: the largest
    (norm at lag k / lag 0) / g^k over the lags (<= 1: Pascanu et al.'s bound holds).

    Lag 1 is the reference of the ratios: dC/dh_{T-1} (lag 0) comes from the read-out alone, every earlier step only
    through the recurrence (an LSTM's lag-0 gradient is ~10x its lag-1 one at init, through the output gate)."""
    rows = []
    for key, g in lags.groupby(["part", "model", "length", "seed", "phase"], sort=True):
        g = g.set_index("lag")["grad_norm"].sort_index()
        n = int(key[2])
        fit = g.loc[1 : n // 2]
        ratio = g / g.loc[1]
        row = dict(zip(("part", "model", "length", "seed", "phase"), key, strict=True))
        row.update(rho=layer_factor(fit.index, fit.to_numpy(), floor=0.0), retention=float(ratio.loc[n // 2]),
                   end_ratio=float(ratio.loc[n - 1]))  # fmt: skip
        if str(key[1]).startswith("rnn_g"):
            gain = float(str(key[1]).removeprefix("rnn_g"))
            from_last = g / g.loc[0]
            row["bound_ratio"] = float((from_last / gain ** from_last.index.to_numpy(dtype=float)).max())
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(claim: str, verdict: str, measured: str, paper: str) -> dict:
    """A claims row: verdict PASS / FAIL / INCONCLUSIVE (the pre-registered one); status as the runner takes it
    (INCONCLUSIVE is written N/A, with the verdict leading `measured`)."""
    status = "N/A" if verdict == "INCONCLUSIVE" else verdict
    text = f"INCONCLUSIVE: {measured}" if verdict == "INCONCLUSIVE" else measured
    return {**claim_row(CLAIMS, RULES, claim, status, text, paper), "verdict": verdict}


def _sel(frame: pd.DataFrame, model: str, length: int, phase: str | None = None) -> pd.DataFrame:
    keep = (frame["model"] == model) & (frame["length"] == length)
    if phase is not None:
        keep &= frame["phase"] == phase
    return frame[keep]


def _enough(*frames: pd.DataFrame) -> bool:
    return all(len(f) >= MIN_SEEDS for f in frames)


def claim_r1(factors: pd.DataFrame, chi: float, length: int, gains=(0.5,)) -> dict:
    """R1 (see RULES["R1"]) from `lag_factors` and the mean-field chi."""
    paper = "error decays exponentially when |f' w| < 1 (H&S 3.1); sigma_max(W) < 1/gamma vanishes (Pascanu et al.)"
    rnn = _sel(factors, "rnn", length, "init")
    bounded = [_sel(factors, f"rnn_g{g:g}", length, "init") for g in gains if g < 1]
    if not _enough(rnn, *bounded):
        return _verdict("R1", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of 'rnn' or 'rnn_g<g>'", paper)
    predicted = math.sqrt(chi)
    rel = np.log(rnn["rho"]) / math.log(predicted) - 1.0
    agree = (rnn["rho"] < 1) & (rel.abs() <= R1_TOL)
    under = [b["bound_ratio"] <= BOUND_SLACK for b in bounded]
    ok = bool(agree.all() and all(u.all() for u in under))
    measured = (
        f"rnn rho = {spread(rnn['rho'])}, mean field sqrt(chi) = {predicted:.4f} (ln ratio - 1 = {spread(rel)}; "
        f"{int(agree.sum())}/{len(rnn)} within {R1_TOL}); retention at lag T/2 {spread(rnn['retention'])}"
    )
    for g, b, u in zip([g for g in gains if g < 1], bounded, under, strict=True):
        measured += f"; g={g:g}: max ratio to g^k = {spread(b['bound_ratio'])} ({int(u.sum())}/{len(b)} below)"
    return _verdict("R1", "PASS" if ok else "FAIL", measured, paper)


def _learned(final: pd.DataFrame) -> pd.Series:
    """Per row: the model learned (test MSE below 1/6 by more than FLOOR_SE standard errors, and finite)."""
    return np.isfinite(final["test_mse"]) & (final["test_mse"] < ADDING_BASELINE_MSE - FLOOR_SE * final["test_mse_se"])


def _paired(a: pd.DataFrame, b: pd.DataFrame, column: str) -> pd.DataFrame:
    return a[["seed", column]].merge(b[["seed", column]], on="seed", suffixes=("_a", "_b"))


def claim_r2(factors: pd.DataFrame, final: pd.DataFrame, length: int, big: str = "lstm_fb5") -> dict:
    """R2 (see RULES["R2"]): (a) from the at-init factors, (b) from the trained retention and `final`."""
    paper = "constant error carousel (H&S 3.2); forget bias 1 (Jozefowicz et al.); LSTM learns T <= 400 (ASB Fig 2)"
    lstm, large = _sel(factors, "lstm", length, "init"), _sel(factors, big, length, "init")
    t_lstm, t_rnn = _sel(factors, "lstm", length, "trained"), _sel(factors, "rnn", length, "trained")
    if not _enough(lstm, large, t_lstm):
        return _verdict("R2", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of lstm or {big}", paper)
    at_init = _paired(lstm, large, "rho")
    grows = at_init["rho_a"] < at_init["rho_b"]
    flat = large["rho"] >= R2_FLAT
    ret = _paired(t_lstm, lstm, "retention")
    times = ret["retention_a"] / ret["retention_b"]
    orders = times >= R2_RETAIN
    learned = _learned(_sel(final, "lstm", length))
    measured = (
        f"(a) rho lstm (b_f=1) = {spread(lstm['rho'])} (sigma(1) = {_sigmoid(1):.3f}), {big} = {spread(large['rho'])} "
        f"(sigma = {_sigmoid(forget_bias(big)):.3f}); larger in {int(grows.sum())}/{len(at_init)} seeds, "
        f">= {R2_FLAT} in {int(flat.sum())}/{len(large)}; (b) lstm retention at lag T/2: init "
        f"{spread(lstm['retention'])}, trained {spread(t_lstm['retention'])}, trained / init {spread(times)} "
        f"(>= {R2_RETAIN:g} in {int(orders.sum())}/{len(ret)}); LSTM learned in {int(learned.sum())}/{len(learned)}"
        f"; for the record, trained tanh RNN retention {spread(t_rnn['retention'])}"
    )
    part_a = bool(grows.all() and flat.all())
    if not part_a:
        return _verdict("R2", "FAIL", measured, paper)
    if not learned.all():
        return _verdict("R2", "INCONCLUSIVE", measured + " (b needs a trained LSTM)", paper)
    return _verdict("R2", "PASS" if bool(orders.all()) else "FAIL", measured, paper)


def _sigmoid(b: float) -> float:
    return 1.0 / (1.0 + math.exp(-b))


def claim_r3(factors: pd.DataFrame, length: int) -> dict:
    """R3 (see RULES["R3"])."""
    paper = "IRNN: identity recurrence, zero bias (Le, Jaitly & Hinton 2015); CEC with f' w = 1 (H&S 3.2)"
    irnn = _sel(factors, "irnn", length, "init")
    if not _enough(irnn):
        return _verdict("R3", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of 'irnn'", paper)
    close = ((irnn["end_ratio"] - 1).abs() <= R3_TOL) & ((irnn["rho"] - 1).abs() <= R3_RHO_TOL)
    measured = (
        f"norm(lag T-1) / norm(lag 1) = {spread(irnn['end_ratio'])}, rho = {spread(irnn['rho'], '.5f')} "
        f"({int(close.sum())}/{len(irnn)} within both)"
    )
    return _verdict("R3", "PASS" if bool(close.all()) else "FAIL", measured, paper)


def _mse_text(rows: pd.DataFrame, name: str) -> str:
    return f"{name} {spread(rows['test_mse'])} (learned {int(_learned(rows).sum())}/{len(rows)})"


def claim_r4(final: pd.DataFrame, length: int, control_length: int) -> dict:
    """R4 (see RULES["R4"])."""
    paper = "T = 100: LSTM below the baseline, tanh RNN and IRNN at it (Arjovsky et al. Fig 2; H&S Exp 4)"
    lstm, rnn = _sel(final, "lstm", length), _sel(final, "rnn", length)
    c_lstm, c_rnn = _sel(final, "lstm", control_length), _sel(final, "rnn", control_length)
    if not _enough(lstm, rnn, *((c_lstm, c_rnn) if control_length else ())):
        return _verdict("R4", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of lstm and rnn", paper)
    pairs = _paired(lstm, rnn, "test_mse")
    diff = pairs["test_mse_b"] - pairs["test_mse_a"]
    measured = (
        f"T={length}: {_mse_text(lstm, 'lstm')}, {_mse_text(rnn, 'rnn')}, rnn - lstm paired {spread(diff, ci=0.95)}"
    )
    if control_length:
        measured += f"; T={control_length}: {_mse_text(c_lstm, 'lstm')}, {_mse_text(c_rnn, 'rnn')}"
    learned = _paired(lstm.assign(learned=_learned(lstm)), rnn.assign(learned=_learned(rnn)), "learned")
    if not (learned["learned_a"] | learned["learned_b"]).all():
        return _verdict("R4", "INCONCLUSIVE", measured + " (neither learned in some seed)", paper)
    ok = (lstm["test_mse"] < ADDING_RECENT_MSE).all() and (rnn["test_mse"] >= ADDING_RECENT_MSE).all()
    ok = ok and bool((diff > 0).all())
    if control_length:
        control = pd.concat([c_lstm, c_rnn])
        ok = ok and bool((control["test_mse"] < ADDING_RECENT_MSE).all())
    return _verdict("R4", "PASS" if ok else "FAIL", measured, paper)


def claim_r5(final: pd.DataFrame, length: int) -> dict:
    """R5 (see RULES["R5"])."""
    paper = "clip the gradient's global norm against exploding gradients (Pascanu et al. 2013, Sec 3.2)"
    clip, noclip = _sel(final, "irnn", length), _sel(final, "irnn_noclip", length)
    if not _enough(clip, noclip):
        return _verdict("R5", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of irnn and irnn_noclip", paper)
    n_no, n_clip = int(noclip["diverged"].sum()), int(clip["diverged"].sum())
    ok = n_no > len(noclip) / 2 and n_clip < len(clip) / 2
    measured = (
        f"diverged: no clipping {n_no}/{len(noclip)}, clipped {n_clip}/{len(clip)}; test MSE "
        f"{_mse_text(noclip, 'no clipping')}, {_mse_text(clip, 'clipped')}"
    )
    return _verdict("R5", "PASS" if ok else "FAIL", measured, paper)


def _gains(cfg: Config) -> tuple[float, ...]:
    return tuple(float(m.removeprefix("rnn_g")) for m in (*cfg.models, *cfg.init_models) if m.startswith("rnn_g"))


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Per-curve factors, the training outcomes and the claims."""
    lags = tables.get("lags", pd.DataFrame(columns=["part", "model", "length", "seed", "phase", "lag", "grad_norm"]))
    final = tables.get("final", pd.DataFrame(columns=["model", "length", "seed", "test_mse", "test_mse_se",
                                                      "diverged"]))  # fmt: skip
    factors = lag_factors(lags) if len(lags) else pd.DataFrame(columns=["model", "length", "seed", "phase", "rho"])
    big = next((m for m in (*cfg.models, *cfg.init_models) if m.startswith("lstm_fb")), "lstm_fb5")
    chi = rnn_mean_field(cfg, cfg.length).chi
    claims = pd.DataFrame([claim_r1(factors, chi, cfg.length, _gains(cfg)), claim_r2(factors, final, cfg.length, big),
                           claim_r3(factors, cfg.length), claim_r4(final, cfg.length, cfg.control_length),
                           claim_r5(final, cfg.length)])  # fmt: skip
    by = ["model", "length", "phase"]
    factor_summary = factors.groupby(by, as_index=False).agg(
        n=("seed", "size"), rho_mean=("rho", "mean"), rho_min=("rho", "min"), rho_max=("rho", "max"),
        retention_mean=("retention", "mean"), end_ratio_mean=("end_ratio", "mean"),
    )  # fmt: skip
    training = pd.DataFrame()
    if len(final):
        training = final.assign(learned=_learned(final)).groupby(["model", "length"], as_index=False).agg(
            n=("seed", "size"), test_mse_mean=("test_mse", "mean"), test_mse_min=("test_mse", "min"),
            test_mse_max=("test_mse", "max"), learned=("learned", "sum"), diverged=("diverged", "sum"),
            forget_bias=("forget_bias", "mean"), wall_s=("wall_s", "mean"),
        )  # fmt: skip
    return {"claims": claims, "lag_factors": factor_summary, "training": training}


# ------------------------------------------------------------------------------------------------------- figures


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """Figures from the saved tables: gradient norm vs lag (at init and trained), test MSE curves, forget bias vs
    retention."""
    figures = {}
    lags, curves, final = (tables.get(name) for name in ("lags", "curves", "final"))
    if lags is not None and len(lags):
        figures["gradient_vs_lag"] = plot_lags(lags)
    if curves is not None and len(curves):
        figures["mse_curves"] = plot_curves(curves)
    if final is not None and lags is not None and len(final) and final["model"].str.startswith("lstm").any():
        figures["forget_bias_retention"] = plot_retention(final, lag_factors(lags))
    return figures


def _palette(models) -> dict:
    """Model label -> colour over the QUICK models and `models`, so that a model has one colour in every figure."""
    from keras_initkit.plots import palette

    return palette(sorted({label(m) for m in (*QUICK.models, *QUICK.init_models, *models)}))


def plot_lags(lags: pd.DataFrame):
    """||dC/dh_{T-1-lag}|| / ||dC/dh_{T-2}|| (lag 1, see `lag_factors`) against the lag (log y) at the claims' T,
    one panel per phase (init, trained), one colour per model, one thin line per seed; theory dashed (the
    `predicted` column, `predicted_decay`)."""
    from matplotlib.figure import Figure

    length = int(lags["length"].max())
    sel = lags[lags["length"] == length]
    sel = sel.sort_values("lag")
    at_one = lambda v: v / v.iloc[1]  # noqa: E731
    sel = sel.assign(ratio=sel.groupby(["model", "seed", "phase"])["grad_norm"].transform(at_one))
    colors = _palette(sel["model"])
    phases = [p for p in ("init", "trained") if (sel["phase"] == p).any()]
    fig = Figure(figsize=(6 * len(phases), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(phases), sharey=True))
    for ax, phase in zip(axes, phases, strict=True):
        for (model, _seed), g in sel[sel["phase"] == phase].groupby(["model", "seed"]):
            g = g.sort_values("lag")
            ax.plot(g["lag"], g["ratio"].where(g["ratio"] > 0), color=colors[label(model)], lw=0.8, alpha=0.7)
        for model in sorted(set(sel["model"])):
            ax.plot([], [], color=colors[label(model)], label=label(model))
        ax.set_yscale("log")
        ax.set_xlabel("lag k = T - 1 - t (steps back from the last state)")
        ax.set_title(f"{'at initialization' if phase == 'init' else 'after training'}, T = {length}", fontsize=10)
    if "predicted" in sel.columns:
        theory = sel[(sel["phase"] == "init")].dropna(subset=["predicted"]).groupby(["model", "lag"])["predicted"]
        for model, g in theory.first().reset_index().groupby("model"):
            line = g["predicted"] / g["predicted"].iloc[1]
            axes[0].plot(g["lag"].iloc[1:], line.iloc[1:], ls="--", lw=1.4, color=colors[label(model)])
        axes[0].plot([], [], "k--", label="theory: sqrt(chi)^k (tanh), g^k, sigma(b_f)^k, 1 (IRNN)")
    axes[0].set_ylabel("||dC/dh_{T-1-k}|| / ||dC/dh_{T-2}|| (probe mean)")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[0].set_ylim(bottom=1e-12)
    fig.suptitle("Gradient through time by lag (one line per seed)", fontsize=11)
    return fig


MSE_RANGE = (1e-4, 1.0)  # y range of the MSE curves: the diverged IRNNs (1e20 and more) would hide the others


def plot_curves(curves: pd.DataFrame):
    """Test MSE per length (panel) and model (colour), one thin line per seed, with the 1/6 and 1/12 baselines."""
    from keras_initkit.plots import learning_curves

    sel = curves.assign(label=curves["model"].map(label))
    fig = learning_curves(
        sel, "test_mse", hue="label", col="length", units="seed", palette=_palette(sel["model"]),
        col_label="T = {level}", logy=True, ylim=MSE_RANGE, xlabel="RMSprop updates", ylabel="test MSE",
        title=f"Adding problem, test MSE: dashed 1/6 (predict 1), dotted 1/12 (recent); diverged > {MSE_RANGE[1]:g}",
    )  # fmt: skip
    for ax in fig.axes:
        if ax.get_xlabel() or ax.lines:
            ax.axhline(ADDING_BASELINE_MSE, color="k", ls="--", lw=1)
            ax.axhline(ADDING_RECENT_MSE, color="k", ls=":", lw=1)
    return fig


def plot_retention(final: pd.DataFrame, factors: pd.DataFrame):
    """Each LSTM's mean forget-gate bias against its retention (norm at lag T/2 / lag 1), log y: at init (hollow, the
    bias it was given) and after training (filled); circles at the claims' T, triangles at the control length."""
    from matplotlib.figure import Figure

    lstm = factors[factors["model"].str.startswith("lstm")]
    trained = final.merge(lstm[lstm["phase"] == "trained"][["model", "length", "seed", "retention"]],
                          on=["model", "length", "seed"])  # fmt: skip
    init = lstm[lstm["phase"] == "init"].assign(forget_bias=lambda f: f["model"].map(forget_bias))
    colors, longest = _palette(lstm["model"]), lstm["length"].max()
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for phase, rows in (("init", init), ("trained", trained)):
        for (model, length), g in rows.groupby(["model", "length"]):
            color = colors[label(model)]
            ax.scatter(g["forget_bias"], g["retention"], edgecolors=color, marker="o" if length == longest else "^",
                       facecolors=color if phase == "trained" else "none",
                       label=f"{label(model)}, T={length}, {phase}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("mean forget-gate bias (init: as given; trained: after the budget)")
    ax.set_ylabel("retention ||dC/dh|| at lag T/2 / at lag 1")
    ax.legend(fontsize=7)
    ax.set_title("LSTM: forget bias vs gradient retention, at init (hollow) and trained (filled)", fontsize=10)
    return fig


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
