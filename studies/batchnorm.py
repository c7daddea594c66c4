"""Batch normalization: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing
Internal Covariate Shift" (arXiv 1502.03167).

The paper's MNIST net (Sec 4.1): 3 fully connected hidden layers of 100 sigmoid units, small random Gaussian weights,
a 10-way softmax, cross-entropy, mini-batches of 60; with and without BN before each sigmoid (Dense without bias ->
BatchNormalization -> sigmoid), each at 1x, 5x and 30x a base learning rate (the paper's BN-x5, BN-x30):
- Fig 1a (claim B1): held-out accuracy against steps; the steps to a target accuracy with and without BN and their
  ratio, beside the paper's Inception figures (31.0M / 2.1M steps = "14 times fewer", Sec 4.2.2).
- Fig 1b/c (B2): the 15th/50th/85th percentiles over training of the sigmoid input of one unit of the last hidden
  layer, and of the whole layer, and their drift (max - min over training).
- Sec 4.2 (B3, B4): divergence, steps to the target and final accuracy at the raised rates.
- X1, not in the paper: BN on the VGG study's deep plain ReLU net (30 layers, `keras_initkit.study.models.build_vgg`)
  with its worst init, FixedNormal(0.01), and with He init, with and without BN at the same budget: does BN make the
  init matter less?

Choices the paper leaves open, fixed before the study's grid was run (also in the Config):
- Plain SGD (no momentum, no decay, constant rate); every kernel N(0, 0.1^2) (the std of the 2015 TensorFlow "Deep
  MNIST" tutorial, which truncated its Gaussian), biases 0. The nets with and without BN start from the same kernels
  (same per-layer seeds).
- Base rate 1.0, from a pilot sweep of the net without BN on digits (3 seeds, 2000 steps, validation on the last
  300 training images, not the held-out set): final validation accuracy 0.842 / 0.956 / 0.966 / 0.964 / 0.103 and
  mean steps to 95% never / 1500 / 683 / 550 / never at rates 0.1 / 0.3 / 1 / 3 / 10. 1.0 had the best final
  accuracy. As the paper's BN-Baseline used Inception's own rate, both nets use it.
- BN nets are evaluated in inference mode (`training=False`). Keras' moving averages (momentum 0.99, a memory of
  ~100 steps) start at mean 0, variance 1 and lag behind early in training, so before each evaluation the population
  statistics are re-estimated: the mean and variance of each BN layer's input over `bn_stat_examples` training
  examples taken as one batch, the net in training mode (Alg 2 of the paper, with one large batch), assigned for the
  evaluation only. The accuracy with Keras' own moving averages is recorded beside (`acc_ema`, figure bn_evaluation).
- Fig 1b/c statistics: `VarianceMonitor` on a fixed probe of `probe_examples` training examples every
  `record_every` steps, the net in training mode (a BN layer normalizes by the probe's own statistics; nothing is
  updated); the tracked unit is unit `track_unit` of each hidden layer, the figures use the last one.
- Data: QUICK uses scikit-learn's digits (8x8, 1437 training / 360 held-out images, embedded); PAPER uses MNIST
  from the user's mnist.npz (`--data-path`; never downloaded), 50,000 steps, its test set held out. PAPER keeps
  QUICK's init, rate and optimizer; it was not run here (no MNIST file on this machine).
- The deep nets use the VGG study's QUICK settings (SGD with momentum 0.9, lr 3e-3, batch 32, one stage of 3x3
  convs, a linear classifier, 400 steps) with 16 channels instead of 32, for time. (An earlier run with 300 steps
  gave X1 PASS as well, with He without BN still half-trained, 0.444 +- 0.236: the budget went back to the VGG
  study's 400 after it.)

SMOKE: the whole pipeline (tables, claims, figures, report) in seconds: 2 hidden layers of 16 units, 60 steps, the
base rate only, one seed, and one 3-layer deep net per BN setting (B3, B4 and X1 are N/A in it).

Run: `make study-bn` (QUICK) or `python -m keras_initkit.study.cli batchnorm --profile quick|paper|smoke [--data-path
mnist.npz] [--engine process --jobs 2]`.
QUICK (26 trials) used 281 CPU-seconds in a measured run with `--engine process --jobs 2` (430 s of wall time on 2
busy cores; on 2 idle cores about 2.5 minutes so, 5 serially: estimates from the CPU time, not measured).
The 30-layer nets' curves depend on float rounding (thread count): a serial run (2 TF threads) of the same seeds gave
final accuracies He without BN 0.947 +- 0.013 (here 0.747 +- 0.178), FixedNormal with BN 0.915 +- 0.033 (0.904),
He with BN 0.906 +- 0.043 (0.873), FixedNormal without BN 0.078 (the same); the MLP accuracy tables were
identical.
Results: results/batchnorm/<profile>/, and the QUICK report in docs/results/batchnorm/REPORT.md.
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
from keras_initkit.study.grid import derive_seed, expand_grid
from keras_initkit.study.metrics import accuracy
from keras_initkit.study.models import build_mlp, build_vgg
from keras_initkit.study.summary import claim_row, se_diff, spread, with_trial
from keras_initkit.study.training import ModelCache, compile_sgd, fit_curve

NAME = "batchnorm"

CLAIMS = {
    "B1": "Fig 1a and Sec 4.2.2: with BN the net reaches the target accuracy in fewer steps (Inception: 31.0M steps "
    "to 72.2% without BN, 13.3M with BN at the same rate, 2.1M at 5x the rate: '14 times fewer steps').",
    "B2": "Fig 1b/c: the 15th/50th/85th percentiles of a last-hidden-layer unit's sigmoid input drift over training "
    "without BN and stay stable with BN.",
    "B3": "Sec 4.2.1-4.2.2: BN trains at 5x and 30x the base learning rate; without BN the higher rates diverge or do "
    "worse.",
    "B4": "Sec 4.2.2: BN with sigmoid trains where the same net without BN at the raised rate does not (Inception with "
    "sigmoid and no BN never beats 1/1000; BN-x5-Sigmoid reaches 69.8%).",
    "X1": "Not in the paper, implied by it: on the deep plain ReLU net of the VGG study (30 layers), BN makes the init "
    "matter less: the accuracy gap between the worst init, FixedNormal(0.01), and He init shrinks with BN.",
}

# Thresholds of the rules, fixed before the study's grid was run (see RULES).
B2_RATIO = 2.0  # "drifts vs stays stable": the mean drift without BN is at least this many times the mean with BN
PERCENTILES = ("p15", "p50", "p85")

RULES = {
    "B1": "Target = the lowest, over seeds, of the no-BN x1 net's final held-out accuracy (mean of its last "
    "`final_evals` evaluations): the paper's target is Inception's own final accuracy. Steps to target = the first "
    "evaluation step with accuracy >= target. PASS iff every BN x1 seed reaches the target and the slowest BN x1 "
    "seed needs fewer steps than the fastest no-BN x1 seed. Reported: speed-up = mean steps (no BN x1) / mean steps "
    "(BN xm) for each m, beside the paper's 2.3x (BN-Baseline), 14.8x (BN-x5) and 11.5x (BN-x30).",
    "B2": "Base rate; the tracked unit's sigmoid input in the last hidden layer on the fixed probe batch, recorded "
    "from step 0 to the end. Drift of a percentile = its max minus its min over the records; a trial's drift = the "
    "largest of the p15, p50, p85 drifts. PASS iff, seed by seed, drift(BN) < drift(no BN), and mean drift(no BN) "
    f">= {B2_RATIO:g} x mean drift(BN). The same figures for the whole layer are reported beside it.",
    "B3": "(a) BN at every raised multiplier (> 1): no seed diverges and every seed reaches the B1 target; (b) no BN "
    "at every raised multiplier: some seed diverges (non-finite loss or weights), or some seed never reaches the "
    "target, or its mean final accuracy is below the no-BN x1 mean by more than the standard error of the "
    "difference. PASS iff (a) and (b).",
    "B4": "For at least one raised multiplier: BN reaches the B1 target in every seed, and no BN does not train in "
    "any seed (diverged, or final accuracy below halfway between chance and the target).",
    "X1": "Deep ReLU nets, final held-out accuracy (mean of the last `final_evals` evaluations). Gap = mean acc(He) - "
    "mean acc(FixedNormal(0.01)), without and with BN, each with the standard error of the difference. PASS iff "
    "|gap(BN)| < |gap(no BN)| by more than the combined standard error sqrt(SE_bn^2 + SE_nobn^2).",
}
# Millions of steps to 72.2%: Inception 31.0, BN-Baseline 13.3, BN-x5 2.1, BN-x30 2.7; the speed-ups over Inception:
PAPER_SPEEDUP = {1: 31.0 / 13.3, 5: 31.0 / 2.1, 30: 31.0 / 2.7}
TRIAL_KEYS = ("part", "bn", "lr_mult", "init", "seed")
DEEP_INITS = {"fixed": "fixed", "he": "he_fan_in"}  # the deep nets' inits -> their `make_initializer` names


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
    # hidden sigmoid layers of the paper's MNIST net (then a 10-way softmax)
    n_hidden: int = 3
    # units per hidden layer (paper: 100)
    width: int = 100
    # std of the Gaussian initial weights, every layer (paper: "small random Gaussian values"; 0.1 as in the 2015
    # TensorFlow MNIST tutorials; n Var(W) = 1 for the 100-unit layers)
    init_std: float = 0.1
    # base learning rate of plain SGD (no momentum, no decay): the rate of the pilot sweep where the net without BN
    # did best (see the module docstring); both nets use it, as the paper's BN-Baseline used Inception's rate
    base_lr: float = 1.0
    # learning-rate multipliers, for both nets (paper: BN-x5, BN-x30)
    lr_multipliers: tuple[float, ...] = (1.0, 5.0, 30.0)
    # mini-batch size (paper: 60)
    batch_size: int = 60
    # SGD steps per MLP trial (paper: 50000); a multiple of eval_every
    steps: int = 2000
    # steps between two held-out evaluations (Keras' steps_per_execution too)
    eval_every: int = 25
    # steps between two records of the sigmoid-input percentiles (Fig 1b/c); a multiple of eval_every
    record_every: int = 50
    # final accuracy = mean of the last this many evaluations
    final_evals: int = 5
    # momentum of the BN moving averages (Keras' default); evaluation does not depend on it: the population
    # statistics are re-estimated before each evaluation (see the module docstring)
    bn_momentum: float = 0.99
    # training examples (the first of the split) whose one-batch statistics are the BN population statistics
    bn_stat_examples: int = 1000
    # training examples (the first of the split) of the fixed probe batch of the percentiles (Fig 1b/c)
    probe_examples: int = 500
    # index of the tracked unit in every hidden layer (Fig 1b/c follows one unit of the last hidden layer)
    track_unit: int = 0
    # one MLP trial per seed, net and multiplier; the seed fixes the initial weights (the same with and without BN)
    # and the order of the mini-batches
    seeds: tuple[int, ...] = (0, 1, 2)
    # the extra comparison X1: the deep plain ReLU net of the VGG study (keras_initkit.study.models.build_vgg: 3x3
    # convs, a linear classifier), weight layers
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
    # one deep trial per seed, init and net (empty: no X1)
    deep_seeds: tuple[int, ...] = (0, 1)


QUICK = Config()
PAPER = Config(
    data="mnist", steps=50_000, eval_every=500, record_every=500, final_evals=5, bn_stat_examples=5000,
    probe_examples=1000, seeds=(0, 1, 2, 3, 4), deep_widths=(64, 128, 256, 512), deep_steps=20 * 390, deep_lr=1e-2,
    deep_batch_size=128, deep_eval_every=390, deep_seeds=(0, 1, 2),
)  # fmt: skip
SMOKE = Config(
    n_hidden=2, width=16, lr_multipliers=(1.0,), steps=60, eval_every=20, record_every=20, final_evals=2,
    bn_stat_examples=200, probe_examples=100, seeds=(0,), deep_depth=3, deep_inits=("fixed",), deep_widths=(4,),
    deep_steps=40, deep_eval_every=20, deep_stat_examples=64, deep_seeds=(0,),
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


def inference_accuracy(model: keras.Model, x, y, x_stats=None) -> tuple[float, float]:
    """(accuracy with BN population statistics re-estimated on `x_stats`, accuracy with the model's own moving
    averages). The model's moving averages are restored afterwards, so training is not affected. Without BN layers
    or `x_stats`, both are the plain inference-mode accuracy."""
    own = accuracy(model, x, y)
    if x_stats is None or not batchnorm_layers(model):
        return own, own
    saved = bn_statistics(model)
    try:
        set_bn_statistics(model, population_statistics(model, x_stats))
        return accuracy(model, x, y), own
    finally:
        set_bn_statistics(model, saved)


# --------------------------------------------------------------------------------------------------- the grid


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field when a Config cannot run."""
    from keras_initkit.datasets import DATASETS

    if cfg.data not in DATASETS:
        raise ValueError(f"`data` must be one of {DATASETS}. Received: data={cfg.data!r}")
    for name in ("steps", "eval_every", "record_every", "final_evals", "batch_size", "n_hidden", "width"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1. Received: {name}={value!r}")
    deep = (("deep_steps", "deep_eval_every"),) if cfg.deep_seeds else ()
    for steps, every in (("steps", "eval_every"), ("record_every", "eval_every"), *deep):
        n, k = getattr(cfg, steps), getattr(cfg, every)
        if n % k:
            raise ValueError(f"`{steps}` must be a multiple of `{every}`={k}. Received: {steps}={n}")
        if steps != "record_every" and cfg.final_evals > n // k:
            raise ValueError(f"`final_evals` must be <= {steps} / {every} = {n // k}. Received: {cfg.final_evals}")
    if not cfg.lr_multipliers or 1.0 not in cfg.lr_multipliers or min(cfg.lr_multipliers) <= 0:
        raise ValueError(f"`lr_multipliers` must be > 0 and include 1 (the base rate). Received: {cfg.lr_multipliers}")
    if not cfg.seeds:
        raise ValueError(f"`seeds` must hold at least one seed. Received: seeds={cfg.seeds}")
    if not 0 <= cfg.track_unit < cfg.width:
        raise ValueError(f"`track_unit` must be in [0, width={cfg.width}). Received: track_unit={cfg.track_unit}")
    if any(i not in DEEP_INITS for i in cfg.deep_inits):
        raise ValueError(f"`deep_inits` must be among {tuple(DEEP_INITS)}. Received: {cfg.deep_inits}")
    if cfg.deep_seeds and cfg.deep_depth < len(cfg.deep_widths) + 1:
        raise ValueError(f"`deep_depth` must be >= len(deep_widths) + 1. Received: deep_depth={cfg.deep_depth}")


def trials(cfg: Config) -> list[dict]:
    """The deep grid (net x init x seed, BN first), then the MLP grid (net x multiplier x seed, BN first): the
    longest trials first, so that a pool of workers finishes together."""
    check_config(cfg)
    mlp = expand_grid({"part": ["mlp"], "bn": [True, False], "lr_mult": [float(m) for m in cfg.lr_multipliers],
                       "init": ["normal"], "seed": [int(s) for s in cfg.seeds]})  # fmt: skip
    if not cfg.deep_seeds or cfg.deep_depth <= 0:
        return mlp
    deep = expand_grid({"part": ["deep"], "bn": [True, False], "lr_mult": [1.0], "init": list(cfg.deep_inits),
                        "seed": [int(s) for s in cfg.deep_seeds]})  # fmt: skip
    return deep + mlp


# ---------------------------------------------------------------------------------------------------- one trial


def paper_mlp(cfg: Config, input_dim: int, num_classes: int, seed: int, batchnorm: bool) -> keras.Model:
    """The paper's MNIST net (`keras_initkit.study.models.build_mlp`): for i = 1..n_hidden, `dense_i` (width units)
    -> [`bn_i` BatchNormalization, the Dense then without bias] -> `sigmoid_i`, then the `output` logits. Every
    kernel is N(0, init_std^2) with its seed derived from (seed, layer index): with and without BN the same kernels."""
    return build_mlp(
        input_dim, num_classes, cfg.n_hidden, cfg.width, activation="sigmoid", init="fixed", seed=seed,
        fixed_std=cfg.init_std, batchnorm=batchnorm, bn_momentum=cfg.bn_momentum, activation_layers=True,
        hidden_name="dense", name="mlp_bn" if batchnorm else "mlp",
    )  # fmt: skip


def weights_finite(model: keras.Model) -> bool:
    return all(bool(np.isfinite(keras.ops.convert_to_numpy(w)).all()) for w in model.weights)


def net_label(bn: bool) -> str:
    return "BN" if bn else "no BN"


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


def _final_row(curve: pd.DataFrame, model, final_evals: int, start: float, num_classes: int) -> dict:
    losses = curve["train_loss"].to_numpy()[1:]
    finite = bool(np.isfinite(losses).all()) and weights_finite(model)
    return {"steps": int(curve["step"].iloc[-1]), "final_acc": float(curve["acc"].tail(final_evals).mean()),
            "max_acc": float(curve["acc"].max()), "final_acc_ema": float(curve["acc_ema"].tail(final_evals).mean()),
            "final_loss": float(losses[-1]), "diverged": not finite, "wall_s": time.perf_counter() - start,
            "num_classes": int(num_classes)}  # fmt: skip


def _tables(trial: dict, lr: float, **frames: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {name: with_trial(f, trial, TRIAL_KEYS, lr=lr, net=net_label(trial["bn"])) for name, f in frames.items()}


def steps_to(curve: pd.DataFrame, target: float) -> int:
    """The first evaluation step whose accuracy is >= target; -1 when none is."""
    hit = curve.loc[curve["acc"] >= target, "step"]
    return int(hit.min()) if len(hit) else -1


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One trial: an MLP ("curves", "percentiles", "final") or a deep ReLU net ("deep_curves", "deep_final"),
    each table with the trial's parameters as columns."""
    if trial["part"] in ("mlp", "deep"):
        return (_run_mlp if trial["part"] == "mlp" else _run_deep)(cfg, trial)
    raise ValueError(f"`trial['part']` must be 'mlp' or 'deep'. Received: {trial['part']!r}")


def _run_mlp(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    from keras_initkit.monitor import VarianceMonitor

    start, seed = time.perf_counter(), int(trial["seed"])
    keras.utils.set_random_seed(derive_seed(seed, "fit", "mlp"))
    d = load_data(cfg.data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed, path=cfg.data_path)
    x, x_test = d.x_train.reshape(len(d.x_train), -1), d.x_test.reshape(len(d.x_test), -1)
    lr = cfg.base_lr * trial["lr_mult"]
    arch = ("mlp", trial["bn"], x.shape[1], d.num_classes, cfg.n_hidden, cfg.width, cfg.bn_momentum, cfg.eval_every)
    entry = _fresh(arch, lambda: paper_mlp(cfg, x.shape[1], d.num_classes, seed, trial["bn"]), lr, 0.0, cfg.eval_every)
    # Fig 1b/c: the sigmoid inputs of every hidden layer, and of one unit, on a fixed probe of training examples
    # (the net in training mode: a BN layer normalizes by the probe's statistics, without updating anything).
    monitor_key = (cfg.probe_examples, cfg.record_every, cfg.track_unit, cfg.data, cfg.data_path, cfg.n_train)
    if entry.extra.get("monitor_key") != monitor_key:
        entry.extra["monitor_key"] = monitor_key
        entry.extra["monitor"] = VarianceMonitor(
            probe=x[: cfg.probe_examples], every=cfg.record_every, stats=["mean", "std", *PERCENTILES],
            layers=[f"sigmoid_{i + 1}" for i in range(cfg.n_hidden)], track_unit=cfg.track_unit,
            kinds=("preact", "activation"),  # forward statistics only: the probe has no labels, on purpose
        )  # fmt: skip
    monitor = entry.extra["monitor"]
    curve = _fit(entry.model, x, d.y_train, x_test, d.y_test, x[: cfg.bn_stat_examples], cfg.batch_size,
                 cfg.steps, cfg.eval_every, seed, callbacks=[monitor])  # fmt: skip
    layer, unit = monitor.to_frame(), monitor.unit_frame()
    percentiles = pd.concat(
        [layer[layer["kind"] == "preact"].assign(scope="layer"),
         unit[unit["kind"] == "preact"].drop(columns="unit").assign(scope="unit")], ignore_index=True,
    )  # fmt: skip
    final = _final_row(curve, entry.model, cfg.final_evals, start, d.num_classes)
    return _tables(trial, lr, curves=curve, percentiles=percentiles, final=pd.DataFrame([final]))


def _run_deep(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    start, seed = time.perf_counter(), int(trial["seed"])
    keras.utils.set_random_seed(derive_seed(seed, "fit", "deep"))
    d = load_data(cfg.data, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.data_seed, path=cfg.data_path)
    arch = ("deep", trial["bn"], d.x_train.shape[1:], d.num_classes, cfg.deep_depth, cfg.deep_widths)
    arch += (cfg.deep_momentum, cfg.deep_eval_every)
    model = _fresh(
        arch,
        lambda: build_vgg(d.x_train.shape[1:], d.num_classes, cfg.deep_depth, widths=cfg.deep_widths, fc_layers=1,
                          init=DEEP_INITS[trial["init"]], seed=seed, fixed_std=0.01, batchnorm=trial["bn"]),
        cfg.deep_lr, cfg.deep_momentum, cfg.deep_eval_every,
    ).model  # fmt: skip
    curve = _fit(model, d.x_train, d.y_train, d.x_test, d.y_test, d.x_train[: cfg.deep_stat_examples],
                 cfg.deep_batch_size, cfg.deep_steps, cfg.deep_eval_every, seed)  # fmt: skip
    final = _final_row(curve, model, cfg.final_evals, start, d.num_classes)
    return _tables(trial, cfg.deep_lr, deep_curves=curve, deep_final=pd.DataFrame([final]))


# ------------------------------------------------------------------------------------------ summaries and claims

_claim = functools.partial(claim_row, CLAIMS, RULES)


def target_accuracy(final: pd.DataFrame) -> float:
    """B1's target: the lowest final accuracy over the no-BN x1 seeds (NaN without such trials)."""
    base = final[(final["part"] == "mlp") & (~final["bn"].astype(bool)) & (final["lr_mult"] == 1.0)]
    return float(base["final_acc"].min()) if len(base) else float("nan")


def trial_outcomes(curves: pd.DataFrame, final: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per MLP trial: final accuracy, steps to the target, and its outcome: "diverged", "trains" (reaches the
    target), "stalls" (final accuracy below halfway between chance and the target) or "worse"."""
    rows = []
    for _, f in final[final["part"] == "mlp"].iterrows():
        c = curves[(curves["bn"] == f["bn"]) & (curves["lr_mult"] == f["lr_mult"]) & (curves["seed"] == f["seed"])]
        steps = steps_to(c.sort_values("step"), target) if np.isfinite(target) else -1
        chance = 1.0 / float(f["num_classes"])
        outcome = ("diverged" if bool(f["diverged"]) else "trains" if steps >= 0
                   else "stalls" if f["final_acc"] < (chance + target) / 2 else "worse")  # fmt: skip
        rows.append({**{k: f[k] for k in ("bn", "lr_mult", "seed")}, "net": net_label(bool(f["bn"])), "lr": f["lr"],
                     **{k: f[k] for k in ("final_acc", "final_acc_ema", "max_acc")}, "steps_to_target": steps,
                     "diverged": bool(f["diverged"]), "outcome": outcome})  # fmt: skip
    out = pd.DataFrame(rows)
    return out.sort_values(["bn", "lr_mult", "seed"]).reset_index(drop=True) if len(out) else out


def speed_table(outcomes: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per net and multiplier: seeds, seeds reaching the target, steps to it (mean, std, min, max over the seeds
    that reach it), final accuracy, divergences, speed-up over no BN x1, and the paper's speed-up."""
    base = outcomes[(~outcomes["bn"]) & (outcomes["lr_mult"] == 1.0) & (outcomes["steps_to_target"] >= 0)]
    base_steps = float(base["steps_to_target"].mean()) if len(base) else float("nan")
    rows, nan = [], float("nan")
    for (bn, mult), g in outcomes.groupby(["bn", "lr_mult"], sort=True):
        hit = g.loc[g["steps_to_target"] >= 0, "steps_to_target"].astype(float)
        mean = float(hit.mean()) if len(hit) else nan
        rows.append({
            "net": net_label(bool(bn)), "lr_mult": mult, "lr": float(g["lr"].iloc[0]), "seeds": len(g),
            "reached": len(hit), "diverged": int(g["diverged"].sum()), "target": target, "steps_mean": mean,
            "steps_std": float(hit.std(ddof=1)) if len(hit) > 1 else nan,
            "steps_min": float(hit.min()) if len(hit) else nan, "steps_max": float(hit.max()) if len(hit) else nan,
            "final_acc_mean": float(g["final_acc"].mean()),
            "final_acc_std": float(g["final_acc"].std(ddof=1)) if len(g) > 1 else nan,
            "speedup": base_steps / mean if len(hit) == len(g) and mean > 0 else nan,
            "paper_speedup": PAPER_SPEEDUP.get(int(mult), nan) if bn else nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


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


def claim_b1(speed: pd.DataFrame, outcomes: pd.DataFrame, target: float) -> dict:
    paper = "31.0M steps (Inception) vs 13.3M (BN-Baseline, 2.3x), 2.1M (BN-x5, 14.8x: '14 times fewer'), 2.7M (BN-x30)"
    base = outcomes[(~outcomes["bn"]) & (outcomes["lr_mult"] == 1.0)] if len(outcomes) else outcomes
    bn1 = outcomes[(outcomes["bn"]) & (outcomes["lr_mult"] == 1.0)] if len(outcomes) else outcomes
    if len(base) == 0 or len(bn1) == 0 or not np.isfinite(target):
        return _claim("B1", "N/A", "no BN and no-BN trials at the base rate", paper)
    fastest_no_bn = base.loc[base["steps_to_target"] >= 0, "steps_to_target"].min()
    ok = bool((bn1["steps_to_target"] >= 0).all()) and bool(bn1["steps_to_target"].max() < fastest_no_bn)
    paired = base.merge(bn1, on="seed", suffixes=("_no", "_bn"))
    paired = paired[(paired["steps_to_target_no"] > 0) & (paired["steps_to_target_bn"] > 0)]
    ratios = paired["steps_to_target_no"] / paired["steps_to_target_bn"]
    parts = [
        f"target {target:.4f}; steps to it: no BN x1 {spread(base['steps_to_target'], '.0f')}, BN x1 "
        f"{spread(bn1['steps_to_target'], '.0f')} (-1 = never); per-seed ratio {spread(ratios)}"
    ]
    for _, r in speed[(speed["net"] == "BN")].iterrows():
        parts.append(f"BN x{r['lr_mult']:g}: {r['speedup']:.2f}x (paper {r['paper_speedup']:.1f}x)")
    return _claim("B1", "PASS" if ok else "FAIL", "; ".join(parts), paper)


def claim_b2(drift: pd.DataFrame) -> dict:
    paper = "Fig 1b (no BN): the percentiles move over training; Fig 1c (BN): they stay put"
    sel = drift[drift["lr_mult"] == 1.0] if len(drift) else drift
    unit = sel[sel["scope"] == "unit"] if len(sel) else sel
    no, bn = (unit[~unit["bn"]], unit[unit["bn"]]) if len(unit) else (unit, unit)
    if len(no) == 0 or len(bn) == 0:
        return _claim("B2", "N/A", "no unit percentiles of both nets at the base rate", paper)
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


def _raised(outcomes: pd.DataFrame) -> list[float]:
    return sorted(m for m in outcomes["lr_mult"].unique() if m > 1.0) if len(outcomes) else []


def claim_b3(outcomes: pd.DataFrame) -> dict:
    paper = "BN-x5 and BN-x30 train (and faster); Inception at 5x the rate diverged"
    raised = _raised(outcomes)
    base = outcomes[(~outcomes["bn"]) & (outcomes["lr_mult"] == 1.0)] if len(outcomes) else outcomes
    if not raised or len(base) == 0:
        return _claim("B3", "N/A", "no raised multiplier, or no no-BN x1 trials", paper)
    parts, ok = [], True
    for m in raised:
        bn = outcomes[(outcomes["bn"]) & (outcomes["lr_mult"] == m)]
        no = outcomes[(~outcomes["bn"]) & (outcomes["lr_mult"] == m)]
        if len(bn) == 0 or len(no) == 0:
            return _claim("B3", "N/A", f"x{m:g} lacks the BN or the no-BN trials", paper)
        a = bool((bn["outcome"] == "trains").all())
        diff = float(no["final_acc"].mean() - base["final_acc"].mean())
        se = se_diff(no["final_acc"], base["final_acc"])
        b = bool(no["diverged"].any()) or bool((no["steps_to_target"] < 0).any()) or -diff > se
        ok = ok and a and b
        parts.append(
            f"x{m:g}: BN {int((bn['outcome'] == 'trains').sum())}/{len(bn)} seeds reach the target "
            f"({'ok' if a else 'no'}); no BN {no['outcome'].value_counts().to_dict()}, final acc "
            f"{spread(no['final_acc'])} vs x1 {base['final_acc'].mean():.3f} (diff {diff:+.3f}, SE {se:.3f}) "
            f"({'ok' if b else 'no'})"
        )
    return _claim("B3", "PASS" if ok else "FAIL", "; ".join(parts), paper)


def claim_b4(outcomes: pd.DataFrame) -> dict:
    paper = "Inception with sigmoid, no BN: never above 1/1000; BN-x5-Sigmoid: 69.8%"
    raised = _raised(outcomes)
    if not raised:
        return _claim("B4", "N/A", "no raised multiplier", paper)
    parts, ok = [], False
    for m in raised:
        bn = outcomes[(outcomes["bn"]) & (outcomes["lr_mult"] == m)]
        no = outcomes[(~outcomes["bn"]) & (outcomes["lr_mult"] == m)]
        if len(bn) == 0 or len(no) == 0:
            continue
        good = bool((bn["outcome"] == "trains").all()) and bool(no["outcome"].isin(["diverged", "stalls"]).all())
        ok = ok or good
        parts.append(
            f"x{m:g}: BN {bn['outcome'].value_counts().to_dict()}, final acc {spread(bn['final_acc'])}; no BN "
            f"{no['outcome'].value_counts().to_dict()}, final acc {spread(no['final_acc'])} "
            f"({'yes' if good else 'no'})"
        )
    if not parts:
        return _claim("B4", "N/A", "no raised multiplier with both nets", paper)
    return _claim("B4", "PASS" if ok else "FAIL", "; ".join(parts), paper)


def deep_table(deep_final: pd.DataFrame) -> pd.DataFrame:
    """Per deep net (init, BN): seeds, final accuracy mean and std, divergences."""
    if len(deep_final) == 0:
        return pd.DataFrame(columns=["init", "net", "seeds", "final_acc_mean", "final_acc_std", "diverged"])
    out = deep_final.groupby(["init", "bn"], as_index=False).agg(
        seeds=("final_acc", "size"), final_acc_mean=("final_acc", "mean"), final_acc_std=("final_acc", "std"),
        final_acc_ema_mean=("final_acc_ema", "mean"), final_loss_mean=("final_loss", "mean"),
        diverged=("diverged", "sum"),
    )  # fmt: skip
    out.insert(1, "net", [net_label(bool(b)) for b in out["bn"]])
    return out.drop(columns="bn")


def claim_x1(deep_final: pd.DataFrame) -> dict:
    paper = "not in the paper (He et al. 2015 and VGG trained deep plain nets without BN)"
    gaps = {}
    for bn in (False, True):
        acc = {i: deep_final.loc[(deep_final["init"] == i) & (deep_final["bn"] == bn), "final_acc"] for i in DEEP_INITS}
        if any(len(a) == 0 for a in acc.values()):
            return _claim("X1", "N/A", "the deep grid lacks an (init, BN) cell", paper)
        gaps[bn] = (float(acc["he"].mean() - acc["fixed"].mean()), se_diff(acc["he"], acc["fixed"]))
    (g_no, se_no), (g_bn, se_bn) = gaps[False], gaps[True]
    se = math.sqrt(se_no**2 + se_bn**2)
    ok = abs(g_bn) < abs(g_no) - se
    measured = (
        f"gap acc(He) - acc(FixedNormal(0.01)): no BN {g_no:+.3f} (SE {se_no:.3f}), BN {g_bn:+.3f} (SE {se_bn:.3f}); "
        f"|gap| shrinks by {abs(g_no) - abs(g_bn):+.3f} (combined SE {se:.3f})"
    )
    return _claim("X1", "PASS" if ok else "FAIL", measured, paper)


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Steps to target, outcomes per trial, percentile drifts, the deep nets, and the claims B1-B4, X1."""
    empty = pd.DataFrame(columns=[*TRIAL_KEYS, "step", "acc", "final_acc", "final_acc_ema", "depth", "stat", "scope"])
    final, curves, percentiles, deep_final = (
        tables.get(name, empty).astype({"bn": bool}) for name in ("final", "curves", "percentiles", "deep_final")
    )
    target = target_accuracy(final)
    outcomes = trial_outcomes(curves, final, target)
    speed = speed_table(outcomes, target) if len(outcomes) else pd.DataFrame()
    drift = drift_table(percentiles)
    drift_summary = (
        drift.groupby(["net", "lr_mult", "scope"], as_index=False).agg(
            seeds=("drift", "size"), drift_mean=("drift", "mean"), drift_std=("drift", "std"),
            drift_p15=("drift_p15", "mean"), drift_p50=("drift_p50", "mean"), drift_p85=("drift_p85", "mean"),
        ).sort_values(["scope", "lr_mult", "net"]) if len(drift) else drift
    )  # fmt: skip
    claims = [claim_b1(speed, outcomes, target), claim_b2(drift), claim_b3(outcomes), claim_b4(outcomes),
              claim_x1(deep_final)]  # fmt: skip
    return {"steps_to_target": speed, "outcomes": outcomes, "drift": drift_summary, "drift_trials": drift,
            "deep": deep_table(deep_final), "claims": pd.DataFrame(claims)}  # fmt: skip


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
    if len(curves):
        figures["accuracy"] = _accuracy_figure(curves, target)
        figures["bn_evaluation"] = _bn_eval_figure(curves)
    if len(percentiles):
        figures["percentiles_unit"] = _percentile_figure(percentiles, "unit")
        figures["percentiles_layer"] = _percentile_figure(percentiles, "layer")
    if len(drift):
        what = "Drift of the last hidden layer's sigmoid-input percentiles (the largest of p15/p50/p85)"
        figures["drift"] = _bar_figure(drift, "drift", "drift: max - min over training", what)
    if len(outcomes):
        what = f"Steps to the target accuracy {target:.3f}"
        figures["steps_to_target"] = _bar_figure(outcomes, "steps_to_target", "SGD steps to the target", what, True)
    if len(deep_curves):
        figures["deep"] = _deep_figure(deep_curves)
    return figures


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
