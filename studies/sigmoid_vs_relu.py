"""Sigmoid vs ReLU: Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks".

Reproduces, on fully connected nets trained with plain SGD (protocol v2, pre-registered in
docs/results/sigmoid_vs_relu/PREREGISTRATION.md):
- Fig 2 (claim G1): sigmoid + standard init on Shapeset, 4 hidden layers (Fig 2) and 5: mean and std of each hidden
  layer's activations on 300 held-out examples during `g1_steps` updates. The top hidden layer saturates at 0 within
  the first epoch of Fig 2's axis (epochs of 20k updates) and stays there; the lower layers stay above 0.5.
- Figs 6, 7, 8 (G2, G3, G4): at initialization, per-layer histograms and variances of the activations, of the
  back-propagated gradients dC/ds and of the weight gradients dC/dW, tanh with standard vs normalized init.
- Eq 17 (G5): the mean singular value of the layer-to-layer Jacobians dz^(i+1)/dz^i (paper: ~0.5 vs ~0.8, tanh).
- Table 1 (G6): test error of Sigmoid, Tanh, Tanh N, Softsign, Softsign N beside the paper's numbers, and ReLU with
  He init (G7), which keeps the forward variance constant and trains where sigmoid saturates.

Setup. `n_hidden` Dense layers of `width` units and a linear output layer, the softmax inside the cross-entropy
(negative log-likelihood), plain SGD on mini-batches of 10, biases 0. Every layer, the output layer too, has its own
initializer instance seeded from (trial seed, layer index): "standard" W ~ U[-1/sqrt(n), 1/sqrt(n)], "normalized"
(GlorotAvg, the paper's Eq 16), "he" (He, fan-in Gaussian). One seed gives the standard and normalized nets the same
underlying draws (only the scale differs), so the two inits are compared pairwise. All trials of a data set see the
same data: for Shapeset a fixed sample of `n_train` images of its online stream.

Two parts of the grid. "table1": data set x (activation, init) row x learning rate x seed, trained `steps` updates;
the test error and each test image's correctness (the paired comparisons of G6 and G7). At initialization every
rate gives the same net, so the at-init measurements are taken once per (data set, row, seed), in the trial of the
first rate. "fig2": Shapeset, sigmoid + standard, `g1_hidden` depths x seed at `g1_lr`, width `g1_width`, with the
hidden layers' statistics every `g1_record_every` updates (G1).

Measurements. At init, `keras_initkit.monitor.VarianceMonitor.measure` on the first `n_stats` (300) validation
examples: per hidden layer the mean, variance and std, and histograms, of activations, dC/ds and dC/dW (Figs 6-8).
The singular values of dz^(i+1)/dz^i, from GradientTape.batch_jacobian on `n_jacobian` examples, between
consecutive hidden layers (Eq 17). During the fig2 runs, the mean and std of each hidden layer's activations on the
same 300 examples (Fig 2). After training, the test error and the per-image correctness (Table 1).

Learning rate (as the paper: chosen per model on validation error). Every row is trained at every rate of
`learning_rates`; per data set and row the rate with the lowest mean validation error over the seeds is chosen (the
validation images are held out of the training split; the test set is never used to choose), and Table 1, G6 and
G7 read the trials at the chosen rates (table `lr_choice`).

Verdicts. PASS / FAIL / INCONCLUSIVE (N/A where the profile has no trial of a claim's cells). Floor rule
(`keras_initkit.study.summary`): a row whose mean test error is within FLOOR_SE (2) binomial standard errors of the
majority-class error "did not learn"; a comparison between two rows that did not learn is INCONCLUSIVE. On the data
sets where every row of the paper's Table 1 learned (MNIST, CIFAR-10, and digits as MNIST's stand-in) every row
must learn for G6 and G7 to count there. Accuracy comparisons are paired by seed and test image: a two-way paired
bootstrap 95% CI (`summary.paired_bootstrap`) decides, McNemar's p is reported beside it. Fewer than MIN_SEEDS (5)
seeds in a claim cell: INCONCLUSIVE.

QUICK (the confirmatory run, seeds 200-204): Table 1 nets of 4 hidden layers x 128 units, learning rates 0.1, 0.3,
1.0, 10000 updates on digits (Sigmoid needs ~5000 at rate 1 to leave chance: pilot) and 4000 on Shapeset (its
rows stay near the floor at any QUICK budget: the PAPER profile is needed for Shapeset's Table 1); Fig 2 nets of 4
and 5 hidden layers x 128 units, 20000 updates (one epoch of Fig 2's axis) at rate 0.1. Width 128, not the
paper's 1000, for the Fig 2 nets: one 20k-update trial at width 1000 costs ~110 CPU-seconds here (timed), ten of
them do not fit the budget; the top layer's saturation is driven by the standard init's variance law (n Var(W) =
1/3 at any width), and in the timing run width 1000 saturated sooner (top mean 0.067 after 500 updates) than width
128 (~3000). Cost: ~620 CPU-seconds of trials in pilots (fig2 ~9 s each, Shapeset ~2.5 s, digits ~3.4 s; on a
loaded machine), about 5-6 minutes with 2 workers on an idle 2-core machine and more under load: above the 5-minute
target because the learning-rate grid triples the Table 1 trials.

Departures from the paper in QUICK: 4 hidden layers of 128 units for Table 1 (paper: 5 x 1000); thousands of
updates instead of millions; a finite Shapeset sample; scikit-learn's 8x8 digits in place of MNIST and CIFAR-10
(no download). Absolute errors are far from Table 1's; G6 and G7 test the orderings.

SMOKE: the whole pipeline (tables, claims, figures, report) in seconds: the six rows on a small Shapeset sample, one
seed, two rates, 3 hidden layers of 16 units, 40 updates.

Run: `make study-sigmoid` (QUICK) or
`python -m keras_initkit study sigmoid_vs_relu --profile quick|paper|smoke [--engine process --jobs 2]`.
Results: results/sigmoid_vs_relu/<profile>/; the QUICK report is published to docs/results/sigmoid_vs_relu/.
The nets are `keras_initkit.study.models.build_mlp`; the inits `keras_initkit.study.inits.make_initializer`'s
"standard", "normalized" and "he".
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
from keras_initkit.study.grid import derive_seed, protocol_hash
from keras_initkit.study.metrics import correct, jacobian_singular_values
from keras_initkit.study.models import build_mlp, weight_layers
from keras_initkit.study.summary import (
    FLOOR_SE,
    claim_row,
    floor_error,
    layer_factors,
    majority_error,
    mcnemar,
    paired_bootstrap,
    spread,
    with_trial,
)
from keras_initkit.study.training import ModelCache, compile_sgd, fit_curve, set_random_seed

NAME = "sigmoid_vs_relu"

CLAIMS = {
    "G1": "Fig 2: sigmoid, standard init, statistics over a fixed set of 300 held-out examples: the top hidden "
    "layer's mean activation is driven to ~0 early in training (within the first epoch of Fig 2's axis, 20k "
    "updates) and stays there (the paper's 4-layer net escapes only around epoch 100), while the lower layers stay "
    "above 0.5; with 5 hidden layers the net does not escape either.",
    "G2": "Fig 6: tanh at initialization: with standard init the activation variance shrinks layer by layer (the peak "
    "at 0 grows with depth); with normalized init it stays about the same across layers.",
    "G3": "Fig 7: at initialization, the variance of the back-propagated gradient dC/ds shrinks towards the input "
    "under standard init, and stays about constant under normalized init.",
    "G4": "Fig 8: at initialization, the variance of the weight gradients dC/dW is about the same in every layer under "
    "both initializations.",
    "G5": "Eq 17: the mean singular value of the layer-to-layer Jacobian is ~0.5 under standard and ~0.8 under "
    "normalized init (tanh).",
    "G6": "Table 1: after training, each at its learning rate chosen on validation error, Tanh N beats Tanh; Sigmoid "
    "is worst; Softsign is little affected by the init.",
    "G7": "ReLU with He init keeps forward variance constant over depth and trains where sigmoid with standard init "
    "saturates.",
}

# Thresholds of the rules, fixed in PREREGISTRATION.md before the confirmatory run. The per-layer factor of a
# variance is exp(slope) of a least-squares line through ln Var against the hidden-layer index: the average factor
# per layer. Glorot & Bengio's linear analysis (their Eq 1-13) predicts n Var(W) = 1/3 per layer under the standard
# init and 1 under the normalized init (square layers); a factor is "shrinking" when it is closer to 1/3 than to 1
# in log scale (below 1/sqrt(3)) and "about constant" when it is closer to 1 than to 1/3 or to 3.
FACTOR_SPLIT = 1.0 / math.sqrt(3.0)
G1_TOP = 0.1  # "driven to ~0": the top hidden layer's mean activation falls below this
G1_EPOCH = 20000  # "early": within the first epoch of Fig 2's axis (epochs of 20k mini-batch updates)
G1_LOWER = 0.45  # "stay above 0.5": sigmoid starts at exactly 0.5, so a lower layer may not fall below this
G1_PLATEAU = 3.0  # the run must show the plateau for >= this many times the updates it took to saturate
G5_PAPER = {"standard": 0.5, "normalized": 0.8}
G5_SPLIT = math.sqrt(0.5 * 0.8)  # between the paper's two values, in log scale
G5_TOLERANCE = 0.2  # the mean over seeds within 20% of the paper's value
LEVEL = 0.95  # the paired bootstrap's CI level: "A better than B" when the CI of acc(A) - acc(B) lies above 0
MIN_SEEDS = 5  # seeds per claim cell; fewer makes the claim INCONCLUSIVE
# data sets where every row of the paper's Table 1 learned (its Sigmoid too): every row must learn for G6 and G7
# to count there (digits stands in for MNIST). On Shapeset the paper's Sigmoid is at the floor (82.61% against a
# majority-class error of 1 - 1/6 = 83.3%): there the pairwise floor rule alone applies.
MUST_LEARN = ("digits", "mnist", "cifar10")

THRESHOLDS = dict(FACTOR_SPLIT=FACTOR_SPLIT, G1_TOP=G1_TOP, G1_EPOCH=G1_EPOCH, G1_LOWER=G1_LOWER,
                  G1_PLATEAU=G1_PLATEAU, G5_PAPER=G5_PAPER, G5_SPLIT=G5_SPLIT, G5_TOLERANCE=G5_TOLERANCE,
                  LEVEL=LEVEL, MIN_SEEDS=MIN_SEEDS, FLOOR_SE=FLOOR_SE, MUST_LEARN=MUST_LEARN)  # fmt: skip

_FEW = f"INCONCLUSIVE if an init has fewer than {MIN_SEEDS} seeds (tanh trials over the data sets); else"
_PAIRED = (
    f"'A beats B': the {LEVEL:.0%} CI of acc(A) - acc(B), a two-way paired bootstrap over seeds and test images "
    "(summary.paired_bootstrap; McNemar's p reported), lies above 0. A comparison is INCONCLUSIVE when the two rows "
    f"share fewer than {MIN_SEEDS} seeds, or neither row learned (floor rule: a row whose mean test error is within "
    f"{FLOOR_SE:g} binomial SE of the majority-class error did not learn), or, on {', '.join(MUST_LEARN)}, one row "
    "did not learn (there every row of the paper's Table 1 learned)."
)

RULES = {
    "G1": f"Shapeset, sigmoid + standard init, the fig2 nets (Config.g1_hidden: 4 = Fig 2, and 5); mean activation "
    "of each hidden layer on the 300 held-out examples every g1_record_every updates. t_sat = the first record whose "
    f"top-layer mean is < {G1_TOP}. Per depth: INCONCLUSIVE with fewer than {MIN_SEEDS} seeds; else FAIL if in some "
    f"seed (a) t_sat > {G1_EPOCH} updates (or never), or (b) the top-layer mean is back at >= {G1_TOP} at some record "
    f"after t_sat (an escape within the budget), or (c) at Fig 2's depth (the first of g1_hidden) a lower hidden "
    f"layer's mean is < {G1_LOWER} at some record; else INCONCLUSIVE if some net's plateau (g1_steps - t_sat) is "
    f"shorter than {G1_PLATEAU:g} t_sat; else PASS. The claim: FAIL if a depth fails, else INCONCLUSIVE if one is, "
    "else PASS.",
    "G2": f"tanh, at init, Var(activation) per hidden layer on the probe batch; per-layer factor rho = exp(slope of ln "
    f"Var vs layer). {_FEW} PASS if in every trial rho(standard) < 1/sqrt(3) = {FACTOR_SPLIT:.3f} (closer to Eq 1's "
    "1/3 than to 1) and 1/sqrt(3) < rho(normalized) < sqrt(3) (closer to 1); else FAIL.",
    "G3": "tanh, at init, Var(dC/ds) per hidden layer; per-layer factor going down towards the input, rho = exp(-slope "
    f"of ln Var vs layer). {_FEW} PASS if in every trial rho(standard) < 1/sqrt(3) and 1/sqrt(3) < rho(normalized) "
    "< sqrt(3); else FAIL.",
    "G4": f"tanh, at init, Var(dC/dW) per hidden layer; per-layer factor rho = exp(slope). {_FEW} PASS if in every "
    "trial, under both inits, 1/sqrt(3) < rho < sqrt(3); else FAIL.",
    "G5": f"tanh, at init, mean singular value of dz^(i+1)/dz^i over the hidden-to-hidden layers and the Jacobian "
    f"probe examples. {_FEW} PASS if in every trial standard < sqrt(0.5 * 0.8) = {G5_SPLIT:.3f} < normalized, and "
    f"the mean over trials of each is within {G5_TOLERANCE:.0%} of the paper's value; else FAIL.",
    "G6": "Table 1 rows at the learning rate chosen per data set and row (lowest mean validation error over the seeds "
    "among Config.learning_rates); per data set: (a) Tanh N beats Tanh; (b) every one of Tanh, Tanh N, Softsign, "
    "Softsign N beats Sigmoid; (c) |acc(Softsign N) - acc(Softsign)| < |acc(Tanh N) - acc(Tanh)| (paired means), "
    "decided only when (a) passes and the Softsign comparison is not INCONCLUSIVE (else INCONCLUSIVE). "
    f"{_PAIRED} A data set FAILs if a decided part fails, else is INCONCLUSIVE if a part is; the claim FAILs if a "
    "data set fails, else is INCONCLUSIVE if one is, else PASS.",
    "G7": "(a) ReLU + He, at init, Var(preact) per hidden layer: INCONCLUSIVE with fewer than "
    f"{MIN_SEEDS} seeds, else PASS if 1/sqrt(3) < rho < sqrt(3) in every trial, else FAIL; (b) per data set, at the "
    f"chosen learning rates, ReLU He beats Sigmoid. {_PAIRED} The claim: FAIL if (a) or a data set's (b) fails; "
    "else INCONCLUSIVE if one is; else PASS.",
}


def preregistration_hash() -> str:
    """sha256 of the canonical JSON of CLAIMS, RULES, THRESHOLDS and QUICK: the value PREREGISTRATION.md records
    (a test pins it, so that an edit of a claim, a rule or the QUICK protocol shows)."""
    return protocol_hash({"claims": CLAIMS, "rules": RULES, "thresholds": THRESHOLDS, "quick": QUICK})


# Table 1 of the paper, test error %, 5 hidden layers of 1000 units.
PAPER_TABLE1 = {
    "Softsign": {"shapeset": 16.27, "mnist": 1.64, "cifar10": 55.78},
    "Softsign N": {"shapeset": 16.06, "mnist": 1.72, "cifar10": 53.8},
    "Tanh": {"shapeset": 27.15, "mnist": 1.76, "cifar10": 55.9},
    "Tanh N": {"shapeset": 15.60, "mnist": 1.64, "cifar10": 52.92},
    "Sigmoid": {"shapeset": 82.61, "mnist": 2.21, "cifar10": 57.28},
}
PAPER_DATASETS = ("shapeset", "mnist", "cifar10")
TABLE1_ROWS = (("sigmoid", "standard"), ("tanh", "standard"), ("tanh", "normalized"), ("softsign", "standard"),
               ("softsign", "normalized"), ("relu", "he"))  # fmt: skip
INITS = ("standard", "normalized", "he")
ACTIVATION_LABELS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "softsign": "Softsign", "relu": "ReLU"}
INIT_SUFFIX = {"standard": "", "normalized": " N", "he": " He"}
# the kinds of Figs 6, 7 and 8 (histograms at init); the monitor's tracing cost grows with what it records
HIST_KINDS = ("activation", "grad_preact", "grad_kernel")
TRIAL_KEYS = ("part", "dataset", "activation", "init", "lr", "n_hidden", "seed")
PARTS = ("table1", "fig2")


def row_label(activation: str, init: str) -> str:
    """Table 1's name of an (activation, init) pair: "Tanh", "Tanh N", "ReLU He"."""
    return ACTIVATION_LABELS.get(activation, activation) + INIT_SUFFIX[init]


@dataclasses.dataclass(frozen=True)
class Config:
    # data sets by keras_initkit.datasets name; mnist and cifar10 are skipped when their files are absent
    datasets: tuple[str, ...] = ("shapeset", "digits")
    # mnist.npz or the cifar-10-batches-py folder when not in the Keras cache (--data-path)
    data_path: str | None = None
    # (activation, init) pairs, init one of "standard" (U[-1/sqrt(n), 1/sqrt(n)]), "normalized" (GlorotAvg), "he"
    rows: tuple[tuple[str, str], ...] = TABLE1_ROWS
    # one trial per seed and grid point; each layer's initializer seed and the data order derive from it (the
    # confirmatory seeds of PREREGISTRATION.md; pilots used 0-9, an earlier lost attempt 100-104)
    seeds: tuple[int, ...] = (200, 201, 202, 203, 204)
    # hidden layers of the Table 1 / Figs 6-8 nets (paper: 5)
    n_hidden: int = 4
    # units per hidden layer of the Table 1 nets (paper: 1000)
    width: int = 128
    # mini-batch size of plain SGD (paper: 10)
    batch_size: int = 10
    # SGD updates of the Table 1 nets per data set, (name, steps) pairs; a multiple of record_every
    steps: tuple[tuple[str, int], ...] = (("shapeset", 4000), ("digits", 10000), ("mnist", 10000), ("cifar10", 10000))
    # the learning-rate grid of every row; per data set and row the rate with the lowest mean validation error over
    # the seeds is chosen (the paper chose per model on validation error)
    learning_rates: tuple[float, ...] = (0.1, 0.3, 1.0)
    # hidden layers of the fig2 nets (Shapeset, sigmoid, standard init): Fig 2's 4, and the paper's 5
    g1_hidden: tuple[int, ...] = (4, 5)
    # units per hidden layer of the fig2 nets (paper: 1000; see the module docstring)
    g1_width: int = 128
    # SGD updates of the fig2 nets (Fig 2's axis: ~140 epochs of 20k updates; one epoch here)
    g1_steps: int = 20000
    # learning rate of the fig2 nets (fixed: Sigmoid's Shapeset validation error is at the floor at every rate)
    g1_lr: float = 0.1
    # SGD updates between two records of Fig 2's statistics
    g1_record_every: int = 200
    # Shapeset training images (a finite sample of its online stream); fixed splits use all their training images
    n_train: int = 20000
    # validation images held out of the training split: learning-rate choice; its first 300 give the probe
    n_val: int = 300
    # Shapeset test images (fixed splits use their whole test set)
    n_test: int = 2000
    # seed of the Shapeset sample: the same data in every trial
    data_seed: int = 0
    # held-out examples (the first of the validation split) of Fig 2's statistics (paper: 300) and of the
    # at-init probe (Figs 6-8)
    n_stats: int = 300
    # probe examples whose layer Jacobians give the singular values (Eq 17)
    n_jacobian: int = 16
    # SGD updates between two validation-error records of the Table 1 nets (also Keras' steps_per_execution)
    record_every: int = 500
    # histogram bins of Figs 6-8
    bins: int = 40


QUICK = Config()
PAPER = Config(
    datasets=("shapeset", "mnist", "cifar10"), n_hidden=5, width=1000,
    steps=(("shapeset", 1_000_000), ("mnist", 300_000), ("cifar10", 250_000), ("digits", 20_000)),
    learning_rates=(0.01, 0.03, 0.1, 0.3, 1.0), g1_width=1000, g1_steps=2_800_000, g1_record_every=20_000,
    n_train=200_000, n_val=5000, n_test=10000, n_jacobian=32, record_every=2000,
)  # fmt: skip
SMOKE = Config(
    datasets=("shapeset",), seeds=(0,), n_hidden=3, width=16, steps=(("shapeset", 40),), learning_rates=(0.1, 0.3),
    g1_hidden=(3,), g1_width=16, g1_steps=40, g1_record_every=20, n_train=200, n_val=40, n_test=50, n_stats=30,
    n_jacobian=4, record_every=20, bins=8,
)  # fmt: skip
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}


# --------------------------------------------------------------------------------------------------- the grid


def _steps(cfg: Config, dataset: str) -> int:
    steps = dict(cfg.steps)
    if dataset not in steps:
        raise ValueError(f"`steps` must give a number of updates for every data set. Missing: {dataset!r}")
    return int(steps[dataset])


def _available(name: str, path: str | None = None) -> bool:
    """Whether a data set can be read here (the generated and bundled ones always can)."""
    if name in ("shapeset", "digits"):
        return True
    from keras_initkit.datasets import load

    try:
        load(name, n_train=1, n_test=1, path=path)
    except FileNotFoundError:
        return False
    return True


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field, the rule and the value when a Config cannot run."""
    for activation, init in cfg.rows:
        if init not in INITS:
            raise ValueError(f"`rows` inits must be one of {INITS}. Received: ({activation!r}, {init!r})")
    lrs = cfg.learning_rates
    if not lrs or len(set(lrs)) != len(lrs) or not all(isinstance(r, (int, float)) and r > 0 for r in lrs):
        raise ValueError(f"`learning_rates` must be distinct positive numbers, at least one. Received: {lrs!r}")
    if not cfg.seeds:
        raise ValueError(f"`seeds` must not be empty. Received: seeds={cfg.seeds!r}")
    for name in cfg.datasets:
        if _steps(cfg, name) % cfg.record_every:
            raise ValueError(
                f"`steps` must be multiples of `record_every`={cfg.record_every}. Received: {name}={_steps(cfg, name)}"
            )
    if cfg.g1_steps % cfg.g1_record_every:
        raise ValueError(f"`g1_steps` must be a multiple of `g1_record_every`={cfg.g1_record_every}. "
                         f"Received: g1_steps={cfg.g1_steps}")  # fmt: skip
    if cfg.n_stats > cfg.n_val:
        raise ValueError(f"`n_stats` must be <= `n_val`={cfg.n_val}. Received: n_stats={cfg.n_stats}")
    if cfg.n_hidden < 2 or not cfg.g1_hidden or min(cfg.g1_hidden) < 2:
        raise ValueError(f"`n_hidden` and every `g1_hidden` must be >= 2. Received: {cfg.n_hidden}, {cfg.g1_hidden}")


def trials(cfg: Config) -> list[dict]:
    """The grid: part "fig2" (Shapeset, sigmoid + standard, g1_hidden x seed; the longest, first), then part
    "table1" (data set x row x learning rate x seed)."""
    check_config(cfg)
    out = []
    if "shapeset" in cfg.datasets:
        out += [dict(part="fig2", dataset="shapeset", activation="sigmoid", init="standard", lr=float(cfg.g1_lr),
                     n_hidden=int(n), seed=int(seed)) for n in cfg.g1_hidden for seed in cfg.seeds]  # fmt: skip
    table1 = []
    for dataset in cfg.datasets:
        if not _available(dataset, cfg.data_path):
            continue
        for activation, init in cfg.rows:
            for lr in cfg.learning_rates:
                for seed in cfg.seeds:
                    table1.append(dict(part="table1", dataset=dataset, activation=activation, init=init,
                                       lr=float(lr), n_hidden=cfg.n_hidden, seed=int(seed)))  # fmt: skip
    return out + sorted(table1, key=lambda t: -_steps(cfg, t["dataset"]))


# ---------------------------------------------------------------------------------------------------- one trial


def _splits(cfg: Config, name: str) -> dict[str, np.ndarray]:
    """Flattened train / validation / test arrays of data set `name` (`load_data` loads it once per process): the
    validation images are the last `n_val` of the training split."""
    shapeset = name == "shapeset"
    data = load_data(name, n_train=cfg.n_train + cfg.n_val if shapeset else None,
                     n_test=cfg.n_test if shapeset else None, seed=cfg.data_seed, path=cfg.data_path)  # fmt: skip
    x_train = data.x_train.reshape(len(data.x_train), -1)
    n_val = cfg.n_val
    if n_val >= len(x_train):
        raise ValueError(f"`n_val` must leave training examples in {name!r}. Received: n_val={n_val}")
    return {"x_train": x_train[:-n_val], "y_train": data.y_train[:-n_val], "x_val": x_train[-n_val:],
            "y_val": data.y_train[-n_val:], "x_test": data.x_test.reshape(len(data.x_test), -1), "y_test": data.y_test,
            "num_classes": data.num_classes}  # fmt: skip


_MODELS = ModelCache()  # per process: one compiled model per architecture; the train step traced once


def _at_init(cfg: Config, model: keras.Model, d: dict, names: list[str]) -> dict[str, pd.DataFrame]:
    """Figs 6-8 and Eq 17 on the net as initialized: the monitor's statistics and histograms on the probe, and the
    singular values of dz^(i+1)/dz^i between consecutive hidden layers."""
    from keras_initkit.monitor import VarianceMonitor

    hidden = [model.get_layer(n) for n in names]
    zs = keras.Model(model.input, [layer.output for layer in hidden])(d["x_train"][: cfg.n_jacobian])
    zs = [keras.ops.convert_to_numpy(z) for z in zs]
    jac_rows = []
    for i, layer in enumerate(hidden[1:], start=1):
        sv = jacobian_singular_values(layer, zs[i - 1])
        sv_stats = {"mean_sv": sv.mean(), "p10": np.quantile(sv, 0.1), "p50": np.median(sv),
                    "p90": np.quantile(sv, 0.9), "max_sv": sv.max()}  # fmt: skip
        jac_rows.append({"layer": layer.name, "depth": i, **{k: float(v) for k, v in sv_stats.items()}})
    probe = (d["x_val"][: cfg.n_stats], d["y_val"][: cfg.n_stats])
    monitor = VarianceMonitor(probe=probe, layers=names, stats=["mean", "var", "std"], histograms=HIST_KINDS,
                              bins=cfg.bins)  # fmt: skip
    monitor.measure(model, step=0)
    return {"init": monitor.to_frame(), "hist": monitor.histogram_frame(), "jacobian": pd.DataFrame(jac_rows)}


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One net. Part "table1": at-init measurements (in the first rate's trial only: "init", "hist", "jacobian"),
    `steps` updates with the validation error every `record_every` ("curves"), the test error and each test image's
    correctness ("final", "correct"). Part "fig2": `g1_steps` updates with each hidden layer's activation mean and
    std on the probe every `g1_record_every` ("training", "final")."""
    from keras_initkit.monitor import VarianceMonitor

    part = trial.get("part")
    if part not in PARTS:
        raise ValueError(f"trial `part` must be one of {PARTS}. Received: part={part!r}")
    start, start_cpu = time.perf_counter(), time.process_time()
    seed, dataset, lr = int(trial["seed"]), trial["dataset"], float(trial["lr"])
    set_random_seed(derive_seed(seed, "fit", dataset))
    d = _splits(cfg, dataset)
    fig2 = part == "fig2"
    width, every = (cfg.g1_width, cfg.g1_record_every) if fig2 else (cfg.width, cfg.record_every)
    steps = cfg.g1_steps if fig2 else _steps(cfg, dataset)
    key = (dataset, trial["activation"], trial["init"], int(trial["n_hidden"]), width, every, cfg.batch_size)
    model = _MODELS.fresh(
        key, lambda: build_mlp(d["x_train"].shape[1], d["num_classes"], int(trial["n_hidden"]), width,
                               activation=trial["activation"], init=trial["init"], seed=seed),
        lambda m: compile_sgd(m, lr, steps_per_execution=every), learning_rate=lr,
    ).model  # fmt: skip
    names = [layer.name for layer in weight_layers(model)[:-1]]  # hidden_1 ... hidden_<n_hidden>
    tables: dict[str, pd.DataFrame] = {}
    if not fig2 and lr == float(cfg.learning_rates[0]):
        tables.update(_at_init(cfg, model, d, names))
    callbacks = []
    if fig2:
        monitor = VarianceMonitor(probe=(d["x_val"][: cfg.n_stats], d["y_val"][: cfg.n_stats]), every=every,
                                  at_init=True, layers=names, stats=["mean", "std"],
                                  kinds=("activation",))  # fmt: skip
        callbacks = [monitor]
    curve = fit_curve(
        model, d["x_train"], d["y_train"], steps=steps, every=every, batch_size=cfg.batch_size,
        seed=derive_seed(seed, "order"), callbacks=callbacks, loss="train_loss",
        evaluate=None if fig2 else (lambda m: {"val_err": 100.0 * (1.0 - correct(m, d["x_val"], d["y_val"]).mean())}),
    )  # fmt: skip
    ok = correct(model, d["x_test"], d["y_test"])
    val_ok = correct(model, d["x_val"], d["y_val"])
    final = {
        "steps": steps,
        "width": width,
        "val_err": 100.0 * (1.0 - val_ok.mean()),
        "test_err": 100.0 * (1.0 - ok.mean()),
        "n_test": len(ok),
        "chance_err": 100.0 * majority_error(d["y_test"]),
        "final_loss": float(curve["train_loss"].iloc[-1]) if len(curve) else float("nan"),
        "diverged": bool(len(curve) and not np.isfinite(curve["train_loss"].iloc[-1])),
        "wall_s": time.perf_counter() - start,
        # CPU seconds of this process (all threads): what the trial costs on an otherwise idle machine
        "cpu_s": time.process_time() - start_cpu,
    }
    tables["final"] = pd.DataFrame([final])
    if fig2:
        stats = monitor.to_frame()
        tables["training"] = stats[(stats["kind"] == "activation") & stats["stat"].isin(["mean", "std"])]
    else:
        tables["curves"] = curve
        tables["correct"] = pd.DataFrame({"image": np.arange(len(ok)), "correct": ok})
    row = row_label(trial["activation"], trial["init"])
    return {name: with_trial(frame, trial, TRIAL_KEYS, row=row) for name, frame in tables.items()}


# ------------------------------------------------------------------------------------------ summaries and claims


def depth_factors(init: pd.DataFrame) -> pd.DataFrame:
    """Per trial and kind, the per-layer factor of the variance over the hidden layers, at init (step 0):
    `keras_initkit.study.summary.layer_factors` against the hidden-layer index.

    Columns: the trial keys, `row`, `kind`, `factor` (exp(slope), going up towards the output), `factor_down`
    (its inverse: the factor per layer going down towards the input, Fig 7's direction), `n_fit`.
    """
    sel = init[(init["stat"] == "var") & (init["step"] == 0) & init["layer"].str.startswith("hidden_")]
    return layer_factors(sel, [*TRIAL_KEYS, "row", "kind"], x="depth")


def choose_lr(final: pd.DataFrame) -> pd.DataFrame:
    """Per data set and row (activation x init), the mean validation error over the seeds of each learning rate of
    the Table 1 trials, and the chosen rate: the lowest mean (a tie keeps the smallest rate). Never the test set."""
    main = final[final["part"] == "table1"] if "part" in final.columns else final
    keys = ["dataset", "row", "activation", "init"]
    table = main.groupby([*keys, "lr"], as_index=False, sort=True).agg(
        n=("val_err", "size"), val_err_mean=("val_err", "mean"), test_err_mean=("test_err", "mean"))  # fmt: skip
    best = table.groupby(keys)["val_err_mean"].transform("min")
    table["chosen"] = table["val_err_mean"].eq(best)
    first = table[table["chosen"]].groupby(keys)["lr"].transform("min")
    table.loc[table["chosen"], "chosen"] = table.loc[table["chosen"], "lr"].eq(first)
    return table


def at_chosen_lr(frame: pd.DataFrame, lr_choice: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 rows of `frame` whose (dataset, activation, init, lr) is the chosen one."""
    if "part" in frame.columns:
        frame = frame[frame["part"] == "table1"]
    chosen = lr_choice.loc[lr_choice["chosen"], ["dataset", "activation", "init", "lr"]]
    return frame.merge(chosen, on=["dataset", "activation", "init", "lr"], how="inner")


def error_table(chosen: pd.DataFrame) -> pd.DataFrame:
    """Long Table 1 from the trials at the chosen rates: per data set and row, the test error mean and std over the
    seeds, the majority-class error, the floor (FLOOR_SE binomial SE below it, `summary.floor_error`), whether the
    row learned (mean test error below the floor), and the paper's number. Errors in %."""
    out = chosen.groupby(["dataset", "row", "activation", "init", "lr"], as_index=False).agg(
        n=("test_err", "size"), test_err_mean=("test_err", "mean"), test_err_std=("test_err", "std"),
        val_err_mean=("val_err", "mean"), chance_err=("chance_err", "first"), n_test=("n_test", "first"),
        diverged=("diverged", "sum"))  # fmt: skip
    out["floor_err"] = [100.0 * floor_error(c / 100.0, int(n)) for c, n in zip(out["chance_err"], out["n_test"],
                                                                                strict=True)]  # fmt: skip
    out["learned"] = out["test_err_mean"] < out["floor_err"]
    out["paper"] = [PAPER_TABLE1.get(r, {}).get(d, np.nan) for r, d in zip(out["row"], out["dataset"], strict=True)]
    order = {row_label(a, i): k for k, (a, i) in enumerate(TABLE1_ROWS)}
    out["_order"] = out["row"].map(order).fillna(len(order))
    out["_data"] = out["dataset"].map({d: k for k, d in enumerate(_datasets_in(out))})
    out = out.sort_values(["_data", "_order", "row"]).drop(columns=["_order", "_data"])
    return out.reset_index(drop=True)


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {0.0 if np.isnan(std) else std:.2f}"


def table1(errors: pd.DataFrame) -> pd.DataFrame:
    """Wide Table 1: one line per row, per data set our mean +- std test error (%) at the chosen rate (marked * when
    the row did not learn) and the paper's."""
    rows = list(dict.fromkeys(errors["row"]))
    out = pd.DataFrame({"row": rows})
    for dataset in dict.fromkeys(errors["dataset"]):
        sub = errors[errors["dataset"] == dataset].set_index("row")
        out[f"{dataset} (ours)"] = [
            _mean_std(sub.at[r, "test_err_mean"], sub.at[r, "test_err_std"]) + ("" if sub.at[r, "learned"] else " *")
            if r in sub.index else "" for r in rows
        ]  # fmt: skip
        out[f"{dataset} lr"] = [f"{sub.at[r, 'lr']:g}" if r in sub.index else "" for r in rows]
        out[f"{dataset} (paper)"] = [
            "" if r not in sub.index or np.isnan(sub.at[r, "paper"]) else f"{sub.at[r, 'paper']:.2f}" for r in rows
        ]
    return out


def _fig2_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the fig2 runs (Shapeset, sigmoid, standard init)."""
    return frame[frame["part"] == "fig2"] if "part" in frame.columns else frame.iloc[0:0]


def g1_table(training: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Fig 2's figures per fig2 trial: t_sat (the first record whose top-layer mean is < G1_TOP; -1: never), the
    first record after it back at >= G1_TOP (escape; -1: none), the top layer's mean at init, at G1_EPOCH updates
    (or the end) and at the end, its minimum, and the lowest mean of any lower hidden layer."""
    sel = _fig2_runs(training)
    sel = sel[(sel["kind"] == "activation") & (sel["stat"] == "mean")]
    fig2 = _fig2_runs(final)
    steps = fig2.set_index(list(TRIAL_KEYS))["steps"] if len(fig2) else pd.Series(dtype=float)
    rows = []
    for key, group in sel.groupby(list(TRIAL_KEYS), sort=True):
        top_depth = group["depth"].max()
        top = group[group["depth"] == top_depth].sort_values("step")
        lower = group[group["depth"] < top_depth]
        below = top[top["value"] < G1_TOP]
        n_steps = int(steps.get(key, top["step"].max()))
        t_sat = int(below["step"].iloc[0]) if len(below) else -1
        back = top[(top["step"] > t_sat) & (top["value"] >= G1_TOP)] if t_sat >= 0 else top.iloc[0:0]
        rows.append({
            **dict(zip(TRIAL_KEYS, key, strict=True)), "steps": n_steps, "t_sat": t_sat,
            "t_escape": int(back["step"].iloc[0]) if len(back) else -1,
            "top_start": float(top["value"].iloc[0]),
            "top_epoch": float(top.loc[top["step"] <= G1_EPOCH, "value"].iloc[-1]),
            "top_min": float(top["value"].min()), "top_end": float(top["value"].iloc[-1]),
            "lower_min": float(lower["value"].min()) if len(lower) else float("nan"),
            "lower_end_max": float(lower[lower["step"] == lower["step"].max()]["value"].max()) if len(lower)
            else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)


_claim = functools.partial(claim_row, CLAIMS, RULES)


def _combine(verdicts) -> str:
    """FAIL if any part failed, else INCONCLUSIVE if any part is, else PASS (N/A for no part)."""
    verdicts = list(verdicts)
    if not verdicts:
        return "N/A"
    for status in ("FAIL", "INCONCLUSIVE"):
        if status in verdicts:
            return status
    return "PASS"


def _n_seeds(frame: pd.DataFrame) -> int:
    return int(frame["seed"].nunique()) if len(frame) else 0


def claim_g1(g1: pd.DataFrame, depths: tuple[int, ...]) -> dict:
    """G1 from `g1_table` (see RULES["G1"]); `depths`: Config.g1_hidden, the first is Fig 2's."""
    paper = ("top layer's mean -> ~0 within the first of ~140 epochs of 20k updates, back up only around epoch 100 "
             "(4 layers); the 5-layer net never escapes; lower layers > 0.5")  # fmt: skip
    cells = {n: g1[g1["n_hidden"] == n] if len(g1) else g1 for n in depths}
    if not all(len(c) for c in cells.values()):
        return _claim("G1", "N/A", f"no fig2 run at each of {depths} hidden layers", paper)
    parts, verdicts = [], []
    for n, cell in cells.items():
        sat = cell["t_sat"]
        early = (sat >= 0) & (sat <= G1_EPOCH)
        stays = early & (cell["t_escape"] < 0)
        lower = cell["lower_min"] >= G1_LOWER if n == depths[0] else pd.Series(True, index=cell.index)
        plateau = early & (cell["steps"] - sat >= G1_PLATEAU * sat)
        if _n_seeds(cell) < MIN_SEEDS:
            verdicts.append("INCONCLUSIVE")
        elif not bool((early & stays & lower).all()):
            verdicts.append("FAIL")
        else:
            verdicts.append("PASS" if bool(plateau.all()) else "INCONCLUSIVE")
        escaped = cell["t_escape"].where(cell["t_escape"] >= 0).dropna()
        text = (
            f"{n} hidden layers ({_n_seeds(cell)} seeds, {int(cell['steps'].max())} updates): top-layer mean "
            f"{spread(cell['top_start'])} at init, {spread(cell['top_end'])} at the end; t_sat (updates) "
            f"{spread(sat.where(sat >= 0).dropna(), '.0f')} ({int(early.sum())}/{len(cell)} within "
            f"{G1_EPOCH}); escaped (back >= {G1_TOP}) in {int((cell['t_escape'] >= 0).sum())}/{len(cell)}"
            + (f" at {spread(escaped, '.0f')}" if len(escaped) else "")
            + f"; plateau >= {G1_PLATEAU:g} t_sat in {int(plateau.sum())}/{len(cell)}"
        )
        if n == depths[0]:
            text += (
                f"; lowest lower-layer mean {spread(cell['lower_min'])} ({int(lower.sum())}/{len(cell)} >= {G1_LOWER})"
            )
        parts.append(text)
    return _claim("G1", _combine(verdicts), "; ".join(parts), paper)


# the per-layer-factor claims: kind, the factor's direction (Fig 7 reads dC/ds going down), the expected shape per
# init ("shrink": < FACTOR_SPLIT; "flat": between FACTOR_SPLIT and 1 / FACTOR_SPLIT), and the paper's finding
FACTOR_CLAIMS = {
    "G2": ("activation", "factor", {"standard": "shrink", "normalized": "flat"},
           "shrinks layer by layer (standard); about the same across layers (normalized)"),
    "G3": ("grad_preact", "factor_down", {"standard": "shrink", "normalized": "flat"},
           "shrinks towards the input (standard); about constant (normalized)"),
    "G4": ("grad_kernel", "factor", {"standard": "flat", "normalized": "flat"},
           "about the same in every layer, both inits"),
}  # fmt: skip


def _flat(values: pd.Series) -> pd.Series:
    return (values > FACTOR_SPLIT) & (values < 1 / FACTOR_SPLIT)


def _factor_claim(claim: str, factors: pd.DataFrame) -> dict:
    """G2, G3 or G4 from `depth_factors` (FACTOR_CLAIMS; see RULES): the tanh trials' per-layer factors."""
    kind, column, expect, paper = FACTOR_CLAIMS[claim]
    sel = factors[(factors["activation"] == "tanh") & (factors["kind"] == kind)] if len(factors) else factors
    parts, ok, few = [], True, False
    for init, want in expect.items():
        cell = sel[sel["init"] == init] if len(sel) else sel
        values = cell[column] if len(cell) else pd.Series(dtype=float)
        if len(values) == 0 or values.isna().all():
            return _claim(claim, "N/A", f"no tanh + {init} trial with {kind} variances", paper)
        good = values < FACTOR_SPLIT if want == "shrink" else _flat(values)
        ok = ok and bool(good.all())
        few = few or _n_seeds(cell) < MIN_SEEDS
        parts.append(f"{init}: rho = {spread(values)}, {int(good.sum())}/{len(values)} trials {want}")
    status = "INCONCLUSIVE" if few else "PASS" if ok else "FAIL"
    return _claim(claim, status, "; ".join(parts), paper)


claim_g2, claim_g3, claim_g4 = (functools.partial(_factor_claim, claim) for claim in FACTOR_CLAIMS)


def claim_g5(jac: pd.DataFrame) -> dict:
    """G5 from `jacobian_summary` (see RULES["G5"])."""
    paper = "~0.5 (standard), ~0.8 (normalized)"
    sel = jac[jac["activation"] == "tanh"] if len(jac) else jac
    parts, ok, few = [], True, False
    for init, want in G5_PAPER.items():
        cell = sel[sel["init"] == init] if len(sel) else sel
        values = cell["mean_sv"] if len(cell) else pd.Series(dtype=float)
        if len(values) == 0:
            return _claim("G5", "N/A", f"no tanh + {init} trial", paper)
        side = values < G5_SPLIT if init == "standard" else values > G5_SPLIT
        close = abs(values.mean() - want) <= G5_TOLERANCE * want
        ok = ok and bool(side.all()) and bool(close)
        few = few or _n_seeds(cell) < MIN_SEEDS
        parts.append(
            f"{init}: {spread(values)}, {int(side.sum())}/{len(values)} trials on its side of {G5_SPLIT:.3f}, "
            f"mean {'within' if close else 'outside'} {G5_TOLERANCE:.0%} of {want}"
        )
    status = "INCONCLUSIVE" if few else "PASS" if ok else "FAIL"
    return _claim("G5", status, "; ".join(parts), paper)


GLOROT_ROWS = ("Sigmoid", "Tanh", "Tanh N", "Softsign", "Softsign N")
# the paired comparisons (A, B) of G6 and G7: "A beats B"
PAIRS = (("Tanh N", "Tanh"), ("Softsign N", "Softsign"), ("Tanh", "Sigmoid"), ("Tanh N", "Sigmoid"),
         ("Softsign", "Sigmoid"), ("Softsign N", "Sigmoid"), ("ReLU He", "Sigmoid"))  # fmt: skip


def correct_matrix(correct_chosen: pd.DataFrame, dataset: str, row: str, seeds=None) -> np.ndarray:
    """(seeds, test images) booleans "classified correctly" of one row at its chosen rate, seeds in order."""
    sel = correct_chosen[(correct_chosen["dataset"] == dataset) & (correct_chosen["row"] == row)]
    wide = sel.pivot_table(index="seed", columns="image", values="correct", aggfunc="first").sort_index()
    if seeds is not None:
        wide = wide.loc[list(seeds)]
    return wide.to_numpy(dtype=bool)


def comparisons(errors: pd.DataFrame, correct_chosen: pd.DataFrame) -> pd.DataFrame:
    """Per data set and pair of PAIRS with both rows present: the paired bootstrap and McNemar of A vs B (seeds
    both rows have), whether each row learned (the floor rule), whether the comparison can decide, and its verdict:
    PASS (A beats B: the CI above 0), FAIL (it does not), INCONCLUSIVE (both rows at the floor, a row at the floor
    on a MUST_LEARN data set, or fewer than MIN_SEEDS common seeds)."""
    rows = []
    for dataset in _datasets_in(errors) if len(errors) else []:
        sub = errors[errors["dataset"] == dataset].set_index("row")
        for a, b in PAIRS:
            if a not in sub.index or b not in sub.index:
                continue
            pick = correct_chosen[(correct_chosen["dataset"] == dataset) & correct_chosen["row"].isin([a, b])]
            per_row = pick.groupby("row")["seed"].unique()
            seeds = sorted(set(per_row.get(a, [])) & set(per_row.get(b, [])))
            learned_a, learned_b = bool(sub.at[a, "learned"]), bool(sub.at[b, "learned"])
            row = dict(dataset=dataset, a=a, b=b, a_err=float(sub.at[a, "test_err_mean"]),
                       b_err=float(sub.at[b, "test_err_mean"]), floor_err=float(sub.at[a, "floor_err"]),
                       a_learned=learned_a, b_learned=learned_b, seeds=len(seeds))  # fmt: skip
            if seeds:
                ma = correct_matrix(correct_chosen, dataset, a, seeds)
                mb = correct_matrix(correct_chosen, dataset, b, seeds)
                boot, mc = paired_bootstrap(ma, mb, level=LEVEL), mcnemar(ma, mb)
                row.update(diff=boot["diff"], lo=boot["lo"], hi=boot["hi"], p=boot["p"], mcnemar_p=mc["p"],
                           a_only=mc["a_only"], b_only=mc["b_only"], images=boot["images"])  # fmt: skip
            else:
                row.update(diff=np.nan, lo=np.nan, hi=np.nan, p=np.nan, mcnemar_p=np.nan, a_only=0, b_only=0, images=0)
            if len(seeds) < MIN_SEEDS:
                why = f"fewer than {MIN_SEEDS} seeds"
            elif not (learned_a or learned_b):
                why = "neither row learned"
            elif dataset in MUST_LEARN and not (learned_a and learned_b):
                why = f"a row did not learn on {dataset}, where every row must"
            else:
                why = ""
            row["decidable"], row["why"] = not why, why
            row["verdict"] = "INCONCLUSIVE" if why else "PASS" if row["lo"] > 0 else "FAIL"
            rows.append(row)
    columns = ["dataset", "a", "b", "a_err", "b_err", "floor_err", "a_learned", "b_learned", "seeds", "diff", "lo",
               "hi", "p", "mcnemar_p", "a_only", "b_only", "images", "decidable", "why", "verdict"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _pair(pairs: pd.DataFrame, dataset: str, a: str, b: str) -> pd.Series | None:
    sel = pairs[(pairs["dataset"] == dataset) & (pairs["a"] == a) & (pairs["b"] == b)]
    return sel.iloc[0] if len(sel) else None


def _pair_text(p: pd.Series) -> str:
    mark = lambda learned: "" if learned else " (did not learn)"  # noqa: E731
    text = f"{p['a']} {p['a_err']:.2f}%{mark(p['a_learned'])} vs {p['b']} {p['b_err']:.2f}%{mark(p['b_learned'])}"
    if p["seeds"]:
        text += (f": acc diff {p['diff']:+.4f} ({LEVEL:.0%} CI [{p['lo']:+.4f}, {p['hi']:+.4f}], bootstrap "
                 f"p={p['p']:.2g}; McNemar p={p['mcnemar_p']:.2g}, {int(p['a_only'])} vs {int(p['b_only'])} images; "
                 f"{int(p['seeds'])} seeds x {int(p['images'])} images)")  # fmt: skip
    return text + (f" {p['verdict']}" + (f" ({p['why']})" if p["why"] else ""))


def claim_g6(pairs: pd.DataFrame) -> dict:
    """G6 from `comparisons` (see RULES["G6"])."""
    paper = "; ".join(
        f"{d}: Tanh {PAPER_TABLE1['Tanh'][d]} vs Tanh N {PAPER_TABLE1['Tanh N'][d]}, Sigmoid "
        f"{PAPER_TABLE1['Sigmoid'][d]}, Softsign {PAPER_TABLE1['Softsign'][d]} vs N "
        f"{PAPER_TABLE1['Softsign N'][d]}"
        for d in PAPER_DATASETS
    )
    g6_pairs = [p for p in PAIRS if p[0] != "ReLU He"]
    datasets = [d for d in dict.fromkeys(pairs["dataset"]) if all(_pair(pairs, d, *p) is not None for p in g6_pairs)]
    if not datasets:
        return _claim("G6", "N/A", f"no data set with all of {GLOROT_ROWS}", paper)
    parts, verdicts = [], []
    for d in datasets:
        a = _pair(pairs, d, "Tanh N", "Tanh")
        b = [_pair(pairs, d, r, "Sigmoid") for r in GLOROT_ROWS[1:]]
        soft = _pair(pairs, d, "Softsign N", "Softsign")
        if a["verdict"] != "PASS" or not soft["decidable"]:  # no init effect on Tanh to compare with, or undecidable
            c = "INCONCLUSIVE"
        else:
            c = "PASS" if abs(soft["diff"]) < abs(a["diff"]) else "FAIL"
        b_verdict = _combine(p["verdict"] for p in b)
        verdict = _combine([a["verdict"], b_verdict, c])
        verdicts.append(verdict)
        parts.append(
            f"{d} {verdict}: (a) {_pair_text(a)}; (b) {b_verdict}: "
            + ", ".join(f"{p['a']} {p['verdict']} (CI [{p['lo']:+.4f}, {p['hi']:+.4f}])" for p in b)
            + f", Sigmoid {b[0]['b_err']:.2f}% (floor {b[0]['floor_err']:.2f}%"
            + ("" if b[0]["b_learned"] else ", did not learn")
            + f"); (c) |Softsign N - Softsign| = "
            f"{abs(soft['diff']):.4f} vs |Tanh N - Tanh| = {abs(a['diff']):.4f} {c}"
            + ("" if a["verdict"] == "PASS" else " (decided only when (a) passes)")
            + ("" if soft["decidable"] else f" ({soft['why']} for Softsign)")
        )
    return _claim("G6", _combine(verdicts), "; ".join(parts), paper)


def claim_g7(factors: pd.DataFrame, pairs: pd.DataFrame) -> dict:
    """G7 (see RULES["G7"])."""
    paper = "He et al. 2015: Var(preact) constant over depth with 2/n; ReLU trains (Table 1 has no ReLU row)"
    pre = factors[(factors["row"] == "ReLU He") & (factors["kind"] == "preact")] if len(factors) else factors
    both = [d for d in dict.fromkeys(pairs["dataset"]) if _pair(pairs, d, "ReLU He", "Sigmoid") is not None]
    if len(pre) == 0 or not both:
        return _claim("G7", "N/A", "no ReLU He trial, or no data set with both ReLU He and Sigmoid", paper)
    flat = _flat(pre["factor"])
    a = "INCONCLUSIVE" if _n_seeds(pre) < MIN_SEEDS else "PASS" if bool(flat.all()) else "FAIL"
    parts = [f"(a) {a}: ReLU He Var(preact) rho = {spread(pre['factor'])}, {int(flat.sum())}/{len(pre)} trials flat"]
    verdicts = [a]
    for d in both:
        p = _pair(pairs, d, "ReLU He", "Sigmoid")
        verdicts.append(p["verdict"])
        parts.append(f"(b) {d}: {_pair_text(p)}")
    return _claim("G7", _combine(verdicts), "; ".join(parts), paper)


# kinds of the depth-factor summary, and which direction each is read in (Fig 7 reads dC/ds going down)
FACTOR_COLUMNS = (("preact", "factor", "preact"), ("activation", "factor", "activation"),
                  ("grad_preact", "factor_down", "grad_preact_down"),
                  ("grad_kernel", "factor", "grad_kernel"))  # fmt: skip


def depth_factor_summary(factors: pd.DataFrame) -> pd.DataFrame:
    """Per data set and row, the mean and std over seeds of each per-layer factor (FACTOR_COLUMNS)."""
    out = None
    for kind, column, name in FACTOR_COLUMNS:
        part = factors[factors["kind"] == kind].groupby(["dataset", "row"], sort=False)[column]
        part = part.agg(["size", "mean", "std"]).rename(columns={"size": "n", "mean": name, "std": f"{name}_sd"})
        out = part if out is None else out.join(part.drop(columns="n"), how="outer")
    return out.reset_index() if out is not None else pd.DataFrame()


def jacobian_summary(jacobian: pd.DataFrame) -> pd.DataFrame:
    """Per trial, the mean singular value over the hidden-to-hidden layer Jacobians."""
    return jacobian.groupby([*TRIAL_KEYS, "row"], as_index=False)["mean_sv"].mean()


def _table(tables: dict[str, pd.DataFrame], name: str) -> pd.DataFrame:
    return tables.get(name, pd.DataFrame())


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Summary tables (Table 1, learning-rate choice, paired comparisons, depth factors, Jacobians, Fig 2's
    figures, cost) and the claims."""
    final = _table(tables, "final")
    if len(final) == 0:  # every trial failed: nothing to summarize
        claims = [_claim(c, "N/A", "no finished trial", "") for c in CLAIMS]
        return {"claims": pd.DataFrame(claims)}
    lr_choice = choose_lr(final)
    chosen = at_chosen_lr(final, lr_choice)
    errors = error_table(chosen) if len(chosen) else pd.DataFrame()
    correct_chosen = at_chosen_lr(_table(tables, "correct"), lr_choice) if len(_table(tables, "correct")) else None
    pairs = comparisons(errors, correct_chosen) if correct_chosen is not None and len(errors) else comparisons(
        pd.DataFrame(), pd.DataFrame())  # fmt: skip
    init, jacobian = _table(tables, "init"), _table(tables, "jacobian")
    factors = depth_factors(init) if len(init) else pd.DataFrame()
    jac = jacobian_summary(jacobian) if len(jacobian) else pd.DataFrame()
    training = _table(tables, "training")
    g1 = g1_table(training, final) if len(training) else pd.DataFrame()
    claims = pd.DataFrame([claim_g1(g1, cfg.g1_hidden), claim_g2(factors), claim_g3(factors), claim_g4(factors),
                           claim_g5(jac), claim_g6(pairs), claim_g7(factors, pairs)])  # fmt: skip
    missing = [d for d in cfg.datasets if d not in set(final["dataset"])]
    if missing:
        claims["measured"] = claims["measured"] + f" (data sets absent here, not run: {', '.join(missing)})"
    cost = final.groupby(["part", "dataset"], as_index=False, sort=False).agg(
        trials=("test_err", "size"), steps=("steps", "max"), wall_s_mean=("wall_s", "mean"),
        cpu_s_mean=("cpu_s", "mean"), cpu_s_total=("cpu_s", "sum"))  # fmt: skip
    out = {"lr_choice": lr_choice, "paired": pairs, "g1": g1, "cost": cost, "claims": claims}
    if len(errors):
        out.update(table1=table1(errors), errors=errors)
    if len(factors):
        out["depth_factors"] = depth_factor_summary(factors)
    if len(jac):
        out["singular_values"] = jac.groupby(["dataset", "row"], as_index=False).agg(
            n=("mean_sv", "size"), mean_sv=("mean_sv", "mean"), mean_sv_std=("mean_sv", "std"))  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------- figures

ROW_ORDER = tuple(row_label(a, i) for a, i in TABLE1_ROWS)


def _rows_in(frame: pd.DataFrame) -> list[str]:
    present = set(frame["row"])
    return [r for r in ROW_ORDER if r in present] + sorted(present - set(ROW_ORDER))


def _palette(frame: pd.DataFrame) -> dict:
    """Row -> colour (`keras_initkit.plots.palette` over Table 1's rows, then any other): the same in every figure."""
    from keras_initkit.plots import palette

    return palette([*ROW_ORDER, *(r for r in _rows_in(frame) if r not in ROW_ORDER)])


def _chosen(frame: pd.DataFrame, summary: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The Table 1 trials at the chosen learning rates."""
    if "lr_choice" not in summary or not len(frame):
        return frame
    return at_chosen_lr(frame, summary["lr_choice"])


def _datasets_in(frame: pd.DataFrame) -> list[str]:
    """The data sets of a table, the paper's first (shapeset, mnist, cifar10), then the others."""
    present = list(dict.fromkeys(frame["dataset"]))
    return [d for d in PAPER_DATASETS if d in present] + [d for d in present if d not in PAPER_DATASETS]


def _fig2(training: pd.DataFrame):
    """Fig 2: mean (line) and std (band) of each hidden layer's sigmoid outputs over training, mean over seeds;
    one panel per depth of the fig2 nets (4: Fig 2; 5)."""
    from keras_initkit.plots import stat_over_training

    sel = _fig2_runs(training)
    epochs = sel["step"].max() > G1_EPOCH  # the paper's epoch boundaries fall inside the run: dashed lines
    fig = stat_over_training(
        sel, kind="activation", center="mean", spread="std", col="n_hidden",
        title=f"Fig 2: sigmoid, standard init, {sel['seed'].nunique()} seeds (the paper's x axis: epochs of {G1_EPOCH} "
        f"updates{', dashed' if epochs else ''}; dotted: {G1_TOP})",
    )  # fmt: skip
    for ax in fig.axes:
        ax.axhline(G1_TOP, color="grey", ls=":", lw=1)
        if epochs:
            ax.axvline(G1_EPOCH, color="grey", ls="--", lw=1)
        ax.set(xlabel="SGD updates", ylim=(-0.05, 1.05))
        # between the lower layers' bands (above ~0.4) and the top layer's saturated curve (near 0)
        ax.legend(title="layer", fontsize="small", loc="lower right", bbox_to_anchor=(1.0, 0.12), ncols=2)
    return fig


def _histograms(hist: pd.DataFrame, kind: str, title: str):
    """Figs 6-8: per-layer histograms (density) at init, tanh, standard vs normalized init, the first seed."""
    from keras_initkit.plots import layer_histograms

    dataset = _datasets_in(hist)[0]
    sel = hist[(hist["dataset"] == dataset) & (hist["activation"] == "tanh") & (hist["kind"] == kind)]
    sel = sel[sel["seed"] == sel["seed"].min()].copy()  # the bins of dC/ds and dC/dW differ from seed to seed
    # a density (fraction / bin width): the layers' bins have different widths for the gradient kinds
    sel["density"] = sel["value"] / (sel["right"] - sel["left"])
    fig = layer_histograms(
        sel.drop(columns="value"), kind=kind, step=0, col="init", title=f"{title} ({dataset}, tanh, at init)"
    )
    for ax in fig.axes:
        ax.tick_params(axis="x", labelrotation=30)
    return fig


VARIANCE_FIGURES = (
    ("activation", "Var(f(s)) per hidden layer at init (G2, Fig 6); mean and range over seeds"),
    ("grad_preact", "Var(dC/ds) per hidden layer at init (G3, Fig 7); mean and range over seeds"),
    ("grad_kernel", "Var(dC/dW) per hidden layer at init (G4, Fig 8); mean and range over seeds"),
    ("preact", "Var(s) per hidden layer at init (G7 for ReLU He); mean and range over seeds"),
)


def _jacobian(jac: pd.DataFrame):
    """Eq 17: mean singular value of dz^(i+1)/dz^i per trial (mean over layers), per row; the paper's tanh values."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    per_trial = jacobian_summary(jac)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    state = np.random.get_state()  # seaborn's jitter draws from NumPy's global generator: seed it, then restore it,
    np.random.seed(0)  # so that the same tables give the same figure, byte for byte
    try:
        sns.stripplot(data=per_trial, x="row", y="mean_sv", hue="dataset", order=_rows_in(per_trial),
                      hue_order=_datasets_in(per_trial), dodge=True, ax=ax)  # fmt: skip
    finally:
        np.random.set_state(state)
    for init, value in G5_PAPER.items():
        ax.axhline(value, color="grey", ls="--", lw=1)
        ax.text(len(_rows_in(per_trial)) - 0.5, value, f" paper, tanh {init}", va="center", fontsize=8)
    ax.set(ylabel="mean singular value", xlabel="", title="Mean singular value of the layer-to-layer Jacobians at init")
    fig.tight_layout()
    return fig


def _error_table(errors: pd.DataFrame):
    """Table 1 as bars: our test error (mean, sd over seeds) per row and data set, the paper's as black marks."""
    import matplotlib.pyplot as plt

    datasets = _datasets_in(errors)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = errors[errors["dataset"] == dataset].set_index("row").reindex(_rows_in(errors)).dropna(how="all")
        x = np.arange(len(part))
        ax.bar(x, part["test_err_mean"], yerr=part["test_err_std"].fillna(0), color="tab:blue", alpha=0.7, capsize=3,
               label="ours")  # fmt: skip
        if part["paper"].notna().any():
            ax.plot(x, part["paper"], "k_", ms=18, mew=2, label="paper (5 x 1000)")
        ax.axhline(part["chance_err"].iloc[0], color="grey", ls="--", lw=1, label="majority class")
        ax.axhline(part["floor_err"].iloc[0], color="grey", ls=":", lw=1, label="floor (2 SE)")
        ax.set_xticks(x, part.index, rotation=30, ha="right")
        ax.set(title=dataset, ylabel="test error %", ylim=(0, 100))
        ax.legend(fontsize=8)
    fig.suptitle("Table 1: test error after training, each row at its chosen learning rate", fontsize=10)
    fig.tight_layout()
    return fig


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """The figures, drawn from the saved raw tables and summaries only (never retrains)."""
    from keras_initkit.plots import learning_curves, variance_vs_depth

    figures = {}
    training = _fig2_runs(tables.get("training", pd.DataFrame()))
    if len(training):
        figures["fig2_sigmoid_activations"] = _fig2(training)
    hist = tables.get("hist", pd.DataFrame())  # at init: once per (data set, row, seed)
    if len(hist) and "tanh" in set(hist["activation"]):
        figures["fig6_activation_histograms"] = _histograms(hist, "activation", "Fig 6: activation values")
        figures["fig7_backprop_gradient_histograms"] = _histograms(hist, "grad_preact", "Fig 7: back-propagated dC/ds")
        figures["fig8_weight_gradient_histograms"] = _histograms(hist, "grad_kernel", "Fig 8: weight gradients dC/dW")
    init = tables.get("init", pd.DataFrame())
    for kind, title in VARIANCE_FIGURES if len(init) else ():  # per row, a panel per data set; range over seeds
        figures[f"variance_{kind}"] = variance_vs_depth(
            init, kind=kind, hue="row", col="dataset", step=0, errorbar=("pi", 100), title=title,
            palette=_palette(init))  # fmt: skip
    jac = tables.get("jacobian", pd.DataFrame())
    if len(jac):
        figures["jacobian_singular_values"] = _jacobian(jac)
    if len(summary.get("errors", [])):
        figures["table1_test_error"] = _error_table(summary["errors"])
    curves = _chosen(tables.get("curves", pd.DataFrame()), summary)
    if len(curves):  # validation error per row: mean line, min-max band over seeds
        figures["learning_curves"] = learning_curves(
            curves, "val_err", hue="row", col="dataset", hue_order=_rows_in(curves), col_order=_datasets_in(curves),
            palette=_palette(curves), col_label="{level}", xlabel="SGD updates",
            ylabel="validation error %")  # fmt: skip
    return figures


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
