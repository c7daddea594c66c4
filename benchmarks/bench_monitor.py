"""VarianceMonitor overhead (issue 3): fit with the monitor vs plain fit, and one probe record vs the floor.

Prints, for a 5x1000 tanh MLP and a 20-layer ReLU conv net (batch 128, probe 256), as wall-time ratios with the
process CPU-time ratios beside them (CPU time counts the work done, whatever else runs on a shared machine):
- fit with the monitor at every=50 (100 steps) and every=1 (20 steps), with the probe and with
  source="train_batch", over a plain fit of the same steps (targets: <= 1.03x at every=50, <= 1.5x at every=1);
- one probe record (the traced probe function, its scalars moved to the host) over a hand-written tf.function
  forward + backward with GradientTape on the same probe batch (target: <= 1.2x), and the same through
  `measure()` (which also builds the record's DataFrame).
Each time is the minimum over interleaved repeats after a warm-up (tracing excluded); fit times are summed from
per-step clock readings, robust to bursts of other work (`_robust_total`). Never asserted: read the ratios.

Then the same under JAX and PyTorch, each in a subprocess (KERAS_BACKEND=jax / torch; skipped where the package is
not installed): the probe record against a jitted `jax.value_and_grad` of the model's stateless call, or against
the model's call and `torch.autograd.grad` of its loss w.r.t. the trainable weights, and fit with the probe monitor
over plain fit (source="train_batch" runs under TensorFlow only).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_initkit.monitor import VarianceMonitor  # noqa: E402

BATCH = 128
PROBE = 256


def mlp() -> tuple[keras.Model, tuple[int, ...]]:
    layers = [keras.Input((784,))]
    layers += [keras.layers.Dense(1000, activation="tanh") for _ in range(5)]
    layers += [keras.layers.Dense(10)]
    return keras.Sequential(layers, name="mlp5x1000"), (784,)


def convnet(depth: int = 20, width: int = 32, size: int = 8) -> tuple[keras.Model, tuple[int, ...]]:
    layers = [keras.Input((size, size, 3))]
    layers += [keras.layers.Conv2D(width, 3, padding="same", activation="relu") for _ in range(depth)]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    return keras.Sequential(layers, name=f"conv{depth}"), (size, size, 3)


def _data(shape, n, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype("float32"), rng.integers(0, 10, n)


def _compile(model):
    model.compile(keras.optimizers.SGD(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _best(times: dict, name: str, t0: tuple[float, float], n: int = 1) -> None:
    wall, cpu = time.perf_counter() - t0[0], time.process_time() - t0[1]
    old = times.get(name, (float("inf"), float("inf")))
    times[name] = (min(old[0], wall / n), min(old[1], cpu / n))


def _ratios(times: dict, base: str) -> dict[str, tuple[float, float]]:
    return {k: (v[0] / times[base][0], v[1] / times[base][1]) for k, v in times.items() if k != base}


class _Stamp(keras.callbacks.Callback):
    """Clock readings (wall, process CPU) at each hook; one instance goes first in the callback list, one last."""

    def __init__(self):
        super().__init__()
        self.t: dict = {}

    def _mark(self, key):
        self.t[key] = np.array([time.perf_counter(), time.process_time()])

    def on_train_begin(self, logs=None):
        self._mark("begin")

    def on_train_batch_begin(self, batch, logs=None):
        self._mark(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self._mark(("end", batch))

    def on_epoch_end(self, epoch, logs=None):
        self._mark("epoch_end")

    def on_train_end(self, logs=None):
        self._mark("end")


def _robust_total(first: _Stamp, last: _Stamp, steps: int, recorded: set[int]) -> np.ndarray:
    """(wall, cpu) of one fit: the monitor's hooks outside steps, plus its steps, where a group of 5 or more alike
    steps (recording or not) counts as its median times its size, so a burst of other work on a shared machine
    does not land on one configuration only."""
    total = sum(last.t[k] - first.t[k] for k in ("begin", "epoch_end", "end"))
    times = {b: last.t[("end", b)] - first.t[("begin", b)] for b in range(steps)}
    for group in (recorded, set(range(steps)) - recorded):
        if group:
            block = np.stack([times[b] for b in sorted(group)])
            total = total + (np.median(block, axis=0) * len(group) if len(group) >= 5 else block.sum(axis=0))
    return total


def fit_ratios(build, repeats: int) -> tuple[dict, float]:
    """Fit time with each monitor configuration over a plain fit of the same steps: {config: (wall, cpu) ratio}.

    every=50 runs 100 steps (records at steps 0, 50 and 100: the record at initialization counts too); every=1
    runs 20 steps. Times are taken per step inside the fit (see `_robust_total`), the minimum over repeats.
    """
    keras.utils.set_random_seed(0)
    model, shape = build()
    _compile(model)
    x, y = _data(shape, BATCH * 100, 1)
    probe = _data(shape, PROBE, 2)
    train_batch = keras.backend.backend() == "tensorflow"  # the only backend whose train step it can swap
    configs = {  # name: (monitor or None, steps, batches that record)
        "plain": (None, 100, set()),
        "every=50": (VarianceMonitor(probe=probe, every=50), 100, {49, 99}),
        "every=50 train_batch": (
            VarianceMonitor(every=50, source="train_batch") if train_batch else None,
            100,
            {0, 50},
        ),
        "plain 20": (None, 20, set()),
        "every=1": (VarianceMonitor(probe=probe, every=1), 20, set(range(20))),
        "every=1 train_batch": (
            VarianceMonitor(every=1, source="train_batch") if train_batch else None,
            20,
            set(range(20)),
        ),
    }
    if not train_batch:
        configs = {k: v for k, v in configs.items() if "train_batch" not in k}

    def run(cb, n, recorded):
        first, last = _Stamp(), _Stamp()
        callbacks = [first, last] if cb is None else [first, cb, last]
        model.fit(x[: BATCH * n], y[: BATCH * n], batch_size=BATCH, verbose=0, shuffle=False, callbacks=callbacks)
        return _robust_total(first, last, n, recorded)

    for cb, _, _ in configs.values():  # warm-up: trace every function once
        run(cb, 2, set())
    best: dict = {}
    for _ in range(repeats):
        for name, (cb, steps, recorded) in configs.items():
            best[name] = np.minimum(best.get(name, np.inf), run(cb, steps, recorded))
            if cb is not None and cb.to_frame().empty:
                raise RuntimeError(f"{name}: the monitor recorded nothing")
    ratios = {}
    for name, (_, steps, _) in configs.items():
        if not name.startswith("plain"):
            base = best["plain" if steps == 100 else "plain 20"]
            ratios[name] = tuple(best[name] / base)
    return ratios, float(best["plain"][0]) / 100


def _tf_floor(model, loss_fn, xp, yp):
    """A hand-written tf.function forward + backward with GradientTape on the probe batch (its loss to the host)."""
    import tensorflow as tf

    xt, yt = tf.constant(xp), tf.constant(yp)

    @tf.function
    def floor():
        with tf.GradientTape() as tape:
            loss = loss_fn(yt, model(xt, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    return lambda: floor()[0].numpy()


def _jax_floor(model, loss_fn, xp, yp):
    """A jitted jax.value_and_grad of the model's stateless call on the probe batch (its loss to the host)."""
    import jax

    def loss_of(trainable, non_trainable, x, y):
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return loss_fn(y, y_pred)

    step = jax.jit(jax.value_and_grad(loss_of))
    return lambda: np.asarray(
        step([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], xp, yp)[0]
    )


def _torch_floor(model, loss_fn, xp, yp):
    """The model's call and torch.autograd.grad of the loss w.r.t. its trainable weights (the loss to the host)."""
    import torch

    xt, yt = keras.ops.convert_to_tensor(xp), keras.ops.convert_to_tensor(yp)
    weights = [v.value for v in model.trainable_variables]

    def floor():
        loss = loss_fn(yt, model(xt, training=True))
        torch.autograd.grad(loss, weights)
        return float(loss.detach().cpu())

    return floor


def probe_ratios(build, calls: int, repeats: int) -> tuple[dict, float]:
    """One probe record against the floor (a hand-written tf.function forward + backward on the same batch)."""
    keras.utils.set_random_seed(0)
    model, shape = build()
    _compile(model)
    xp, yp = _data(shape, PROBE, 2)
    monitor = VarianceMonitor(probe=(xp, yp))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    floor = {"jax": _jax_floor, "torch": _torch_floor}.get(keras.backend.backend(), _tf_floor)(model, loss_fn, xp, yp)
    probe_fn = monitor._probe_fn(model).fn  # what one record runs: the traced probe function, built once
    fns = {
        "floor": floor,
        "probe": lambda: np.asarray(probe_fn()[0]),  # reductions on the device, one small vector to the host
        "measure()": lambda: monitor.measure(model),  # the same, plus the record's DataFrame
    }
    for f in fns.values():
        f()
    times: dict = {}
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = _clock()
            for _ in range(calls):
                f()
            _best(times, name, t0, calls)
    return _ratios(times, "floor"), times["floor"][0]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpu = jax.default_backend() == "gpu"
    elif backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
    else:
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    print(f"[{backend}] batch {BATCH}, probe {PROBE}, {'GPU' if gpu else 'CPU'}; ratios as wall (process CPU time)")
    if not gpu and backend == "tensorflow":
        print("CPU time counts the work done whatever else runs on the machine; wall time does not.")
    targets = "" if backend != "tensorflow" else " (target <= 1.2x)"
    for name, build in (("5x1000 tanh MLP", mlp), ("20-layer conv net", convnet)):
        pr, floor = probe_ratios(build, calls=1, repeats=8)
        cells = ", ".join(f"{k} {w:.2f}x ({c:.2f}x)" for k, (w, c) in pr.items())
        print(f"[{backend}] {name}: one record vs floor {floor * 1e3:.0f} ms{targets}: {cells}", flush=True)
        fr, step = fit_ratios(build, repeats=2)
        cells = ", ".join(f"{k} {w:.3f}x ({c:.3f}x)" for k, (w, c) in fr.items())
        print(
            f"[{backend}] {name}: fit vs plain fit, plain step {step * 1e3:.0f} ms (targets: every=50 <= 1.03x, "
            f"every=1 <= 1.5x): {cells}",
            flush=True,
        )
    if backend == "tensorflow" and "--no-jax" not in argv:
        _subprocess("jax", "pip install jax, or make install")
    if backend == "tensorflow" and "--no-torch" not in argv:
        _subprocess("torch", "not in dev, its wheels are large: make test-torch installs it")


def _subprocess(other: str, how: str) -> None:
    """The same benchmark under the Keras backend `other`, in a subprocess (Keras picks its backend at import)."""
    if importlib.util.find_spec(other) is None:
        print(f"[{other}] skipped: {other} is not installed ({how})")
        return
    env = {**os.environ, "KERAS_BACKEND": other}
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_monitor"], env=env, capture_output=True, text=True)
    print(done.stdout, end="", flush=True)
    if done.returncode:
        print(f"[{other}] failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")


if __name__ == "__main__":
    main()
