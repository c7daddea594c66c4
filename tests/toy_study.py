"""Toy study for the runner's tests: a 2-layer Dense net on a few hundred synthetic points, trials of about a second.

It follows the study contract of docs/DESIGN.md exactly (NAME, CLAIMS, Config, QUICK, PAPER, SMOKE, PROFILES, trials,
run_trial, summarize, plot, run, main), so the tests exercise the same paths as a real study. Two test hooks are
plain Config fields: `fail_seeds` (those trials raise) and a huge learning rate in `lrs` (those trials diverge).

Run: `python -m keras_initkit study tests/toy_study.py --profile smoke --out /tmp/results`.
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import pandas as pd

from keras_initkit.study import entry_points
from keras_initkit.study.grid import derive_seed, expand_grid

NAME = "toy"
DATASETS = ("blobs", "digits", "npz")

CLAIMS = {
    "T1": "A 2-layer net separates two Gaussian blobs: test accuracy well above chance (0.5).",
    "T2": "Training lowers the loss: the last epoch's loss is below the first's in every converging trial.",
}


@dataclasses.dataclass(frozen=True)
class Config:
    # data set: "blobs" (two Gaussian blobs, made here), "digits" (0 vs 1 of scikit-learn's digits) or "npz"
    data: str = "blobs"
    # an .npz file with arrays x (n, d) and y (n,) in {0, 1}, read when data == "npz"
    data_path: str | None = None
    # hidden units of the one hidden layer
    width: int = 8
    # hidden activations, one trial axis
    activations: tuple[str, ...] = ("relu", "tanh")
    # SGD learning rates, one trial axis (1e38 makes the loss overflow to NaN: a diverged trial)
    lrs: tuple[float, ...] = (0.1,)
    # one trial per seed and grid point
    seeds: tuple[int, ...] = (0, 1)
    # training points (blobs); a quarter as many test points
    n: int = 256
    # input dimension of the blobs
    dim: int = 4
    # training epochs (batch 32)
    epochs: int = 4
    # trials with these seeds raise on purpose (the runner's failed-trial test)
    fail_seeds: tuple[int, ...] = ()
    # seconds each trial sleeps after training (gives the kill test time to interrupt a run mid-way)
    pause: float = 0.0


QUICK = Config()
PAPER = Config(seeds=(0, 1), pause=0.5)  # 4 trials of ~1.5 s: the kill test interrupts this one
SMOKE = Config(activations=("relu",), seeds=(0,), n=64, epochs=1)  # one trial: the whole pipeline in seconds
PROFILES = {"quick": QUICK, "paper": PAPER, "smoke": SMOKE}


def trials(cfg: Config) -> list[dict]:
    return expand_grid({"activation": list(cfg.activations), "lr": list(cfg.lrs), "seed": list(cfg.seeds)})


def _data(cfg: Config):
    if cfg.data == "blobs":
        rng = np.random.default_rng(123)
        m = cfg.n + cfg.n // 4
        y = rng.integers(0, 2, m)
        x = rng.normal(size=(m, cfg.dim)) + 1.5 * (2 * y[:, None] - 1) / np.sqrt(cfg.dim)
    elif cfg.data == "digits":
        from keras_initkit.datasets import digits

        images, labels = digits()
        keep = labels < 2
        x, y = images[keep].reshape(int(keep.sum()), -1), labels[keep]
    elif cfg.data == "npz":
        with np.load(cfg.data_path) as f:
            x, y = f["x"], f["y"]
    else:
        raise ValueError(f"`data` must be one of {DATASETS}. Received: data={cfg.data!r}")
    x, y = x.astype("float32"), y.astype("int64")
    split = len(x) * 4 // 5
    return x[:split], y[:split], x[split:], y[split:]


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    if trial["seed"] in cfg.fail_seeds:
        raise RuntimeError(f"injected failure for seed {trial['seed']}")
    x, y, x_test, y_test = _data(cfg)
    seed = trial["seed"]
    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(
                cfg.width,
                activation=trial["activation"],
                kernel_initializer=keras.initializers.GlorotUniform(seed=derive_seed(seed, "dense", 0)),
            ),
            keras.layers.Dense(2, kernel_initializer=keras.initializers.GlorotUniform(seed=derive_seed(seed, 1))),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(trial["lr"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x, y, batch_size=32, epochs=cfg.epochs, verbose=0, shuffle=True)
    loss = np.asarray(history.history["loss"], dtype=float)
    logits = keras.ops.convert_to_numpy(model(x_test))
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test)) if np.all(np.isfinite(logits)) else float("nan")
    if cfg.pause:
        time.sleep(cfg.pause)
    curves = pd.DataFrame({"epoch": np.arange(1, len(loss) + 1), "loss": loss, **trial})
    final = pd.DataFrame(
        [
            {
                **trial,
                "first_loss": loss[0],
                "loss": loss[-1],
                "test_acc": accuracy,
                "diverged": not np.isfinite(loss[-1]),
            }
        ]
    )
    return {"curves": curves, "final": final}


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    final = tables.get(
        "final", pd.DataFrame(columns=["activation", "lr", "test_acc", "loss", "first_loss", "diverged"])
    )
    good = final[~final["diverged"].astype(bool)]
    accuracy = (
        good.groupby(["activation", "lr"], as_index=False)
        .agg(test_acc=("test_acc", "mean"), test_acc_std=("test_acc", "std"), trials=("test_acc", "size"))
        .sort_values(["activation", "lr"])
        .reset_index(drop=True)
    )
    mean_acc = float(good["test_acc"].mean()) if len(good) else float("nan")
    falls = bool(len(good)) and bool((good["loss"] < good["first_loss"]).all())
    claims = pd.DataFrame(
        [
            {
                "claim": "T1",
                "statement": CLAIMS["T1"],
                "rule": "mean test accuracy of the converging trials > 0.8",
                "measured": f"{mean_acc:.3f} (n={len(good)})",
                "paper": "> 0.5",
                "status": "N/A" if not len(good) else "PASS" if mean_acc > 0.8 else "FAIL",
            },
            {
                "claim": "T2",
                "statement": CLAIMS["T2"],
                "rule": "last-epoch loss < first-epoch loss in every converging trial",
                "measured": f"{int((good['loss'] < good['first_loss']).sum())} of {len(good)} trials",
                "paper": "all",
                "status": "N/A" if not len(good) else "PASS" if falls else "FAIL",
            },
        ]
    )
    return {"accuracy": accuracy, "claims": claims}


def plot(tables: dict[str, pd.DataFrame], summary: dict[str, pd.DataFrame]) -> dict:
    import matplotlib.pyplot as plt

    figures = {}
    if "curves" in tables:
        fig, ax = plt.subplots(figsize=(4, 3))
        for (activation, seed), part in tables["curves"].groupby(["activation", "seed"]):
            ax.plot(part["epoch"], part["loss"], label=f"{activation} s{seed}")
        ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
        ax.legend(fontsize=6)
        figures["curves"] = fig
    fig, ax = plt.subplots(figsize=(3, 3))
    accuracy = summary["accuracy"]
    ax.bar(accuracy["activation"].astype(str), accuracy["test_acc"])
    ax.set(ylabel="test accuracy", ylim=(0, 1))
    figures["accuracy"] = fig
    return figures


run, main = entry_points(__name__)  # run(cfg): serial, in process, no files; main(argv): the CLI


if __name__ == "__main__":
    raise SystemExit(main())
