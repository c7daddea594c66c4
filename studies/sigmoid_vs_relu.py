"""Sigmoid vs ReLU: Glorot & Bengio 2010, "Understanding the difficulty of training deep feedforward neural networks".

Reproduces, on fully connected nets trained with plain SGD:
- Fig 2 (claim G1): sigmoid + standard init, 4 hidden layers: mean and std of each hidden layer's activations on 300
  held-out examples during training; the top hidden layer saturates at 0 early, the lower layers stay above 0.5.
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

Measurements. At init, `keras_initkit.monitor.VarianceMonitor` on the first `n_stats` (300) validation examples:
per hidden layer the mean, variance and std, and histograms, of activations, dC/ds and dC/dW (Figs 6-8). The
singular values of dz^(i+1)/dz^i, from GradientTape.batch_jacobian on `n_jacobian` examples, between consecutive
hidden layers (the input layer's Jacobian is not square) (Eq 17). During training, the mean and std of each hidden
layer's activations on the same 300 examples every `record_every` updates (Fig 2). After
training, the test error (Table 1).

Learning rate. QUICK fixes 0.1 for every activation family (recorded here, not tuned: one common plain-SGD rate).
PAPER chooses one rate per activation family among 0.3, 0.1, 0.03 and 0.01 by the mean validation error over the
family's trials (images held out of the training split), as the paper chose per model; see the `lr_choice` table.

Rules. Each claim's rule and its thresholds (the claims table) were fixed before any result was seen. A claim
PASSes only when its rule holds in every seed and on every data set; "measured" gives mean ± std [min, max] over
the trials (n).

Departures from the paper in QUICK: 4 hidden layers of 128 units (paper: 5 x 1000, and 4 in Fig 2); thousands of
updates instead of millions; a finite Shapeset sample; scikit-learn's 8x8 digits in place of MNIST and CIFAR-10 (no
download). Absolute errors are far from Table 1's; G6 and G7 test the orderings.

SMOKE: the whole pipeline (tables, claims, figures, report) in seconds: the six rows on a small Shapeset sample, one
seed, 3 hidden layers of 16 units, 40 updates.

Run: `make study-sigmoid` (QUICK) or
`python -m keras_initkit.study.cli sigmoid_vs_relu --profile quick|paper|smoke [--engine process --jobs 2]`.
Results: results/sigmoid_vs_relu/<profile>/; the QUICK report is copied to docs/results/sigmoid_vs_relu/.
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
from keras_initkit.study.grid import derive_seed
from keras_initkit.study.metrics import error_percent, jacobian_singular_values
from keras_initkit.study.models import build_mlp, weight_layers
from keras_initkit.study.summary import claim_row, layer_factors, se_diff, spread, with_trial
from keras_initkit.study.training import compile_sgd, fit_curve

NAME = "sigmoid_vs_relu"

CLAIMS = {
    "G1": "Fig 2: sigmoid, standard init, 4 hidden layers, statistics over a fixed set of 300 held-out examples: the "
    "top hidden layer's mean activation is driven to ~0 early in training, while lower layers stay above 0.5; with 5 "
    "layers the net does not escape within the budget.",
    "G2": "Fig 6: tanh at initialization: with standard init the activation variance shrinks layer by layer (the peak "
    "at 0 grows with depth); with normalized init it stays about the same across layers.",
    "G3": "Fig 7: at initialization, the variance of the back-propagated gradient dC/ds shrinks towards the input "
    "under standard init, and stays about constant under normalized init.",
    "G4": "Fig 8: at initialization, the variance of the weight gradients dC/dW is about the same in every layer under "
    "both initializations.",
    "G5": "Eq 17: the mean singular value of the layer-to-layer Jacobian is ~0.5 under standard and ~0.8 under "
    "normalized init (tanh).",
    "G6": "Table 1: after training, Tanh N beats Tanh; Sigmoid is worst; Softsign is little affected by the init.",
    "G7": "ReLU with He init keeps forward variance constant over depth and trains where sigmoid with standard init "
    "saturates.",
}

# Thresholds of the rules, fixed before any result was seen (see RULES). The per-layer factor of a variance is
# exp(slope) of a least-squares line through ln Var against the hidden-layer index: the average factor per layer.
# Glorot & Bengio's linear analysis (their Eq 1-13) predicts n Var(W) = 1/3 per layer under the standard init and
# 1 under the normalized init (square layers); a factor is "shrinking" when it is closer to 1/3 than to 1 in log
# scale (below 1/sqrt(3)) and "about constant" when it is closer to 1 than to 1/3 or to 3.
FACTOR_SPLIT = 1.0 / math.sqrt(3.0)
G1_TOP = 0.1  # "driven to ~0": the top hidden layer's mean activation falls below this
G1_EARLY = 0.25  # "early": within this fraction of the training updates
G1_LOWER = 0.45  # "stay above 0.5": sigmoid starts at exactly 0.5, so a lower layer may not fall below this
G5_PAPER = {"standard": 0.5, "normalized": 0.8}
G5_SPLIT = math.sqrt(0.5 * 0.8)  # between the paper's two values, in log scale
G5_TOLERANCE = 0.2  # the mean over seeds within 20% of the paper's value

RULES = {
    "G1": f"Shapeset, sigmoid + standard init, Fig 2's depth; mean activation of each hidden layer on the 300 held-out "
    f"examples, recorded during training. In every seed: the top hidden layer's mean falls below {G1_TOP} within the "
    f"first {G1_EARLY:.0%} of the updates, and every lower hidden layer's mean stays >= {G1_LOWER} at every record "
    f"(sigmoid starts at 0.5). Where a 5-hidden-layer run exists, its top-layer mean is still below {G1_TOP} at the "
    "end (it does not escape).",
    "G2": f"tanh, at init, Var(activation) per hidden layer on the probe batch; per-layer factor rho = exp(slope of ln "
    f"Var vs layer). In every trial: rho(standard) < 1/sqrt(3) = {FACTOR_SPLIT:.3f} (closer to Eq 1's 1/3 than to 1) "
    f"and 1/sqrt(3) < rho(normalized) < sqrt(3) (closer to 1).",
    "G3": "tanh, at init, Var(dC/ds) per hidden layer; per-layer factor going down towards the input, rho = exp(-slope "
    "of ln Var vs layer). In every trial: rho(standard) < 1/sqrt(3) and 1/sqrt(3) < rho(normalized) < sqrt(3).",
    "G4": "tanh, at init, Var(dC/dW) per hidden layer; per-layer factor rho = exp(slope). In every trial, under both "
    "inits: 1/sqrt(3) < rho < sqrt(3).",
    "G5": f"tanh, at init, mean singular value of dz^(i+1)/dz^i over the hidden-to-hidden layers and the Jacobian "
    f"probe examples. In every trial standard < sqrt(0.5 * 0.8) = {G5_SPLIT:.3f} < normalized, and the mean over "
    f"seeds of each is within {G5_TOLERANCE:.0%} of the paper's value.",
    "G6": "Mean test error over seeds, at the learning rate chosen per activation family. On every data set: "
    "(a) Tanh N < Tanh by more than the standard error of the difference, SE = sqrt(s1^2/k1 + s2^2/k2); "
    "(b) no row is worse than Sigmoid by more than the SE of their difference (Sigmoid worst or tied); "
    "(c) |Softsign N - Softsign| < |Tanh N - Tanh|.",
    "G7": "(a) ReLU + He, at init, Var(preact) per hidden layer: in every trial 1/sqrt(3) < rho < sqrt(3); (b) on "
    "every data set, mean test error ReLU He < Sigmoid by more than the SE of the difference.",
}

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
FAMILIES = ("sigmoid", "tanh", "softsign", "relu")  # the activation families (one learning rate is chosen per family)
ACTIVATION_LABELS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "softsign": "Softsign", "relu": "ReLU"}
INIT_SUFFIX = {"standard": "", "normalized": " N", "he": " He"}
# the kinds of Figs 6, 7 and 8 (histograms at init); the monitor's tracing cost grows with what it records
HIST_KINDS = ("activation", "grad_preact", "grad_kernel")
TRIAL_KEYS = ("dataset", "activation", "init", "lr", "n_hidden", "seed")


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
    # one trial per seed and grid point; each layer's initializer seed and the data order derive from it
    seeds: tuple[int, ...] = (0, 1, 2)
    # hidden layers of the Table 1 / Figs 6-8 nets (paper: 5)
    n_hidden: int = 4
    # units per hidden layer (paper: 1000)
    width: int = 128
    # hidden layers of the Fig 2 run (sigmoid, standard init, Shapeset); extra trials when it differs from n_hidden
    g1_hidden: int = 4
    # mini-batch size of plain SGD (paper: 10)
    batch_size: int = 10
    # SGD updates per data set, (name, steps) pairs; a multiple of record_every
    steps: tuple[tuple[str, int], ...] = (("shapeset", 4000), ("digits", 2000), ("mnist", 4000), ("cifar10", 4000))
    # learning rates per activation family, (activation, (lr, ...)) pairs; with several, the one with the lowest mean
    # validation error over the family's trials (all inits and seeds, per data set) is the one reported
    learning_rates: tuple[tuple[str, tuple[float, ...]], ...] = tuple((a, (0.1,)) for a in FAMILIES)
    # Shapeset training images (a finite sample of its online stream); fixed splits use all their training images
    n_train: int = 20000
    # validation images held out of the training split: learning-rate choice; its first 300 give Fig 2's statistics
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
    # SGD updates between two records of Fig 2's statistics and of the learning curve
    record_every: int = 100
    # histogram bins of Figs 6-8
    bins: int = 40


QUICK = Config()
PAPER = Config(
    datasets=("shapeset", "mnist", "cifar10"), n_hidden=5, width=1000, g1_hidden=4,
    steps=(("shapeset", 1_000_000), ("mnist", 300_000), ("cifar10", 250_000), ("digits", 20_000)),
    learning_rates=tuple((a, (0.3, 0.1, 0.03, 0.01)) for a in FAMILIES),
    n_train=200_000, n_val=5000, n_test=10000, n_jacobian=32, record_every=2000,
)  # fmt: skip
SMOKE = Config(
    datasets=("shapeset",), seeds=(0,), n_hidden=3, width=16, g1_hidden=3, steps=(("shapeset", 40),),
    n_train=200, n_val=40, n_test=50, n_stats=30, n_jacobian=4, record_every=20, bins=8,
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
    """Raise ValueError naming the field when a Config cannot run."""
    lrs = dict(cfg.learning_rates)
    for activation, init in cfg.rows:
        if init not in INITS:
            raise ValueError(f"`rows` inits must be one of {INITS}. Received: ({activation!r}, {init!r})")
        if not lrs.get(activation):
            raise ValueError(f"`learning_rates` must list at least one rate for {activation!r}. Received: {lrs}")
    for name in cfg.datasets:
        if _steps(cfg, name) % cfg.record_every:
            raise ValueError(
                f"`steps` must be multiples of `record_every`={cfg.record_every}. Received: {name}={_steps(cfg, name)}"
            )
    if cfg.n_stats > cfg.n_val:
        raise ValueError(f"`n_stats` must be <= `n_val`={cfg.n_val}. Received: n_stats={cfg.n_stats}")
    if min(cfg.n_hidden, cfg.g1_hidden) < 2:
        raise ValueError(f"`n_hidden` and `g1_hidden` must be >= 2. Received: {cfg.n_hidden}, {cfg.g1_hidden}")


def trials(cfg: Config) -> list[dict]:
    """The grid: data set x (activation, init) x learning rate x seed, plus Fig 2's sigmoid runs at g1_hidden."""
    check_config(cfg)
    lrs = dict(cfg.learning_rates)
    out = []
    for dataset in cfg.datasets:
        if not _available(dataset, cfg.data_path):
            continue
        for activation, init in cfg.rows:
            for lr in lrs[activation]:
                for seed in cfg.seeds:
                    trial = dict(dataset=dataset, activation=activation, init=init, lr=float(lr), seed=int(seed))
                    out.append({**trial, "n_hidden": cfg.n_hidden})
                    fig2 = dataset == "shapeset" and (activation, init) == ("sigmoid", "standard")
                    if fig2 and cfg.g1_hidden != cfg.n_hidden:
                        out.append({**trial, "n_hidden": cfg.g1_hidden})
    return out


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


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    """Build, measure at init, train and evaluate one net; returns the tables "final", "init", "hist",
    "jacobian", "training" and "curves", each with the trial's parameters as columns."""
    from keras_initkit.monitor import VarianceMonitor

    start, start_cpu = time.perf_counter(), time.process_time()
    seed = int(trial["seed"])
    keras.utils.set_random_seed(derive_seed(seed, "fit", trial["dataset"]))
    d = _splits(cfg, trial["dataset"])
    steps = _steps(cfg, trial["dataset"])
    model = build_mlp(d["x_train"].shape[1], d["num_classes"], trial["n_hidden"], cfg.width,
                      activation=trial["activation"], init=trial["init"], seed=seed)  # fmt: skip
    compile_sgd(model, trial["lr"], steps_per_execution=cfg.record_every)
    hidden = weight_layers(model)[:-1]  # hidden_1 ... hidden_<n_hidden>, the output layer left out
    names = [layer.name for layer in hidden]

    # Eq 17: singular values of dz^(i+1)/dz^i between consecutive hidden layers.
    zs = keras.Model(model.input, [layer.output for layer in hidden])(d["x_train"][: cfg.n_jacobian])
    zs = [keras.ops.convert_to_numpy(z) for z in zs]
    jac_rows = []
    for i, layer in enumerate(hidden[1:], start=1):
        sv = jacobian_singular_values(layer, zs[i - 1])
        sv_stats = {"mean_sv": sv.mean(), "p10": np.quantile(sv, 0.1), "p50": np.median(sv),
                    "p90": np.quantile(sv, 0.9), "max_sv": sv.max()}  # fmt: skip
        jac_rows.append({"layer": layer.name, "depth": i, **{k: float(v) for k, v in sv_stats.items()}})

    # One monitor on the held-out examples: at step 0 (Figs 6-8, with gradients and histograms) and every
    # record_every updates during training (Fig 2). One monitor traces its probe function once per model.
    probe = (d["x_val"][: cfg.n_stats], d["y_val"][: cfg.n_stats])
    monitor = VarianceMonitor(probe=probe, every=cfg.record_every, at_init=True, layers=names,
                              stats=["mean", "var", "std"], histograms=HIST_KINDS, bins=cfg.bins)  # fmt: skip
    curve = fit_curve(
        model, d["x_train"], d["y_train"], steps=steps, every=cfg.record_every, batch_size=cfg.batch_size,
        seed=derive_seed(seed, "order"), callbacks=[monitor], loss="train_loss",
        evaluate=lambda m: {"val_err": error_percent(m, d["x_val"], d["y_val"])},
    )  # fmt: skip
    frame = monitor.to_frame()
    stats = frame[~frame["stat"].str.startswith("hist_")]
    init_frame = stats[stats["step"] == 0]
    training = stats[(stats["kind"] == "activation") & stats["stat"].isin(["mean", "std"])]
    hist_frame = monitor.histogram_frame()
    hist_frame = hist_frame[hist_frame["step"] == 0]

    final = {
        "steps": steps,
        "width": cfg.width,
        "train_err": error_percent(model, d["x_train"][: len(d["x_test"])], d["y_train"][: len(d["x_test"])]),
        "val_err": error_percent(model, d["x_val"], d["y_val"]),
        "test_err": error_percent(model, d["x_test"], d["y_test"]),
        "final_loss": float(curve["train_loss"].iloc[-1]) if len(curve) else float("nan"),
        "diverged": bool(len(curve) and not np.isfinite(curve["train_loss"].iloc[-1])),
        "wall_s": time.perf_counter() - start,
        # CPU seconds of this process (all threads): what the trial costs on an otherwise idle machine
        "cpu_s": time.process_time() - start_cpu,
    }
    tables = {"final": pd.DataFrame([final]), "init": init_frame, "hist": hist_frame,
              "jacobian": pd.DataFrame(jac_rows), "training": training, "curves": curve}  # fmt: skip
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


def choose_lr(final: pd.DataFrame, n_hidden: int | None = None) -> pd.DataFrame:
    """Per data set and activation family, the mean validation error of each learning rate and the chosen one
    (from the trials with `n_hidden` hidden layers when given: the Table 1 nets, not Fig 2's extra runs)."""
    main = final if n_hidden is None else final[final["n_hidden"] == n_hidden]
    table = main.groupby(["dataset", "activation", "lr"], as_index=False)["val_err"].mean()
    table["chosen"] = table.groupby(["dataset", "activation"])["val_err"].transform("min").eq(table["val_err"])
    # a tie keeps the first (smallest) rate only
    first = table[table["chosen"]].groupby(["dataset", "activation"])["lr"].transform("min")
    table.loc[table["chosen"], "chosen"] = table.loc[table["chosen"], "lr"].eq(first)
    return table.rename(columns={"val_err": "val_err_mean"})


def at_chosen_lr(frame: pd.DataFrame, lr_choice: pd.DataFrame) -> pd.DataFrame:
    """The rows of `frame` whose (dataset, activation, lr) is the chosen one."""
    chosen = lr_choice.loc[lr_choice["chosen"], ["dataset", "activation", "lr"]]
    return frame.merge(chosen, on=["dataset", "activation", "lr"], how="inner")


def error_table(final: pd.DataFrame, n_hidden: int) -> pd.DataFrame:
    """Long Table 1: per data set and row, test error mean and std over seeds, and the paper's number."""
    sel = final[final["n_hidden"] == n_hidden]
    out = sel.groupby(["dataset", "row", "activation", "init", "lr"], as_index=False).agg(
        n=("test_err", "size"), test_err_mean=("test_err", "mean"), test_err_std=("test_err", "std"),
        val_err_mean=("val_err", "mean"), diverged=("diverged", "sum"))  # fmt: skip
    out["paper"] = [PAPER_TABLE1.get(r, {}).get(d, np.nan) for r, d in zip(out["row"], out["dataset"], strict=True)]
    order = {row_label(a, i): k for k, (a, i) in enumerate(TABLE1_ROWS)}
    out["_order"] = out["row"].map(order).fillna(len(order))
    out["_data"] = out["dataset"].map({d: k for k, d in enumerate(_datasets_in(out))})
    out = out.sort_values(["_data", "_order", "row"]).drop(columns=["_order", "_data"])
    return out.reset_index(drop=True)


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {0.0 if np.isnan(std) else std:.2f}"


def table1(errors: pd.DataFrame) -> pd.DataFrame:
    """Wide Table 1: one line per row, per data set our mean +- std test error (%) and the paper's."""
    rows = list(dict.fromkeys(errors["row"]))
    out = pd.DataFrame({"row": rows})
    for dataset in dict.fromkeys(errors["dataset"]):
        sub = errors[errors["dataset"] == dataset].set_index("row")
        out[f"{dataset} (ours)"] = [
            _mean_std(sub.at[r, "test_err_mean"], sub.at[r, "test_err_std"]) if r in sub.index else "" for r in rows
        ]
        out[f"{dataset} (paper)"] = [
            "" if r not in sub.index or np.isnan(sub.at[r, "paper"]) else f"{sub.at[r, 'paper']:.2f}" for r in rows
        ]
    return out


def _fig2_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of Fig 2's runs: Shapeset, sigmoid, standard init."""
    return frame[(frame["dataset"] == "shapeset") & (frame["activation"] == "sigmoid") & (frame["init"] == "standard")]


def g1_table(training: pd.DataFrame, final: pd.DataFrame) -> pd.DataFrame:
    """Fig 2's figures per sigmoid + standard Shapeset trial: when the top hidden layer's mean activation first
    falls below G1_TOP, its minimum and final value, and the lowest mean of any lower hidden layer."""
    sel = _fig2_runs(training)
    sel = sel[(sel["kind"] == "activation") & (sel["stat"] == "mean")]
    steps = final.set_index(list(TRIAL_KEYS))["steps"]
    rows = []
    for key, group in sel.groupby(list(TRIAL_KEYS), sort=True):
        top_depth = group["depth"].max()
        top = group[group["depth"] == top_depth].sort_values("step")
        lower = group[group["depth"] < top_depth]
        below = top[top["value"] < G1_TOP]
        n_steps = int(steps.get(key, top["step"].max()))
        cross = int(below["step"].iloc[0]) if len(below) else -1
        last = lower[lower["step"] == lower["step"].max()]["value"]
        rows.append({
            **dict(zip(TRIAL_KEYS, key, strict=True)), "steps": n_steps, "top_start": float(top["value"].iloc[0]),
            "top_early": float(top.loc[top["step"] <= G1_EARLY * n_steps, "value"].iloc[-1]), "top_cross_step": cross,
            "top_min": float(top["value"].min()), "top_end": float(top["value"].iloc[-1]),
            "lower_min": float(lower["value"].min()) if len(lower) else float("nan"),
            "lower_end": float(last.mean()) if len(lower) else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)


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


_claim = functools.partial(claim_row, CLAIMS, RULES)


def claim_g1(g1: pd.DataFrame, g1_hidden: int) -> dict:
    """G1 from `g1_table` (see RULES["G1"])."""
    fig2 = g1[g1["n_hidden"] == g1_hidden] if len(g1) else g1
    if len(fig2) == 0:
        return _claim("G1", "N/A", f"no Shapeset sigmoid + standard run with {g1_hidden} hidden layers", "")
    early = (fig2["top_cross_step"] >= 0) & (fig2["top_cross_step"] <= G1_EARLY * fig2["steps"])
    lower = fig2["lower_min"] >= G1_LOWER
    ok = bool((early & lower).all())
    cross = fig2["top_cross_step"].where(fig2["top_cross_step"] >= 0)
    n_steps = int(fig2["steps"].max())
    measured = (
        f"{g1_hidden} hidden layers: top-layer mean {spread(fig2['top_start'])} at init, "
        f"{spread(fig2['top_early'])} after {G1_EARLY:.0%} of the {n_steps} updates, {spread(fig2['top_end'])} at "
        f"the end; first < {G1_TOP} after {spread(cross.dropna(), '.0f')} updates "
        f"({int(early.sum())}/{len(fig2)} seeds early); lowest mean of a lower layer {spread(fig2['lower_min'])} "
        f"({int(lower.sum())}/{len(fig2)} seeds >= {G1_LOWER})"
    )
    deep = g1[g1["n_hidden"] == 5] if g1_hidden != 5 and len(g1) else g1.iloc[0:0]
    if len(deep):
        stuck = deep["top_end"] < G1_TOP
        ok = ok and bool(stuck.all())
        measured += f"; 5 hidden layers: top-layer mean at the end {spread(deep['top_end'])}"
    else:
        measured += "; no 5-hidden-layer run in this profile (that part not tested)"
    paper = "top layer's mean -> ~0 within the first of ~140 epochs of 20k updates; lower layers > 0.5"
    return _claim("G1", "PASS" if ok else "FAIL", measured, paper)


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


def _factor_claim(claim: str, factors: pd.DataFrame) -> dict:
    """G2, G3 or G4 from `depth_factors` (FACTOR_CLAIMS; see RULES): the tanh trials' per-layer factors."""
    kind, column, expect, paper = FACTOR_CLAIMS[claim]
    sel = factors[(factors["activation"] == "tanh") & (factors["kind"] == kind)]
    parts, ok = [], True
    for init, want in expect.items():
        values = sel.loc[sel["init"] == init, column]
        if len(values) == 0 or values.isna().all():
            return _claim(claim, "N/A", f"no tanh + {init} trial with {kind} variances", paper)
        good = values < FACTOR_SPLIT if want == "shrink" else (values > FACTOR_SPLIT) & (values < 1 / FACTOR_SPLIT)
        ok = ok and bool(good.all())
        parts.append(f"{init}: rho = {spread(values)}, {int(good.sum())}/{len(values)} trials {want}")
    return _claim(claim, "PASS" if ok else "FAIL", "; ".join(parts), paper)


claim_g2, claim_g3, claim_g4 = (functools.partial(_factor_claim, claim) for claim in FACTOR_CLAIMS)


def claim_g5(jac: pd.DataFrame) -> dict:
    """G5 from `jacobian_summary` (see RULES["G5"])."""
    paper = "~0.5 (standard), ~0.8 (normalized)"
    sel = jac[jac["activation"] == "tanh"] if len(jac) else jac
    parts, ok = [], True
    for init, want in G5_PAPER.items():
        values = sel.loc[sel["init"] == init, "mean_sv"] if len(sel) else pd.Series(dtype=float)
        if len(values) == 0:
            return _claim("G5", "N/A", f"no tanh + {init} trial", paper)
        side = values < G5_SPLIT if init == "standard" else values > G5_SPLIT
        close = abs(values.mean() - want) <= G5_TOLERANCE * want
        ok = ok and bool(side.all()) and bool(close)
        parts.append(
            f"{init}: {spread(values)}, {int(side.sum())}/{len(values)} trials on its side of {G5_SPLIT:.3f}, "
            f"mean {'within' if close else 'outside'} {G5_TOLERANCE:.0%} of {want}"
        )
    return _claim("G5", "PASS" if ok else "FAIL", "; ".join(parts), paper)


def _errs(final: pd.DataFrame, dataset: str, row: str) -> pd.Series:
    return final.loc[(final["dataset"] == dataset) & (final["row"] == row), "test_err"]


def claim_g6(final: pd.DataFrame) -> dict:
    """G6 from the per-trial final table at the chosen learning rates (see RULES["G6"])."""
    paper = "; ".join(
        f"{d}: Tanh {PAPER_TABLE1['Tanh'][d]} vs Tanh N {PAPER_TABLE1['Tanh N'][d]}, Sigmoid "
        f"{PAPER_TABLE1['Sigmoid'][d]}, Softsign {PAPER_TABLE1['Softsign'][d]} vs N "
        f"{PAPER_TABLE1['Softsign N'][d]}"
        for d in ("shapeset", "mnist", "cifar10")
    )
    glorot_rows = ("Sigmoid", "Tanh", "Tanh N", "Softsign", "Softsign N")
    datasets = [d for d in dict.fromkeys(final["dataset"]) if all(len(_errs(final, d, r)) for r in glorot_rows)]
    if not datasets:
        return _claim("G6", "N/A", f"no data set with all of {glorot_rows}", paper)
    parts, ok = [], True
    for d in datasets:
        e = {r: _errs(final, d, r) for r in glorot_rows}
        m = {r: float(e[r].mean()) for r in glorot_rows}
        d_tanh = m["Tanh N"] - m["Tanh"]
        a = -d_tanh > se_diff(e["Tanh N"], e["Tanh"])
        worse = [r for r in glorot_rows[1:] if m[r] - m["Sigmoid"] > se_diff(e[r], e["Sigmoid"])]
        b = not worse
        d_soft = m["Softsign N"] - m["Softsign"]
        c = abs(d_soft) < abs(d_tanh)
        ok = ok and a and b and c
        parts.append(
            f"{d}: (a) Tanh N - Tanh = {d_tanh:+.2f} (SE {se_diff(e['Tanh N'], e['Tanh']):.2f}) {'ok' if a else 'no'}; "
            f"(b) Sigmoid {m['Sigmoid']:.2f}, worst of {max(m.values()):.2f}"
            + (f", {worse} worse" if worse else "")
            + f" {'ok' if b else 'no'}; (c) |Softsign N - Softsign| = {abs(d_soft):.2f} vs {abs(d_tanh):.2f} "
            f"{'ok' if c else 'no'}"
        )
    return _claim("G6", "PASS" if ok else "FAIL", "; ".join(parts), paper)


def claim_g7(factors: pd.DataFrame, final: pd.DataFrame) -> dict:
    """G7 (see RULES["G7"])."""
    paper = "He et al. 2015: Var(preact) constant over depth with 2/n; ReLU trains (Table 1 has no ReLU row)"
    pre = factors.loc[(factors["row"] == "ReLU He") & (factors["kind"] == "preact"), "factor"] if len(factors) else []
    both = [d for d in dict.fromkeys(final["dataset"]) if all(len(_errs(final, d, r)) for r in ("ReLU He", "Sigmoid"))]
    if len(pre) == 0 or not both:
        return _claim("G7", "N/A", "no ReLU He trial, or no data set with both ReLU He and Sigmoid", paper)
    flat = (pre > FACTOR_SPLIT) & (pre < 1 / FACTOR_SPLIT)
    ok = bool(flat.all())
    parts = [f"(a) ReLU He Var(preact) rho = {spread(pre)}, {int(flat.sum())}/{len(pre)} trials flat"]
    for d in both:
        relu, sig = _errs(final, d, "ReLU He"), _errs(final, d, "Sigmoid")
        diff = float(relu.mean() - sig.mean())
        good = -diff > se_diff(relu, sig)
        ok = ok and good
        parts.append(
            f"(b) {d}: ReLU He {relu.mean():.2f} vs Sigmoid {sig.mean():.2f} % (diff {diff:+.2f}, SE "
            f"{se_diff(relu, sig):.2f}) {'ok' if good else 'no'}"
        )
    return _claim("G7", "PASS" if ok else "FAIL", "; ".join(parts), paper)


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Summary tables (Table 1, learning-rate choice, depth factors, Jacobians, Fig 2 figures) and the claims."""
    if len(tables.get("final", ())) == 0:  # every trial failed: nothing to summarize
        claims = [_claim(c, "N/A", "no finished trial", "") for c in CLAIMS]
        return {"claims": pd.DataFrame(claims)}
    final = tables["final"]
    lr_choice = choose_lr(final, cfg.n_hidden)
    chosen = at_chosen_lr(final, lr_choice)
    factors = at_chosen_lr(depth_factors(tables["init"]), lr_choice)
    jac = at_chosen_lr(jacobian_summary(tables["jacobian"]), lr_choice)
    g1 = g1_table(at_chosen_lr(tables["training"], lr_choice), chosen)
    main = chosen[chosen["n_hidden"] == cfg.n_hidden]
    errors = error_table(chosen, cfg.n_hidden)
    factor_summary = depth_factor_summary(factors)
    jac_summary = jac.groupby(["dataset", "row"], as_index=False).agg(
        n=("mean_sv", "size"), mean_sv=("mean_sv", "mean"), mean_sv_std=("mean_sv", "std")
    )
    cost = final.groupby("dataset", as_index=False, sort=False).agg(
        trials=("test_err", "size"), steps=("steps", "max"), wall_s_mean=("wall_s", "mean"),
        cpu_s_mean=("cpu_s", "mean"), cpu_s_total=("cpu_s", "sum"))  # fmt: skip
    missing = [d for d in cfg.datasets if d not in set(final["dataset"])]
    claims = pd.DataFrame([claim_g1(g1, cfg.g1_hidden), claim_g2(factors), claim_g3(factors), claim_g4(factors),
                           claim_g5(jac), claim_g6(main), claim_g7(factors, main)])  # fmt: skip
    if missing:
        claims["measured"] = claims["measured"] + f" (data sets absent here, not run: {', '.join(missing)})"
    return {"table1": table1(errors), "errors": errors, "lr_choice": lr_choice, "depth_factors": factor_summary,
            "singular_values": jac_summary, "g1": g1, "cost": cost, "claims": claims}  # fmt: skip


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
    """The trials at the chosen learning rates (at init every rate gives the same net: this drops the copies)."""
    if "lr_choice" not in summary or not len(frame):
        return frame
    return at_chosen_lr(frame, summary["lr_choice"])


def _datasets_in(frame: pd.DataFrame) -> list[str]:
    """The data sets of a table, the paper's first (shapeset, mnist, cifar10), then the others."""
    present = list(dict.fromkeys(frame["dataset"]))
    return [d for d in PAPER_DATASETS if d in present] + [d for d in present if d not in PAPER_DATASETS]


def _fig2(training: pd.DataFrame):
    """Fig 2: mean (line) and std (band) of each hidden layer's sigmoid outputs over training, mean over seeds;
    one panel per depth of net (4: Fig 2; 5 where the profile runs it)."""
    from keras_initkit.plots import stat_over_training

    sel = _fig2_runs(training)
    fig = stat_over_training(
        sel, kind="activation", center="mean", spread="std", col="n_hidden",
        title=f"Fig 2: sigmoid, standard init, {sel['seed'].nunique()} seeds",
    )  # fmt: skip
    for ax in fig.axes:
        ax.axhline(G1_TOP, color="grey", ls=":", lw=1)
        ax.axvline(G1_EARLY * sel["step"].max(), color="grey", ls="--", lw=1)
        ax.set(xlabel=f"SGD updates (dashed: first {G1_EARLY:.0%})", ylim=(-0.05, 1.05))
        ax.legend(title="layer", fontsize="small", loc="upper left", ncols=2)
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
        ax.set_xticks(x, part.index, rotation=30, ha="right")
        ax.set(title=dataset, ylabel="test error %", ylim=(0, 100))
        ax.legend(fontsize=8)
    fig.suptitle("Table 1: test error after training", fontsize=10)
    fig.tight_layout()
    return fig


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    """The figures, drawn from the saved raw tables and summaries only (never retrains)."""
    from keras_initkit.plots import learning_curves, variance_vs_depth

    figures = {}
    training = _chosen(tables.get("training", pd.DataFrame()), summary)
    if len(training):
        figures["fig2_sigmoid_activations"] = _fig2(training)
    hist = _chosen(tables.get("hist", pd.DataFrame()), summary)
    if len(hist) and "tanh" in set(hist["activation"]):
        figures["fig6_activation_histograms"] = _histograms(hist, "activation", "Fig 6: activation values")
        figures["fig7_backprop_gradient_histograms"] = _histograms(hist, "grad_preact", "Fig 7: back-propagated dC/ds")
        figures["fig8_weight_gradient_histograms"] = _histograms(hist, "grad_kernel", "Fig 8: weight gradients dC/dW")
    init = _chosen(tables.get("init", pd.DataFrame()), summary)
    for kind, title in VARIANCE_FIGURES if len(init) else ():  # per row, a panel per data set; range over seeds
        figures[f"variance_{kind}"] = variance_vs_depth(
            init, kind=kind, hue="row", col="dataset", step=0, errorbar=("pi", 100), title=title,
            palette=_palette(init))  # fmt: skip
    jac = _chosen(tables.get("jacobian", pd.DataFrame()), summary)
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
