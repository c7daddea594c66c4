"""Measures the studies share: one definition each, so that every study's tables mean the same thing."""

from __future__ import annotations

import functools

import numpy as np


def correct(model, x, y, batch: int = 1000) -> np.ndarray:
    """Per example of `x`: is its argmax logit (or probability) the label `y`? In inference mode (`training=False`,
    BatchNormalization uses its moving statistics); a row with a non-finite output counts as wrong (a diverged net
    scores 0, never a lucky argmax of NaNs). The paired tests (`summary.mcnemar`, `summary.paired_bootstrap`) take
    these vectors."""
    import keras

    if len(x) != len(y):
        raise ValueError(f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}")
    out = np.zeros(len(x), dtype=bool)
    for i in range(0, len(x), batch):
        logits = keras.ops.convert_to_numpy(model(x[i : i + batch], training=False))
        pred = np.where(np.isfinite(logits).all(axis=1), logits.argmax(axis=1), -1)
        out[i : i + batch] = pred == np.asarray(y[i : i + batch])
    return out


def accuracy(model, x, y, batch: int = 1000) -> float:
    """Fraction of `x` classified correctly (`correct`'s mean; 0 for no example)."""
    right = correct(model, x, y, batch)
    return float(right.mean()) if len(right) else 0.0


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


@functools.lru_cache(maxsize=16)
def _dense_jacobian_fn(activation):
    """A traced batch_jacobian of z -> activation(z W + b), reused by every Dense layer with this activation (tracing
    TensorFlow's pfor once per activation and shape instead of once per layer)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def jacobian(z, kernel, bias):
        with tf.GradientTape() as tape:
            tape.watch(z)
            out = activation(tf.matmul(z, kernel) + bias)
        return tape.batch_jacobian(out, z)

    return jacobian


def jacobian_singular_values(layer, inputs) -> np.ndarray:
    """Singular values of the Jacobian d layer(z) / dz at each row z of `inputs`, shape (batch, min(in, out)).

    Computed with automatic differentiation (TensorFlow's GradientTape.batch_jacobian, or JAX's jacrev under that
    backend). For a linear layer z -> z W + b they are the singular values of W, for every row.
    """
    z = np.asarray(inputs, dtype="float32")
    if z.ndim != 2:
        raise ValueError(f"`inputs` must be a (batch, features) array. Received: shape={z.shape}")
    import keras
    import threadpoolctl  # a scikit-learn dependency

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        zt = tf.convert_to_tensor(z)
        if isinstance(layer, keras.layers.Dense) and layer.built:
            # tensors, not variables, as arguments: one trace serves every layer of the same shapes
            kernel = tf.convert_to_tensor(layer.kernel)
            bias = tf.convert_to_tensor(layer.bias) if layer.use_bias else tf.zeros((layer.units,), zt.dtype)
            jac = _dense_jacobian_fn(layer.activation)(zt, kernel, bias).numpy()
        else:
            with tf.GradientTape() as tape:
                tape.watch(zt)
                out = layer(zt)
            jac = tape.batch_jacobian(out, zt).numpy()
    elif backend == "jax":
        import jax

        jac = np.asarray(jax.vmap(jax.jacrev(lambda v: layer(v[None])[0]))(z))
    else:
        raise ValueError(f"the Keras backend must be 'tensorflow' or 'jax'. Received: backend={backend!r}")
    # One BLAS thread: next to TensorFlow's thread pools, a multi-threaded OpenBLAS SVD can take seconds.
    with threadpoolctl.threadpool_limits(1):
        return np.linalg.svd(jac.astype("float64"), compute_uv=False)
