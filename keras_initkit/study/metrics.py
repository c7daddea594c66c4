"""Measures the studies share: one definition each, so that every study's tables mean the same thing."""

from __future__ import annotations

import numpy as np


def accuracy(model, x, y, batch: int = 1000) -> float:
    """Fraction of `x` whose argmax logit (or probability) is the label `y`, in inference mode (`training=False`,
    BatchNormalization uses its moving statistics); a row with a non-finite output counts as wrong (a diverged net
    scores 0, never a lucky argmax of NaNs)."""
    import keras

    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    right = 0
    for i in range(0, len(x), batch):
        out = keras.ops.convert_to_numpy(model(x[i : i + batch], training=False))
        pred = np.where(np.isfinite(out).all(axis=1), out.argmax(axis=1), -1)
        right += int((pred == np.asarray(y[i : i + batch])).sum())
    return right / max(len(x), 1)


def error_percent(model, x, y, batch: int = 1000) -> float:
    """Classification error in percent (Glorot & Bengio's Table 1 unit): 100 (1 - accuracy)."""
    return 100.0 * (1.0 - accuracy(model, x, y, batch))


def cross_entropy(model, x, y) -> float:
    """Mean cross-entropy of the labels `y` under the softmax of the model's logits on `x` (one batch, inference
    mode), computed in float64 with the log-sum-exp shift: the loss a classifier starts from (ln K at chance)."""
    import keras

    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    logits = keras.ops.convert_to_numpy(model(x, training=False)).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), np.asarray(y)].mean())
