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


# Global-batch divisors under tf.distribute (README, "How terms are reduced":
# "Under `tf.distribute` each divisor is that of the global batch"): one
# SGD step of a Distiller on 2 replicas (conftest's 2 logical CPUs) moves the
# student exactly as one device does on the same global batch. The weights
# are chosen so that the replicas' halves have very different weight sums
# (and labelled counts), which a per-replica divisor would get wrong.

_VOCAB, _TIME, _BATCH = 7, 5, 16


def _sequence_model(seed, width):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((_TIME,), dtype="int32"),
                             keras.layers.Embedding(_VOCAB, width),
                             keras.layers.Dense(_VOCAB)])


def _one_step(strategy, reduction, sample_weight, tokens, labels):
    import tensorflow as tf

    import keras_kd

    teacher = _sequence_model(1, 6)
    with strategy.scope():
        distiller = keras_kd.Distiller(student=_sequence_model(2, 3), teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5), alpha=0.4, temperature=2.0,
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction=reduction))
    before = [w.numpy().copy() for w in distiller.student.weights]
    logs = distiller.fit(tokens, labels, sample_weight=sample_weight, batch_size=_BATCH,
                         epochs=1, shuffle=False, verbose=0).history
    assert isinstance(strategy, tf.distribute.Strategy)
    return [w.numpy() - b for w, b in zip(distiller.student.weights, before)], logs


def _weights(kind):
    rng = np.random.default_rng(11)
    if kind == "per_sample":
        w = rng.uniform(0.1, 0.5, _BATCH)
        w[: _BATCH // 2] *= 8.0  # The first replica's half weighs far more.
    else:  # Per position, as a padding mask: the second half mostly padding.
        w = (rng.uniform(size=(_BATCH, _TIME)) < 0.9).astype("float64")
        w[_BATCH // 2:, 1:] = 0.0
    return w.astype("float32")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="tf.distribute is TensorFlow's; JAX: tests/distribution")
@pytest.mark.parametrize("reduction, kind", [
    ("mean_with_sample_weight", "per_sample"),
    ("mean_with_sample_weight", "per_position"),
    ("sum_over_batch_size", "per_position"),
    ("sum", "per_sample"),  # Half of one device's update before issue 25 row 1.
])
def test_two_replicas_update_as_one_device(reduction, kind):
    import tensorflow as tf

    rng = np.random.default_rng(12)
    tokens = rng.integers(0, _VOCAB, size=(_BATCH, _TIME)).astype("int32")
    labels = rng.integers(0, _VOCAB, size=(_BATCH, _TIME))
    weights = _weights(kind)
    single, single_logs = _one_step(tf.distribute.get_strategy(), reduction, weights,
                                    tokens, labels)
    # Not collective ops: another strategy of this process may share their
    # instance keys, and collectives of other shapes then fail.
    mirrored = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    assert mirrored.num_replicas_in_sync == 2
    replicated, replicated_logs = _one_step(mirrored, reduction, weights, tokens, labels)
    scale = max(np.abs(d).max() for d in single)
    assert scale > 1e-3  # The step moved the student.
    # float32 sums in another order (the all-reduce): 1e-4 of the largest
    # update; a per-replica divisor or a halving is off by tens of percent.
    for a, b in zip(single, replicated):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * scale)
    for key in ("student_loss", "distillation_loss"):
        np.testing.assert_allclose(replicated_logs[key], single_logs[key], rtol=1e-5)
