"""VGG depth x init: He, Zhang, Ren & Sun 2015, "Delving Deep into Rectifiers", with Simonyan & Zisserman 2014 (VGG).

Why VGG needed stage-wise pre-training and why He init made it unnecessary, on plain VGG-style ReLU conv nets (3x3
"same" convolutions, max-pools between stages, a dense head, no batch norm, no residuals) of 8 to 30 weight layers:
- At initialization (H1, H4): per-layer variance of the pre-activations going up and of the back-propagated
  gradients dC/ds going down, measured on a probe batch with `VarianceMonitor` beside `theory.predict_variance`:
  halving per layer under GlorotFanIn (He's "Xavier", Var(W) = 1/n), constant under He (2/n), collapsing under VGG's
  fixed N(0, 0.01); the early-layer gradient of the fixed-std net against He's (paper: 1/(1.7e4) for VGG B).
- Training (H2, H3; He et al. Fig 2 and 3): loss curves per n_layers x init, steps to a loss threshold, and
  "stalled" (loss still within 2% of ln K at the end of the budget), both defined before any run.
- The VGG recipe (Simonyan & Zisserman 3.1): train a shallow net A from N(0, 0.01), copy its first conv layers and
  its dense head into a deeper net, draw the other layers at random, train; against He init from scratch.

Tables: `n_layers` is a net's number of weight layers; `depth` is the monitored layer's index (the monitor's).

The QUICK setup (2 CPU cores, minutes), chosen once for every net and init, never tuned per init:
- Data: scikit-learn's 8x8 digits (10 classes, ln K = 2.303). One conv stage of width 32, no pool: pooled to 4x4,
  zero padding would cut about a third of each later 3x3 conv's fan-in. Even at 8x8 the border costs He's forward
  variance about 10% per layer, which `theory.predict_variance` (border-aware) predicts: He's measured per-layer
  factor is ~0.89, not 1, and GlorotFanIn's ~0.46, not 0.5.
- Head: Flatten + one Dense classifier (a global-average-pooling head stalled even He nets in a trial run); SGD
  learning rate 3e-3, momentum 0.9, batch 32; 400 updates; threshold 0.5 on the mean loss of a 10-update chunk.
  With a single width, GlorotAvg equals GlorotFanIn and He fan_out equals He fan_in but at the first conv and the
  classifier.
- Width 32 makes VGG's std 0.01 far harsher than in VGG: 1/2 n Var(W) = 0.0144 per layer here, 0.03-0.23 for VGG's
  64-512 channels (whose inputs were raw pixel values, std ~60). So H4's gradient ratio is ~1e-11, not 1/1.7e4, and
  8-layer N(0, 0.01) nets already stall: in trial runs (learning rates 3e-3 and 1e-2) only 3-layer ones left
  chance loss within a few hundred updates. Net A of the recipe therefore has 3 layers (2 convs + classifier); the
  deeper net (14 layers) gets A's 2 convs and classifier, and its other layers either N(0, 0.01) as in S&Z, or He.
- Economy: every cell is measured at init in 3 seeds; the claims' cells (and He at the recipe's n_layers) are
  trained in 3 seeds, the rest of the steps-to-threshold map (8 and 14 layers, He fan_out at 22 and 30) in seed 0
  only; GlorotAvg and FixedNormal at 22 layers and GlorotAvg at 30 are measured at init only. A net stops training
  once it reaches the threshold; stalled nets run the whole budget.

PAPER: CIFAR-10 (Shapeset 32x32 when the CIFAR-10 files are absent), VGG widths 64-512 in 4 stages, 3 dense
layers, 8-30 weight layers with VGG A (11) and E (19), S&Z's SGD (learning rate 1e-2, momentum 0.9, weight decay
5e-4), batch 128, 20 epochs, every cell in 3 seeds; the recipe with S&Z's A (11 layers) into 19 layers, 4 convs
copied. SMOKE: the whole pipeline (tables, claims, figures, report) in seconds: 4-layer nets of width 8, one seed.

Run: `make study-vgg` (QUICK) or `python -m keras_initkit.study.cli vgg_depth --profile quick|paper|smoke
[--engine process --jobs 2]`; results in results/vgg_depth/<profile>/, the QUICK report in
docs/results/vgg_depth/REPORT.md. The nets: `keras_initkit.study.models.build_vgg`, `transfer_layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time

import keras
import numpy as np
import pandas as pd

from keras_initkit.study import entry_points
from keras_initkit.study.data import load_data
from keras_initkit.study.grid import derive_seed
from keras_initkit.study.metrics import cross_entropy, error_percent
from keras_initkit.study.models import build_vgg, transfer_layers, weight_layers
from keras_initkit.study.summary import UNDERFLOW, claim_row, layer_factors, spread, with_trial
from keras_initkit.study.training import ModelCache, compile_sgd, fit_curve

NAME = "vgg_depth"

CLAIMS = {
    "H1": "ReLU at initialization: with 1/n (fan-in Xavier) the pre-activation variance halves per layer (2^-L after "
    "L layers); with He (2/n) it stays constant; with N(0, 0.01) it collapses faster still.",
    "H2": "The deepest plain net (30 layers): He converges; fan-in Xavier stalls at chance loss (ln K) for the budget.",
    "H3": "22 layers: both converge, He reaches the loss threshold in fewer steps.",
    "H4": "Fixed-std N(0, 0.01): a deep plain net stalls, and its early-layer gradients are orders of magnitude "
    "smaller than under He init.",
}

# Initializations of the grid: name -> label. "fixed" is VGG's N(0, std^2) with std = Config.fixed_std.
INIT_LABELS = {"fixed": "FixedNormal", "glorot_fan_in": "GlorotFanIn", "glorot_avg": "GlorotAvg",
               "he_fan_in": "He fan_in", "he_fan_out": "He fan_out"}  # fmt: skip
INITS = tuple(INIT_LABELS)

# Thresholds of the rules, fixed before any result was seen. The per-layer factor rho of a variance is exp(slope) of
# a least-squares line through ln Var against the layer index: the average factor per layer. He et al.'s Eq 7
# predicts rho = 1/2 n Var(W): 1/2 under GlorotFanIn, 1 under He. A factor "halves" when it is closer to 1/2 than to
# 1 or 1/4 in log scale (between 2^-1.5 and 2^-0.5), and is "constant" when closer to 1 than to 1/2 or 2.
HALF_LOW, HALF_HIGH = 2.0**-1.5, 2.0**-0.5
FLAT_LOW, FLAT_HIGH = 2.0**-0.5, 2.0**0.5
STALL_FRACTION = 0.02  # "stalled": the final loss is within 2% of ln K (chance) ...
TAIL_FRACTION = 0.1  # ... where the final loss is the mean over the last 10% of the updates
H4_MAX_RATIO = 1e-2  # "orders of magnitude smaller": the early-layer gradient std ratio is below 1/100
# UNDERFLOW (keras_initkit.study.summary, 1e-30): a float32 variance at or below it is left out of the fits
PAPER_H4 = 1.0 / 1.7e4

RULES = {
    "H1": f"At init, Var(preact) of the conv layers conv 2..N (inputs are ReLU outputs) on the probe batch; per-layer "
    f"factor rho = exp(slope of ln Var vs layer), over the layers whose variance is above {UNDERFLOW:g}. In every "
    f"trial at every depth: GlorotFanIn {HALF_LOW:.3f} < rho < {HALF_HIGH:.3f} (halves), He fan_in "
    f"{FLAT_LOW:.3f} < rho < {FLAT_HIGH:.3f} (constant), FixedNormal rho < GlorotFanIn's rho of the same depth and "
    "seed (faster still).",
    "H2": "At the deepest trained depth (30): He fan_in reaches the loss threshold in every seed, and GlorotFanIn is "
    f"stalled in every seed (mean training loss over the last {TAIL_FRACTION:.0%} of the updates >= "
    f"{1 - STALL_FRACTION:.2f} ln K).",
    "H3": "At 22 layers: He fan_in and GlorotFanIn both reach the loss threshold in every seed, and He fan_in needs "
    "fewer updates than GlorotFanIn in every seed (paired by seed).",
    "H4": "(a) FixedNormal at the deepest trained depth is stalled in every seed; (b) at init, std of dC/ds at conv2 "
    f"(FixedNormal / He fan_in, same depth and seed) at Config.h4_depth is below {H4_MAX_RATIO:g} in every seed.",
}


@dataclasses.dataclass(frozen=True)
class Config:
    # data set by keras_initkit.datasets name ("digits", "shapeset", "mnist", "cifar10")
    data: str = "digits"
    # data set used instead when `data`'s files are absent here (None: a missing file is an error); every table
    # records the one used in its `dataset` column
    fallback_data: str | None = None
    # training images (None: the whole training split; Shapeset draws this many)
    n_train: int | None = None
    # test images for the final error (None: the whole test split)
    n_test: int | None = None
    # image side for Shapeset (the other data sets have a fixed size)
    size: int = 32
    # the nets' n_layers: weight layers, convolutions + dense layers (He et al.'s 30 = 27 conv + 3 fc; VGG A = 11)
    depths: tuple[int, ...] = (8, 14, 22, 30)
    # initializations, names from INITS
    inits: tuple[str, ...] = INITS
    # one trial per (n_layers, init, seed); every layer's initializer seed and the data order derive from the seed
    seeds: tuple[int, ...] = (0, 1, 2)
    # std of VGG's fixed Gaussian ("fixed"), the same for every layer
    fixed_std: float = 0.01
    # channels of each conv stage; a 2x2 max-pool follows every stage but the last, convs are split evenly over the
    # stages (the remainder to the deepest). digits (8x8): one stage, no pool: pooled to 4x4, zero padding would cut
    # a third of every later 3x3 conv's fan-in
    widths: tuple[int, ...] = (32,)
    # dense layers of the head after Flatten, the last one the linear classifier (softmax in the loss)
    fc_layers: int = 1
    # units of the hidden dense layers (when fc_layers > 1)
    fc_width: int = 64
    # (n_layers, init) cells trained in every seed: the claims' cells and He at recipe_depth (None: every cell)
    train_cells: tuple[tuple[int, str], ...] | None = (
        (30, "he_fan_in"),
        (30, "glorot_fan_in"),
        (30, "fixed"),
        (22, "he_fan_in"),
        (22, "glorot_fan_in"),
        (14, "he_fan_in"),
    )
    # (n_layers, init) cells trained in the first seed only, to fill the steps-to-threshold map (None: every other
    # cell); the cells in neither list are measured at init only (all cells are)
    extra_cells: tuple[tuple[int, str], ...] | None = (
        *((8, i) for i in INITS),
        *((14, i) for i in INITS),
        (22, "he_fan_out"),
        (30, "he_fan_out"),
    )
    # stop a net at the end of the first chunk whose loss is <= loss_threshold (its curve ends there): the updates
    # after it change no claim; stalled nets always run the whole budget. Net A of the recipe runs its whole budget
    stop_at_threshold: bool = True
    # SGD updates of every trained net (the budget)
    steps: int = 400
    # mini-batch size
    batch_size: int = 32
    # SGD learning rate, momentum, weight decay: one setting for every net and init, never tuned per init
    learning_rate: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    # training loss (mean over a chunk of record_every updates) that counts as converged
    loss_threshold: float = 0.5
    # updates per recorded chunk of the loss curve (also Keras' steps_per_execution)
    record_every: int = 10
    # training examples in the at-init probe batch (forward and backward variances)
    n_probe: int = 256
    # n_layers at which H4's early-layer gradient ratio is read (VGG B, the paper's figure, has 13 layers)
    h4_depth: int = 14
    # VGG recipe: n_layers of the shallow net A, trained from N(0, fixed_std^2) (S&Z's A: 11); 0 turns the recipe off
    recipe_a_depth: int = 3
    # VGG recipe: SGD updates of net A
    recipe_a_steps: int = 600
    # VGG recipe: n_layers of the deeper net initialized from A, compared with He fan_in from scratch at that size
    recipe_depth: int = 14
    # VGG recipe: A's first conv layers copied (matched by stage and position); S&Z copy 4, and all dense layers
    recipe_copy_convs: int = 2
    # VGG recipe: initializations of the deeper net's other layers, one run each ("fixed" is S&Z's own)
    recipe_fills: tuple[str, ...] = ("fixed", "he_fan_in")


QUICK = Config()
PAPER = Config(
    data="cifar10", fallback_data="shapeset", depths=(8, 11, 14, 19, 22, 30), seeds=(0, 1, 2),
    widths=(64, 128, 256, 512), fc_layers=3, fc_width=512, train_cells=None, extra_cells=(), stop_at_threshold=False,
    steps=20 * 390, batch_size=128, learning_rate=1e-2, momentum=0.9, weight_decay=5e-4, record_every=50, n_probe=512,
    h4_depth=14, recipe_a_depth=11, recipe_a_steps=20 * 390, recipe_depth=19, recipe_copy_convs=4,
    recipe_fills=("fixed", "he_fan_in"),
)  # fmt: skip
SMOKE = Config(
    depths=(4,), inits=("fixed", "glorot_fan_in", "he_fan_in"), seeds=(0,), widths=(8,),
    train_cells=((4, "he_fan_in"), (4, "glorot_fan_in"), (4, "fixed")), extra_cells=(), steps=20, record_every=10,
    n_probe=32, h4_depth=4, recipe_a_depth=2, recipe_a_steps=10, recipe_depth=4, recipe_copy_convs=1,
)  # fmt: skip
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}
TRIAL_KEYS = ("part", "n_layers", "init", "seed", "steps")


# ---------------------------------------------------------------------------------------------------- the grid


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field, the rule and the value when a Config cannot run."""

    def need(ok, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"`{field}` must {rule}. Received: {field}={getattr(cfg, field)!r}")

    recipe = bool(cfg.recipe_a_depth)
    for field in ("inits", "recipe_fills")[: 1 + recipe]:
        need(getattr(cfg, field) and set(getattr(cfg, field)) <= set(INITS), field, f"be names from {INITS}")
    for field in ("depths", "seeds"):
        need(getattr(cfg, field), field, "not be empty")
    for field in ("steps", "record_every", "batch_size", "n_probe"):
        need(getattr(cfg, field) >= 1, field, "be >= 1")
    for field in ("steps", "recipe_a_steps")[: 1 + recipe]:
        need(getattr(cfg, field) % cfg.record_every == 0, field, f"be a multiple of `record_every`={cfg.record_every}")
    least = len(cfg.widths) + cfg.fc_layers
    need(min(cfg.depths) >= least, "depths", f"be >= len(widths) + fc_layers = {least}")
    for field in ("train_cells", "extra_cells"):
        cells = getattr(cfg, field) or ()
        need(all(n in cfg.depths and i in cfg.inits for n, i in cells), field, "name grid cells (n_layers, init)")
    if recipe:
        need(cfg.recipe_a_depth >= least, "recipe_a_depth", f"be >= len(widths) + fc_layers = {least}")
        need(cfg.recipe_depth > cfg.recipe_a_depth, "recipe_depth", f"exceed `recipe_a_depth`={cfg.recipe_a_depth}")
        n_a = cfg.recipe_a_depth - cfg.fc_layers
        need(0 <= cfg.recipe_copy_convs <= n_a, "recipe_copy_convs", f"be in [0, {n_a}]")


def is_trained(cfg: Config, n_layers: int, init: str, seed: int) -> bool:
    """Whether the grid cell (n_layers, init) is trained in this seed: in every seed (train_cells), in the first seed
    (extra_cells), or not (measured at init only)."""
    if cfg.train_cells is None or (n_layers, init) in cfg.train_cells:
        return True
    return seed == cfg.seeds[0] and (cfg.extra_cells is None or (n_layers, init) in cfg.extra_cells)


def trials(cfg: Config) -> list[dict]:
    """The grid, each trial a dict of part, n_layers, init, seed, steps:

    - part "train": one (n_layers, init, seed) net trained for `steps` updates (the cells `is_trained` selects);
    - part "recipe": one seed of the VGG recipe (net A, then the deeper net per fill), init "recipe";
    - part "init": every init of `cfg.inits` at one (n_layers, seed), measured at initialization only (init "all",
      steps 0): the same weights the "train" trials start from.
    Longest first (training, by n_layers x steps), so that a pool of workers finishes together.
    """
    check_config(cfg)
    train = [
        dict(part="train", n_layers=int(n), init=i, seed=int(s), steps=cfg.steps)
        for n in cfg.depths
        for i in cfg.inits
        for s in cfg.seeds
        if is_trained(cfg, n, i, s)
    ]
    recipe = [dict(part="recipe", n_layers=cfg.recipe_depth, init="recipe", seed=int(s), steps=cfg.steps)
              for s in cfg.seeds if cfg.recipe_a_depth]  # fmt: skip
    at_init = [dict(part="init", n_layers=int(n), init="all", seed=int(s), steps=0)
               for n in cfg.depths for s in cfg.seeds]  # fmt: skip
    cost = {id(t): t["n_layers"] * t["steps"] for t in train}
    cost.update({id(t): cfg.recipe_depth * t["steps"] * len(cfg.recipe_fills) for t in recipe})
    return sorted(train + recipe, key=lambda t: -cost[id(t)]) + at_init


# ---------------------------------------------------------------------------------------------------- one trial


def _data(cfg: Config):
    """The Config's data set, or its fallback_data when the files of `data` are absent (cached per process)."""
    return load_data(cfg.data, fallback=cfg.fallback_data, n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size)


# Per process: one compiled net per architecture (keras_initkit.study.training.ModelCache), with its at-init monitor;
# the train step and the monitor's probe pass are traced once per architecture and process, not once per trial.
_MODELS = ModelCache()


def fresh_net(cfg: Config, n_layers: int, init: str | dict[str, str], seed: int):
    """(compiled model, its at-init VarianceMonitor), with the weights `build_vgg(n_layers, init=init, seed=seed)` has
    and a fresh optimizer state."""
    from keras_initkit.monitor import VarianceMonitor

    d = _data(cfg)
    key = (cfg.data, cfg.fallback_data, cfg.n_train, cfg.size, n_layers, cfg.widths, cfg.fc_layers, cfg.fc_width,
           cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.record_every, cfg.n_probe)  # fmt: skip
    kw = dict(widths=cfg.widths, fc_layers=cfg.fc_layers, fc_width=cfg.fc_width, fixed_std=cfg.fixed_std)
    build = functools.partial(build_vgg, d.x_train.shape[1:], d.num_classes, n_layers, init=init, seed=seed, **kw)
    compile = functools.partial(compile_sgd, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, steps_per_execution=cfg.record_every)  # fmt: skip
    entry = _MODELS.fresh(key, build, compile)
    if "monitor" not in entry.extra:
        probe = (d.x_train[: cfg.n_probe], d.y_train[: cfg.n_probe])
        names = [la.name for la in weight_layers(entry.model)]
        entry.extra["monitor"] = VarianceMonitor(probe=probe, layers=names, stats=["var", "std"])
    return entry.model, entry.extra["monitor"]


def _train(model: keras.Model, cfg: Config, steps: int, seed: int, offset: int = 0, stop: bool = True) -> pd.DataFrame:
    """`steps` SGD updates (fewer when `stop` and cfg.stop_at_threshold); the curve (step, loss) with a row at step
    `offset` for the probe batch's loss before the first update."""
    d = _data(cfg)
    x, y = d.x_train[: cfg.n_probe], d.y_train[: cfg.n_probe]
    return fit_curve(
        model, d.x_train, d.y_train, steps=steps, every=cfg.record_every, batch_size=cfg.batch_size,
        seed=derive_seed(seed, "order", offset), offset=offset, start=lambda m: {"loss": cross_entropy(m, x, y)},
        stop_below=cfg.loss_threshold if stop and cfg.stop_at_threshold else None,
    )  # fmt: skip


def curve_outcome(curve: pd.DataFrame, num_classes: int, threshold: float) -> dict:
    """From a loss curve (step, loss; its first row before training): updates to the threshold, final loss, stalled.

    steps_to_threshold: updates until the end of the first chunk whose mean loss is <= threshold (NaN if never).
    final_loss: mean over the last TAIL_FRACTION of the chunks. stalled: final_loss >= (1 - STALL_FRACTION) ln K,
    or a non-finite loss (diverged).
    """
    start = int(curve["step"].min())
    trained = curve[curve["step"] > start]
    losses = trained["loss"].to_numpy(dtype=float)
    diverged = bool(len(losses) and not np.isfinite(losses).all())
    hit = trained.loc[trained["loss"] <= threshold, "step"]
    n_tail = max(1, int(round(TAIL_FRACTION * len(losses)))) if len(losses) else 0
    final = float(np.mean(losses[-n_tail:])) if n_tail else float("nan")
    chance = math.log(num_classes)
    return {"steps_to_threshold": float(hit.iloc[0] - start) if len(hit) and not diverged else float("nan"),
            "converged": bool(len(hit)) and not diverged, "final_loss": final,
            "stalled": diverged or bool(final >= (1.0 - STALL_FRACTION) * chance), "diverged": diverged,
            "chance_loss": chance}  # fmt: skip


def measure_at_init(model: keras.Model, monitor, probe_x: np.ndarray) -> pd.DataFrame:
    """Per weight layer, on the monitor's probe batch: the measured variance and std of preact, activation, dC/ds and
    dC/dW, with `theory.predict_variance`'s prediction (`predicted`, from `theory.compare`) beside the variances it
    covers.

    Columns: layer, depth (the monitor's: 0-based weight layer), kind, stat, value, diverged, predicted. The backward
    prediction starts from the measured Var(dC/ds) of the classifier (the theory does not see the labels).
    """
    from keras_initkit.theory import compare, predict_variance

    frame = monitor.measure(model)
    frame = frame[frame["kind"].isin(("preact", "activation", "grad_preact", "grad_kernel"))]
    names = [la.name for la in weight_layers(model)]
    top = frame[(frame["layer"] == names[-1]) & (frame["kind"] == "grad_preact") & (frame["stat"] == "var")]
    top_grad_var = float(top["value"].iloc[0]) if len(top) and float(top["value"].iloc[0]) > 0 else 1.0
    axes = tuple(range(probe_x.ndim - 1))
    var, mean = probe_x.var(axis=axes, dtype=np.float64), probe_x.mean(axis=axes, dtype=np.float64)
    predicted = predict_variance(model, input_var=var, input_mean=mean, top_grad_var=top_grad_var, layers=names)
    pairs = compare(frame, predicted, anchor=None)[["layer", "kind", "predicted"]].assign(stat="var")
    frame = frame.drop(columns=["step", "epoch"]).merge(pairs, on=["layer", "kind", "stat"], how="left")
    return frame.reset_index(drop=True)


def _init_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    d = _data(cfg)
    frames = []
    for init in cfg.inits:
        model, monitor = fresh_net(cfg, trial["n_layers"], init, int(trial["seed"]))
        frames.append(measure_at_init(model, monitor, d.x_train[: cfg.n_probe]).assign(init=init))
    return {"layers": with_trial(pd.concat(frames, ignore_index=True), trial, TRIAL_KEYS, keep=("init",))}


def _trained(cfg: Config, trial: dict, net: keras.Model, curve: pd.DataFrame, start: float, **extra):
    """One trained net's tables, with the trial's keys and `extra`: its curve, and its "final" row (`curve_outcome`,
    the test error and the wall time since `start`)."""
    d = _data(cfg)
    outcome = curve_outcome(curve, d.num_classes, cfg.loss_threshold)
    test_err, wall_s = error_percent(net, d.x_test, d.y_test), time.perf_counter() - start
    final = pd.DataFrame([{**outcome, "test_err": test_err, "wall_s": wall_s}])
    return with_trial(curve, trial, TRIAL_KEYS, phase=extra["phase"]), with_trial(final, trial, TRIAL_KEYS, **extra)


def _train_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    start, seed = time.perf_counter(), int(trial["seed"])
    model, _ = fresh_net(cfg, trial["n_layers"], trial["init"], seed)
    curve, final = _trained(cfg, trial, model, _train(model, cfg, trial["steps"], seed), start, phase="scratch",
                            a_steps=0, copied="")  # fmt: skip
    return {"curves": curve, "final": final}


def _recipe_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """Net A from N(0, fixed_std^2), then one deeper net per fill, initialized from A (`transfer_layers`). Net A's
    rows have its own n_layers (recipe_a_depth), the deeper nets' the trial's."""
    seed, start = int(trial["seed"]), time.perf_counter()
    net_a, _ = fresh_net(cfg, cfg.recipe_a_depth, "fixed", derive_seed(seed, "net A"))
    curve_a = _train(net_a, cfg, cfg.recipe_a_steps, derive_seed(seed, "net A"), stop=False)
    a_trial = {**trial, "n_layers": cfg.recipe_a_depth}
    tables = [_trained(cfg, a_trial, net_a, curve_a, start, phase="A", a_steps=0, copied="")]
    for fill in cfg.recipe_fills:
        start = time.perf_counter()
        deep, _ = fresh_net(cfg, trial["n_layers"], fill, seed)
        copied = ",".join(transfer_layers(net_a, deep, cfg.recipe_copy_convs))
        curve = _train(deep, cfg, trial["steps"], seed, offset=cfg.recipe_a_steps)
        tables.append(_trained(cfg, trial, deep, curve, start, phase=f"recipe_{fill}", a_steps=cfg.recipe_a_steps,
                               copied=copied))  # fmt: skip
    curves, finals = zip(*tables, strict=True)
    return {"curves": pd.concat(curves, ignore_index=True), "final": pd.concat(finals, ignore_index=True)}


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One trial of `trials(cfg)`: part "init" (at-init variances of every init at one n_layers and seed), "train"
    (one net trained) or "recipe" (one seed of the VGG recipe).

    Tables: "layers" (at init, per init, weight layer and kind, with theory's prediction), "curves" (step, loss,
    phase), "final" (updates to the threshold, final loss, stalled, test error), with the trial's keys as columns.
    """
    parts = {"init": _init_trial, "train": _train_trial, "recipe": _recipe_trial}
    part = trial.get("part")
    if part not in parts:
        raise ValueError(f"trial `part` must be 'init', 'train' or 'recipe'. Received: part={part!r}")
    keras.utils.set_random_seed(derive_seed(int(trial["seed"]), "trial", part, trial["n_layers"], trial["init"]))
    dataset = _data(cfg).name
    return {name: frame.assign(dataset=dataset) for name, frame in parts[part](cfg, trial).items()}


# ------------------------------------------------------------------------------------------ summaries and claims


def depth_factors(layers: pd.DataFrame) -> pd.DataFrame:
    """Per grid trial and kind (preact, grad_preact): the measured and predicted per-layer factor of the variance over
    the conv layers after the first (`keras_initkit.study.summary.layer_factors` against the monitored layer's
    `depth`: going up; `factor_down` = 1 / factor for the gradients going down). Variances at or below UNDERFLOW are
    left out."""
    sel = layers[
        (layers["kind"].isin(("preact", "grad_preact")))
        & (layers["stat"] == "var")
        & (layers["layer"].str.startswith("conv"))
        & (layers["depth"] >= 1)
    ]
    return layer_factors(sel, ["n_layers", "init", "seed", "kind"], x="depth", predicted="predicted")


def gradient_ratio(layers: pd.DataFrame, reference: str = "he_fan_in", layer: str | None = None) -> pd.DataFrame:
    """Per net (n_layers), seed and init: std of dC/ds and of dC/dW at one layer (default the second weight layer,
    conv2 as in He et al.) divided by the reference init's, same n_layers and seed.

    Columns: n_layers, seed, kind, init, std, ratio, predicted_ratio (dC/ds only: sqrt of theory's variance ratio),
    underflow (the float32 std is 0: the gradient underflowed; ratio is then NaN).
    """
    keys = ["n_layers", "seed", "kind"]
    columns = [*keys, "init", "std", "ratio", "predicted_ratio", "underflow"]
    sel = layers[layers["kind"].isin(("grad_preact", "grad_kernel"))]
    sel = sel[sel["layer"] == layer] if layer is not None else sel[sel["depth"] == 1]
    std = sel[sel["stat"] == "std"].pivot_table(index=keys, columns="init", values="value", aggfunc="first")
    if reference not in std.columns:
        return pd.DataFrame(columns=columns)
    var = sel[sel["stat"] == "var"].pivot_table(index=keys, columns="init", values="predicted", aggfunc="first")

    def long(wide: pd.DataFrame, name: str) -> pd.DataFrame:  # keeps NaN cells (DataFrame.stack drops them in pandas 2)
        return wide.reset_index().melt(id_vars=keys, var_name="init", value_name=name)

    measured = std.where(std > 0)
    out = long(std, "std").merge(long(measured.div(measured[reference], axis=0), "ratio"), on=[*keys, "init"])
    if reference in var.columns:
        predicted = long(np.sqrt(var.div(var[reference], axis=0)), "predicted_ratio")
        out = out.merge(predicted, on=[*keys, "init"], how="left")
    else:
        out["predicted_ratio"] = np.nan
    out = out.dropna(subset=["std"])
    out["underflow"] = out["std"] <= 0
    return out[columns]


def training_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per (phase, n_layers, init): seeds, converged and stalled counts, steps to threshold and final loss spread."""
    if final is None or len(final) == 0:
        return pd.DataFrame()
    return final.groupby(["phase", "n_layers", "init"], as_index=False, sort=True).agg(
        n=("seed", "size"), converged=("converged", "sum"), stalled=("stalled", "sum"),
        **{f"steps_{s}": ("steps_to_threshold", s) for s in ("mean", "std", "min", "max")},
        final_loss_mean=("final_loss", "mean"), final_loss_std=("final_loss", "std"),
        test_err_mean=("test_err", "mean"), a_steps=("a_steps", "max"),
    )  # fmt: skip


def recipe_table(final: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The VGG recipe per seed beside He fan_in from scratch at the same n_layers: updates to the threshold of the deep
    net, and in total counting net A's updates."""
    if final is None or len(final) == 0 or not cfg.recipe_a_depth:
        return pd.DataFrame()
    rec = final[final["part"] == "recipe"]
    he = _cell(final, cfg.recipe_depth, "he_fan_in")
    rows = []
    for seed in sorted(set(rec["seed"]) | set(he["seed"])):
        r = rec[rec["seed"] == seed].set_index("phase")
        h = he[he["seed"] == seed]
        row = {"seed": int(seed)}
        if "A" in r.index:
            row.update(a_final_loss=r.at["A", "final_loss"], a_steps_to_threshold=r.at["A", "steps_to_threshold"])
        for fill in cfg.recipe_fills:
            p = f"recipe_{fill}"
            if p in r.index:
                row[f"{fill}_steps"] = r.at[p, "steps_to_threshold"]
                row[f"{fill}_total"] = r.at[p, "steps_to_threshold"] + r.at[p, "a_steps"]
                row[f"{fill}_final_loss"] = r.at[p, "final_loss"]
        if len(h):
            row["he_scratch_steps"] = float(h["steps_to_threshold"].iloc[0])
            row["he_scratch_final_loss"] = float(h["final_loss"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


_claim = functools.partial(claim_row, CLAIMS, RULES)


def claim_h1(factors: pd.DataFrame) -> dict:
    """H1 from `depth_factors` (see RULES["H1"])."""
    paper = "rho = 1/2 (fan-in Xavier), 1 (He), 1/2 n 1e-4 (N(0, 0.01)) per layer (He et al. Eq 7, 10)"
    pre = factors[factors["kind"] == "preact"] if len(factors) else factors
    need = ("glorot_fan_in", "he_fan_in", "fixed")
    if len(pre) == 0 or any(not (pre["init"] == i).any() for i in need):
        return _claim("H1", "N/A", f"needs at-init trials of {need}", paper)
    fan_in = pre[pre["init"] == "glorot_fan_in"]
    he = pre[pre["init"] == "he_fan_in"]
    fixed = pre[pre["init"] == "fixed"].merge(
        fan_in[["n_layers", "seed", "factor"]], on=["n_layers", "seed"], suffixes=("", "_fan_in")
    )
    halves = fan_in["factor"].between(HALF_LOW, HALF_HIGH, inclusive="neither")
    flat = he["factor"].between(FLAT_LOW, FLAT_HIGH, inclusive="neither")
    faster = fixed["factor"] < fixed["factor_fan_in"]
    ok = bool(halves.all() and flat.all() and faster.all() and len(fixed))
    measured = (
        f"GlorotFanIn rho = {spread(fan_in['factor'])} ({int(halves.sum())}/{len(fan_in)} halve; predicted "
        f"{spread(fan_in['predicted'])}); He fan_in rho = {spread(he['factor'])} ({int(flat.sum())}/{len(he)} "
        f"constant; predicted {spread(he['predicted'])}); FixedNormal rho = {spread(fixed['factor'])} "
        f"({int(faster.sum())}/{len(fixed)} below GlorotFanIn's; predicted {spread(fixed['predicted'])})"
    )
    return _claim("H1", "PASS" if ok else "FAIL", measured, paper)


def _cell(final: pd.DataFrame, n_layers: int, init: str) -> pd.DataFrame:
    return final[(final["part"] == "train") & (final["n_layers"] == n_layers) & (final["init"] == init)]


def _outcome_text(rows: pd.DataFrame, label: str) -> str:
    hit = int(rows["converged"].sum())
    after = f" after {spread(rows['steps_to_threshold'])} updates" if hit else ""
    return (
        f"{label}: {hit}/{len(rows)} reach the threshold{after}, {int(rows['stalled'].sum())}/{len(rows)} stalled, "
        f"final loss {spread(rows['final_loss'])}"
    )


def _he_and_xavier(final: pd.DataFrame, n_layers: int) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The trained He fan_in and GlorotFanIn nets of `n_layers`, and the claims' text of their outcomes."""
    he, xavier = _cell(final, n_layers, "he_fan_in"), _cell(final, n_layers, "glorot_fan_in")
    return he, xavier, f"depth {n_layers}: {_outcome_text(he, 'He fan_in')}; {_outcome_text(xavier, 'GlorotFanIn')}"


def claim_h2(final: pd.DataFrame, n_layers: int = 30) -> dict:
    """H2 (see RULES["H2"])."""
    paper = "30 layers (27 conv + 3 fc): He converges; Xavier 'completely stalls' (He et al. Fig 3)"
    he, xavier, measured = _he_and_xavier(final, n_layers)
    if len(he) == 0 or len(xavier) == 0:
        return _claim("H2", "N/A", f"no trained He fan_in and GlorotFanIn nets of depth {n_layers}", paper)
    ok = bool(he["converged"].all() and xavier["stalled"].all())
    return _claim("H2", "PASS" if ok else "FAIL", measured, paper)


def claim_h3(final: pd.DataFrame, n_layers: int = 22) -> dict:
    """H3 (see RULES["H3"])."""
    paper = "22 layers: both converge, He starts reducing the error earlier (He et al. Fig 2)"
    he, xavier, measured = _he_and_xavier(final, n_layers)
    if len(he) == 0 or len(xavier) == 0:
        return _claim("H3", "N/A", f"no trained He fan_in and GlorotFanIn nets of depth {n_layers}", paper)
    both = bool(he["converged"].all() and xavier["converged"].all())
    paired = he[["seed", "steps_to_threshold"]].merge(xavier[["seed", "steps_to_threshold"]], on="seed")
    faster = paired["steps_to_threshold_x"] < paired["steps_to_threshold_y"]
    ok = both and len(paired) > 0 and bool(faster.all())
    measured += f"; He first in {int(faster.sum())}/{len(paired)} seeds" + _shallower_context(final, n_layers)
    return _claim("H3", "PASS" if ok else "FAIL", measured, paper)


def _shallower_context(final: pd.DataFrame, n_layers: int) -> str:
    """For the record (not part of the rule): the other trained n_layers with both He fan_in and GlorotFanIn."""
    parts = []
    for n in sorted(set(final.loc[final["part"] == "train", "n_layers"]) - {n_layers}):
        he, xavier = _cell(final, n, "he_fan_in"), _cell(final, n, "glorot_fan_in")
        if len(he) and len(xavier):
            parts.append(f"{n} layers: {_reached(he, 'He')}, {_reached(xavier, 'GlorotFanIn')}")
    return f" (other depths, not part of the rule: {'; '.join(parts)})" if parts else ""


def _reached(rows: pd.DataFrame, label: str) -> str:
    hit, steps = int(rows["converged"].sum()), rows["steps_to_threshold"].to_numpy(dtype=float)
    at = f" at {np.mean(steps[np.isfinite(steps)]):.0f} updates" if hit else ""
    return f"{label} {hit}/{len(rows)} reach it{at}"


def claim_h4(final: pd.DataFrame, ratios: pd.DataFrame, h4_depth: int, n_layers: int = 30) -> dict:
    """H4 (see RULES["H4"]): (a) the FixedNormal nets of `n_layers`, (b) the gradient ratios at `h4_depth` layers."""
    paper = f"VGG B (13 layers): gradient at conv2 {PAPER_H4:.2g} (1/1.7e4) of He's; deep N(0, 0.01) nets stall"
    fixed = _cell(final, n_layers, "fixed") if len(final) else final
    at_h4 = ratios[(ratios["init"] == "fixed") & (ratios["n_layers"] == h4_depth)]
    sel, kernel = (at_h4[at_h4["kind"] == k] for k in ("grad_preact", "grad_kernel"))
    if len(fixed) == 0 or len(sel) == 0:
        need = f"needs trained FixedNormal nets of depth {n_layers} and at-init depth {h4_depth}"
        return _claim("H4", "N/A", need, paper)
    small = (sel["ratio"] < H4_MAX_RATIO) | sel["underflow"]  # an underflowed gradient is smaller still
    ok = bool(fixed["stalled"].all() and small.all())
    measured = (
        f"(a) depth {n_layers}: {_outcome_text(fixed, 'FixedNormal')}; (b) depth {h4_depth}: std dC/ds at conv2 "
        f"FixedNormal / He = {spread(sel['ratio'])} ({int(small.sum())}/{len(sel)} below {H4_MAX_RATIO:g}; theory "
        f"{spread(sel['predicted_ratio'])}); dC/dW ratio {spread(kernel['ratio'])}"
    )
    return _claim("H4", "PASS" if ok else "FAIL", measured, paper)


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Summary tables (per-layer factors, gradient ratios, training outcomes, recipe) and the claims."""
    layers = tables.get("layers")
    if layers is None or len(layers) == 0:
        layers = pd.DataFrame(columns=["layer", "depth", "kind", "stat", "value", "predicted", "n_layers", "init",
                                       "seed"])  # fmt: skip
    final = tables.get("final", pd.DataFrame(columns=["part", "n_layers", "init", "seed", "phase"]))
    factors, ratios = depth_factors(layers), gradient_ratio(layers)
    by = ["kind", "init", "n_layers"]
    factor_summary = factors.groupby(by, as_index=False, sort=True).agg(
        n=("factor", "size"), factor_mean=("factor", "mean"), factor_std=("factor", "std"),
        predicted=("predicted", "mean"),
    )  # fmt: skip
    ratio_summary = ratios[ratios["init"] != "he_fan_in"].groupby(by, as_index=False).agg(
        n=("ratio", "size"), ratio_mean=("ratio", "mean"), ratio_min=("ratio", "min"), ratio_max=("ratio", "max"),
        predicted=("predicted_ratio", "mean"), underflow=("underflow", "sum"),
    )  # fmt: skip
    deepest = max(cfg.depths)
    claims = pd.DataFrame([claim_h1(factors), claim_h2(final, deepest), claim_h3(final, 22),
                           claim_h4(final, ratios, cfg.h4_depth, deepest)])  # fmt: skip
    used = sorted({str(x) for f in (layers, final) if "dataset" in f for x in f["dataset"].dropna()})
    if used and used != [cfg.data]:
        claims["measured"] = claims["measured"] + f" (data: {', '.join(used)}; {cfg.data!r} files absent here)"
    return {
        "claims": claims,
        "training": training_table(final),
        "recipe": recipe_table(final, cfg),
        "depth_factors": factor_summary,
        "gradient_ratio": ratio_summary,
    }


# ------------------------------------------------------------------------------------------------------- figures


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """Figures from the saved tables: variance vs layer (measured and predicted), loss curves faceted by n_layers,
    the steps-to-threshold heat map (stalled cells marked) and the recipe's curves."""
    figures = {}
    layers, curves, final = (tables.get(name) for name in ("layers", "curves", "final"))
    if layers is not None and len(layers):
        figures["variance_forward"] = plot_variance(layers, "preact")
        figures["variance_backward"] = plot_variance(layers, "grad_preact")
    if curves is not None and len(curves):
        figures["loss_curves"] = plot_curves(curves)
        if (curves["part"] == "recipe").any():
            figures["recipe"] = plot_recipe(curves)
    if final is not None and len(final):
        figures["steps_heatmap"] = plot_heatmap(final, layers)
    return figures


VARIANCE_FLOOR = 1e-18  # lower end of the variance axes: FixedNormal goes on below it


def _palette() -> dict:
    """Init label -> colour (`keras_initkit.plots.palette` over every init's label), the same in every figure."""
    from keras_initkit.plots import palette

    return palette(sorted(INIT_LABELS.values()))


def plot_variance(layers: pd.DataFrame, kind: str = "preact"):
    """`keras_initkit.plots.variance_vs_depth` of one kind (Var(s) going up, or Var(dC/ds) going down) against the
    weight layer's index (`depth`), one panel per net (n_layers), one colour per init: measured (band = the seeds'
    range) and theory's prediction (dashed), log scale. Variances that underflowed (<= UNDERFLOW) are left out."""
    from keras_initkit.plots import variance_vs_depth

    sel = layers[(layers["stat"] == "var") & (layers["kind"] == kind)]
    sel = sel.assign(init=sel["init"].map(INIT_LABELS))
    predicted = sel[sel["predicted"] > UNDERFLOW].drop(columns="value").rename(columns={"predicted": "value"})
    direction = "forward, input side first" if kind == "preact" else "backward (dC/ds), input side first"
    fig = variance_vs_depth(
        sel[sel["value"] > UNDERFLOW], kind, x="depth", hue="init", col="n_layers", predicted=predicted, step=None,
        errorbar=("pi", 100), palette=_palette(),
        title=f"At initialization, {direction}: measured (band = seeds' range) and theory.predict_variance (dashed)"
        f"; FixedNormal continues below {VARIANCE_FLOOR:g}",
    )  # fmt: skip
    for ax in fig.axes:
        ax.set_ylim(bottom=VARIANCE_FLOOR)
        ax.set_xlabel("weight layer (0 = first conv)")
    return fig


def plot_curves(curves: pd.DataFrame):
    """Training loss per n_layers (one panel each) and init (colour); one thin line per seed."""
    from keras_initkit.plots import learning_curves

    sel = curves[curves["part"] == "train"]
    sel = sel.assign(label=sel["init"].map(INIT_LABELS))
    stop = "; a net stops once it reaches the loss threshold" if _stopped_early(sel) else ""
    return learning_curves(
        sel, "loss", hue="label", col="n_layers", units="seed", palette=_palette(), col_label="{level} layers",
        hue_order=[INIT_LABELS[i] for i in INITS if INIT_LABELS[i] in set(sel["label"])], xlabel="SGD updates",
        ylabel="training loss (chunk mean)", title=f"Training loss per n_layers x init (one line per seed{stop})",
    )  # fmt: skip


def _stopped_early(curves: pd.DataFrame) -> bool:
    """Whether some training curve ends before its budget (Config.stop_at_threshold)."""
    runs = curves.groupby(["n_layers", "init", "seed"])
    return bool((runs["step"].max() < runs["steps"].first()).any())


def plot_heatmap(final: pd.DataFrame, layers: pd.DataFrame | None = None):
    """Mean updates to the loss threshold per n_layers x init; "stalled" where every seed stalled, "slow" where some
    seed neither reached the threshold nor stalled, "-" where the cell was measured at init only."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    grid = final[final["part"] == "train"]
    keys = ["n_layers", "init"]
    seen = grid[keys] if layers is None or len(layers) == 0 else pd.concat([grid[keys], layers[keys]])
    rows, cols = sorted(set(seen["n_layers"])), [i for i in INITS if i in set(seen["init"])]
    values, text = np.full((len(rows), len(cols)), np.nan), np.full((len(rows), len(cols)), "-", dtype=object)
    for (r, n_layers), (c, init) in itertools.product(enumerate(rows), enumerate(cols)):
        cell = grid[(grid["n_layers"] == n_layers) & (grid["init"] == init)]
        n, hit = len(cell), int(cell["converged"].sum())
        if hit:
            values[r, c] = cell["steps_to_threshold"].mean()
            text[r, c] = f"{values[r, c]:.0f}\n({hit}/{n} seeds)"
        elif n:
            text[r, c] = f"stalled\n({n}/{n})" if cell["stalled"].all() else f"slow\n(0/{n} reached)"
    fig = Figure(figsize=(1.6 * len(cols) + 1.5, 0.8 * len(rows) + 1.4), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    for (r, c), label in np.ndenumerate(text):
        red = label.startswith("stalled")
        ax.text(c, r, label, ha="center", va="center", fontsize=8, color="#b00000" if red else "black")
    ax.set_xticks(range(len(cols)), [INIT_LABELS[i] for i in cols], rotation=20)
    ax.set_yticks(range(len(rows)), [str(n) for n in rows])
    ax.set_ylabel("n_layers (weight layers)")
    fig.colorbar(im, ax=ax, label="updates to the loss threshold (mean over seeds that reached it)")
    ax.set_title("Updates to the loss threshold; grey: never reached ('-' = not trained)", fontsize=9)
    return fig


def plot_recipe(curves: pd.DataFrame):
    """The VGG recipe: net A (N(0, 0.01)), then the deeper nets initialized from it (updates counted from A's
    start), beside He fan_in from scratch with as many layers (dashed); one line per seed."""
    from keras_initkit.plots import learning_curves

    rec = curves[curves["part"] == "recipe"]
    is_a = rec["phase"] == "A"
    a_layers, n_layers = int(rec.loc[is_a, "n_layers"].iloc[0]), int(rec.loc[~is_a, "n_layers"].iloc[0])
    he = curves[(curves["part"] == "train") & (curves["n_layers"] == n_layers) & (curves["init"] == "he_fan_in")]
    names = {"A": f"net A ({a_layers} layers), N(0, 0.01)"}
    colors = {names["A"]: "#777777"}
    for p in dict.fromkeys(rec["phase"]):
        label = INIT_LABELS.get(p.removeprefix("recipe_"), p)
        names.setdefault(p, f"{n_layers} layers from A, other layers {label}")
        colors.setdefault(names[p], _palette().get(label, "#777777"))
    scratch = f"{n_layers} layers, He fan_in from scratch"
    colors[scratch] = _palette()["He fan_in"]
    frame = pd.concat([rec.assign(net=rec["phase"].map(names), start="from net A"),
                       he.assign(net=scratch, start="from scratch")])  # fmt: skip
    return learning_curves(
        frame, "loss", hue="net", style="start", units="seed", hue_order=[n for n in colors if n in set(frame["net"])],
        palette=colors, xlabel="SGD updates (the deep nets start after net A's)", ylabel="training loss (chunk mean)",
        title="VGG recipe (Simonyan & Zisserman 3.1) vs He init from scratch; one line per seed",
    )  # fmt: skip


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
