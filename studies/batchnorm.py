"""Batch normalization: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift" (arXiv 1502.03167).

The paper's MNIST net (Sec 4.1): 3 fully connected hidden layers of 100 sigmoid units, small random Gaussian weights,
a 10-way softmax, cross-entropy, mini-batches of 60; with and without BN before each sigmoid (Dense without bias ->
BatchNormalization -> sigmoid), each at 1x, 5x and 30x a base learning rate (the paper's BN-Baseline, BN-x5, BN-x30):
- B1 (Fig 1a, Sec 4.2.2 BN-Baseline vs Inception): at the base rate, BN needs fewer steps to a target accuracy.
- B5 (Sec 4.2.2, the x5 row: 2.1M steps vs BN-Baseline's 13.3M): BN at 5x the base rate needs fewer steps than BN
  at 1x.
- B2 (Fig 1b/c): the 15th/50th/85th percentiles of one last-hidden-layer unit's sigmoid input drift over training
  without BN and stay stable with BN.
- B3 (Sec 4.2.1-4.2.2): BN trains at 5x and 30x; without BN the raised rates diverge or do worse (paired by seed and
  test image).
- B4 (Sec 4.2.2, BN-x5-Sigmoid): a DEEPER sigmoid net (`sig_depth` hidden layers) at 5x the base rate: with BN it
  learns, without BN it does not (the floor rule), in every seed.
- X1, not in the paper: BN on the VGG study's deep plain ReLU net (30 layers, `keras_initkit.study.models.build_vgg`)
  with FixedNormal(0.01) and He init: does BN make the init matter less? Read only from trials run with one TF
  intra-op thread (recorded per trial): the 30-layer nets' curves depend on the float summation order.

The protocol (claims, rules, thresholds, QUICK, seeds, the paper passage behind each choice) is pre-registered in
docs/results/batchnorm/PREREGISTRATION.md, pinned by a hash in tests/test_batchnorm.py.

Choices the paper leaves open (see PREREGISTRATION.md for the pilots behind them):
- Plain SGD (no momentum, no decay, constant rate); every kernel N(0, 0.1^2) (the std of the 2015 TensorFlow "Deep
  MNIST" tutorial), biases 0. The nets with and without BN start from the same kernels (same per-layer seeds).
- The base rate is the rate the net WITHOUT BN does best at (BN's benefit is that it ALLOWS higher rates: the
  paper's BN-Baseline used Inception's own rate, and BN-x5 / BN-x30 raised it): from a pre-registered pilot sweep of
  the no-BN net on a validation split (pilot seeds, never the held-out images), best final validation accuracy.
- Data: scikit-learn's digits with a larger held-out set than the fixed 360 images (one image = 0.28 points there):
  the last `test_extra` images of the fixed training split join the held-out set (QUICK: 900 training, 897 held-out
  images, one image = 0.11 points; paired tests over 5 seeds x 897 images).
- BN nets are evaluated in inference mode with population statistics re-estimated before each evaluation (the mean
  and variance of each BN layer's input over `bn_stat_examples` training examples taken as one batch: Alg 2 with one
  large batch); Keras' own moving averages are recorded beside (`acc_ema`, figure bn_evaluation).
- Fig 1b/c statistics: `VarianceMonitor` on a fixed probe of `probe_examples` training examples every `record_every`
  steps, the net in training mode; the tracked unit is `track_unit` of each hidden layer, the figures use the last.
- The deep ReLU nets use the VGG study's QUICK optimizer (SGD momentum 0.9, lr 3e-3, batch 32, one stage of 3x3
  convs, a linear classifier) with 16 channels, 400 steps.

QUICK findings (the confirmatory run, seeds 200-204; numbers from docs/results/batchnorm/claims.csv and tables/):
- B1 PASS: at the base rate BN reaches the target (0.9699, no BN's worst final accuracy) in 255 ± 108 steps, no BN
  in 940 ± 243: 3.95x fewer (geometric mean of the per-seed ratios, 95% CI [2.14, 7.28]; paper 2.3x, BN-Baseline).
- B5 FAIL: BN at 5x the base rate is not faster than BN at 1x (265 ± 52 vs 255 ± 108 steps, ratio 0.889x, CI
  [0.546, 1.45]; paper 6.3x). The base rate is the one that is best for the net without BN (the paper's choice for
  BN-Baseline); on 8x8 digits BN at that rate reaches the target within a few hundred steps already, so the raised
  rate has little left to speed up. The paper's headline "14 times fewer steps" (B1 x B5 there) is therefore not
  reproduced here: the speed-up seen is BN's own, at the base rate.
- B3 INCONCLUSIVE: BN trains at 5x and 30x (every seed reaches the target), and without BN 30x does not learn (0/5
  seeds above the floor), but without BN 5x is not shown worse than 1x (final accuracy 0.968 vs 0.970, paired
  difference +0.0022, 95% CI [-0.0065, +0.0107] over 5 seeds x 897 images): on this net the plain SGD rate can be
  raised 5x without BN too.
- B4 PASS: the 8-layer sigmoid net at 5x learns with BN (0.967) and stays at chance without it (0.099, 0/5 above
  the floor). Without BN it stays at chance at the base rate too (0.096, 0/5), so what fails is the depth, not the
  raised rate (as with Inception-sigmoid in the paper, which never trained without BN).
- X1 PASS (1 TF intra-op thread per worker): the He - FixedNormal(0.01) accuracy gap is +0.844 without BN and +0.018
  with BN (CI [-0.035, +0.064]).
Budget: the QUICK grid (70 trials) used 570-720 CPU-seconds (user + system of the confirmatory run and of its
reproduction), about 5-6 minutes of wall time on 2 idle cores with `--engine process --jobs 2` (an estimate from
the CPU time, not measured on idle cores): above the 5-minute target and within 10, because of the 5-seed X1 cells
(20 thirty-layer nets, about half the compute) and the B4 cells the v2 protocol adds. The recorded run took 1247 s
of wall time on 2 cores shared with other jobs (load 7-10); its reproduction with `make study-bn` (1201 s) gave
identical tables and verdicts.

SMOKE: the whole pipeline (tables, claims, figures, report) in seconds (every claim INCONCLUSIVE or N/A).
PAPER: MNIST from the user's mnist.npz (`--data-path`; never downloaded), 50,000 steps; not run here.

Run: `make study-bn` (QUICK: `--engine process --jobs <cores>`, one TF intra-op thread per worker, and a comparison
with docs/results) or `python -m keras_initkit study batchnorm --profile quick|paper|smoke [--engine process --jobs
2]`. Results: results/batchnorm/<profile>/; the QUICK report in docs/results/batchnorm/REPORT.md.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd

from keras_initkit.study import entry_points
from keras_initkit.study.data import load_data
from keras_initkit.study.grid import derive_seed, expand_grid, protocol_hash
from keras_initkit.study.metrics import correct
from keras_initkit.study.models import build_mlp, build_vgg
from keras_initkit.study.summary import (
    FLOOR_SE,
    claim_row,
    floor_error,
    learned,
    majority_error,
    paired_bootstrap,
    paired_text,
    spread,
    with_trial,
)
from keras_initkit.study.training import ModelCache, compile_sgd, fit_curve, set_random_seed

NAME = "batchnorm"

CLAIMS = {
    "B1": "Fig 1a and Sec 4.2.2: at the base rate, the net with BN reaches the target accuracy in fewer steps than "
    "without BN (Inception: 31.0M steps to 72.2%; BN-Baseline, the same rate: 13.3M).",
    "B2": "Fig 1b/c: the 15th/50th/85th percentiles of a last-hidden-layer unit's sigmoid input drift over training "
    "without BN and stay stable with BN.",
    "B3": "Sec 4.2.1-4.2.2: BN trains at 5x and 30x the base learning rate; without BN the raised rates diverge or do "
    "worse than at the base rate.",
    "B4": "Sec 4.2.2: a deeper sigmoid net at 5x the base rate learns with BN and does not learn without it (Inception "
    "with sigmoid and no BN never beats 1/1000; BN-x5-Sigmoid reaches 69.8%).",
    "B5": "Sec 4.2.2, the x5 row: BN at 5x the base rate reaches the target in fewer steps than BN at 1x (BN-x5: 2.1M "
    "steps vs BN-Baseline 13.3M).",
    "X1": "Not in the paper, implied by it: on the deep plain ReLU net of the VGG study (30 layers), BN makes the init "
    "matter less: the accuracy gap between He init and FixedNormal(0.01) shrinks with BN.",
}

# Thresholds of the rules, fixed in PREREGISTRATION.md before the confirmatory run.
B2_RATIO = 2.0  # "drifts vs stays stable": mean drift without BN >= this x mean drift with BN
LEVEL = 0.95  # level of every confidence interval (Student-t on per-seed log ratios; two-way paired bootstrap)
MIN_SEEDS = 5  # seeds per claim cell; fewer makes the claim INCONCLUSIVE
X1_THREADS = 1  # X1 is read only from deep trials run with this many TF intra-op threads
PERCENTILES = ("p15", "p50", "p85")

THRESHOLDS = dict(B2_RATIO=B2_RATIO, LEVEL=LEVEL, MIN_SEEDS=MIN_SEEDS, FLOOR_SE=FLOOR_SE, X1_THREADS=X1_THREADS)

_FLOOR = (f"Floor rule: a trial whose held-out error is within {FLOOR_SE:g} binomial standard errors of the "
          "majority-class error (summary.floor_error), or that diverged, 'did not learn'.")  # fmt: skip
_STEPS = ("Steps to target = the first evaluation step (every `eval_every`) with held-out accuracy >= the target; "
          "a trial that never reaches it counts the budget `steps`. Target = the lowest final held-out accuracy "
          "(at the last step) over the no-BN x1 seeds of the 3-layer net.")  # fmt: skip

RULES = {
    "B1": f"{_STEPS} Per seed r = ln(steps(no BN x1) / steps(BN x1)). INCONCLUSIVE if fewer than {MIN_SEEDS} seeds "
    f"or the no-BN x1 net did not learn in some seed. FAIL if some BN x1 seed never reaches the target or mean r <= "
    f"0. PASS if the {LEVEL:.0%} Student-t CI of mean r is above 0; else INCONCLUSIVE. {_FLOOR}",
    "B2": "Base rate, 3-layer net; the tracked unit's sigmoid input in the last hidden layer on the fixed probe batch, "
    "recorded from step 0 to the end. Drift of a percentile = its max minus its min over the records; a trial's "
    f"drift = the largest of the p15, p50, p85 drifts. INCONCLUSIVE if fewer than {MIN_SEEDS} seeds. PASS iff, seed "
    f"by seed, drift(BN) < drift(no BN), and mean drift(no BN) >= {B2_RATIO:g} x mean drift(BN); else FAIL. The "
    "same figures for the whole layer are reported beside it.",
    "B3": f"3-layer net, each raised multiplier m (> 1). (a) BN xm: no seed diverges and every seed reaches the B1 "
    f"target. (b) no BN xm: some seed diverges, or the paired bootstrap (seeds x held-out images, {LEVEL:.0%}) of "
    "final accuracy no-BN x1 minus no-BN xm has its CI above 0 ('worse'); 'not worse' if that CI is below 0 or "
    f"contains 0. INCONCLUSIVE if fewer than {MIN_SEEDS} seeds or no-BN x1 did not learn in some seed. FAIL if (a) "
    "fails at some m or (b)'s CI is below 0 at some m; PASS if (a) and 'worse' at every m; else INCONCLUSIVE. "
    f"{_FLOOR}",
    "B4": f"Deeper sigmoid net (`sig_depth` hidden layers, else as the 3-layer net) at 5x the base rate, final "
    f"held-out accuracy. INCONCLUSIVE if fewer than {MIN_SEEDS} seeds, or the BN net and the no-BN net both did not "
    "learn in some seed. FAIL if BN did not learn in some seed, or no BN learned in some seed. PASS if BN learned and "
    f"no BN did not learn in every seed and the paired bootstrap ({LEVEL:.0%}) of BN minus no BN has its CI above 0. "
    f"The x1 cells of the deeper net are reported beside it, not ruled. {_FLOOR}",
    "B5": f"{_STEPS} Per seed r = ln(steps(BN x1) / steps(BN x5)). INCONCLUSIVE if fewer than {MIN_SEEDS} seeds or "
    "BN x1 did not learn in some seed. FAIL if some BN x5 seed never reaches the target (or diverges) or mean r <= 0. "
    f"PASS if the {LEVEL:.0%} Student-t CI of mean r is above 0; else INCONCLUSIVE. {_FLOOR}",
    "X1": "Deep ReLU nets (30 layers), final held-out accuracy, every trial run with "
    f"{X1_THREADS} TF intra-op thread (else INCONCLUSIVE). gap = acc(He) - acc(FixedNormal(0.01)) paired by seed "
    f"and image (two-way bootstrap, {LEVEL:.0%}), without BN and with BN; L = the lower CI bound of gap(no BN). "
    f"INCONCLUSIVE if fewer than {MIN_SEEDS} seeds, He without BN did not learn in some seed, or L <= 0 (the init "
    "does not matter without BN: nothing to shrink). PASS if gap(BN)'s CI lies inside (-L, L); else FAIL.",
}


def preregistration_hash() -> str:
    """sha256 of the canonical JSON of CLAIMS, RULES, THRESHOLDS and QUICK: the value PREREGISTRATION.md records
    (a test pins it, so that an edit of a claim, a rule or the QUICK protocol shows)."""
    return protocol_hash({"claims": CLAIMS, "rules": RULES, "thresholds": THRESHOLDS, "quick": QUICK})


# Millions of steps to 72.2%: Inception 31.0, BN-Baseline 13.3, BN-x5 2.1, BN-x30 2.7; the speed-ups over Inception:
PAPER_SPEEDUP = {1: 31.0 / 13.3, 5: 31.0 / 2.1, 30: 31.0 / 2.7}
TRIAL_KEYS = ("part", "bn", "lr_mult", "init", "seed")
DEEP_INITS = {"fixed": "fixed", "he": "he_fan_in"}  # the deep nets' inits -> their `make_initializer` names
PARTS = ("mlp", "sig", "deep")  # the paper's 3-layer net; the deeper sigmoid net (B4); the deep ReLU nets (X1)


@dataclasses.dataclass(frozen=True)
class Config:
    # data set by keras_initkit.datasets name: "digits" (embedded, 8x8), "mnist" (the user's mnist.npz), "shapeset"
    data: str = "digits"
    # mnist.npz (or its folder) when data="mnist"; None looks in the Keras cache (never downloads)
    data_path: str | None = None
    # training examples (None: the whole fixed split; shapeset generates this many)
    n_train: int | None = None
    # held-out examples (None: the whole test split; shapeset generates this many)
    n_test: int | None = None
    # seed of the generated data set (shapeset)
    data_seed: int = 0
    # the last this many images of the training split join the held-out set (digits: 360 + 537 = 897 held out)
    test_extra: int = 537
    # > 0 (pilots only): hold out the last this many remaining training images instead of the held-out set
    validation: int = 0
    # hidden sigmoid layers of the paper's MNIST net (then a 10-way softmax)
    n_hidden: int = 3
    # units per hidden layer (paper: 100)
    width: int = 100
    # std of the Gaussian initial weights, every layer (paper: "small random Gaussian values"; 0.1 as in the 2015
    # TensorFlow MNIST tutorials; n Var(W) = 1 for the 100-unit layers)
    init_std: float = 0.1
    # base learning rate of plain SGD (no momentum, no decay): the best rate of the net without BN in the pilot sweep
    base_lr: float = 1.0
    # learning-rate multipliers of the 3-layer net, with and without BN (paper: BN-x5, BN-x30)
    lr_multipliers: tuple[float, ...] = (1.0, 5.0, 30.0)
    # hidden sigmoid layers of the deeper net of B4 (0: no B4 trials)
    sig_depth: int = 8
    # learning-rate multipliers of the deeper sigmoid net, with and without BN (B4 reads 5; 1 is reported beside it:
    # does the net without BN fail because of the rate or of the depth?)
    sig_multipliers: tuple[float, ...] = (1.0, 5.0)
    # mini-batch size (paper: 60)
    batch_size: int = 60
    # SGD steps per MLP trial (paper: 50000); a multiple of eval_every
    steps: int = 2000
    # steps between two held-out evaluations (Keras' steps_per_execution too)
    eval_every: int = 25
    # steps between two records of the sigmoid-input percentiles (Fig 1b/c); a multiple of eval_every
    record_every: int = 50
    # momentum of the BN moving averages (Keras' default); evaluation re-estimates the population statistics
    bn_momentum: float = 0.99
    # training examples (the first of the split) whose one-batch statistics are the BN population statistics
    bn_stat_examples: int = 900
    # training examples (the first of the split) of the fixed probe batch of the percentiles (Fig 1b/c)
    probe_examples: int = 500
    # index of the tracked unit in every hidden layer (Fig 1b/c follows one unit of the last hidden layer)
    track_unit: int = 0
    # one trial per seed, net and multiplier (and init for X1); the seed fixes the initial weights (the same with and
    # without BN) and the order of the mini-batches
    seeds: tuple[int, ...] = (200, 201, 202, 203, 204)
    # X1: the deep plain ReLU net of the VGG study (build_vgg: 3x3 convs, a linear classifier), weight layers (0: none)
    deep_depth: int = 30
    # inits of the deep nets: "fixed" (FixedNormal(0.01), the VGG study's worst) and "he" (He fan_in)
    deep_inits: tuple[str, ...] = tuple(DEEP_INITS)
    # channels of each conv stage of the deep nets (the VGG study's QUICK uses (32,); narrower here for time)
    deep_widths: tuple[int, ...] = (16,)
    # SGD steps of every deep trial, with and without BN (the same budget; the VGG study's QUICK)
    deep_steps: int = 400
    # SGD learning rate of the deep nets (the VGG study's QUICK)
    deep_lr: float = 3e-3
    # SGD momentum of the deep nets (the VGG study's QUICK)
    deep_momentum: float = 0.9
    # mini-batch size of the deep nets (the VGG study's QUICK)
    deep_batch_size: int = 32
    # steps between two held-out evaluations of the deep nets
    deep_eval_every: int = 20
    # training examples whose one-batch statistics are the deep BN nets' population statistics
    deep_stat_examples: int = 256


QUICK = Config()
PAPER = Config(
    data="mnist", test_extra=0, steps=50_000, eval_every=500, record_every=500, bn_stat_examples=5000,
    probe_examples=1000, deep_widths=(64, 128, 256, 512), deep_steps=20 * 390, deep_lr=1e-2, deep_batch_size=128,
    deep_eval_every=390,
)  # fmt: skip
SMOKE = Config(
    n_hidden=2, width=16, lr_multipliers=(1.0, 5.0), sig_depth=3, steps=60, eval_every=20, record_every=20,
    bn_stat_examples=200, probe_examples=100, seeds=(0,), deep_depth=3, deep_widths=(4,), deep_steps=40,
    deep_eval_every=20, deep_stat_examples=64,
)  # fmt: skip
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}


# ------------------------------------------------------------------------------------------------ BN helpers


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def population_statistics(model: keras.Model, x) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per BatchNormalization layer of `model`, the mean and (biased) variance of its input over `x` taken as one
    batch, with the net in training mode (every BN normalizing by the statistics of `x`).

    Assigned as moving statistics (`set_bn_statistics`), they make the inference-mode net compute on `x` exactly what
    the training-mode net computes on the batch `x`: Ioffe & Szegedy's Alg 2 with one large batch. Nothing in the
    model changes. (The function x -> moments, the net in training mode, is compiled once and cached on the model.)
    """
    bns = batchnorm_layers(model)
    if not bns:
        return []
    cache = model.__dict__.setdefault("_batchnorm_study_cache", {})
    if "moments" not in cache:
        features = keras.Model(model.inputs[0], [bn.input for bn in bns])
        axes = []
        for bn, tensor in zip(bns, features.outputs, strict=True):
            rank = len(tensor.shape)
            axis = (bn.axis if isinstance(bn.axis, int) else bn.axis[0]) % rank
            axes.append([a for a in range(rank) if a != axis])

        def call(x):
            with keras.StatelessScope():  # training-mode BN would otherwise move its own averages
                outs = features(x, training=True)
            return [keras.ops.moments(o, axes=a) for o, a in zip(outs, axes, strict=True)]

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            call = tf.function(call, reduce_retracing=True)
        cache["moments"] = call
    outs = cache["moments"](np.asarray(x, dtype="float32"))
    return [(keras.ops.convert_to_numpy(m), keras.ops.convert_to_numpy(v)) for m, v in outs]


def bn_statistics(model: keras.Model) -> list[tuple[np.ndarray, np.ndarray]]:
    """The moving mean and variance of every BatchNormalization layer, as numpy arrays."""
    arrays = keras.ops.convert_to_numpy
    return [(arrays(bn.moving_mean), arrays(bn.moving_variance)) for bn in batchnorm_layers(model)]


def set_bn_statistics(model: keras.Model, stats: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
    bns = batchnorm_layers(model)
    if len(stats) != len(bns):
        raise ValueError(f"`stats` must give one (mean, var) per BN layer ({len(bns)}). Received: {len(stats)}")
    for bn, (mean, var) in zip(bns, stats, strict=True):
        bn.moving_mean.assign(mean)
        bn.moving_variance.assign(var)


def inference_correct(model: keras.Model, x, y, x_stats=None) -> tuple[np.ndarray, np.ndarray]:
    """Per example of `x`: correct with BN population statistics re-estimated on `x_stats`, and correct with the
    model's own moving averages (`metrics.correct`, inference mode). The model's moving averages are restored
    afterwards, so training is not affected. Without BN layers or `x_stats`, both are the plain inference-mode
    correctness."""
    own = correct(model, x, y)
    if x_stats is None or not batchnorm_layers(model):
        return own, own
    saved = bn_statistics(model)
    try:
        set_bn_statistics(model, population_statistics(model, x_stats))
        return correct(model, x, y), own
    finally:
        set_bn_statistics(model, saved)


def inference_accuracy(model: keras.Model, x, y, x_stats=None) -> tuple[float, float]:
    """(accuracy with re-estimated BN population statistics, accuracy with the model's own moving averages): the
    means of `inference_correct`."""
    right, own = inference_correct(model, x, y, x_stats)
    return (float(right.mean()), float(own.mean())) if len(right) else (0.0, 0.0)


# --------------------------------------------------------------------------------------------------- the grid


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field, the rule and the value when a Config cannot run."""
    from keras_initkit.datasets import DATASETS

    def need(ok, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"`{field}` must {rule}. Received: {field}={getattr(cfg, field)!r}")

    need(cfg.data in DATASETS, "data", f"be one of {DATASETS}")
    for name in ("steps", "eval_every", "record_every", "batch_size", "n_hidden", "width"):
        value = getattr(cfg, name)
        need(not isinstance(value, bool) and isinstance(value, int) and value >= 1, name, "be an int >= 1")
    for name in ("test_extra", "validation", "sig_depth", "deep_depth"):
        value = getattr(cfg, name)
        need(not isinstance(value, bool) and isinstance(value, int) and value >= 0, name, "be an int >= 0")
    deep = (("deep_steps", "deep_eval_every"),) if cfg.deep_depth else ()
    for steps, every in (("steps", "eval_every"), ("record_every", "eval_every"), *deep):
        need(getattr(cfg, steps) % getattr(cfg, every) == 0, steps, f"be a multiple of `{every}`={getattr(cfg, every)}")
    need(cfg.lr_multipliers and 1.0 in cfg.lr_multipliers and min(cfg.lr_multipliers) > 0, "lr_multipliers",
         "be > 0 and include 1 (the base rate)")  # fmt: skip
    need(not cfg.sig_depth or (cfg.sig_multipliers and min(cfg.sig_multipliers) > 0), "sig_multipliers",
         "be non-empty and > 0 when sig_depth > 0")  # fmt: skip
    need(cfg.seeds, "seeds", "hold at least one seed")
    need(0 <= cfg.track_unit < cfg.width, "track_unit", f"be in [0, width={cfg.width})")
    need(all(i in DEEP_INITS for i in cfg.deep_inits), "deep_inits", f"be among {tuple(DEEP_INITS)}")
    need(not cfg.deep_depth or cfg.deep_depth >= len(cfg.deep_widths) + 1, "deep_depth",
         "be 0 or >= len(deep_widths) + 1")  # fmt: skip


def trials(cfg: Config) -> list[dict]:
    """The deep ReLU grid (net x init x seed), the deeper sigmoid grid (net x multiplier x seed), then the 3-layer
    grid (net x multiplier x seed), BN first in each: the longest trials first, so that a pool finishes together."""
    check_config(cfg)
    seeds = [int(s) for s in cfg.seeds]
    grid = []
    if cfg.deep_depth:
        grid += expand_grid({"part": ["deep"], "bn": [True, False], "lr_mult": [1.0], "init": list(cfg.deep_inits),
                             "seed": seeds})  # fmt: skip
    if cfg.sig_depth:
        grid += expand_grid({"part": ["sig"], "bn": [True, False], "lr_mult": [float(m) for m in cfg.sig_multipliers],
                             "init": ["normal"], "seed": seeds})  # fmt: skip
    grid += expand_grid({"part": ["mlp"], "bn": [True, False], "lr_mult": [float(m) for m in cfg.lr_multipliers],
                         "init": ["normal"], "seed": seeds})  # fmt: skip
    return grid


# ---------------------------------------------------------------------------------------------------- one trial


@functools.lru_cache(maxsize=4)
def split(cfg: Config, flat: bool) -> dict:
    """The study's data (cached per process): the training split minus its last `test_extra` images, and the
    held-out set (those images, then the test split); with `validation` > 0 (pilots), the last `validation`
    remaining training images are held out instead and the held-out set is not used. `flat`: images as vectors."""
    d = load_data(cfg.data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed, path=cfg.data_path)
    x, x_test = d.x_train, d.x_test
    if flat:
        x, x_test = x.reshape(len(x), -1), x_test.reshape(len(x_test), -1)
    n = len(x) - cfg.test_extra
    if n <= cfg.validation or n < cfg.batch_size:
        raise ValueError(f"`test_extra` must leave training images (>= batch_size, > validation). Received: "
                         f"test_extra={cfg.test_extra} of {len(x)}")  # fmt: skip
    x_tr, y_tr = x[:n], d.y_train[:n]
    x_te, y_te = np.concatenate([x[n:], x_test]), np.concatenate([d.y_train[n:], d.y_test])
    if cfg.validation:
        x_tr, y_tr, x_te, y_te = x_tr[: -cfg.validation], y_tr[: -cfg.validation], x_tr[-cfg.validation :], \
            y_tr[-cfg.validation :]  # fmt: skip
    return {"x": x_tr, "y": y_tr, "x_test": x_te, "y_test": y_te, "num_classes": d.num_classes}


def paper_mlp(cfg: Config, input_dim: int, num_classes: int, seed: int, batchnorm: bool,
              n_hidden: int | None = None) -> keras.Model:  # fmt: skip
    """The paper's MNIST net (`keras_initkit.study.models.build_mlp`) with `n_hidden` (default cfg.n_hidden) hidden
    layers: for i = 1..n_hidden, `dense_i` (width units) -> [`bn_i` BatchNormalization, the Dense then without bias]
    -> `sigmoid_i`, then the `output` logits. Every kernel is N(0, init_std^2) with its seed derived from (seed,
    layer index): with and without BN the same kernels."""
    return build_mlp(
        input_dim, num_classes, n_hidden or cfg.n_hidden, cfg.width, activation="sigmoid", init="fixed", seed=seed,
        fixed_std=cfg.init_std, batchnorm=batchnorm, bn_momentum=cfg.bn_momentum, activation_layers=True,
        hidden_name="dense", name="mlp_bn" if batchnorm else "mlp",
    )  # fmt: skip


def weights_finite(model: keras.Model) -> bool:
    return all(bool(np.isfinite(keras.ops.convert_to_numpy(w)).all()) for w in model.weights)


def net_label(bn: bool) -> str:
    return "BN" if bn else "no BN"


def intra_op_threads() -> int:
    """TensorFlow's intra-op thread count in this process (0: its default, one per core)."""
    if keras.backend.backend() != "tensorflow":
        return 0
    import tensorflow as tf

    return int(tf.config.threading.get_intra_op_parallelism_threads())


# Per process: one compiled model per architecture (and the monitor traced on it), given a fresh net's weights per
# trial (keras_initkit.study.training.ModelCache): tracing a 30-layer BN net costs more CPU than a few hundred steps.
_MODELS = ModelCache()


def _fresh(key: tuple, build, lr: float, momentum: float, every: int):
    return _MODELS.fresh(key, build, lambda m: compile_sgd(m, lr, momentum=momentum, steps_per_execution=every), lr)


def _fit(model, x, y, x_eval, y_eval, x_stats, batch_size: int, steps: int, every: int, seed: int, callbacks=()):
    """`steps` SGD steps on shuffled mini-batches of (x, y); the curve: step, train_loss (the chunk's mean), and the
    held-out acc and acc_ema (`inference_accuracy`), from step 0."""

    def held_out(m) -> dict:
        return dict(zip(("acc", "acc_ema"), inference_accuracy(m, x_eval, y_eval, x_stats), strict=True))

    return fit_curve(model, x, y, steps=steps, every=every, batch_size=batch_size, seed=derive_seed(seed, "order"),
                     callbacks=callbacks, loss="train_loss", evaluate=held_out, start=True)  # fmt: skip


def _finish(trial: dict, lr: float, curve: pd.DataFrame, model, data: dict, x_stats, start: float,
            **frames: pd.DataFrame) -> dict[str, pd.DataFrame]:  # fmt: skip
    """The trial's tables: its curve and `frames`, "correct" (per held-out image, at the last step, re-estimated
    statistics) and one "final" row (final accuracy = that of the last step)."""
    right, own = inference_correct(model, data["x_test"], data["y_test"], x_stats)
    losses = curve["train_loss"].to_numpy()[1:]
    final = {"steps": int(curve["step"].iloc[-1]), "final_acc": float(right.mean()), "final_acc_ema": float(own.mean()),
             "max_acc": float(curve["acc"].max()), "final_loss": float(losses[-1]),
             "diverged": not (bool(np.isfinite(losses).all()) and weights_finite(model)),
             "chance_error": majority_error(data["y_test"]), "n_test": len(right), "num_classes": data["num_classes"],
             "intra_op_threads": intra_op_threads(), "wall_s": time.perf_counter() - start}  # fmt: skip
    images = pd.DataFrame({"image": np.arange(len(right)), "correct": right})
    curves = "deep_curves" if trial["part"] == "deep" else "curves"
    finals = "deep_final" if trial["part"] == "deep" else "final"
    frames = {curves: curve, finals: pd.DataFrame([final]), "correct": images, **frames}
    return {name: with_trial(f, trial, TRIAL_KEYS, lr=lr, net=net_label(trial["bn"])) for name, f in frames.items()}


def steps_to(curve: pd.DataFrame, target: float) -> int:
    """The first evaluation step after step 0 whose accuracy is >= target; -1 when none is."""
    hit = curve.loc[(curve["acc"] >= target) & (curve["step"] > 0), "step"]
    return int(hit.min()) if len(hit) else -1


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One trial: a sigmoid MLP ("mlp": the 3-layer net, with the Fig 1b/c percentiles; "sig": the deeper net) or a
    deep ReLU net ("deep"); tables "curves"/"deep_curves", "final"/"deep_final", "correct" (and "percentiles"),
    each with the trial's parameters as columns."""
    if trial["part"] in ("mlp", "sig"):
        return _run_mlp(cfg, trial)
    if trial["part"] == "deep":
        return _run_deep(cfg, trial)
    raise ValueError(f"`trial['part']` must be one of {PARTS}. Received: {trial['part']!r}")


def _run_mlp(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    from keras_initkit.monitor import VarianceMonitor

    start, seed, part = time.perf_counter(), int(trial["seed"]), trial["part"]
    set_random_seed(derive_seed(seed, "fit", "mlp"))
    d = split(cfg, True)
    x, k = d["x"], d["num_classes"]
    depth = cfg.n_hidden if part == "mlp" else cfg.sig_depth
    lr = cfg.base_lr * trial["lr_mult"]
    arch = ("mlp", trial["bn"], x.shape[1], k, depth, cfg.width, cfg.bn_momentum, cfg.eval_every)
    entry = _fresh(arch, lambda: paper_mlp(cfg, x.shape[1], k, seed, trial["bn"], depth), lr, 0.0, cfg.eval_every)
    callbacks, frames = [], {}
    if part == "mlp":
        # Fig 1b/c: the sigmoid inputs of every hidden layer, and of one unit, on a fixed probe of training examples
        # (the net in training mode: a BN layer normalizes by the probe's statistics, without updating anything).
        monitor_key = (cfg.probe_examples, cfg.record_every, cfg.track_unit, cfg)
        if entry.extra.get("monitor_key") != monitor_key:
            entry.extra["monitor_key"] = monitor_key
            entry.extra["monitor"] = VarianceMonitor(
                probe=x[: cfg.probe_examples], every=cfg.record_every, stats=["mean", "std", *PERCENTILES],
                layers=[f"sigmoid_{i + 1}" for i in range(depth)], track_unit=cfg.track_unit,
                kinds=("preact", "activation"),  # forward statistics only: the probe has no labels, on purpose
            )  # fmt: skip
        callbacks = [entry.extra["monitor"]]
    x_stats = x[: cfg.bn_stat_examples]
    curve = _fit(entry.model, x, d["y"], d["x_test"], d["y_test"], x_stats, cfg.batch_size, cfg.steps,
                 cfg.eval_every, seed, callbacks=callbacks)  # fmt: skip
    if part == "mlp":
        layer, unit = callbacks[0].to_frame(), callbacks[0].unit_frame()
        frames["percentiles"] = pd.concat(
            [layer[layer["kind"] == "preact"].assign(scope="layer"),
             unit[unit["kind"] == "preact"].drop(columns="unit").assign(scope="unit")], ignore_index=True,
        )  # fmt: skip
    return _finish(trial, lr, curve, entry.model, d, x_stats, start, **frames)


def _run_deep(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    start, seed = time.perf_counter(), int(trial["seed"])
    set_random_seed(derive_seed(seed, "fit", "deep"))
    d = split(cfg, False)
    x, k = d["x"], d["num_classes"]
    arch = ("deep", trial["bn"], x.shape[1:], k, cfg.deep_depth, cfg.deep_widths, cfg.deep_momentum)
    arch += (cfg.deep_eval_every,)
    model = _fresh(
        arch,
        lambda: build_vgg(x.shape[1:], k, cfg.deep_depth, widths=cfg.deep_widths, fc_layers=1,
                          init=DEEP_INITS[trial["init"]], seed=seed, fixed_std=0.01, batchnorm=trial["bn"]),
        cfg.deep_lr, cfg.deep_momentum, cfg.deep_eval_every,
    ).model  # fmt: skip
    x_stats = x[: cfg.deep_stat_examples]
    curve = _fit(model, x, d["y"], d["x_test"], d["y_test"], x_stats, cfg.deep_batch_size, cfg.deep_steps,
                 cfg.deep_eval_every, seed)  # fmt: skip
    return _finish(trial, cfg.deep_lr, curve, model, d, x_stats, start)


# ------------------------------------------------------------------------------------------ summaries and claims

_claim = functools.partial(claim_row, CLAIMS, RULES)


def target_accuracy(final: pd.DataFrame) -> float:
    """B1's target: the lowest final accuracy over the no-BN x1 seeds of the 3-layer net (NaN without them)."""
    base = final[(final["part"] == "mlp") & (~final["bn"].astype(bool)) & (final["lr_mult"] == 1.0)]
    return float(base["final_acc"].min()) if len(base) else float("nan")


def trial_outcomes(curves: pd.DataFrame, final: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per sigmoid-MLP trial ("mlp" and "sig"): final accuracy, steps to the target (-1: never) and the steps it
    counts (`steps_counted`: the budget when never), `learned` (the floor rule), and its outcome: "diverged",
    "no learning" (the floor rule), "trains" (reaches the target) or "worse"."""
    rows = []
    for _, f in final[final["part"].isin(["mlp", "sig"])].iterrows():
        keep = (curves["part"] == f["part"]) & (curves["bn"] == f["bn"]) & (curves["lr_mult"] == f["lr_mult"])
        c = curves[keep & (curves["seed"] == f["seed"])].sort_values("step")
        steps = steps_to(c, target) if np.isfinite(target) else -1
        ok = bool(learned(1.0 - f["final_acc"], f["chance_error"], int(f["n_test"]))) and not bool(f["diverged"])
        outcome = (
            "diverged" if bool(f["diverged"]) else "no learning" if not ok else "trains" if steps >= 0 else "worse"
        )
        rows.append({**{k: f[k] for k in ("part", "bn", "lr_mult", "seed")}, "net": net_label(bool(f["bn"])),
                     "lr": f["lr"], **{k: f[k] for k in ("final_acc", "final_acc_ema", "max_acc")},
                     "floor_acc": 1.0 - floor_error(f["chance_error"], int(f["n_test"])), "learned": ok,
                     "steps_to_target": steps, "steps_counted": steps if steps >= 0 else int(f["steps"]),
                     "diverged": bool(f["diverged"]), "outcome": outcome})  # fmt: skip
    out = pd.DataFrame(rows)
    return out.sort_values(["part", "bn", "lr_mult", "seed"]).reset_index(drop=True) if len(out) else out


def _cell(frame: pd.DataFrame, part: str, bn: bool, mult: float | None = None, init: str | None = None):
    if len(frame) == 0:
        return frame
    keep = (frame["part"] == part) & (frame["bn"].astype(bool) == bn)
    if mult is not None:
        keep &= frame["lr_mult"] == mult
    if init is not None:
        keep &= frame["init"] == init
    return frame[keep].sort_values("seed")


def speed_table(outcomes: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per 3-layer net and multiplier: seeds, seeds reaching the target, steps to it (mean, std, min, max over the
    seeds that reach it), final accuracy, divergences, speed-up over no BN x1 (mean steps), the paper's speed-up."""
    mlp = outcomes[outcomes["part"] == "mlp"] if len(outcomes) else outcomes
    base = _cell(mlp, "mlp", False, 1.0)
    base = base[base["steps_to_target"] >= 0] if len(base) else base
    base_steps = float(base["steps_to_target"].mean()) if len(base) else float("nan")
    rows, nan = [], float("nan")
    for (bn, mult), g in mlp.groupby(["bn", "lr_mult"], sort=True) if len(mlp) else ():
        hit = g.loc[g["steps_to_target"] >= 0, "steps_to_target"].astype(float)
        mean = float(hit.mean()) if len(hit) else nan
        rows.append({
            "net": net_label(bool(bn)), "lr_mult": mult, "lr": float(g["lr"].iloc[0]), "seeds": len(g),
            "reached": len(hit), "diverged": int(g["diverged"].sum()), "learned": int(g["learned"].sum()),
            "target": target, "steps_mean": mean, "steps_std": float(hit.std(ddof=1)) if len(hit) > 1 else nan,
            "steps_min": float(hit.min()) if len(hit) else nan, "steps_max": float(hit.max()) if len(hit) else nan,
            "final_acc_mean": float(g["final_acc"].mean()),
            "final_acc_std": float(g["final_acc"].std(ddof=1)) if len(g) > 1 else nan,
            "speedup": base_steps / mean if len(hit) == len(g) and mean > 0 else nan,
            "paper_speedup": PAPER_SPEEDUP.get(int(mult), nan) if bn else nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def log_ratio_ci(slow: pd.DataFrame, fast: pd.DataFrame) -> dict:
    """Per seed r = ln(steps_counted(slow) / steps_counted(fast)), paired by seed: n, mean r, its Student-t CI at
    LEVEL, and the per-seed ratios exp(r)."""
    pair = slow[["seed", "steps_counted"]].merge(fast[["seed", "steps_counted"]], on="seed", suffixes=("_s", "_f"))
    r = np.log(pair["steps_counted_s"].to_numpy(float) / pair["steps_counted_f"].to_numpy(float))
    n, mean = len(r), float(np.mean(r)) if len(r) else float("nan")
    half = float("nan")
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * float(np.std(r, ddof=1)) / math.sqrt(n)
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "ratios": np.exp(r)}


def _steps_claim(claim: str, slow: pd.DataFrame, fast: pd.DataFrame, names: tuple[str, str], target: float,
                 paper: str) -> dict:  # fmt: skip
    """B1 and B5: `fast` (names[1]) needs fewer steps to the target than `slow` (names[0]), paired by seed."""
    if min(len(slow), len(fast)) < MIN_SEEDS or not np.isfinite(target):
        return _claim(claim, "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of {names[0]} and {names[1]}", paper)
    ci = log_ratio_ci(slow, fast)
    measured = (
        f"target {target:.4f}; steps to it (-1 = never): {names[0]} {spread(slow['steps_to_target'], '.0f')}, "
        f"{names[1]} {spread(fast['steps_to_target'], '.0f')}; per-seed ratio {names[0]} / {names[1]} "
        f"{spread(ci['ratios'])}, geometric mean {math.exp(ci['mean']):.3g}x ({LEVEL:.0%} CI "
        f"[{math.exp(ci['lo']):.3g}, {math.exp(ci['hi']):.3g}]); {names[1]} faster in "
        f"{int((ci['ratios'] > 1).sum())}/{ci['n']} seeds"
    )
    if not slow["learned"].all():
        return _claim(claim, "INCONCLUSIVE", measured + f" ({names[0]} did not learn in some seed)", paper)
    if (fast["steps_to_target"] < 0).any() or fast["diverged"].any() or ci["mean"] <= 0:
        return _claim(claim, "FAIL", measured, paper)
    return _claim(claim, "PASS" if ci["lo"] > 0 else "INCONCLUSIVE", measured, paper)


def claim_b1(outcomes: pd.DataFrame, target: float) -> dict:
    paper = "31.0M steps to 72.2% (Inception) vs 13.3M (BN-Baseline, the same rate): 2.3x"
    return _steps_claim("B1", _cell(outcomes, "mlp", False, 1.0), _cell(outcomes, "mlp", True, 1.0),
                        ("no BN x1", "BN x1"), target, paper)  # fmt: skip


def claim_b5(outcomes: pd.DataFrame, target: float) -> dict:
    paper = "BN-x5 2.1M steps vs BN-Baseline 13.3M: 6.3x fewer at 5x the rate"
    return _steps_claim("B5", _cell(outcomes, "mlp", True, 1.0), _cell(outcomes, "mlp", True, 5.0),
                        ("BN x1", "BN x5"), target, paper)  # fmt: skip


def drift_table(percentiles: pd.DataFrame) -> pd.DataFrame:
    """Per MLP trial and scope ("unit", "layer"), for the last hidden layer's sigmoid input: each percentile's drift
    (max - min over the records), `drift` (the largest), and the percentiles at the first and last record."""
    last = percentiles[percentiles["depth"] == percentiles["depth"].max()] if len(percentiles) else percentiles
    sel = last[last["stat"].isin(PERCENTILES)]
    rows = []
    for (bn, mult, seed, scope), g in sel.groupby(["bn", "lr_mult", "seed", "scope"], sort=True):
        wide = g.pivot_table(index="step", columns="stat", values="value").sort_index()
        row = {"net": net_label(bool(bn)), "bn": bool(bn), "lr_mult": mult, "seed": seed, "scope": scope,
               "layer": str(g["layer"].iloc[0])}  # fmt: skip
        for q in PERCENTILES:
            v = wide[q].to_numpy(dtype=float)
            row[f"drift_{q}"] = float(np.max(v) - np.min(v)) if np.isfinite(v).all() else float("inf")
            row[f"{q}_start"], row[f"{q}_end"] = float(v[0]), float(v[-1])
        row["drift"] = max(row[f"drift_{q}"] for q in PERCENTILES)
        rows.append(row)
    return pd.DataFrame(rows)


def claim_b2(drift: pd.DataFrame) -> dict:
    paper = "Fig 1b (no BN): the percentiles move over training; Fig 1c (BN): they stay put"
    sel = drift[drift["lr_mult"] == 1.0] if len(drift) else drift
    unit = sel[sel["scope"] == "unit"] if len(sel) else sel
    no, bn = (unit[~unit["bn"]], unit[unit["bn"]]) if len(unit) else (unit, unit)
    if min(len(no), len(bn)) < MIN_SEEDS:
        return _claim("B2", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of both nets at the base rate", paper)
    pair = no.merge(bn, on="seed", suffixes=("_no", "_bn"))
    seedwise = bool(len(pair)) and bool((pair["drift_bn"] < pair["drift_no"]).all())
    ratio = float(no["drift"].mean() / bn["drift"].mean()) if bn["drift"].mean() > 0 else float("inf")
    ok = seedwise and ratio >= B2_RATIO
    layer = sel[sel["scope"] == "layer"]
    measured = (
        f"unit drift (sigmoid-input units): no BN {spread(no['drift'])}, BN {spread(bn['drift'])}; ratio of means "
        f"{ratio:.2f}; BN below no BN in {int((pair['drift_bn'] < pair['drift_no']).sum())}/{len(pair)} seeds. "
        f"Whole layer: no BN {spread(layer.loc[~layer['bn'], 'drift'])}, BN {spread(layer.loc[layer['bn'], 'drift'])}"
    )
    return _claim("B2", "PASS" if ok else "FAIL", measured, paper)


def correct_matrix(correct_table: pd.DataFrame, part: str, bn: bool, mult: float | None = None,
                   init: str | None = None) -> tuple[list[int], np.ndarray]:  # fmt: skip
    """The seeds and the (seeds, images) booleans "correct at the last step" of one cell of the grid."""
    sel = _cell(correct_table, part, bn, mult, init)
    if len(sel) == 0:
        return [], np.zeros((0, 0), bool)
    wide = sel.pivot_table(index="seed", columns="image", values="correct", aggfunc="first").sort_index()
    return [int(s) for s in wide.index], wide.to_numpy(dtype=bool)


def _paired(correct_table: pd.DataFrame, a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Correctness matrices of cells a and b (argument tuples of `correct_matrix`) on their common seeds."""
    (sa, ma), (sb, mb) = correct_matrix(correct_table, *a), correct_matrix(correct_table, *b)
    common = [s for s in sa if s in sb]
    return ma[[sa.index(s) for s in common]], mb[[sb.index(s) for s in common]]


def _raised(outcomes: pd.DataFrame, part: str = "mlp") -> list[float]:
    sel = outcomes[outcomes["part"] == part] if len(outcomes) else outcomes
    return sorted(m for m in sel["lr_mult"].unique() if m > 1.0) if len(sel) else []


def claim_b3(outcomes: pd.DataFrame, correct_table: pd.DataFrame) -> dict:
    paper = "BN-x5 and BN-x30 train (and faster); Inception at 5x the rate diverged"
    raised, base = _raised(outcomes), _cell(outcomes, "mlp", False, 1.0)
    cells = [(m, _cell(outcomes, "mlp", True, m), _cell(outcomes, "mlp", False, m)) for m in raised]
    if not raised or min(len(base), *(min(len(b), len(n)) for _, b, n in cells)) < MIN_SEEDS:
        return _claim("B3", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds at the base and the raised rates", paper)
    parts, fail, undecided = [], False, False
    for m, bn, no in cells:
        a = bool((bn["outcome"] == "trains").all())
        x1, xm = _paired(correct_table, ("mlp", False, 1.0), ("mlp", False, m))
        boot = paired_bootstrap(x1, xm, level=LEVEL)
        worse = bool(no["diverged"].any()) or boot["lo"] > 0
        fail = fail or not a or (boot["hi"] < 0 and not no["diverged"].any())
        undecided = undecided or not worse
        parts.append(
            f"x{m:g}: BN reaches the target in {int((bn['outcome'] == 'trains').sum())}/{len(bn)} seeds, diverged "
            f"{int(bn['diverged'].sum())} ({'ok' if a else 'no'}); no BN {no['outcome'].value_counts().to_dict()}, "
            f"final acc {spread(no['final_acc'])} vs x1 {spread(base['final_acc'])}; no-BN x1 - x{m:g}: "
            f"{paired_text(x1, xm, level=LEVEL)} ({'worse' if worse else 'not worse'})"
        )
    measured = "; ".join(parts)
    if not base["learned"].all():
        return _claim("B3", "INCONCLUSIVE", measured + " (no-BN x1 did not learn in some seed)", paper)
    return _claim("B3", "FAIL" if fail else "INCONCLUSIVE" if undecided else "PASS", measured, paper)


def claim_b4(outcomes: pd.DataFrame, correct_table: pd.DataFrame, mult: float = 5.0) -> dict:
    paper = "Inception with sigmoid, no BN: never above 1/1000; BN-x5-Sigmoid: 69.8%"
    bn, no = _cell(outcomes, "sig", True, mult), _cell(outcomes, "sig", False, mult)
    if min(len(bn), len(no)) < MIN_SEEDS:
        return _claim("B4", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of the deeper net at x{mult:g}", paper)
    a, b = _paired(correct_table, ("sig", True, mult), ("sig", False, mult))
    measured = (
        f"x{mult:g}: BN final acc {spread(bn['final_acc'])}, learned {int(bn['learned'].sum())}/{len(bn)}; no BN "
        f"{spread(no['final_acc'])}, learned {int(no['learned'].sum())}/{len(no)}, diverged "
        f"{int(no['diverged'].sum())} (floor: acc <= {float(no['floor_acc'].iloc[0]):.4f}); BN - no BN: "
        f"{paired_text(a, b, level=LEVEL)}"
    )
    pair = bn[["seed", "learned"]].merge(no[["seed", "learned"]], on="seed", suffixes=("_bn", "_no"))
    if (~pair["learned_bn"] & ~pair["learned_no"]).any():
        return _claim("B4", "INCONCLUSIVE", measured + " (neither net learned in some seed)", paper)
    if not bn["learned"].all() or no["learned"].any():
        return _claim("B4", "FAIL", measured, paper)
    ok = paired_bootstrap(a, b, level=LEVEL)["lo"] > 0
    return _claim("B4", "PASS" if ok else "FAIL", measured, paper)


def deep_table(deep_final: pd.DataFrame) -> pd.DataFrame:
    """Per deep net (init, BN): seeds, final accuracy mean and std, how many learned, divergences, TF threads."""
    if len(deep_final) == 0:
        return pd.DataFrame(columns=["init", "net", "seeds", "final_acc_mean", "final_acc_std", "diverged"])
    flag = [bool(learned(1 - r["final_acc"], r["chance_error"], int(r["n_test"]))) for _, r in deep_final.iterrows()]
    out = deep_final.assign(learned=flag).groupby(["init", "bn"], as_index=False).agg(
        seeds=("final_acc", "size"), final_acc_mean=("final_acc", "mean"), final_acc_std=("final_acc", "std"),
        final_acc_ema_mean=("final_acc_ema", "mean"), final_loss_mean=("final_loss", "mean"),
        learned=("learned", "sum"), diverged=("diverged", "sum"), intra_op_threads=("intra_op_threads", "max"),
    )  # fmt: skip
    out.insert(1, "net", [net_label(bool(b)) for b in out["bn"]])
    return out.drop(columns="bn")


def claim_x1(deep_final: pd.DataFrame, correct_table: pd.DataFrame) -> dict:
    paper = "not in the paper (He et al. 2015 and VGG trained deep plain nets without BN)"
    cells = {(i, bn): _cell(deep_final, "deep", bn, init=i) for i in DEEP_INITS for bn in (False, True)}
    if min(len(c) for c in cells.values()) < MIN_SEEDS:
        return _claim("X1", "INCONCLUSIVE", f"fewer than {MIN_SEEDS} seeds of some (init, BN) deep cell", paper)
    boots = {bn: paired_bootstrap(*_paired(correct_table, ("deep", bn, None, "he"), ("deep", bn, None, "fixed")),
                                  level=LEVEL) for bn in (False, True)}  # fmt: skip
    (no, bn), low = (boots[False], boots[True]), boots[False]["lo"]
    threads = sorted({int(t) for c in cells.values() for t in c["intra_op_threads"]})
    he = cells[("he", False)]
    he_learned = [bool(learned(1 - r["final_acc"], r["chance_error"], int(r["n_test"]))) for _, r in he.iterrows()]
    measured = (
        f"gap acc(He) - acc(FixedNormal(0.01)), paired by seed x image: no BN {no['diff']:+.3f} ({LEVEL:.0%} CI "
        f"[{no['lo']:+.3f}, {no['hi']:+.3f}]), BN {bn['diff']:+.3f} (CI [{bn['lo']:+.3f}, {bn['hi']:+.3f}]); "
        f"{no['seeds']} seeds x {no['images']} images; final acc: "
        + ", ".join(f"{i} {net_label(b)} {spread(c['final_acc'])}" for (i, b), c in cells.items())
        + f"; TF intra-op threads {threads}"
    )
    if threads != [X1_THREADS]:
        return _claim("X1", "INCONCLUSIVE", measured + f" (not all run with {X1_THREADS} thread)", paper)
    if not all(he_learned) or low <= 0:
        return _claim("X1", "INCONCLUSIVE", measured + " (He without BN did not learn, or no gap without BN)", paper)
    return _claim("X1", "PASS" if -low < bn["lo"] and bn["hi"] < low else "FAIL", measured, paper)


def correct_hex(correct_table: pd.DataFrame) -> pd.DataFrame:
    """Per trial: held-out images, how many are right at the last step, and `hex`, the per-image booleans packed
    (image i = bit i, most significant first: `np.unpackbits(np.frombuffer(bytes.fromhex(hex), np.uint8))[:images]`),
    so that the paired tests can be recomputed from the published CSV."""
    rows = []
    for key, g in correct_table.groupby(list(TRIAL_KEYS), sort=True) if len(correct_table) else ():
        bits = g.sort_values("image")["correct"].to_numpy(dtype=bool)
        rows.append({**dict(zip(TRIAL_KEYS, key, strict=True)), "net": net_label(bool(key[1])), "images": len(bits),
                     "right": int(bits.sum()), "hex": np.packbits(bits).tobytes().hex()})  # fmt: skip
    return pd.DataFrame(rows, columns=[*TRIAL_KEYS, "net", "images", "right", "hex"])


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Steps to target, outcomes per trial, percentile drifts, the deep nets, and the claims B1-B5, X1."""
    cols = [*TRIAL_KEYS, "step", "acc", "final_acc", "final_acc_ema", "depth", "stat", "scope", "image", "correct",
            "diverged", "chance_error", "n_test", "steps", "lr", "intra_op_threads"]  # fmt: skip
    empty = pd.DataFrame(columns=cols)
    final, curves, percentiles, deep_final, correct_table = (
        tables.get(name, empty).astype({"bn": bool})
        for name in ("final", "curves", "percentiles", "deep_final", "correct")
    )
    deep_final = deep_final.assign(part="deep") if len(deep_final) else deep_final
    target = target_accuracy(final)
    outcomes = trial_outcomes(curves, final, target) if len(final) else pd.DataFrame(columns=[*cols, "learned"])
    speed = speed_table(outcomes, target) if len(outcomes) else pd.DataFrame()
    drift = drift_table(percentiles)
    drift_summary = (
        drift.groupby(["net", "lr_mult", "scope"], as_index=False).agg(
            seeds=("drift", "size"), drift_mean=("drift", "mean"), drift_std=("drift", "std"),
            drift_p15=("drift_p15", "mean"), drift_p50=("drift_p50", "mean"), drift_p85=("drift_p85", "mean"),
        ).sort_values(["scope", "lr_mult", "net"]) if len(drift) else drift
    )  # fmt: skip
    claims = [claim_b1(outcomes, target), claim_b2(drift), claim_b3(outcomes, correct_table),
              claim_b4(outcomes, correct_table), claim_b5(outcomes, target),
              claim_x1(deep_final, correct_table)]  # fmt: skip
    return {"steps_to_target": speed, "outcomes": outcomes, "drift": drift_summary, "drift_trials": drift,
            "deep": deep_table(deep_final), "correct_hex": correct_hex(correct_table),
            "claims": pd.DataFrame(claims)}  # fmt: skip


# ------------------------------------------------------------------------------------------------------- figures

NET_LABELS = ("no BN", "BN")


def _net_colors() -> dict:
    from keras_initkit.plots import palette

    return palette(NET_LABELS)


def _curves(frame: pd.DataFrame, y: str = "acc", **kwargs):
    """`keras_initkit.plots.learning_curves` of a held-out accuracy against SGD steps, one colour per net by default
    (mean and min-max band over the seeds)."""
    from keras_initkit.plots import learning_curves

    kwargs = {"hue": "net", "hue_order": NET_LABELS, "palette": _net_colors(), **kwargs}
    return learning_curves(frame, y, ylim=(0, 1.02), xlabel="SGD step", ylabel="held-out accuracy (inference mode)",
                           **kwargs)  # fmt: skip


def _accuracy_figure(curves: pd.DataFrame, target: float):
    """Fig 1a: held-out accuracy against steps per net, one panel per multiplier; the B1 target dashed."""
    lrs = ", ".join(f"x{m:g} = {lr:g}" for m, lr in curves.groupby("lr_mult")["lr"].first().items())
    fig = _curves(curves, col="lr_mult", col_label="x{level:g} the base rate",
                  title=f"Fig 1a: held-out accuracy vs steps, mean and min-max over seeds (lr {lrs}; dashed: the "
                  "target)")  # fmt: skip
    for ax in fig.axes if np.isfinite(target) else []:
        ax.axhline(target, color="k", ls="--", lw=0.8)
    return fig


def _bn_eval_figure(curves: pd.DataFrame):
    """The BN nets' held-out accuracy with re-estimated population statistics and with Keras' moving averages."""
    names = {"acc": "re-estimated population statistics", "acc_ema": "Keras moving averages"}
    bn = curves[curves["net"] == "BN"].melt(["lr_mult", "step", "seed"], list(names), "statistics", "accuracy")
    colors = dict(zip(names.values(), (_net_colors()["BN"], "tab:gray"), strict=True))
    return _curves(bn.assign(statistics=bn["statistics"].map(names)), "accuracy", hue="statistics",
                   hue_order=list(colors), palette=colors, col="lr_mult", col_label="BN, x{level:g}",
                   title="BN nets in inference mode: which statistics (mean and min-max over seeds)")  # fmt: skip


def _sig_figure(curves: pd.DataFrame):
    """B4: held-out accuracy of the deeper sigmoid nets, one panel per multiplier, one colour per net."""
    depth = "the deeper sigmoid net"
    return _curves(curves, col="lr_mult", col_label="x{level:g} the base rate",
                   title=f"B4: {depth}, held-out accuracy, mean and min-max over seeds")  # fmt: skip


def _deep_figure(deep_curves: pd.DataFrame):
    """X1: held-out accuracy of the deep ReLU nets, one panel per init, one colour per net."""
    frame = deep_curves.assign(init=deep_curves["init"].map({"fixed": "FixedNormal(0.01)", "he": "He"}))
    return _curves(frame, col="init", col_label="{level}", title="Deep plain ReLU net: mean and min-max over seeds")


def _percentile_figure(percentiles: pd.DataFrame, scope: str):
    """Fig 1b/c: keras_initkit.plots.percentile_bands of the last hidden layer's sigmoid input (one unit or all
    units) at the base rate, the first seed, without and with BN."""
    from keras_initkit.plots import percentile_bands

    base = percentiles[(percentiles["lr_mult"] == 1.0) & (percentiles["scope"] == scope)]
    seed = int(base["seed"].min())
    base = base[base["seed"] == seed].drop(columns=["unit"], errors="ignore")
    base = base.assign(panel=base["net"].map({"no BN": "(b) without BN", "BN": "(c) with BN"}))
    what = "one unit" if scope == "unit" else "all units"
    title = f"Fig 1b/c: sigmoid input, {what} of the last hidden layer, base rate, seed {seed}"
    return percentile_bands(base, "preact", col="panel", title=title)


def _bar_figure(frame: pd.DataFrame, value: str, ylabel: str, title: str, never: bool = False):
    """Per multiplier, one bar per net: the mean of `value` over the seeds (dots: the seeds); one panel per scope
    ("unit", "layer") where the frame has that column. With `never`, a negative value means "never reached": left
    out of the bar (hatched then) and counted in a note."""
    from matplotlib.figure import Figure

    colors, mults, top = _net_colors(), sorted(frame["lr_mult"].unique()), max(float(frame[value].max()), 1.0)
    scopes = [s for s in ("unit", "layer") if s in set(frame.get("scope", []))] or [None]
    fig = Figure(figsize=(4.5 * len(scopes) + 1, 3.4), layout="constrained")
    for ax, scope in zip(fig.subplots(1, len(scopes), squeeze=False)[0], scopes, strict=True):
        sub = frame if scope is None else frame[frame["scope"] == scope]
        for k, net in enumerate(NET_LABELS):
            for i, m in enumerate(mults):
                g = sub.loc[(sub["net"] == net) & (sub["lr_mult"] == m), value]
                hit = g[g >= 0] if never else g
                p, full = i + (k - 0.5) * 0.38, len(hit) == len(g) > 0
                if len(hit):
                    ax.bar(p, hit.mean(), width=0.36, color=colors[net], alpha=0.7 if full else 0.3,
                           hatch=None if full else "//", label=net if i == 0 and full else None)  # fmt: skip
                if never and not full:
                    ax.text(p, 0.02 * top, f"{len(g) - len(hit)}/{len(g)}\nnever", ha="center", fontsize=7)
                ax.scatter([p] * len(hit), hit, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(mults)), [f"x{m:g}" for m in mults])
        ax.set(yscale="linear" if never else "log", ylabel=ylabel, xlabel="learning-rate multiplier",
               title={"unit": "tracked unit", "layer": "whole layer"}.get(scope, ""))  # fmt: skip
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}; bars: mean, dots: seeds", fontsize=10)
    return fig


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """Figures from the saved tables: accuracy vs steps, Fig 1b/c percentile bands (unit and layer), drifts, steps
    to target, BN evaluation statistics, and the deep nets."""
    figures = {}
    curves, percentiles, deep_curves = (tables.get(k, pd.DataFrame()) for k in ("curves", "percentiles", "deep_curves"))
    drift, outcomes = summary.get("drift_trials", pd.DataFrame()), summary.get("outcomes", pd.DataFrame())
    target = float(summary["steps_to_target"]["target"].iloc[0]) if len(summary.get("steps_to_target", [])) else np.nan
    mlp = curves[curves["part"] == "mlp"] if len(curves) else curves
    sig = curves[curves["part"] == "sig"] if len(curves) else curves
    if len(mlp):
        figures["accuracy"] = _accuracy_figure(mlp, target)
        figures["bn_evaluation"] = _bn_eval_figure(mlp)
    if len(sig):
        figures["deeper_sigmoid"] = _sig_figure(sig)
    if len(percentiles):
        figures["percentiles_unit"] = _percentile_figure(percentiles, "unit")
        figures["percentiles_layer"] = _percentile_figure(percentiles, "layer")
    if len(drift):
        what = "Drift of the last hidden layer's sigmoid-input percentiles (the largest of p15/p50/p85)"
        figures["drift"] = _bar_figure(drift, "drift", "drift: max - min over training", what)
    outcomes = outcomes[outcomes["part"] == "mlp"] if len(outcomes) else outcomes
    if len(outcomes):
        what = f"Steps to the target accuracy {target:.3f}"
        figures["steps_to_target"] = _bar_figure(outcomes, "steps_to_target", "SGD steps to the target", what, True)
    if len(deep_curves):
        figures["deep"] = _deep_figure(deep_curves)
    return figures


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
