"""Engines benchmark: the same 8-trial grid (a small conv net trained for a fixed number of steps, >= 10 s a trial)
through the study runner on the serial engine, the process engine (2 workers) and a local Ray instance (2 CPUs).

Prints each engine's wall time (start-up included: spawning workers, importing TensorFlow, starting Ray), the span
from the first trial's start to the last trial's end (start-up excluded: what a long study sees once the start-up
is amortized), the summed trial time, and both speed-ups over serial. Target: >= 1.6x at 2 workers. The serial
engine runs one trial at a time with TensorFlow's default thread pools (every core); the parallel engines run one
trial per worker, one TF thread each. The trials look like the studies' (plain SGD on mini-batches of 10, as in
Glorot & Bengio's setup): each step is small, so one trial cannot keep two cores busy and trial-level parallelism
pays. This module is itself a study (the runner's contract), so the benchmark measures the real code path.

Run: `make bench BENCH=engines` or `python -m benchmarks.run engines`.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import pandas as pd

from keras_initkit.study.grid import derive_seed, expand_grid

NAME = "bench_engines"
CLAIMS = {"E1": "Trials of >= 10 s run >= 1.6x faster on 2 workers (process or Ray) than on the serial engine."}


@dataclasses.dataclass(frozen=True)
class Config:
    # one trial per seed: the 8-trial grid
    seeds: tuple[int, ...] = tuple(range(8))
    # SGD steps per trial (about 10-15 s a trial on one x86 core)
    steps: int = 3000
    # mini-batch size (the studies' plain SGD uses 10)
    batch_size: int = 10
    # side of the random square images (one channel)
    size: int = 16
    # training images (random, fixed per seed)
    n: int = 1000


QUICK = Config()
PAPER = Config()
PROFILES = {"quick": QUICK, "paper": PAPER}


def trials(cfg: Config) -> list[dict]:
    return expand_grid({"seed": list(cfg.seeds)})


def run_trial(cfg: Config, trial: dict) -> dict[str, pd.DataFrame]:
    import keras
    import numpy as np

    seed = trial["seed"]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(cfg.n, cfg.size, cfg.size, 1)).astype("float32")
    y = rng.integers(0, 10, cfg.n)
    init = [keras.initializers.HeNormal(seed=derive_seed(seed, i)) for i in range(4)]
    model = keras.Sequential(
        [
            keras.Input((cfg.size, cfg.size, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init[0]),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init[1]),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", kernel_initializer=init[2]),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, kernel_initializer=init[3]),
        ]
    )
    model.compile(keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    per_epoch = cfg.n // cfg.batch_size
    start, t0 = time.time(), time.perf_counter()
    history = model.fit(x, y, batch_size=cfg.batch_size, epochs=-(-cfg.steps // per_epoch), verbose=0)
    wall = time.perf_counter() - t0
    loss = history.history["loss"][-1]
    row = {**trial, "fit_s": wall, "start": start, "end": start + wall, "loss": loss, "diverged": not np.isfinite(loss)}
    return {"timing": pd.DataFrame([row])}


def summarize(cfg: Config, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    timing = tables.get("timing", pd.DataFrame(columns=["seed", "fit_s"]))
    claims = pd.DataFrame(
        [
            {
                "claim": "E1",
                "statement": CLAIMS["E1"],
                "rule": "measured across engines by bench_engines.main, not within one run",
                "measured": f"mean fit {timing['fit_s'].mean():.1f} s over {len(timing)} trials",
                "paper": ">= 1.6x",
                "status": "N/A",
            }
        ]
    )
    return {"timing_summary": timing.describe().reset_index(), "claims": claims}


def plot(tables, summary) -> dict:
    return {}


def _run(engine: str, out: str, **kwargs) -> tuple[float, pd.DataFrame, object]:
    import sys

    from keras_initkit.study import runner

    module = sys.modules[__name__]
    t0 = time.perf_counter()
    result = runner.run_study(module, profile="quick", out_dir=out, engine=engine, plot=False, progress=False, **kwargs)
    return time.perf_counter() - t0, result.tables["timing"], result


def main() -> None:
    from keras_initkit.study.engines import cpu_count

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("serial", {}), ("process", {"jobs": 2}), ("ray", {"jobs": 2})]
        for engine, kwargs in runs:
            try:
                wall, timing, result = _run(engine, os.path.join(tmp, engine), **kwargs)
            except ImportError as e:  # Ray not installed
                print(f"{engine}: skipped ({e})")
                continue
            rows.append(
                {
                    "engine": engine,
                    "workers": kwargs.get("jobs", 1),
                    "trials": len(timing),
                    "failed": result.counts["failed"],
                    "wall_s": wall,
                    # from the first trial's start to the last one's end: the engine without its start-up
                    "span_s": timing["end"].max() - timing["start"].min(),
                    "sum_fit_s": timing["fit_s"].sum(),
                    "mean_fit_s": timing["fit_s"].mean(),
                }
            )
            print(f"{engine}: {wall:.1f} s wall, mean trial fit {timing['fit_s'].mean():.1f} s", flush=True)
    table = pd.DataFrame(rows)
    serial = table.loc[table["engine"] == "serial", "wall_s"].iloc[0]
    table["speedup"] = serial / table["wall_s"]
    table["speedup_span"] = table.loc[table["engine"] == "serial", "span_s"].iloc[0] / table["span_s"]
    print(f"\n8 trials, {cpu_count()} CPUs, serial = TF default threads, parallel = 1 TF thread per worker")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print("target: speedup >= 1.6 for process and ray at 2 workers (wall time includes worker/Ray start-up;")
    print("speedup_span compares the spans from the first trial's start to the last trial's end, start-up excluded)")


if __name__ == "__main__":
    main()
