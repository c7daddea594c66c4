"""The studies' shared measures against hand computations."""

import keras
import numpy as np
import pytest

from keras_initkit.study.metrics import accuracy, error_percent


class _Fixed(keras.Model):
    """Returns fixed logits per example index (the input holds the index)."""

    def __init__(self, logits):
        super().__init__()
        self.table = keras.ops.convert_to_tensor(logits)

    def call(self, x, training=False):
        return keras.ops.take(self.table, keras.ops.cast(x[:, 0], "int32"), axis=0)


def test_accuracy_counts_argmax_hits_across_batches_and_non_finite_rows_as_wrong():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [np.nan, 9.0], [5.0, np.inf], [1.0, 0.0]], dtype="float32")
    x = np.arange(5, dtype="float32")[:, None]
    y = np.array([0, 1, 1, 0, 1])  # right, right, NaN row (wrong), inf row (wrong), wrong
    model = _Fixed(logits)
    for batch in (1, 2, 1000):
        assert accuracy(model, x, y, batch=batch) == pytest.approx(2 / 5)
        assert error_percent(model, x, y, batch=batch) == pytest.approx(60.0)


def test_accuracy_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match=r"len\(x\)=3, len\(y\)=2"):
        accuracy(_Fixed(np.zeros((3, 2), "float32")), np.zeros((3, 1), "float32"), np.zeros(2))


def test_cross_entropy_against_a_hand_computation():
    from keras_initkit.study.metrics import cross_entropy

    logits = np.array([[0.0, 0.0], [3.0, 1.0], [1000.0, 0.0]], dtype="float32")  # the last one: shift-stable
    y = np.array([0, 1, 0])
    x = np.arange(3, dtype="float32")[:, None]
    expect = np.mean([np.log(2.0), np.log1p(np.exp(2.0)), 0.0])
    assert cross_entropy(_Fixed(logits), x, y) == pytest.approx(expect)
    with pytest.raises(ValueError, match=r"len\(x\)=3, len\(y\)=2"):
        cross_entropy(_Fixed(logits), x, y[:2])
