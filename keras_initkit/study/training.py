"""Training machinery the studies share: mini-batches, a fit loop that returns a tidy curve, one compiled-model cache.

    model = MODELS.fresh(key, build=lambda: build_vgg(...), compile=lambda m: compile_sgd(m, 3e-3, momentum=0.9))
    curve = fit_curve(model.model, x, y, steps=400, every=10, batch_size=32, seed=derive_seed(seed, "order"))

- `batches`: an endless stream of shuffled mini-batches (a fresh permutation each pass), deterministic for its seed.
- `CurveRecorder` / `fit_curve`: `steps` SGD updates in chunks of `every` (one Keras epoch per chunk, also the
  `steps_per_execution`), one row per chunk: step, the chunk's mean training loss, and what `evaluate(model)`
  returns (held-out error, accuracy, ...); optionally a row before the first update (`start`) and an early stop.
- `set_random_seed` / `clear_session`: Keras' own, without clearing TensorFlow's kernel cache (which would make every
  traced function of a cached model be instantiated again in each trial).
- `ModelCache`: per process, one compiled model per architecture key. A trial asks it for a fresh net: the first time
  the freshly built model itself is compiled and kept; later, the fresh model's weights are copied into the kept
  one and the optimizer state is zeroed. The train step (and a monitor traced on the model) is traced once per key
  and process instead of once per trial; the tables are the same as from a fresh build.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import keras
import numpy as np
import pandas as pd


@contextlib.contextmanager
def _kernel_cache_kept():
    """TensorFlow's eager kernel cache is not cleared inside this block (where TensorFlow is installed).

    `tf.random.set_seed` and Keras' `clear_session` both clear it; a traced function (a cached model's train step,
    a monitor's probe pass) is then instantiated and optimized again on its next call: measured 0.5 s for a 30-layer
    conv net's train step and 4 s for its probe pass on the 2-core machine, in every trial. The clear exists to
    restart stateful random kernels (`tf.random.uniform` without a seed); every random number in a study comes from
    an explicit seed (Keras' stateless initializers, the `tf.data` shuffle seed, which with the global seed set here
    gives the same order), so its tables are unchanged (tests/test_study_training.py checks the seeds).
    """
    try:
        from tensorflow.python import pywrap_tfe
    except ImportError:
        yield
        return
    clear = pywrap_tfe.TFE_ContextClearCaches
    pywrap_tfe.TFE_ContextClearCaches = lambda handle: None
    try:
        yield
    finally:
        pywrap_tfe.TFE_ContextClearCaches = clear


def set_random_seed(seed: int) -> None:
    """`keras.utils.set_random_seed(seed)` (Python, NumPy, TensorFlow's global seed, Keras' global SeedGenerator),
    keeping TensorFlow's kernel cache: a trial's seed without re-instantiating the traced functions of the models
    a `ModelCache` keeps."""
    with _kernel_cache_kept():
        keras.utils.set_random_seed(seed)


def clear_session() -> None:
    """`keras.backend.clear_session()` (Keras' global state: layer-name counters, the global SeedGenerator, the
    default graph; garbage collection), keeping TensorFlow's kernel cache (see `set_random_seed`)."""
    with _kernel_cache_kept():
        keras.backend.clear_session()


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """An endless `tf.data` stream of shuffled (x, y) mini-batches of `batch_size` (a fresh permutation of the whole
    set each pass, the last partial batch dropped), deterministic for `seed`."""
    import tensorflow as tf

    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or not 1 <= batch_size <= len(x):
        raise ValueError(f"`batch_size` must be an int in [1, len(x)={len(x)}]. Received: batch_size={batch_size!r}")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat().batch(batch_size, drop_remainder=True)
    return ds.prefetch(2)


class CurveRecorder(keras.callbacks.Callback):
    """One row per chunk of `every` updates (a Keras epoch): step, the chunk's mean training loss (Keras resets its
    loss mean each epoch), and the entries of `evaluate(model)` when given.

    State is reset in `on_train_begin`, so one instance can serve several `fit` calls; `frame()` gives the rows.

    Args:
        every: updates per chunk (the `steps_per_epoch` of the `fit` call).
        offset: added to every step (a net that continues another's count, e.g. after a pre-training phase).
        loss: the column name of the training loss ("loss", "train_loss").
        evaluate: model -> dict of extra columns, called after each chunk (and for the start row).
        start: a row at step `offset` before the first update: False (none), True (loss NaN, plus `evaluate`'s
            columns), or a callable model -> dict giving that row's values (e.g. {"loss": loss on a probe batch}).
        stop_below: stop training after the first chunk whose mean loss is <= this (None: never).
    """

    def __init__(
        self,
        every: int,
        *,
        offset: int = 0,
        loss: str = "loss",
        evaluate: Callable[[keras.Model], dict] | None = None,
        start: bool | Callable[[keras.Model], dict] = False,
        stop_below: float | None = None,
    ):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"`every` must be an int >= 1. Received: every={every!r}")
        self.every, self.offset, self.loss, self.evaluate = int(every), int(offset), loss, evaluate
        self.start, self.stop_below = start, stop_below
        self.rows: list[dict] = []

    def _row(self, step: int, loss: float) -> dict:
        row = {"step": step, self.loss: loss}
        if self.evaluate is not None:
            row.update(self.evaluate(self.model))
        return row

    def on_train_begin(self, logs=None):
        self.rows = []
        if callable(self.start):
            self.rows.append({"step": self.offset, self.loss: float("nan"), **self.start(self.model)})
        elif self.start:
            self.rows.append(self._row(self.offset, float("nan")))

    def on_epoch_end(self, epoch, logs=None):
        loss = float((logs or {}).get("loss", np.nan))
        self.rows.append(self._row(self.offset + (epoch + 1) * self.every, loss))
        if self.stop_below is not None and loss <= self.stop_below:
            self.model.stop_training = True

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def fit_curve(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    every: int,
    batch_size: int,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    **recorder: Any,
) -> pd.DataFrame:
    """`steps` updates of a compiled model on `batches(x, y, batch_size, seed)` in chunks of `every`; the tidy curve.

    Example:
    >>> curve = fit_curve(model, x, y, steps=400, every=10, batch_size=32, seed=0, stop_below=0.5)

    Args:
        model: a compiled Keras model (compile with `steps_per_execution=every` for speed).
        x, y: the training set.
        steps: updates, a multiple of `every` (fewer when `stop_below` stops it).
        every: updates per recorded chunk.
        batch_size: mini-batch size.
        seed: seed of the mini-batch order.
        callbacks: run before the recorder (a `VarianceMonitor`, ...).
        **recorder: `CurveRecorder` options: offset, loss, evaluate, start, stop_below.

    Returns:
        DataFrame with columns step, the loss column, and `evaluate`'s columns, one row per chunk (and the start row).
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0 or steps % every:
        raise ValueError(f"`steps` must be an int >= 0, a multiple of `every`={every}. Received: steps={steps!r}")
    curve = CurveRecorder(every, **recorder)
    model.fit(
        batches(x, y, batch_size, seed),
        epochs=int(steps) // int(every),
        steps_per_epoch=int(every),
        callbacks=[*callbacks, curve],
        shuffle=False,  # the stream is shuffled already
        verbose=0,
    )
    return curve.frame()


def compile_sgd(
    model: keras.Model,
    learning_rate: float,
    *,
    momentum: float = 0.0,
    weight_decay: float | None = None,
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile for the studies' classification runs: SGD, sparse categorical cross-entropy on logits."""
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay or None
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return model


def reset_optimizer(model: keras.Model, learning_rate: float | None = None) -> None:
    """The optimizer's state back to its start (iteration count and slots 0); the learning rate set to
    `learning_rate` when given, else kept."""
    for var in model.optimizer.variables:
        if var.name != "learning_rate":
            var.assign(keras.ops.zeros(var.shape, dtype=var.dtype))
    if learning_rate is not None:
        model.optimizer.learning_rate = learning_rate


@dataclasses.dataclass
class CachedModel:
    """A compiled model kept by `ModelCache`, and a dict the study may keep with it (e.g. a monitor traced on it)."""

    model: keras.Model
    extra: dict = dataclasses.field(default_factory=dict)


class ModelCache:
    """Per process, one compiled model per architecture key; `fresh` gives it the weights of a freshly built net.

    The key must hold everything the build and the compile depend on but the weights and the learning rate
    (architecture, optimizer settings, `steps_per_execution`, and the data when a monitor is kept in `extra`).
    A study keeps one instance at module level (`_MODELS = ModelCache()`): trials in one worker process share it.
    """

    def __init__(self):
        self._entries: dict[Hashable, CachedModel] = {}

    def fresh(
        self,
        key: Hashable,
        build: Callable[[], keras.Model],
        compile: Callable[[keras.Model], Any],
        learning_rate: float | None = None,
    ) -> CachedModel:
        """The cached model for `key` with `build()`'s weights (kernels, biases, BatchNormalization's gamma, beta and
        moving statistics) and a zeroed optimizer state (learning rate set to `learning_rate` when given).

        Args:
            key: a hashable architecture key.
            build: makes a fresh, uncompiled model with the trial's initial weights (called on every request).
            compile: compiles a model in place (called once per key, on the first `build()`).
            learning_rate: this trial's learning rate (None: the compiled one).
        """
        fresh = build()
        entry = self._entries.get(key)
        if entry is None:
            compile(fresh)
            entry = self._entries[key] = CachedModel(fresh)
            if learning_rate is not None:
                entry.model.optimizer.learning_rate = learning_rate
            return entry
        entry.model.set_weights(fresh.get_weights())
        reset_optimizer(entry.model, learning_rate)
        return entry

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
