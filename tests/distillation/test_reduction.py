"""`reduce_values` against Keras' own reduction of the same loss values."""

import keras
import numpy as np
import pytest

from keras_kd.distillation.reduction import broadcast_weights
from keras_kd.distillation.reduction import reduce_values


class Values(keras.losses.Loss):
    """A Keras loss whose per-position values are `y_pred` itself."""

    def call(self, y_true, y_pred):
        return y_pred


def keras_reduction(values, sample_weight, mask, reduction):
    tensor = keras.ops.convert_to_tensor(values)
    if mask is not None:
        tensor._keras_mask = keras.ops.convert_to_tensor(mask)
    return float(Values(reduction=reduction)(tensor, tensor, sample_weight=sample_weight))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean", "sum",
                                       "mean_with_sample_weight"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("shape", [(6,), (3, 4)])
def test_equals_keras_loss_reduction(reduction, weighted, masked, shape):
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 3, size=shape).astype("float32")
    weights = rng.uniform(0, 2, size=shape).astype("float32") if weighted else None
    mask = rng.uniform(size=shape) < 0.6 if masked else None
    ours = float(reduce_values(values, weights, mask, reduction))
    assert ours == pytest.approx(keras_reduction(values, weights, mask, reduction), rel=1e-5)


def test_masked_positions_may_hold_nan():
    values = np.array([[1.0, np.nan], [3.0, 5.0]], "float32")
    mask = np.array([[True, False], [True, True]])
    assert float(reduce_values(values, mask=mask)) == pytest.approx(3.0)


def test_per_sample_weights_weigh_every_position():
    values = np.ones((2, 3), "float32")
    weights = np.array([1.0, 3.0], "float32")
    np.testing.assert_array_equal(broadcast_weights(weights, values), [[1, 1, 1], [3, 3, 3]])
    assert float(reduce_values(values, weights, reduction="sum")) == 12.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="reduction"):
        reduce_values(np.ones(2), reduction="none")
    with pytest.raises(ValueError, match="sample_weight"):
        reduce_values(np.ones(2), np.ones((2, 3)))
