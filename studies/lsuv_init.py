"""LSUV init: Mishkin & Matas 2016, "All you need is a good init", on plain deep ReLU conv nets.

Layer-sequential unit-variance initialization (`keras_initkit.lsuv`: optionally an orthonormal draw of every kernel,
then, from the input up, each kernel scaled until its layer's pre-activation has variance 1 on one batch) against
VGG's fixed N(0, 0.01), fan-in Xavier (GlorotFanIn, He et al.'s "Xavier") and He, on the VGG study's plain nets
(3x3 "same" convs, no batch norm, no residuals, a linear classifier) at the deepest depth (30 weight layers):
- M1 (Mishkin & Matas Algorithm 1): after LSUV on one batch, every layer's pre-activation variance on a SECOND,
  held-out batch (test images) is 1 within a pre-registered band.
- M2 (Mishkin & Matas 5, Table 3 and Fig 3; He et al. Fig 3): LSUV nets reach the loss threshold where N(0, 0.01)
  and fan-in Xavier stall, in every seed.
- M3 (Mishkin & Matas 5: LSUV "at least as fast" as the schemes made for very deep nets): LSUV reaches the loss
  threshold within a stated factor of He's updates, paired by seed.
- LSUV's own cost: seconds (tracing included) and scaling passes per layer, in the `lsuv_cost` table.

Verdicts are PASS, FAIL or INCONCLUSIVE (a comparison between nets that did not learn: final loss within 2% of
ln 10). The study runner accepts PASS, FAIL and N/A as `status`; the `verdict` column carries the pre-registered
verdict and `status` is the verdict where it is PASS or FAIL, N/A otherwise. The protocol, its seeds and the paper
passages are in docs/results/lsuv_init/PREREGISTRATION.md (pinned by a hash in tests/test_lsuv_init.py).

QUICK: scikit-learn's 8x8 digits, one conv stage of width 16 (no pool), 29 convs + a Dense classifier, SGD 3e-3,
momentum 0.9, batch 32, threshold 0.5 (the VGG study's optimizer and threshold), a budget of 1600 updates that
separates slow from never, width 16 (both as the studies-v2 issue suggests: the variance laws do not depend on
width). PAPER: CIFAR-10 (Shapeset 32x32 when the files are absent),
VGG widths 64-512, 3 dense layers, S&Z's SGD, 20 epochs. SMOKE: 4-layer nets of width 8, one seed, in seconds.

Run: `make study-lsuv` (QUICK) or `python -m keras_initkit study lsuv_init --profile quick|paper|smoke
[--engine process --jobs 2]`; results in results/lsuv_init/<profile>/, the QUICK report in
docs/results/lsuv_init/REPORT.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import keras
import numpy as np
import pandas as pd

from keras_initkit.study import entry_points
from keras_initkit.study.data import load_data
from keras_initkit.study.grid import derive_seed
from keras_initkit.study.metrics import cross_entropy, error_percent
from keras_initkit.study.models import build_vgg, weight_layers
from keras_initkit.study.summary import claim_row, spread, with_trial
from keras_initkit.study.training import ModelCache, compile_sgd, fit_curve, set_random_seed

NAME = "lsuv_init"

CLAIMS = {
    "M1": "After LSUV on one batch, every layer's pre-activation variance is 1 within the tolerance, also on a "
    "second, held-out batch.",
    "M2": "The deepest plain ReLU net: LSUV (orthogonal pre-init, and from N(0, 0.01)) reaches the loss threshold "
    "where N(0, 0.01) and fan-in Xavier stall, in every seed.",
    "M3": "LSUV reaches the loss threshold within a stated factor of He init's updates, paired by seed.",
}

# Initializations: name -> label. The "lsuv_*" nets are built with "fixed" kernels, then `keras_initkit.lsuv` runs
# on the LSUV batch: "lsuv_orth" re-draws every kernel orthonormally first (the paper's), "lsuv_fixed" only rescales.
INIT_LABELS = {"fixed": "N(0, 0.01)", "glorot_fan_in": "GlorotFanIn", "he_fan_in": "He",
               "lsuv_orth": "LSUV (orthogonal)", "lsuv_fixed": "LSUV (from N(0, 0.01))"}  # fmt: skip
INITS = tuple(INIT_LABELS)
LSUV_INITS = ("lsuv_orth", "lsuv_fixed")
BASELINES = ("fixed", "glorot_fan_in")

# Thresholds of the rules, fixed before the confirmatory run (PREREGISTRATION.md).
M1_BAND = 0.25  # M1: |Var(s) - 1| <= 0.25 at every weight layer on the held-out batch
M3_FACTOR = 2.0  # M3: LSUV's updates to the threshold <= 2 x He's, same seed
FLOOR_FRACTION = 0.02  # "did not learn": final loss >= (1 - 0.02) ln K (the floor rule)
TAIL_FRACTION = 0.1  # the final loss is the mean over the last 10% of the recorded chunks

RULES = {
    "M1": f"For every LSUV net (both variants, every seed): Var(preact) of every weight layer (the convs and the "
    f"classifier's logits), measured after LSUV on Config.n_heldout test images never seen by LSUV, is within "
    f"[{1 - M1_BAND:g}, {1 + M1_BAND:g}]. PASS if so at every layer of every net, else FAIL.",
    "M2": f"Per seed: each LSUV net reaches the loss threshold, and each N(0, 0.01) and GlorotFanIn net did not "
    f"learn (final loss, the mean over the last {TAIL_FRACTION:.0%} of the chunks, >= {1 - FLOOR_FRACTION:.2f} "
    "ln K). FAIL if some baseline learned, or some LSUV net learned but missed the threshold, or some LSUV net did "
    "not learn while a baseline of its seed learned; else INCONCLUSIVE if some LSUV net did not learn (compared "
    "with baselines that did not learn either); else PASS.",
    "M3": f"Per seed and LSUV variant, paired with He of the same seed (He's updates to the threshold counted as "
    f"the budget when it missed it): PASS for a pair where LSUV reaches the threshold in <= {M3_FACTOR:g} x He's "
    "updates; INCONCLUSIVE for a pair in which neither net learned; FAIL for any other pair (LSUV missed the "
    f"threshold, or needed more than {M3_FACTOR:g} x He's updates). Claim: FAIL if any pair fails, else "
    "INCONCLUSIVE if any pair is, else PASS.",
}


@dataclasses.dataclass(frozen=True)
class Config:
    # data set by keras_initkit.datasets name ("digits", "shapeset", "mnist", "cifar10")
    data: str = "digits"
    # data set used instead when `data`'s files are absent here (None: a missing file is an error)
    fallback_data: str | None = None
    # training images (None: the whole training split; Shapeset draws this many)
    n_train: int | None = None
    # test images (None: the whole test split); the held-out batch and the final error read them
    n_test: int | None = None
    # image side for Shapeset (the other data sets have a fixed size)
    size: int = 32
    # the nets' n_layers: weight layers, convolutions + dense layers (He et al.'s deepest plain net: 30)
    n_layers: int = 30
    # initializations, names from INITS
    inits: tuple[str, ...] = INITS
    # one trial per (init, seed); every layer's initializer seed, LSUV's draw and the data order derive from it
    seeds: tuple[int, ...] = (100, 101, 102, 103, 104)
    # std of VGG's fixed Gaussian ("fixed", and the start of "lsuv_fixed")
    fixed_std: float = 0.01
    # channels of each conv stage (a 2x2 max-pool between stages); digits: one stage, no pool
    widths: tuple[int, ...] = (16,)
    # dense layers of the head after Flatten, the last one the linear classifier
    fc_layers: int = 1
    # units of the hidden dense layers (when fc_layers > 1)
    fc_width: int = 64
    # LSUV: training images of the batch LSUV scales on (the first ones of the training split)
    n_lsuv: int = 256
    # LSUV: tolerance on |Var(s) - 1| on the LSUV batch (keras_initkit.lsuv's default, the paper's Tol_var)
    lsuv_tol: float = 0.1
    # LSUV: the most scaling passes per layer (keras_initkit.lsuv's default, the paper's T_max)
    lsuv_max_iter: int = 10
    # test images of the held-out batch (M1, and the at-init variances of every init)
    n_heldout: int = 256
    # stop a net at the end of the first chunk whose loss is <= loss_threshold; stalled nets run the whole budget
    stop_at_threshold: bool = True
    # SGD updates of every net (the budget)
    steps: int = 1600
    # mini-batch size
    batch_size: int = 32
    # SGD learning rate: one setting for every init, never tuned per init (the VGG study's)
    learning_rate: float = 3e-3
    # SGD momentum
    momentum: float = 0.9
    # SGD weight decay (0: none)
    weight_decay: float = 0.0
    # training loss (mean over a chunk of record_every updates) that counts as converged
    loss_threshold: float = 0.5
    # updates per recorded chunk of the loss curve (also Keras' steps_per_execution)
    record_every: int = 10


QUICK = Config()
PAPER = Config(
    data="cifar10", fallback_data="shapeset", seeds=(100, 101, 102, 103, 104), widths=(64, 128, 256, 512),
    fc_layers=3, fc_width=512, n_lsuv=512, n_heldout=512, stop_at_threshold=False, steps=20 * 390, batch_size=128,
    learning_rate=1e-2, momentum=0.9, weight_decay=5e-4, loss_threshold=1.0, record_every=50,
)  # fmt: skip
SMOKE = Config(n_layers=4, seeds=(0,), widths=(8,), n_lsuv=64, n_heldout=64, steps=20, record_every=10)
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}
TRIAL_KEYS = ("n_layers", "init", "seed", "steps")


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field, the rule and the value when a Config cannot run."""

    def need(ok, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"`{field}` must {rule}. Received: {field}={getattr(cfg, field)!r}")

    need(cfg.inits and set(cfg.inits) <= set(INITS), "inits", f"be names from {INITS}")
    need(cfg.seeds, "seeds", "not be empty")
    for field in ("steps", "record_every", "batch_size", "n_lsuv", "n_heldout", "lsuv_max_iter"):
        need(getattr(cfg, field) >= 1, field, "be >= 1")
    need(cfg.steps % cfg.record_every == 0, "steps", f"be a multiple of `record_every`={cfg.record_every}")
    need(0 < cfg.lsuv_tol < 1, "lsuv_tol", "be in (0, 1)")
    least = len(cfg.widths) + cfg.fc_layers
    need(cfg.n_layers >= least, "n_layers", f"be >= len(widths) + fc_layers = {least}")


def trials(cfg: Config) -> list[dict]:
    """One trial per (init, seed): build, (LSUV), measure on the held-out batch, train. Stalling inits first (they
    run the whole budget), so that a pool of workers finishes together."""
    check_config(cfg)
    order = sorted(cfg.inits, key=lambda i: (i not in BASELINES, INITS.index(i)))
    return [dict(n_layers=cfg.n_layers, init=i, seed=int(s), steps=cfg.steps) for i in order for s in cfg.seeds]


# ---------------------------------------------------------------------------------------------------- one trial


def _data(cfg: Config):
    return load_data(cfg.data, fallback=cfg.fallback_data, n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size)


_MODELS = ModelCache()  # per process: one compiled net per architecture, with its held-out monitor


def fresh_net(cfg: Config, init: str, seed: int):
    """(compiled model with `build_vgg`'s weights for `init` ("fixed" for the LSUV inits), its held-out monitor)."""
    from keras_initkit.monitor import VarianceMonitor

    d = _data(cfg)
    key = (cfg.data, cfg.fallback_data, cfg.n_train, cfg.n_test, cfg.size, cfg.n_layers, cfg.widths, cfg.fc_layers,
           cfg.fc_width, cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.record_every,
           cfg.n_heldout)  # fmt: skip
    base = "fixed" if init in LSUV_INITS else init
    build = functools.partial(build_vgg, d.x_train.shape[1:], d.num_classes, cfg.n_layers, init=base, seed=seed,
                              widths=cfg.widths, fc_layers=cfg.fc_layers, fc_width=cfg.fc_width,
                              fixed_std=cfg.fixed_std)  # fmt: skip
    compile = functools.partial(compile_sgd, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, steps_per_execution=cfg.record_every)  # fmt: skip
    entry = _MODELS.fresh(key, build, compile)
    if "monitor" not in entry.extra:
        names = [la.name for la in weight_layers(entry.model)]
        entry.extra["monitor"] = VarianceMonitor(probe=d.x_test[: cfg.n_heldout], kinds=("preact",), stats=["var"],
                                                 layers=names)  # fmt: skip
    return entry.model, entry.extra["monitor"]


def apply_lsuv(cfg: Config, model: keras.Model, init: str, seed: int) -> pd.DataFrame:
    """`keras_initkit.lsuv` on the first `n_lsuv` training images (orthogonal pre-init for "lsuv_orth"); its trace
    with the wall time of the whole call (`seconds`, the tracing of its probe pass included)."""
    from keras_initkit import lsuv

    x = _data(cfg).x_train[: cfg.n_lsuv]
    start = time.perf_counter()
    trace = lsuv(model, x, tol=cfg.lsuv_tol, max_iter=cfg.lsuv_max_iter, orthogonal_pre_init=init == "lsuv_orth",
                 seed=derive_seed(seed, "lsuv"))  # fmt: skip
    return trace.assign(seconds=time.perf_counter() - start)


def curve_outcome(curve: pd.DataFrame, num_classes: int, threshold: float) -> dict:
    """From a loss curve (step, loss; its first row before training): updates to the threshold, final loss, and
    whether the net learned (the floor rule).

    steps_to_threshold: updates until the end of the first chunk whose mean loss is <= threshold (NaN if never).
    final_loss: mean over the last TAIL_FRACTION of the chunks; for a net stopped at the threshold, the loss of its
    last chunk(s). learned: final_loss < (1 - FLOOR_FRACTION) ln K and no non-finite loss.
    """
    start = int(curve["step"].min())
    trained = curve[curve["step"] > start]
    losses = trained["loss"].to_numpy(dtype=float)
    diverged = bool(len(losses) and not np.isfinite(losses).all())
    hit = trained.loc[trained["loss"] <= threshold, "step"]
    n_tail = max(1, int(round(TAIL_FRACTION * len(losses)))) if len(losses) else 0
    final = float(np.mean(losses[-n_tail:])) if n_tail else float("nan")
    chance = math.log(num_classes)
    converged = bool(len(hit)) and not diverged
    return {"steps_to_threshold": float(hit.iloc[0] - start) if converged else float("nan"), "converged": converged,
            "final_loss": final, "learned": not diverged and bool(final < (1.0 - FLOOR_FRACTION) * chance),
            "diverged": diverged, "chance_loss": chance}  # fmt: skip


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One net: build, LSUV (the "lsuv_*" inits), the held-out pre-activation variances, training.

    Tables: "layers" (per weight layer: Var(preact) on the held-out batch at the start of training), "lsuv" (the
    LSUV trace with `seconds`), "curves" (step, loss), "final" (updates to the threshold, final loss, learned, test
    error, the LSUV seconds and passes), with the trial's keys as columns.
    """
    if trial.get("init") not in INITS:
        raise ValueError(f"trial `init` must be one of {INITS}. Received: init={trial.get('init')!r}")
    seed = int(trial["seed"])
    set_random_seed(derive_seed(seed, "trial", trial["n_layers"], trial["init"]))
    d = _data(cfg)
    model, monitor = fresh_net(cfg, trial["init"], seed)
    tables = {}
    lsuv_seconds, passes = 0.0, 0
    if trial["init"] in LSUV_INITS:
        trace = apply_lsuv(cfg, model, trial["init"], seed)
        tables["lsuv"] = with_trial(trace, trial, TRIAL_KEYS)
        lsuv_seconds, passes = float(trace["seconds"].iloc[0]), int(trace["iteration"].sum())
    layers = monitor.measure(model)
    monitor.reset()
    tables["layers"] = with_trial(layers.drop(columns=["step", "epoch"]), trial, TRIAL_KEYS)
    start = time.perf_counter()
    x, y = d.x_train[: cfg.n_lsuv], d.y_train[: cfg.n_lsuv]
    curve = fit_curve(
        model, d.x_train, d.y_train, steps=trial["steps"], every=cfg.record_every, batch_size=cfg.batch_size,
        seed=derive_seed(seed, "order"), start=lambda m: {"loss": cross_entropy(m, x, y)},
        stop_below=cfg.loss_threshold if cfg.stop_at_threshold else None,
    )  # fmt: skip
    outcome = curve_outcome(curve, d.num_classes, cfg.loss_threshold)
    train_s = time.perf_counter() - start
    test_err = error_percent(model, d.x_test, d.y_test)
    row = {**outcome, "test_err": test_err, "train_s": train_s, "lsuv_s": lsuv_seconds, "lsuv_passes": passes}
    final = pd.DataFrame([row])
    tables["curves"] = with_trial(curve, trial, TRIAL_KEYS)
    tables["final"] = with_trial(final, trial, TRIAL_KEYS)
    return {name: frame.assign(dataset=d.name) for name, frame in tables.items()}


# ------------------------------------------------------------------------------------------ summaries and claims

_claim = functools.partial(claim_row, CLAIMS, RULES)


def _verdict(claim: str, verdict: str, measured: str, paper: str) -> dict:
    """A claims row with the pre-registered `verdict` (PASS, FAIL, INCONCLUSIVE or N/A); `status`, the runner's
    column, is the verdict where it is PASS or FAIL, else N/A, and `measured` then starts with "INCONCLUSIVE: " so
    that the report's table (which shows `status`) says it too."""
    status = verdict if verdict in ("PASS", "FAIL") else "N/A"
    if verdict == "INCONCLUSIVE":
        measured = f"INCONCLUSIVE: {measured}"
    return {**_claim(claim, status, measured, paper), "verdict": verdict}


def heldout_variances(layers: pd.DataFrame) -> pd.DataFrame:
    """Var(preact) per net and weight layer on the held-out batch: n_layers, init, seed, layer, depth, value."""
    sel = layers[(layers["kind"] == "preact") & (layers["stat"] == "var")]
    return sel[["n_layers", "init", "seed", "layer", "depth", "value"]].reset_index(drop=True)


def claim_m1(variances: pd.DataFrame) -> dict:
    """M1 from `heldout_variances` (see RULES["M1"])."""
    paper = "Algorithm 1: scale each layer until |Var(B_L) - 1| < Tol_var on a mini-batch (Mishkin & Matas 2016)"
    sel = variances[variances["init"].isin(LSUV_INITS)]
    if len(sel) == 0:
        return _verdict("M1", "N/A", "no LSUV net", paper)
    dev = (sel["value"] - 1.0).abs()
    inside = dev <= M1_BAND
    worst = sel.loc[dev.idxmax()]
    parts = []
    for init in LSUV_INITS:
        s = sel[sel["init"] == init]
        if len(s):
            nets = s.groupby("seed")["value"].apply(lambda v: bool(((v - 1).abs() <= M1_BAND).all()))
            parts.append(f"{INIT_LABELS[init]}: Var = {spread(s['value'])} over layers x seeds, "
                         f"{int(nets.sum())}/{len(nets)} nets inside at every layer")  # fmt: skip
    where = f"{INIT_LABELS[worst['init']]}, seed {int(worst['seed'])}, {worst['layer']}"
    measured = (f"{'; '.join(parts)}; worst |Var - 1| = {dev.max():.3f} ({where}); {int(inside.sum())}/{len(sel)} "
                "layer values inside")  # fmt: skip
    return _verdict("M1", "PASS" if inside.all() else "FAIL", measured, paper)


def _outcome_text(rows: pd.DataFrame, init: str) -> str:
    hit = int(rows["converged"].sum())
    after = f" after {spread(rows['steps_to_threshold'], '.0f')} updates" if hit else ""
    return (f"{INIT_LABELS[init]}: {hit}/{len(rows)} reach the threshold{after}, {int((~rows['learned']).sum())}/"
            f"{len(rows)} did not learn, final loss {spread(rows['final_loss'])}")  # fmt: skip


def claim_m2(final: pd.DataFrame) -> dict:
    """M2 from the "final" table (see RULES["M2"])."""
    paper = ("Mishkin & Matas Table 3 / Fig 3 (FitNets): LSUV trains very deep thin nets; He et al. Fig 3: fan-in "
             "Xavier stalls at 30 layers; Simonyan & Zisserman: deep nets from N(0, 0.01) stall")  # fmt: skip
    cells = {i: final[final["init"] == i] for i in (*LSUV_INITS, *BASELINES)}
    present = [i for i in LSUV_INITS if len(cells[i])]
    if not present or not all(len(cells[i]) for i in BASELINES):
        return _verdict("M2", "N/A", "needs LSUV and N(0, 0.01) and GlorotFanIn nets", paper)
    fail = inconclusive = False
    for seed in sorted(set(final["seed"])):
        base = pd.concat([cells[i][cells[i]["seed"] == seed] for i in BASELINES])
        base_learned = bool(base["learned"].any())
        fail |= base_learned
        for init in present:
            row = cells[init][cells[init]["seed"] == seed]
            if len(row) == 0:
                continue
            converged, learned = bool(row["converged"].iloc[0]), bool(row["learned"].iloc[0])
            fail |= learned and not converged
            fail |= not learned and base_learned
            inconclusive |= not learned and not base_learned
    verdict = "FAIL" if fail else "INCONCLUSIVE" if inconclusive else "PASS"
    measured = "; ".join(_outcome_text(cells[i], i) for i in (*present, *BASELINES))
    return _verdict("M2", verdict, measured, paper)


def paired_ratio(final: pd.DataFrame, steps: int) -> pd.DataFrame:
    """Per LSUV variant and seed, paired with He of the same seed: updates to the threshold of each (He's counted
    as `steps`, the budget, when it missed it), their ratio, and the pair's verdict (PASS, FAIL, INCONCLUSIVE)."""
    he = final[final["init"] == "he_fan_in"].set_index("seed")
    rows = []
    for _, r in final[final["init"].isin(LSUV_INITS)].iterrows():
        seed = int(r["seed"])
        if seed not in he.index:
            continue
        h = he.loc[seed]
        he_steps = float(h["steps_to_threshold"]) if bool(h["converged"]) else float(steps)
        ratio = float(r["steps_to_threshold"]) / he_steps if bool(r["converged"]) else float("inf")
        if not bool(r["learned"]) and not bool(h["learned"]):
            verdict = "INCONCLUSIVE"
        elif bool(r["converged"]) and ratio <= M3_FACTOR:
            verdict = "PASS"
        else:
            verdict = "FAIL"
        rows.append(dict(init=r["init"], seed=seed, lsuv_steps=float(r["steps_to_threshold"]), he_steps=he_steps,
                         he_converged=bool(h["converged"]), ratio=ratio, verdict=verdict))  # fmt: skip
    return pd.DataFrame(rows, columns=["init", "seed", "lsuv_steps", "he_steps", "he_converged", "ratio", "verdict"])


def claim_m3(pairs: pd.DataFrame) -> dict:
    """M3 from `paired_ratio` (see RULES["M3"])."""
    paper = ("Mishkin & Matas 5: LSUV 'leads to ... faster convergence' than the schemes for very deep nets; He "
             "et al.'s init is the reference for plain ReLU nets")  # fmt: skip
    if len(pairs) == 0:
        return _verdict("M3", "N/A", "needs LSUV and He nets of the same seeds", paper)
    verdicts = set(pairs["verdict"])
    verdict = "FAIL" if "FAIL" in verdicts else "INCONCLUSIVE" if "INCONCLUSIVE" in verdicts else "PASS"
    parts = [f"{INIT_LABELS[i]} / He = {spread(p['ratio'])} ({int((p['verdict'] == 'PASS').sum())}/{len(p)} "
             f"pairs within {M3_FACTOR:g}x)" for i, p in pairs.groupby("init", sort=False)]  # fmt: skip
    he = pairs.drop_duplicates("seed")
    measured = f"{'; '.join(parts)}; He: {spread(he['he_steps'], '.0f')} updates"
    return _verdict("M3", verdict, measured, paper)


def lsuv_cost(final: pd.DataFrame, trace: pd.DataFrame | None) -> pd.DataFrame:
    """LSUV's own cost per variant: seconds of the call (tracing included) beside the training's, scaling passes in
    all and per layer (mean and max), layers already within tol after the pre-init (no pass)."""
    if trace is None or len(trace) == 0:
        return pd.DataFrame()
    per_layer = trace.groupby(["init", "seed", "layer"], as_index=False)["iteration"].max()
    rows = []
    for init, t in per_layer.groupby("init", sort=False):
        f = final[final["init"] == init]
        rows.append(dict(init=init, n=len(f), lsuv_s_mean=f["lsuv_s"].mean(), lsuv_s_max=f["lsuv_s"].max(),
                         train_s_mean=f["train_s"].mean(), passes_mean=f["lsuv_passes"].mean(),
                         passes_per_layer_mean=t["iteration"].mean(), passes_per_layer_max=int(t["iteration"].max()),
                         layers_without_pass=float((t["iteration"] == 0).mean())))  # fmt: skip
    return pd.DataFrame(rows)


def training_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per init: seeds, converged and learned counts, updates to the threshold and final loss spread, test error."""
    if final is None or len(final) == 0:
        return pd.DataFrame()
    return final.groupby(["n_layers", "init"], as_index=False, sort=True).agg(
        n=("seed", "size"), converged=("converged", "sum"), learned=("learned", "sum"),
        **{f"steps_{s}": ("steps_to_threshold", s) for s in ("mean", "std", "min", "max")},
        final_loss_mean=("final_loss", "mean"), test_err_mean=("test_err", "mean"), train_s_mean=("train_s", "mean"),
    )  # fmt: skip


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The claims (with a `verdict` column), training outcomes, M3's pairs, LSUV's cost, the held-out variances."""
    final = tables.get("final", pd.DataFrame(columns=["init", "seed", "converged", "learned", "steps_to_threshold"]))
    layers = tables.get("layers", pd.DataFrame(columns=["n_layers", "init", "seed", "layer", "depth", "kind", "stat",
                                                        "value"]))  # fmt: skip
    variances = heldout_variances(layers)
    pairs = paired_ratio(final, cfg.steps)
    claims = pd.DataFrame([claim_m1(variances), claim_m2(final), claim_m3(pairs)])
    used = sorted({str(x) for x in final.get("dataset", pd.Series(dtype=str)).dropna()})
    if used and used != [cfg.data]:
        claims["measured"] = claims["measured"] + f" (data: {', '.join(used)}; {cfg.data!r} files absent here)"
    var_summary = variances.groupby(["init", "depth", "layer"], as_index=False, sort=True)["value"].agg(
        ["mean", "min", "max"]
    )
    return {"claims": claims, "training": training_table(final), "m3_pairs": pairs,
            "lsuv_cost": lsuv_cost(final, tables.get("lsuv")), "heldout_variance": var_summary}  # fmt: skip


# ------------------------------------------------------------------------------------------------------- figures


def _palette() -> dict:
    from keras_initkit.plots import palette

    return palette(list(INIT_LABELS.values()))


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """Figures from the saved tables: held-out Var(preact) per layer and init (after LSUV for the LSUV nets), and
    the training loss curves per init."""
    from keras_initkit.plots import learning_curves, variance_vs_depth

    figures = {}
    layers, curves = tables.get("layers"), tables.get("curves")
    if layers is not None and len(layers):
        sel = layers[layers["value"] > 0]
        sel = sel.assign(init=sel["init"].map(INIT_LABELS))
        fig = variance_vs_depth(sel, "preact", hue="init", step=None, errorbar=("pi", 100), palette=_palette(),
                                title="Var(pre-activation) on the held-out batch at the start of training (LSUV nets "
                                "after LSUV); band = seeds' range")  # fmt: skip
        for ax in fig.axes:
            ax.axhspan(1 - M1_BAND, 1 + M1_BAND, color="#cccccc", alpha=0.5, zorder=0)
            ax.set_xlabel("weight layer (0 = first conv)")
        figures["heldout_variance"] = fig
    if curves is not None and len(curves):
        sel = curves.assign(label=curves["init"].map(INIT_LABELS))
        figures["loss_curves"] = learning_curves(
            sel, "loss", hue="label", units="seed", palette=_palette(),
            hue_order=[INIT_LABELS[i] for i in INITS if INIT_LABELS[i] in set(sel["label"])], xlabel="SGD updates",
            ylabel="training loss (chunk mean)",
            title="Training loss per init (one line per seed; a net stops once it reaches the loss threshold)",
        )  # fmt: skip
    return figures


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
