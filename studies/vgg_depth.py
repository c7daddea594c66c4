"""VGG depth x init: He, Zhang, Ren & Sun 2015, "Delving Deep into Rectifiers", with Simonyan & Zisserman 2014 (VGG).

Why VGG needed stage-wise pre-training and why He init made it unnecessary, on plain VGG-style ReLU conv nets (3x3
"same" convolutions, max-pools between stages, a dense head, no batch norm, no residuals). Two families of nets:
- the depth grid (H1-H3; He et al. Fig 2 and 3): narrow nets of 8 to 30 weight layers, He (2/n) vs fan-in Xavier
  (He's "Xavier", 1/n) trained on one budget that separates slow from never, with early stop at a loss threshold:
  the updates-to-escape curve per n_layers x init over the seeds;
- the VGG nets (H1's N(0, 0.01) row, H4, H5): as wide as makes VGG's per-layer attenuation 1/2 n Var(W) with
  std 0.01 fall in VGG's own range (0.03 for 64 channels .. 0.23 for 512); the 13-layer net (VGG B, He et al.'s
  gradient figure) from N(0, 0.01) and from He, and the VGG recipe (Simonyan & Zisserman 3.1): a shallow net A
  trained from N(0, 0.01), its convs and classifier copied into a net 2 layers deeper (as S&Z's A 11 -> B 13), the
  other layers N(0, 0.01), beside that net from N(0, 0.01) and from He.

Claims (CLAIMS, RULES; pre-registered in docs/results/vgg_depth/PREREGISTRATION.md with the hash of CLAIMS, RULES,
THRESHOLDS and QUICK, pinned by tests/test_vgg_depth.py): H1 the per-layer variance factor at init (measured with
`VarianceMonitor` beside `theory.predict_variance`, border-aware); H2 30 layers: He converges, Xavier never leaves
the floor; H3 22 layers: both converge, He first (paired by seed); H4 the 13-layer N(0, 0.01) net does not learn
where He does, its conv2 gradient of the paper's order against He's; H5 the recipe's nets learn where the same net
from N(0, 0.01) does not, and He from scratch learns without it. Verdicts PASS / FAIL / INCONCLUSIVE (the floor rule
of `keras_initkit.study.summary`: a net whose test error is within 2 binomial SEs of the majority-class error did
not learn; a comparison of two such rows is INCONCLUSIVE) and N/A (the profile has no trial of the claim's cells).

QUICK (the pre-registered protocol, v3; seeds 210-214): scikit-learn's 8x8 digits (10 classes, ln K = 2.303, 360
test images). SGD learning rate 3e-3, momentum 0.9, batch 32, loss threshold 0.5 on the mean loss of a 10-update
chunk, the same for every net and init.
- Grid: width 16 (the variance laws do not depend on width), one conv stage at 8x8, no pool (at 8x8 the zero-padding
  border already costs ~16% of a layer's fan-in, which `theory.predict_variance` predicts: He's factor is ~0.85,
  Xavier's ~0.42); n_layers 8, 14, 22, 30, He and Xavier trained in every seed for up to 3000 updates (stop at the
  threshold); every init measured at init.
- VGG nets: two stages of 256 channels, 8x8 then 4x4 after a 2x2 max-pool (VGG keeps 512 channels across its last
  pool). 1/2 n Var(W) = 0.115 with std 0.01 (measured per-layer factor ~0.10 with the border, which costs ~31% of the
  fan-in at 4x4); the conv2 gradient ratio to He is ~9e-6 at 13 layers (the paper: 5.9e-5). 13 layers from
  N(0, 0.01) and from He for 100 updates (He escapes in ~50); the recipe's net A has 4 layers (3 convs +
  classifier, up to 1500 updates, stop at the threshold: ~650 in the pilots), all copied into a 6-layer net (100
  updates), compared with 6-layer nets from N(0, 0.01) and He. In a pilot of v2 the 13-layer net from A did not
  learn in 200 updates: 9 fresh N(0, 0.01) layers attenuate A's features ~1e-5 in std.
Budget: the protocol needs the 3000-update budget (Xavier never escapes at 30 layers: 5 x 3000 updates) and the
256-wide VGG nets. v2 (one 8x8 stage of 256, seeds 200-204) took 644-724 s on the idle 2-core machine, over the
10-minute ceiling; v3's second stage at 4x4 costs a quarter per conv. docs/results/vgg_depth/REPRODUCTIONS.md
records the wall times.

PAPER: CIFAR-10 (Shapeset 32x32 when the CIFAR-10 files are absent), VGG widths 64-512 in 4 stages, 3 dense
layers, 8-30 weight layers, S&Z's SGD (learning rate 1e-2, momentum 0.9, weight decay 5e-4), batch 128, 20 epochs;
the recipe with S&Z's A (11 layers) into B (13 layers), 4 convs copied. SMOKE: the whole pipeline (tables, claims,
figures, report) in seconds: 4-layer nets of width 8, one seed (every claim INCONCLUSIVE or N/A).

Run: `make study-vgg` (QUICK, compares the verdicts with docs/results) or `python -m keras_initkit study vgg_depth
--profile quick|paper|smoke [--engine process --jobs 2]`; results in results/vgg_depth/<profile>/, the published
QUICK report in docs/results/vgg_depth/. The nets: `keras_initkit.study.models.build_vgg`, `transfer_layers`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time

import keras
import numpy as np
import pandas as pd

from keras_initkit.study import entry_points
from keras_initkit.study.data import load_data
from keras_initkit.study.grid import derive_seed, protocol_hash
from keras_initkit.study.metrics import correct, cross_entropy
from keras_initkit.study.models import build_vgg, transfer_layers, weight_layers
from keras_initkit.study.summary import (
    FLOOR_SE,
    UNDERFLOW,
    claim_row,
    floor_error,
    layer_factors,
    majority_error,
    mcnemar,
    paired_text,
    spread,
    with_trial,
)
from keras_initkit.study.training import ModelCache, compile_sgd, fit_curve, set_random_seed

NAME = "vgg_depth"

CLAIMS = {
    "H1": "ReLU at initialization: with 1/n (fan-in Xavier) the pre-activation variance halves per layer (2^-L after "
    "L layers); with He (2/n) it stays constant; with VGG's N(0, 0.01) it collapses faster still, by VGG's own "
    "factor 1/2 n Var(W) per layer.",
    "H2": "The deepest plain net (30 layers): He converges; fan-in Xavier never leaves the floor within the budget "
    "in which it escapes at 22 layers.",
    "H3": "22 layers: both converge (Xavier slowly), He reaches the loss threshold in fewer updates, paired by seed.",
    "H4": "Fixed-std N(0, 0.01) at VGG's attenuation: the 13-layer plain net does not learn where He init does, and "
    "its early-layer (conv2) gradient is orders of magnitude smaller than He's, of the order He et al. report.",
    "H5": "The VGG recipe: net A trained from N(0, 0.01) learns; the deeper net initialized from A's layers learns "
    "where the same net from N(0, 0.01) does not; He init trains the deeper net from scratch without the recipe.",
}

# Initializations: name -> label. "fixed" is VGG's N(0, std^2) with std = Config.fixed_std.
INIT_LABELS = {"fixed": "FixedNormal", "glorot_fan_in": "GlorotFanIn", "glorot_avg": "GlorotAvg",
               "he_fan_in": "He fan_in", "he_fan_out": "He fan_out"}  # fmt: skip
INITS = tuple(INIT_LABELS)
NETS = ("grid", "vgg")  # the depth grid (narrow) and the VGG nets (VGG's attenuation)

# Thresholds of the rules, fixed in PREREGISTRATION.md before the confirmatory run. The per-layer factor rho of a
# variance is exp(slope) of a least-squares line through ln Var against the layer index. A factor "halves" when it is
# closer to 1/2 than to 1 or 1/4 in log scale, and is "constant" when closer to 1 than to 1/2 or 2.
HALF_LOW, HALF_HIGH = 2.0**-1.5, 2.0**-0.5
FLAT_LOW, FLAT_HIGH = 2.0**-0.5, 2.0**0.5
VGG_LOW, VGG_HIGH = 0.03, 0.23  # VGG's 1/2 n Var(W) with std 0.01: 64 channels (n = 576) .. 512 (n = 4608)
H4_MAX_RATIO = 1e-2  # "orders of magnitude smaller": the conv2 gradient std ratio is below 1/100 ...
PAPER_H4 = 1.0 / 1.7e4  # ... and "of the paper's order": within a factor H4_ORDER of He et al.'s 1/(1.7e4)
H4_ORDER = 30.0  # 1.5 decades each way: [2.0e-6, 1.8e-3]
MCNEMAR_ALPHA = 0.05  # H5: the recipe's net more accurate than the same net from N(0, 0.01), exact McNemar p below
MIN_SEEDS = 5  # seeds per claim cell; fewer makes the claim INCONCLUSIVE
# FLOOR_SE (keras_initkit.study.summary, 2): "did not learn" = test error >= majority error - 2 binomial SEs
# UNDERFLOW (keras_initkit.study.summary, 1e-30): a float32 variance at or below it is left out of the fits

THRESHOLDS = dict(HALF_LOW=HALF_LOW, HALF_HIGH=HALF_HIGH, FLAT_LOW=FLAT_LOW, FLAT_HIGH=FLAT_HIGH, VGG_LOW=VGG_LOW,
                  VGG_HIGH=VGG_HIGH, H4_MAX_RATIO=H4_MAX_RATIO, PAPER_H4=PAPER_H4, H4_ORDER=H4_ORDER,
                  MCNEMAR_ALPHA=MCNEMAR_ALPHA, MIN_SEEDS=MIN_SEEDS, FLOOR_SE=FLOOR_SE,
                  UNDERFLOW=UNDERFLOW)  # fmt: skip

_FLOOR = (
    f"'Learned': test error below the floor, majority-class error - {FLOOR_SE:g} binomial SEs "
    "(summary.floor_error); 'escaped': the training loss of a 10-update chunk reached Config.loss_threshold."
)
_COMBINE = (
    f"The claim: FAIL if a seed (or part) fails, else INCONCLUSIVE if one is (or with fewer than {MIN_SEEDS} seeds), "
    "else PASS."
)
RULES = {
    "H1": f"At init, Var(preact) of conv 2..N (inputs are ReLU outputs) on the probe batch; per-layer factor rho = "
    f"exp(slope of ln Var vs layer), over the layers whose variance is above {UNDERFLOW:g}. In every trial: grid nets "
    f"(every n_layers) GlorotFanIn {HALF_LOW:.3f} < rho < {HALF_HIGH:.3f} (halves) and He fan_in {FLAT_LOW:.3f} < rho "
    f"< {FLAT_HIGH:.3f} (constant); the 13-layer VGG net's FixedNormal {VGG_LOW:g} <= rho <= {VGG_HIGH:g} (VGG's "
    "range) and rho below the GlorotFanIn rho of every grid net of the same seed (faster still). INCONCLUSIVE with "
    f"fewer than {MIN_SEEDS} seeds.",
    "H2": f"{_FLOOR} Grid, 30 layers, paired by seed, one budget (Config.steps) for H2 and H3. Per seed: PASS if He "
    "fan_in escaped and GlorotFanIn did not learn; INCONCLUSIVE if neither learned; else FAIL. " + _COMBINE,
    "H3": f"{_FLOOR} Grid, 22 layers, paired by seed (a net that never escaped counts as the budget, Config.steps). "
    "Per seed: INCONCLUSIVE if neither net learned; else PASS if He fan_in escaped and needed fewer updates than "
    "GlorotFanIn; else FAIL. Then the claim: FAIL if a seed fails; else INCONCLUSIVE if a seed is; else FAIL unless "
    "GlorotFanIn escaped in a majority of the seeds (slow, not never); else PASS. INCONCLUSIVE with fewer than "
    f"{MIN_SEEDS} seeds. The paired difference (Xavier - He, updates) with its 95% t-interval is reported.",
    "H4": f"VGG nets of Config.vgg_depth layers. {_FLOOR} (a) Trained for Config.vgg_steps, per seed: PASS if "
    "FixedNormal did not learn and He fan_in learned; INCONCLUSIVE if neither learned; else FAIL. (b) At init, std of "
    f"dC/ds at conv2, FixedNormal / He fan_in (same seed), per seed: PASS if < {H4_MAX_RATIO:g} and within "
    f"[{PAPER_H4 / H4_ORDER:.2g}, {PAPER_H4 * H4_ORDER:.2g}] (a factor {H4_ORDER:g} of He et al.'s 1/1.7e4; an "
    "underflowed gradient is outside), else FAIL. " + _COMBINE,
    "H5": f"{_FLOOR} VGG nets of Config.recipe_depth layers, trained for Config.vgg_steps, per seed: INCONCLUSIVE if "
    "neither He fan_in from scratch nor the recipe's net learned; else PASS if net A (Config.recipe_a_depth layers "
    "from N(0, 0.01), Config.recipe_a_steps updates) learned, the net initialized from A (other layers N(0, 0.01)) "
    "learned, FixedNormal from scratch did not learn and He fan_in from scratch learned; else FAIL. Then the claim: "
    "FAIL if a seed fails; else INCONCLUSIVE if a seed is; else FAIL unless the recipe's net is more accurate than "
    f"FixedNormal from scratch (exact McNemar on the seeds x test images pooled, p < {MCNEMAR_ALPHA:g}); else PASS. "
    f"INCONCLUSIVE with fewer than {MIN_SEEDS} seeds. The recipe vs He from scratch (paired bootstrap and McNemar) "
    "is reported, not ruled.",
}


def preregistration_hash() -> str:
    """sha256 of the canonical JSON of CLAIMS, RULES, THRESHOLDS and QUICK: the value PREREGISTRATION.md records
    (a test pins it, so that an edit of a claim, a rule, a threshold or the QUICK protocol shows)."""
    return protocol_hash({"claims": CLAIMS, "rules": RULES, "thresholds": THRESHOLDS, "quick": QUICK})


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
    # grid: the nets' n_layers, weight layers = convolutions + dense layers (He et al.'s 30 = 27 conv + 3 fc)
    depths: tuple[int, ...] = (8, 14, 22, 30)
    # grid: initializations measured at init, names from INITS
    inits: tuple[str, ...] = INITS
    # grid: initializations trained at every n_layers in every seed (He et al. Fig 2-3: He and fan-in Xavier)
    train_inits: tuple[str, ...] = ("he_fan_in", "glorot_fan_in")
    # one trial per (net, n_layers, init, seed); every layer's initializer seed and the data order derive from the seed
    seeds: tuple[int, ...] = (210, 211, 212, 213, 214)
    # std of VGG's fixed Gaussian ("fixed"), the same for every layer
    fixed_std: float = 0.01
    # grid: channels of each conv stage; a 2x2 max-pool follows every stage but the last, convs are split evenly over
    # the stages (the remainder to the deepest). digits (8x8): one stage, no pool
    widths: tuple[int, ...] = (16,)
    # dense layers of the head after Flatten, the last one the linear classifier (softmax in the loss)
    fc_layers: int = 1
    # units of the hidden dense layers (when fc_layers > 1)
    fc_width: int = 64
    # grid: SGD updates of every trained net (the budget of H2 and H3), fewer when it reaches the threshold
    steps: int = 3000
    # VGG nets: channels of each conv stage, wide enough that 1/2 n Var(W) of std fixed_std is in VGG's range; two
    # stages of 256 (8x8, then 4x4 after a 2x2 max-pool), as VGG keeps 512 channels across its last pool
    vgg_widths: tuple[int, ...] = (256, 256)
    # VGG nets: every input (training, test and probe) multiplied by this. 1: the attenuation per layer does not
    # depend on it, and at 16 and 80 (VGG's raw-pixel spread) He from scratch diverged at the study's rate (pilot)
    vgg_input_scale: float = 1.0
    # VGG nets: n_layers of H4's net and of the recipe's deeper net (VGG B, He et al.'s gradient figure: 13)
    vgg_depth: int = 13
    # VGG nets: initializations measured at init and trained from scratch ("fixed" and He)
    vgg_inits: tuple[str, ...] = ("fixed", "he_fan_in")
    # VGG nets: SGD updates of the from-scratch nets and of the recipe's deeper net (fewer at the threshold)
    vgg_steps: int = 100
    # VGG recipe: n_layers of the shallow net A, trained from N(0, fixed_std^2) (S&Z's A: 11); 0 turns the recipe off
    recipe_a_depth: int = 4
    # VGG recipe: SGD updates of net A (it stops at the threshold too)
    recipe_a_steps: int = 1500
    # VGG recipe: n_layers of the deeper net initialized from A (S&Z: A 11 -> B 13), also trained from scratch
    recipe_depth: int = 6
    # VGG recipe: A's first conv layers copied (matched by stage and position); S&Z copy 4, and all dense layers
    recipe_copy_convs: int = 3
    # VGG recipe: initializations of the deeper net's other layers, one run each ("fixed" is S&Z's own)
    recipe_fills: tuple[str, ...] = ("fixed",)
    # stop a net at the end of the first chunk whose loss is <= loss_threshold (its curve ends there)
    stop_at_threshold: bool = True
    # mini-batch size
    batch_size: int = 32
    # SGD learning rate, momentum, weight decay: one setting for every net and init, never tuned per init
    learning_rate: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    # training loss (mean over a chunk of record_every updates) that counts as escaped / converged
    loss_threshold: float = 0.5
    # updates per recorded chunk of the loss curve (also Keras' steps_per_execution)
    record_every: int = 10
    # training examples in the at-init probe batch (forward and backward variances)
    n_probe: int = 256


QUICK = Config()
PAPER = Config(
    data="cifar10", fallback_data="shapeset", depths=(8, 11, 14, 19, 22, 30), seeds=(0, 1, 2, 3, 4),
    widths=(64, 128, 256, 512), fc_layers=3, fc_width=512, steps=20 * 390, vgg_widths=(64, 128, 256, 512),
    vgg_input_scale=60.0, vgg_depth=13, vgg_steps=20 * 390, recipe_a_depth=11, recipe_a_steps=20 * 390, recipe_depth=13,
    stop_at_threshold=False, batch_size=128, learning_rate=1e-2, momentum=0.9, weight_decay=5e-4, record_every=50,
    n_probe=512,
)  # fmt: skip
SMOKE = Config(
    depths=(4,), inits=("fixed", "glorot_fan_in", "he_fan_in"), seeds=(0,), widths=(8,), steps=20, vgg_widths=(16,),
    vgg_input_scale=1.0, vgg_depth=4, vgg_steps=20, recipe_a_depth=3, recipe_a_steps=10, recipe_depth=4,
    recipe_copy_convs=1,
    n_probe=32,
)  # fmt: skip
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}
TRIAL_KEYS = ("part", "net", "n_layers", "init", "seed", "steps")


# ---------------------------------------------------------------------------------------------------- the grid


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the field, the rule and the value when a Config cannot run."""

    def need(ok, field: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"`{field}` must {rule}. Received: {field}={getattr(cfg, field)!r}")

    recipe = bool(cfg.recipe_a_depth)
    for field in ("inits", "train_inits", "vgg_inits", *(("recipe_fills",) if recipe else ())):
        need(set(getattr(cfg, field)) <= set(INITS), field, f"be names from {INITS}")
    for field in ("depths", "seeds", "inits", "widths", "vgg_widths"):
        need(getattr(cfg, field), field, "not be empty")
    for field in ("steps", "vgg_steps", "record_every", "batch_size", "n_probe"):
        need(getattr(cfg, field) >= 1, field, "be >= 1")
    for field in ("steps", "vgg_steps", *(("recipe_a_steps",) if recipe else ())):
        need(getattr(cfg, field) % cfg.record_every == 0, field, f"be a multiple of `record_every`={cfg.record_every}")
    need(cfg.vgg_input_scale > 0, "vgg_input_scale", "be > 0")
    least = len(cfg.widths) + cfg.fc_layers
    need(min(cfg.depths) >= least, "depths", f"be >= len(widths) + fc_layers = {least}")
    least_vgg = len(cfg.vgg_widths) + cfg.fc_layers
    need(cfg.vgg_depth >= least_vgg, "vgg_depth", f"be >= len(vgg_widths) + fc_layers = {least_vgg}")
    if recipe:
        need(cfg.recipe_a_depth >= least_vgg, "recipe_a_depth", f"be >= len(vgg_widths) + fc_layers = {least_vgg}")
        need(cfg.recipe_depth > cfg.recipe_a_depth, "recipe_depth", f"exceed `recipe_a_depth`={cfg.recipe_a_depth}")
        n_a = cfg.recipe_a_depth - cfg.fc_layers
        need(0 <= cfg.recipe_copy_convs <= n_a, "recipe_copy_convs", f"be in [0, {n_a}]")


def trials(cfg: Config) -> list[dict]:
    """The grid, each trial a dict of part, net, n_layers, init, seed, steps:

    - part "train": one net trained for up to `steps` updates: net "grid" (every n_layers of `depths` x
      `train_inits` x seed, budget `steps`) or net "vgg" (`vgg_depth` x `vgg_inits` x seed, budget `vgg_steps`);
    - part "recipe" (net "vgg", init "recipe"): one seed of the VGG recipe (net A, then the deeper net per fill);
    - part "init" (init "all", steps 0): every init of the net's list at one (n_layers, seed), at initialization
      only: the same weights the "train" trials start from.
    Longest first (by n_layers x width^2 x steps), so that a pool of workers finishes together.
    """
    check_config(cfg)
    train = [dict(part="train", net="grid", n_layers=int(n), init=i, seed=int(s), steps=cfg.steps)
             for n in cfg.depths for i in cfg.train_inits for s in cfg.seeds]  # fmt: skip
    vgg_depths = sorted({cfg.vgg_depth, *((cfg.recipe_depth,) if cfg.recipe_a_depth else ())})
    train += [dict(part="train", net="vgg", n_layers=n, init=i, seed=int(s), steps=cfg.vgg_steps)
              for n in vgg_depths for i in cfg.vgg_inits for s in cfg.seeds]  # fmt: skip
    recipe = [dict(part="recipe", net="vgg", n_layers=cfg.recipe_depth, init="recipe", seed=int(s), steps=cfg.vgg_steps)
              for s in cfg.seeds if cfg.recipe_a_depth]  # fmt: skip
    at_init = [dict(part="init", net="grid", n_layers=int(n), init="all", seed=int(s), steps=0)
               for n in cfg.depths for s in cfg.seeds]  # fmt: skip
    at_init += [dict(part="init", net="vgg", n_layers=cfg.vgg_depth, init="all", seed=int(s), steps=0)
                for s in cfg.seeds]  # fmt: skip

    def cost(t: dict) -> float:
        width = max(_widths(cfg, t["net"])) ** 2
        if t["part"] == "recipe":
            return width * (
                cfg.recipe_a_depth * cfg.recipe_a_steps + len(cfg.recipe_fills) * t["n_layers"] * t["steps"]
            )
        return width * t["n_layers"] * t["steps"]

    return sorted(train + recipe, key=lambda t: -cost(t)) + at_init


def _widths(cfg: Config, net: str) -> tuple[int, ...]:
    if net not in NETS:
        raise ValueError(f"trial `net` must be one of {NETS}. Received: net={net!r}")
    return cfg.widths if net == "grid" else cfg.vgg_widths


def _scale(cfg: Config, net: str) -> float:
    return 1.0 if net == "grid" else float(cfg.vgg_input_scale)


# ---------------------------------------------------------------------------------------------------- one trial


@functools.lru_cache(maxsize=4)
def _scaled(cfg: Config, net: str) -> dict[str, np.ndarray]:
    """The Config's data (or its fallback) as the net sees it: x_train, y_train, x_test, y_test, the probe batch (the
    first n_probe training images), with every image multiplied by the net's input scale (cached per process)."""
    d = _data(cfg)
    s = _scale(cfg, net)
    x, x_test = (d.x_train, d.x_test) if s == 1.0 else (d.x_train * np.float32(s), d.x_test * np.float32(s))
    return {"x": x, "y": d.y_train, "x_test": x_test, "y_test": d.y_test, "probe_x": x[: cfg.n_probe],
            "probe_y": d.y_train[: cfg.n_probe]}  # fmt: skip


def _data(cfg: Config):
    """The Config's data set, or its fallback_data when the files of `data` are absent (cached per process)."""
    return load_data(cfg.data, fallback=cfg.fallback_data, n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.size)


# Per process: one compiled net per architecture (keras_initkit.study.training.ModelCache), with its at-init monitor;
# the train step and the monitor's probe pass are traced once per architecture and process, not once per trial.
_MODELS = ModelCache()


def fresh_net(cfg: Config, net: str, n_layers: int, init: str | dict[str, str], seed: int):
    """(compiled model, its at-init VarianceMonitor on the net's probe batch), with the weights
    `build_vgg(n_layers, widths=<the net's>, init=init, seed=seed)` has and a fresh optimizer state."""
    from keras_initkit.monitor import VarianceMonitor

    d, widths = _data(cfg), _widths(cfg, net)
    key = (cfg.data, cfg.fallback_data, cfg.n_train, cfg.size, net, _scale(cfg, net), n_layers, widths, cfg.fc_layers,
           cfg.fc_width, cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.record_every, cfg.n_probe)  # fmt: skip
    kw = dict(widths=widths, fc_layers=cfg.fc_layers, fc_width=cfg.fc_width, fixed_std=cfg.fixed_std)
    build = functools.partial(build_vgg, d.x_train.shape[1:], d.num_classes, n_layers, init=init, seed=seed, **kw)
    compile = functools.partial(compile_sgd, learning_rate=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, steps_per_execution=cfg.record_every)  # fmt: skip
    entry = _MODELS.fresh(key, build, compile)
    if "monitor" not in entry.extra:
        s = _scaled(cfg, net)
        names = [la.name for la in weight_layers(entry.model)]
        entry.extra["monitor"] = VarianceMonitor(probe=(s["probe_x"], s["probe_y"]), layers=names, stats=["var", "std"])
    return entry.model, entry.extra["monitor"]


def _train(model: keras.Model, cfg: Config, net: str, steps: int, seed: int, offset: int = 0) -> pd.DataFrame:
    """`steps` SGD updates (fewer when cfg.stop_at_threshold and the loss reaches the threshold); the curve (step,
    loss) with a row at step `offset` for the probe batch's loss before the first update."""
    s = _scaled(cfg, net)
    return fit_curve(
        model, s["x"], s["y"], steps=steps, every=cfg.record_every, batch_size=cfg.batch_size,
        seed=derive_seed(seed, "order", offset), offset=offset,
        start=lambda m: {"loss": cross_entropy(m, s["probe_x"], s["probe_y"])},
        stop_below=cfg.loss_threshold if cfg.stop_at_threshold else None,
    )  # fmt: skip


def curve_outcome(curve: pd.DataFrame, threshold: float) -> dict:
    """From a loss curve (step, loss; its first row before training): updates to the threshold and the final loss.

    steps_to_threshold: updates until the end of the first chunk whose mean loss is <= threshold (NaN if never, or
    if the loss became non-finite). escaped: that chunk exists. final_loss: the last chunk's mean loss. diverged: a
    non-finite loss.
    """
    start = int(curve["step"].min())
    trained = curve[curve["step"] > start]
    losses = trained["loss"].to_numpy(dtype=float)
    diverged = bool(len(losses) and not np.isfinite(losses).all())
    hit = trained.loc[trained["loss"] <= threshold, "step"]
    escaped = bool(len(hit)) and not diverged
    return {"steps_to_threshold": float(hit.iloc[0] - start) if escaped else float("nan"), "escaped": escaped,
            "final_loss": float(losses[-1]) if len(losses) else float("nan"), "diverged": diverged}  # fmt: skip


def floor_outcome(right: np.ndarray, y_test: np.ndarray) -> dict:
    """The floor rule on one net's test predictions (`right`: per test image, classified correctly): test error,
    the majority-class error of the test labels, the floor (`summary.floor_error`) and `learned` (error < floor)."""
    chance, n = majority_error(y_test), len(y_test)
    error = 1.0 - float(np.mean(right))
    floor = floor_error(chance, n)
    return {"test_err": error, "chance_err": chance, "floor_err": floor, "learned": bool(error < floor)}


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
    net = trial["net"]
    frames = []
    for init in cfg.inits if net == "grid" else cfg.vgg_inits:
        model, monitor = fresh_net(cfg, net, trial["n_layers"], init, int(trial["seed"]))
        frames.append(measure_at_init(model, monitor, _scaled(cfg, net)["probe_x"]).assign(init=init))
    return {"layers": with_trial(pd.concat(frames, ignore_index=True), trial, TRIAL_KEYS, keep=("init",))}


def _trained(cfg: Config, trial: dict, model: keras.Model, curve: pd.DataFrame, start: float, **extra):
    """One trained net's tables, with the trial's keys and `extra` (phase, ...): its curve, its "final" row
    (`curve_outcome`, `test_outcome`, the wall time since `start`) and its per-image "correct" rows."""
    s = _scaled(cfg, trial["net"])
    right = correct(model, s["x_test"], s["y_test"])
    outcome = {**curve_outcome(curve, cfg.loss_threshold), **floor_outcome(right, s["y_test"])}
    final = pd.DataFrame([{**outcome, "wall_s": time.perf_counter() - start}])
    images = pd.DataFrame({"image": np.arange(len(right)), "correct": right})
    phase = {"phase": extra["phase"]}
    return (with_trial(curve, trial, TRIAL_KEYS, **phase), with_trial(final, trial, TRIAL_KEYS, **extra),
            with_trial(images, trial, TRIAL_KEYS, **phase))  # fmt: skip


def _train_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    start, seed, net = time.perf_counter(), int(trial["seed"]), trial["net"]
    model, _ = fresh_net(cfg, net, trial["n_layers"], trial["init"], seed)
    curve = _train(model, cfg, net, trial["steps"], seed)
    tables = _trained(cfg, trial, model, curve, start, phase="scratch", a_steps=0, copied="")
    return dict(zip(("curves", "final", "correct"), tables, strict=True))


def _recipe_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """Net A from N(0, fixed_std^2), then one deeper net per fill, initialized from A (`transfer_layers`). Net A's
    rows have its own n_layers (recipe_a_depth), the deeper nets' the trial's; the deeper nets' updates are counted
    from A's start (their curves begin at A's last step)."""
    seed, start, net = int(trial["seed"]), time.perf_counter(), trial["net"]
    net_a, _ = fresh_net(cfg, net, cfg.recipe_a_depth, "fixed", derive_seed(seed, "net A"))
    curve_a = _train(net_a, cfg, net, cfg.recipe_a_steps, derive_seed(seed, "net A"))
    a_steps = int(curve_a["step"].max())
    a_trial = {**trial, "n_layers": cfg.recipe_a_depth, "steps": cfg.recipe_a_steps}
    tables = [_trained(cfg, a_trial, net_a, curve_a, start, phase="A", a_steps=0, copied="")]
    for fill in cfg.recipe_fills:
        start = time.perf_counter()
        deep, _ = fresh_net(cfg, net, trial["n_layers"], fill, seed)
        copied = ",".join(transfer_layers(net_a, deep, cfg.recipe_copy_convs))
        curve = _train(deep, cfg, net, trial["steps"], seed, offset=a_steps)
        tables.append(_trained(cfg, trial, deep, curve, start, phase=f"recipe_{fill}", a_steps=a_steps,
                               copied=copied))  # fmt: skip
    curves, finals, images = zip(*tables, strict=True)
    return {"curves": pd.concat(curves, ignore_index=True), "final": pd.concat(finals, ignore_index=True),
            "correct": pd.concat(images, ignore_index=True)}  # fmt: skip


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """One trial of `trials(cfg)`: part "init" (at-init variances of every init at one net, n_layers and seed),
    "train" (one net trained) or "recipe" (one seed of the VGG recipe).

    Tables: "layers" (at init, per init, weight layer and kind, with theory's prediction), "curves" (step, loss,
    phase), "final" (updates to the threshold, final loss, test error, the floor rule), "correct" (per test image),
    with the trial's keys as columns.
    """
    parts = {"init": _init_trial, "train": _train_trial, "recipe": _recipe_trial}
    part = trial.get("part")
    if part not in parts:
        raise ValueError(f"trial `part` must be 'init', 'train' or 'recipe'. Received: part={part!r}")
    _widths(cfg, trial.get("net"))
    set_random_seed(derive_seed(int(trial["seed"]), "trial", part, trial["n_layers"], trial["init"]))
    dataset = _data(cfg).name
    return {name: frame.assign(dataset=dataset) for name, frame in parts[part](cfg, trial).items()}


# ------------------------------------------------------------------------------------------ summaries and claims


def depth_factors(layers: pd.DataFrame) -> pd.DataFrame:
    """Per trial (net, n_layers, init, seed) and kind (preact, grad_preact): the measured and predicted per-layer
    factor of the variance over the conv layers after the first (`keras_initkit.study.summary.layer_factors` against
    the monitored layer's `depth`: going up; `factor_down` = 1 / factor for the gradients going down). Variances at
    or below UNDERFLOW are left out."""
    sel = layers[
        (layers["kind"].isin(("preact", "grad_preact")))
        & (layers["stat"] == "var")
        & (layers["layer"].str.startswith("conv"))
        & (layers["depth"] >= 1)
    ]
    return layer_factors(sel, ["net", "n_layers", "init", "seed", "kind"], x="depth", predicted="predicted")


def gradient_ratio(layers: pd.DataFrame, reference: str = "he_fan_in", layer: str | None = None) -> pd.DataFrame:
    """Per net, n_layers, seed and init: std of dC/ds and of dC/dW at one layer (default the second weight layer,
    conv2 as in He et al.) divided by the reference init's, same net, n_layers and seed.

    Columns: net, n_layers, seed, kind, init, std, ratio, predicted_ratio (dC/ds only: sqrt of theory's variance
    ratio), underflow (the float32 std is 0: the gradient underflowed; ratio is then NaN).
    """
    keys = ["net", "n_layers", "seed", "kind"]
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


def censored_steps(rows: pd.DataFrame) -> pd.Series:
    """Updates to escape, a net that never escaped counted as its budget (`steps`): the H3 pairing's measure."""
    return rows["steps_to_threshold"].where(rows["escaped"].astype(bool), rows["steps"]).astype(float)


def escape_table(final: pd.DataFrame) -> pd.DataFrame:
    """The updates-to-escape curve of the grid: per (n_layers, init), seeds, escaped and learned counts, and the
    updates to escape (median, min, max over the seeds that escaped), with the budget."""
    grid = _rows(final, part="train", net="grid")
    if len(grid) == 0:
        return pd.DataFrame()
    return grid.groupby(["n_layers", "init"], as_index=False, sort=True).agg(
        n=("seed", "size"), escaped=("escaped", "sum"), learned=("learned", "sum"),
        steps_median=("steps_to_threshold", "median"), steps_min=("steps_to_threshold", "min"),
        steps_max=("steps_to_threshold", "max"), budget=("steps", "max"), test_err_mean=("test_err", "mean"),
    )  # fmt: skip


def training_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per (net, phase, n_layers, init): seeds, escaped and learned counts, updates to the threshold and final loss
    spread, test error and its floor."""
    if final is None or len(final) == 0:
        return pd.DataFrame()
    return final.groupby(["net", "phase", "n_layers", "init"], as_index=False, sort=True).agg(
        n=("seed", "size"), escaped=("escaped", "sum"), learned=("learned", "sum"),
        **{f"steps_{s}": ("steps_to_threshold", s) for s in ("mean", "std", "min", "max")},
        final_loss_mean=("final_loss", "mean"), test_err_mean=("test_err", "mean"), test_err_min=("test_err", "min"),
        test_err_max=("test_err", "max"), floor_err=("floor_err", "first"), a_steps=("a_steps", "max"),
    )  # fmt: skip


def recipe_table(final: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """The VGG recipe per seed beside the same deeper net from N(0, 0.01) and from He: test error, learned, updates
    to the threshold (the recipe's deeper net counted from its own start; `total` adds net A's updates)."""
    if final is None or len(final) == 0 or not cfg.recipe_a_depth:
        return pd.DataFrame()
    nets = {"a": _rows(final, part="recipe", phase="A"),
            **{fill: _rows(final, part="recipe", phase=f"recipe_{fill}") for fill in cfg.recipe_fills},
            **{f"{i}_scratch": _rows(final, part="train", net="vgg", n_layers=cfg.recipe_depth, init=i)
               for i in cfg.vgg_inits}}  # fmt: skip
    rows = []
    for seed in sorted(set().union(*(set(r["seed"]) for r in nets.values()))):
        row = {"seed": int(seed)}
        for name, r in nets.items():
            r = r[r["seed"] == seed]
            if len(r):
                row.update({f"{name}_test_err": float(r["test_err"].iloc[0]),
                            f"{name}_learned": bool(r["learned"].iloc[0]),
                            f"{name}_steps": float(r["steps_to_threshold"].iloc[0])})  # fmt: skip
                if name in cfg.recipe_fills:
                    row[f"{name}_total"] = row[f"{name}_steps"] + float(r["a_steps"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows)


def _rows(frame: pd.DataFrame, **match) -> pd.DataFrame:
    """The rows of `frame` whose columns equal `match` (no row when a column is missing)."""
    if frame is None or len(frame) == 0 or any(c not in frame.columns for c in match):
        return pd.DataFrame(columns=[*(frame.columns if frame is not None else []), *match])
    keep = np.ones(len(frame), dtype=bool)
    for column, value in match.items():
        keep &= (frame[column] == value).to_numpy()
    return frame[keep]


def _seeds(*frames: pd.DataFrame) -> int:
    """The fewest distinct seeds among `frames`."""
    return min(f["seed"].nunique() for f in frames)


def _combine(verdicts) -> str:
    """A claim's verdict from its parts' (per seed) verdicts: FAIL if any fails, else INCONCLUSIVE if any is, else
    PASS."""
    verdicts = list(verdicts)
    return "FAIL" if "FAIL" in verdicts else "INCONCLUSIVE" if "INCONCLUSIVE" in verdicts else "PASS"


def _by_seed(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Rows of `a` and `b` paired by seed (columns suffixed _a and _b)."""
    return a[["seed", *columns]].merge(b[["seed", *columns]], on="seed", suffixes=("_a", "_b"))


_claim = functools.partial(claim_row, CLAIMS, RULES)
_TOO_FEW = f"INCONCLUSIVE: fewer than {MIN_SEEDS} seeds in a cell; "


def _verdict(claim: str, verdict: str, measured: str, paper: str, n_seeds: int | None = None) -> dict:
    """A claims row; a claim evaluated on fewer than MIN_SEEDS seeds is INCONCLUSIVE (its rule's result is kept in
    `measured`)."""
    if n_seeds is not None and n_seeds < MIN_SEEDS and verdict != "N/A":
        return _claim(claim, "INCONCLUSIVE", f"{_TOO_FEW}the rule alone gives {verdict}: {measured}", paper)
    return _claim(claim, verdict, measured, paper)


def claim_h1(factors: pd.DataFrame, vgg_depth: int) -> dict:
    """H1 from `depth_factors` (see RULES["H1"])."""
    paper = "rho = 1/2 (fan-in Xavier), 1 (He) per layer (He et al. Eq 7, 10); VGG's std 0.01: 0.03-0.23"
    pre = _rows(factors, kind="preact")
    fan_in, he = _rows(pre, net="grid", init="glorot_fan_in"), _rows(pre, net="grid", init="he_fan_in")
    fixed = _rows(pre, net="vgg", n_layers=vgg_depth, init="fixed")
    if min(len(fan_in), len(he), len(fixed)) == 0:
        return _claim("H1", "N/A", "needs at-init grid nets (GlorotFanIn, He) and the VGG net (FixedNormal)", paper)
    slowest = fan_in.groupby("seed", as_index=False)["factor"].min().rename(columns={"factor": "factor_fan_in"})
    paired = fixed.merge(slowest, on="seed", how="left")
    halves = fan_in["factor"].between(HALF_LOW, HALF_HIGH, inclusive="neither")
    flat = he["factor"].between(FLAT_LOW, FLAT_HIGH, inclusive="neither")
    vgg_range = fixed["factor"].between(VGG_LOW, VGG_HIGH)
    faster = paired["factor"] < paired["factor_fan_in"]
    ok = bool(halves.all() and flat.all() and vgg_range.all() and faster.all())
    measured = (
        f"grid: GlorotFanIn rho = {spread(fan_in['factor'])} ({int(halves.sum())}/{len(fan_in)} halve; predicted "
        f"{spread(fan_in['predicted'])}); He fan_in rho = {spread(he['factor'])} ({int(flat.sum())}/{len(he)} "
        f"constant; predicted {spread(he['predicted'])}); VGG net: FixedNormal rho = {spread(fixed['factor'])} "
        f"({int(vgg_range.sum())}/{len(fixed)} in [{VGG_LOW:g}, {VGG_HIGH:g}], {int(faster.sum())}/{len(fixed)} below "
        f"GlorotFanIn's; predicted {spread(fixed['predicted'])})"
    )
    return _verdict("H1", "PASS" if ok else "FAIL", measured, paper, _seeds(fan_in, he, fixed))


def _outcome_text(rows: pd.DataFrame, label: str) -> str:
    hit = int(rows["escaped"].sum())
    after = f" after {spread(rows['steps_to_threshold'], '.0f')} updates" if hit else ""
    budget = int(rows["steps"].max()) if len(rows) else 0
    return (
        f"{label}: {hit}/{len(rows)} escape within {budget}{after}, {int(rows['learned'].sum())}/{len(rows)} learned, "
        f"test error {spread(100 * rows['test_err'])}%"
    )


def _he_and_xavier(final: pd.DataFrame, n_layers: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    grid = _rows(final, part="train", net="grid", n_layers=n_layers)
    return _rows(grid, init="he_fan_in"), _rows(grid, init="glorot_fan_in")


def _floor_text(rows: pd.DataFrame) -> str:
    return f"floor {100 * float(rows['floor_err'].iloc[0]):.1f}% error" if len(rows) else "no floor"


def claim_h2(final: pd.DataFrame, n_layers: int = 30) -> dict:
    """H2 (see RULES["H2"])."""
    paper = "30 layers (27 conv + 3 fc): He converges; Xavier 'completely stalls' (He et al. Fig 3)"
    he, xavier = _he_and_xavier(final, n_layers)
    if len(he) == 0 or len(xavier) == 0:
        return _claim("H2", "N/A", f"no trained grid nets (He fan_in, GlorotFanIn) of {n_layers} layers", paper)
    pairs = _by_seed(he, xavier, ["escaped", "learned"])
    per_seed = [
        "PASS" if p.escaped_a and not p.learned_b else "INCONCLUSIVE" if not (p.learned_a or p.learned_b) else "FAIL"
        for p in pairs.itertuples()
    ]
    measured = (
        f"{n_layers} layers ({_floor_text(he)}): {_outcome_text(he, 'He fan_in')}; "
        f"{_outcome_text(xavier, 'GlorotFanIn')}; per seed {''.join(v[0] for v in per_seed)}"
    )
    return _verdict("H2", _combine(per_seed), measured, paper, _seeds(he, xavier))


def claim_h3(final: pd.DataFrame, n_layers: int = 22) -> dict:
    """H3 (see RULES["H3"])."""
    paper = "22 layers: both converge, He starts reducing the error earlier (He et al. Fig 2)"
    he, xavier = _he_and_xavier(final, n_layers)
    if len(he) == 0 or len(xavier) == 0:
        return _claim("H3", "N/A", f"no trained grid nets (He fan_in, GlorotFanIn) of {n_layers} layers", paper)
    he, xavier = he.assign(censored=censored_steps(he)), xavier.assign(censored=censored_steps(xavier))
    pairs = _by_seed(he, xavier, ["escaped", "learned", "censored"])
    per_seed = []
    for p in pairs.itertuples():
        if not (p.learned_a or p.learned_b):
            per_seed.append("INCONCLUSIVE")
        else:
            per_seed.append("PASS" if p.escaped_a and p.censored_a < p.censored_b else "FAIL")
    majority = int(xavier["escaped"].sum()) > len(xavier) / 2
    verdict = _combine(per_seed)
    if verdict == "PASS" and not majority:
        verdict = "FAIL"
    diff = pairs["censored_b"] - pairs["censored_a"]
    measured = (
        f"{n_layers} layers ({_floor_text(he)}): {_outcome_text(he, 'He fan_in')}; "
        f"{_outcome_text(xavier, 'GlorotFanIn')}; GlorotFanIn escapes in a majority: {'yes' if majority else 'no'}; "
        f"updates Xavier - He (never = budget) paired by seed {spread(diff, '.0f', ci=0.95)}; per seed "
        f"{''.join(v[0] for v in per_seed)}" + _other_depths(final, n_layers)
    )
    return _verdict("H3", verdict, measured, paper, _seeds(he, xavier))


def _other_depths(final: pd.DataFrame, n_layers: int) -> str:
    """For the record (not part of the rule): the escape counts at the grid's other n_layers."""
    grid = _rows(final, part="train", net="grid")
    parts = []
    for n in sorted(set(grid["n_layers"]) - {n_layers}):
        he, xavier = _he_and_xavier(final, n)
        if len(he) and len(xavier):
            parts.append(f"{n} layers: He {_reached(he)}, GlorotFanIn {_reached(xavier)}")
    return f" (other n_layers, not part of the rule: {'; '.join(parts)})" if parts else ""


def _escaped_text(rows: pd.DataFrame) -> str:
    """The text 'k/n escaped within <budget>[ after <spread of the escaped nets' updates>]'."""
    hit = rows[rows["escaped"].astype(bool)]
    after = f" after {spread(hit['steps_to_threshold'], '.0f')}" if len(hit) else ""
    return f"{len(hit)}/{len(rows)} escaped within {int(rows['steps'].max())}{after}"


def _reached(rows: pd.DataFrame) -> str:
    hit = int(rows["escaped"].sum())
    at = f" median {rows['steps_to_threshold'].median():.0f} updates" if hit else ""
    return f"{hit}/{len(rows)} escape{at}"


def claim_h4(final: pd.DataFrame, ratios: pd.DataFrame, vgg_depth: int) -> dict:
    """H4 (see RULES["H4"]): (a) the VGG nets of `vgg_depth` layers trained from N(0, 0.01) and He, (b) the conv2
    gradient ratios at init."""
    paper = f"VGG B (13 layers): gradient at conv2 {PAPER_H4:.2g} (1/1.7e4) of He's; deep N(0, 0.01) nets stall"
    vgg = _rows(final, part="train", net="vgg", n_layers=vgg_depth)
    fixed, he = _rows(vgg, init="fixed"), _rows(vgg, init="he_fan_in")
    at = _rows(ratios, net="vgg", n_layers=vgg_depth, init="fixed")
    sel, kernel = _rows(at, kind="grad_preact"), _rows(at, kind="grad_kernel")
    if min(len(fixed), len(he), len(sel)) == 0:
        need = f"needs trained VGG nets (FixedNormal, He) of {vgg_depth} layers and their at-init gradients"
        return _claim("H4", "N/A", need, paper)
    pairs = _by_seed(fixed, he, ["learned"])
    part_a = [
        "PASS" if p.learned_b and not p.learned_a else "INCONCLUSIVE" if not (p.learned_a or p.learned_b) else "FAIL"
        for p in pairs.itertuples()
    ]
    low, high = PAPER_H4 / H4_ORDER, PAPER_H4 * H4_ORDER
    ratio = sel["ratio"].astype(float)
    small = ratio < H4_MAX_RATIO
    order = ratio.between(low, high)
    part_b = ["PASS" if ok else "FAIL" for ok in (small & order)]
    measured = (
        f"(a) {vgg_depth} layers ({_floor_text(fixed)}): {_outcome_text(fixed, 'FixedNormal')}; "
        f"{_outcome_text(he, 'He fan_in')}; per seed {''.join(v[0] for v in part_a)}; (b) std dC/ds at conv2 "
        f"FixedNormal / He = {spread(ratio)} ({int(small.sum())}/{len(sel)} below {H4_MAX_RATIO:g}, "
        f"{int(order.sum())}/{len(sel)} in [{low:.2g}, {high:.2g}]; {int(sel['underflow'].sum())} underflowed; theory "
        f"{spread(sel['predicted_ratio'])}); dC/dW ratio {spread(kernel['ratio'])}"
    )
    return _verdict("H4", _combine(part_a + part_b), measured, paper, _seeds(fixed, he, sel))


def correct_matrix(correct_rows: pd.DataFrame, seeds) -> np.ndarray:
    """(seeds, images) booleans "classified correctly" of one net per seed, rows in the order of `seeds`."""
    wide = correct_rows.pivot_table(index="seed", columns="image", values="correct", aggfunc="first")
    return wide.loc[list(seeds)].to_numpy(dtype=bool)


def claim_h5(final: pd.DataFrame, correct_rows: pd.DataFrame, recipe_depth: int, fill: str = "fixed") -> dict:
    """H5 (see RULES["H5"]): from the recipe's nets, the VGG nets from scratch, and their per-image test results."""
    paper = "S&Z 3.1: A (11 layers) from N(0, 0.01), deeper nets from A; He et al.: He init trains them from scratch"
    a, recipe = _rows(final, part="recipe", phase="A"), _rows(final, part="recipe", phase=f"recipe_{fill}")
    vgg = _rows(final, part="train", net="vgg", n_layers=recipe_depth)
    fixed, he = _rows(vgg, init="fixed"), _rows(vgg, init="he_fan_in")
    if min(len(a), len(recipe), len(fixed), len(he)) == 0:
        return _claim("H5", "N/A", "needs the recipe's nets and the VGG nets (FixedNormal, He) from scratch", paper)
    cols = ["learned"]
    seeds = sorted(set(a["seed"]) & set(recipe["seed"]) & set(fixed["seed"]) & set(he["seed"]))
    table = {name: r.set_index("seed").loc[seeds, cols] for name, r in
             (("a", a), ("recipe", recipe), ("fixed", fixed), ("he", he))}  # fmt: skip
    per_seed = []
    for s in seeds:
        learned = {name: bool(t.at[s, "learned"]) for name, t in table.items()}
        if not learned["he"] and not learned["recipe"]:
            per_seed.append("INCONCLUSIVE")
        else:
            ok = learned["a"] and learned["recipe"] and learned["he"] and not learned["fixed"]
            per_seed.append("PASS" if ok else "FAIL")
    scope = _rows(correct_rows, net="vgg", n_layers=recipe_depth)
    m = {name: correct_matrix(_rows(scope, part=part, phase=phase, **extra), seeds) for name, part, phase, extra in (
        ("recipe", "recipe", f"recipe_{fill}", {}), ("fixed", "train", "scratch", {"init": "fixed"}),
        ("he", "train", "scratch", {"init": "he_fan_in"}))}  # fmt: skip
    test = mcnemar(m["recipe"], m["fixed"])
    better = test["a_only"] > test["b_only"] and test["p"] < MCNEMAR_ALPHA
    verdict = _combine(per_seed)
    if verdict == "PASS" and not better:
        verdict = "FAIL"
    text = lambda rows, label: (f"{label} learned {int(rows['learned'].sum())}/{len(rows)}, test error "  # noqa: E731
                                f"{spread(100 * rows['test_err'])}%")  # fmt: skip
    a_label = f"net A ({int(a['n_layers'].iloc[0])} layers, N(0, 0.01))"
    measured = (
        f"{_floor_text(recipe)}; {text(a, a_label)}; "
        f"{text(recipe, f'{recipe_depth} layers from A')} ({_escaped_text(recipe)} updates after A's); "
        f"{text(fixed, 'FixedNormal from scratch')}; {text(he, 'He from scratch')} ({_escaped_text(he)}); "
        f"per seed {''.join(v[0] for v in per_seed)}; recipe vs "
        f"FixedNormal from scratch: {paired_text(m['recipe'], m['fixed'])}; for the record, recipe vs He from "
        f"scratch: {paired_text(m['recipe'], m['he'])}"
    )
    return _verdict("H5", verdict, measured, paper, _seeds(a, recipe, fixed, he))


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Summary tables (per-layer factors, gradient ratios, the escape curve, training outcomes, the recipe) and the
    claims."""
    layers = tables.get("layers")
    if layers is None or len(layers) == 0:
        layers = pd.DataFrame(columns=["layer", "depth", "kind", "stat", "value", "predicted", "net", "n_layers",
                                       "init", "seed"])  # fmt: skip
    final = tables.get("final", pd.DataFrame(columns=["part", "net", "n_layers", "init", "seed", "phase"]))
    correct_rows = tables.get("correct", pd.DataFrame(columns=["part", "net", "init", "seed", "phase", "image"]))
    factors, ratios = depth_factors(layers), gradient_ratio(layers)
    by = ["net", "kind", "init", "n_layers"]
    factor_summary = factors.groupby(by, as_index=False, sort=True).agg(
        n=("factor", "size"), factor_mean=("factor", "mean"), factor_std=("factor", "std"),
        factor_min=("factor", "min"), factor_max=("factor", "max"), predicted=("predicted", "mean"),
    )  # fmt: skip
    ratio_summary = ratios[ratios["init"] != "he_fan_in"].groupby(by, as_index=False).agg(
        n=("ratio", "size"), ratio_mean=("ratio", "mean"), ratio_min=("ratio", "min"), ratio_max=("ratio", "max"),
        predicted=("predicted_ratio", "mean"), underflow=("underflow", "sum"),
    )  # fmt: skip
    deepest = max(cfg.depths)
    claims = pd.DataFrame([
        claim_h1(factors, cfg.vgg_depth), claim_h2(final, deepest), claim_h3(final, 22),
        claim_h4(final, ratios, cfg.vgg_depth),
        claim_h5(final, correct_rows, cfg.recipe_depth, cfg.recipe_fills[0] if cfg.recipe_fills else "fixed"),
    ])  # fmt: skip
    used = sorted({str(x) for f in (layers, final) if "dataset" in f for x in f["dataset"].dropna()})
    if used and used != [cfg.data]:
        claims["measured"] = claims["measured"] + f" (data: {', '.join(used)}; {cfg.data!r} files absent here)"
    return {
        "claims": claims,
        "escape": escape_table(final),
        "training": training_table(final),
        "recipe": recipe_table(final, cfg),
        "depth_factors": factor_summary,
        "gradient_ratio": ratio_summary,
    }


# ------------------------------------------------------------------------------------------------------- figures


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """Figures from the saved tables: variance vs layer (measured and predicted), the grid's loss curves faceted by
    n_layers, the updates-to-escape curve and heat map, and the VGG nets' curves (recipe and from scratch)."""
    figures = {}
    layers, curves, final = (tables.get(name) for name in ("layers", "curves", "final"))
    if layers is not None and len(layers):
        figures["variance_forward"] = plot_variance(layers, "preact")
        figures["variance_backward"] = plot_variance(layers, "grad_preact")
    if curves is not None and len(curves) and (curves["net"] == "grid").any():
        figures["loss_curves"] = plot_curves(curves)
    if curves is not None and len(curves) and (curves["net"] == "vgg").any():
        figures["vgg_nets"] = plot_vgg(curves)
    if final is not None and len(final) and (final["net"] == "grid").any():
        figures["escape_curve"] = plot_escape(final)
        figures["steps_heatmap"] = plot_heatmap(final)
    return figures


VARIANCE_FLOOR = 1e-18  # lower end of the variance axes: FixedNormal goes on below it


def _palette() -> dict:
    """Init label -> colour (`keras_initkit.plots.palette` over every init's label), the same in every figure."""
    from keras_initkit.plots import palette

    return palette(sorted(INIT_LABELS.values()))


def plot_variance(layers: pd.DataFrame, kind: str = "preact"):
    """`keras_initkit.plots.variance_vs_depth` of one kind (Var(s) going up, or Var(dC/ds) going down) against the
    weight layer's index (`depth`), one panel per net (n_layers; the VGG net is the one of vgg_depth layers), one
    colour per init: measured (band = the seeds' range) and theory's prediction (dashed), log scale. Variances that
    underflowed (<= UNDERFLOW) are left out."""
    from keras_initkit.plots import variance_vs_depth

    sel = layers[(layers["stat"] == "var") & (layers["kind"] == kind)]
    sel = sel.assign(init=sel["init"].map(INIT_LABELS))
    predicted = sel[sel["predicted"] > UNDERFLOW].drop(columns="value").rename(columns={"predicted": "value"})
    direction = "forward, input side first" if kind == "preact" else "backward (dC/ds), input side first"
    fig = variance_vs_depth(
        sel[sel["value"] > UNDERFLOW], kind, x="depth", hue="init", col="n_layers", predicted=predicted, step=None,
        errorbar=("pi", 100), palette=_palette(),
        title=f"At initialization, {direction}: measured (band = seeds' range) and theory.predict_variance (dashed)"
        f"; the VGG net (256 channels) is the {sorted(set(_rows(layers, net='vgg')['n_layers']))} panel",
    )  # fmt: skip
    for ax in fig.axes:
        ax.set_ylim(bottom=VARIANCE_FLOOR)
        ax.set_xlabel("weight layer (0 = first conv)")
    return fig


def plot_curves(curves: pd.DataFrame):
    """The grid's training loss per n_layers (one panel each) and init (colour); one thin line per seed."""
    from keras_initkit.plots import learning_curves

    sel = _rows(curves, part="train", net="grid")
    sel = sel.assign(label=sel["init"].map(INIT_LABELS))
    return learning_curves(
        sel, "loss", hue="label", col="n_layers", units="seed", palette=_palette(), col_label="{level} layers",
        hue_order=[INIT_LABELS[i] for i in INITS if INIT_LABELS[i] in set(sel["label"])], xlabel="SGD updates",
        ylabel="training loss (chunk mean)",
        title="Grid: training loss per n_layers x init (one line per seed; a net stops at the loss threshold)",
    )  # fmt: skip


def plot_escape(final: pd.DataFrame):
    """The updates-to-escape curve: per init, updates to the loss threshold against n_layers, one point per seed
    (jittered), the median as a line; a net that never escaped is drawn at its budget as an 'x'."""
    from matplotlib.figure import Figure

    grid = _rows(final, part="train", net="grid")
    colors = _palette()
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    inits = [i for i in INITS if i in set(grid["init"])]
    for k, init in enumerate(inits):
        rows = grid[grid["init"] == init]
        color = colors[INIT_LABELS[init]]
        shift = (k - (len(inits) - 1) / 2) * 0.35
        hit, miss = rows[rows["escaped"].astype(bool)], rows[~rows["escaped"].astype(bool)]
        jitter = np.linspace(-0.15, 0.15, max(len(rows["seed"].unique()), 1))
        order = {s: jitter[j] for j, s in enumerate(sorted(rows["seed"].unique()))}
        ax.scatter(hit["n_layers"] + shift + hit["seed"].map(order), hit["steps_to_threshold"], color=color, s=18,
                   label=f"{INIT_LABELS[init]} (escaped)")  # fmt: skip
        if len(miss):
            ax.scatter(miss["n_layers"] + shift + miss["seed"].map(order), miss["steps"], color=color, marker="x",
                       s=30, label=f"{INIT_LABELS[init]}: never within the budget")  # fmt: skip
        med = rows.assign(c=censored_steps(rows)).groupby("n_layers")["c"].median()
        ax.plot(med.index + shift, med.to_numpy(), color=color, lw=1, alpha=0.7)
    if len(grid):
        ax.axhline(float(grid["steps"].max()), color="#999999", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("n_layers (weight layers)")
    ax.set_ylabel("SGD updates to the loss threshold")
    ax.set_xticks(sorted(set(grid["n_layers"])))
    ax.legend(fontsize=7)
    ax.set_title("Updates to escape per n_layers x init, one point per seed (x: never, at the budget; line: median)",
                 fontsize=9)  # fmt: skip
    return fig


def plot_heatmap(final: pd.DataFrame):
    """Median updates to the loss threshold per n_layers x init of the grid, with the seeds that escaped; "never"
    where no seed escaped."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    grid = _rows(final, part="train", net="grid")
    rows, cols = sorted(set(grid["n_layers"])), [i for i in INITS if i in set(grid["init"])]
    values, text = np.full((len(rows), len(cols)), np.nan), np.full((len(rows), len(cols)), "-", dtype=object)
    for (r, n_layers), (c, init) in itertools.product(enumerate(rows), enumerate(cols)):
        cell = grid[(grid["n_layers"] == n_layers) & (grid["init"] == init)]
        n, hit = len(cell), int(cell["escaped"].sum())
        if hit:
            values[r, c] = cell["steps_to_threshold"].median()
            text[r, c] = f"{values[r, c]:.0f}\n({hit}/{n} seeds)"
        elif n:
            text[r, c] = f"never\n(0/{n})"
    fig = Figure(figsize=(1.6 * len(cols) + 1.5, 0.8 * len(rows) + 1.4), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis_r"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    for (r, c), label in np.ndenumerate(text):
        ax.text(c, r, label, ha="center", va="center", fontsize=8, color="#b00000" if label.startswith("n") else "k")
    ax.set_xticks(range(len(cols)), [INIT_LABELS[i] for i in cols], rotation=20)
    ax.set_yticks(range(len(rows)), [str(n) for n in rows])
    ax.set_ylabel("n_layers (weight layers)")
    fig.colorbar(im, ax=ax, label="median updates to the loss threshold (seeds that escaped)")
    ax.set_title("Grid: updates to the loss threshold; grey: never within the budget", fontsize=9)
    return fig


def plot_vgg(curves: pd.DataFrame):
    """The VGG nets: net A (N(0, 0.01)), the deeper net initialized from it (updates counted from A's start), and the
    deeper net from scratch (N(0, 0.01) and He fan_in); one line per seed."""
    from keras_initkit.plots import learning_curves

    vgg = _rows(curves, net="vgg")
    names = {}
    for (part, phase, init, n), _ in vgg.groupby(["part", "phase", "init", "n_layers"]):
        if part == "recipe":
            names[(part, phase, init, n)] = (
                f"net A ({n} layers), N(0, 0.01)"
                if phase == "A"
                else (f"{n} layers from A, other layers {INIT_LABELS.get(phase.removeprefix('recipe_'), phase)}")
            )
        else:
            names[(part, phase, init, n)] = f"{n} layers, {INIT_LABELS[init]} from scratch"
    key = list(zip(vgg["part"], vgg["phase"], vgg["init"], vgg["n_layers"], strict=True))
    frame = vgg.assign(run=[names[k] for k in key], start=np.where(vgg["part"] == "recipe", "recipe", "scratch"))
    from keras_initkit.plots import palette

    colors = palette(sorted(set(frame["run"])))  # one colour per run, however many nets the Config has
    return learning_curves(
        frame, "loss", hue="run", style="start", units="seed", palette=colors, xlabel="SGD updates (the deeper net "
        "from A starts after A's)", ylabel="training loss (chunk mean)",
        title="VGG nets: the recipe (Simonyan & Zisserman 3.1) vs N(0, 0.01) and He from scratch; one line per seed",
    )  # fmt: skip


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
