"""One reduction for every term: Keras' own, over all leading axes.

A term's values have one entry per *position*: `(batch,)` for a classifier,
`(batch, time)` for a sequence model. `reduce_values` reduces them exactly as
a Keras loss reduces its own values (`keras.losses.Loss.__call__`), so a
Distiller reports what `student.evaluate` reports:

- `sample_weight` of shape `(batch,)` weighs every position of a sample;
  `(batch, ...)` weighs each position (KerasHub's padding masks).
- `mask` (a Keras mask such as `Embedding(mask_zero=True)`'s, the loss's
  `ignore_class`, `UNLABELLED`) removes positions; `"sum_over_batch_size"`
  and `"mean"` then divide by the number of positions left, as Keras does.
- `"mean_with_sample_weight"` divides by the sum of the weights left (the
  mean over real tokens, TRL's "batchmean"); `"sum"` does not divide.

Under `tf.distribute` each replica returns its share in the form Keras'
trainer expects (the Distiller divides the step's loss by the number of
replicas N and the gradients are summed over replicas, as Keras scales a
mean loss by `1 / N`): a mean divides the replica's sum by the global
divisor over N, and `"sum"` multiplies the replica's sum by N (Keras leaves
a sum unscaled). Either way N replicas give the update of one device with
the same global batch, for every reduction.

On JAX there are no replicas to count: under `keras.distribution`
(`DataParallel`, `ModelParallel`) a step sees global arrays, one logical
batch sharded over the mesh, and XLA inserts the collectives. The replica
count is then 1 by definition: each reduction is already the global one.
"""

import keras
import tensorflow as tf
from keras import ops

# Reductions to one value per batch, as Keras' losses name them.
REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")


def global_mean(value):
    """`value` summed over the replicas of a strategy, divided by their number.

    Each replica's `local_sum / global_mean(local_count)`, with gradients
    summed over replicas and scaled by `1 / N`, gives the global
    `sum / count`.
    """
    context = _replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce("sum", value) / context.num_replicas_in_sync


def gather_batch(value):
    """`value`'s batch axis gathered over the replicas of a strategy.

    A term that compares samples of a batch with each other (the
    relational feature hints) needs the global batch, not a replica's
    share: every replica gets the whole batch (gradients flow back to each
    replica's own rows), so the term is one device's. Without replicas
    (one device, or JAX's global arrays), `value` itself.
    """
    context = _replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


def _replica_context():
    """The `tf.distribute` replica context, or `None` off TensorFlow: on
    JAX, arrays are global (see the module docstring), so nothing divides."""
    if keras.backend.backend() != "tensorflow":
        return None
    return tf.distribute.get_replica_context()


def _num_replicas():
    context = _replica_context()
    return 1.0 if context is None else float(context.num_replicas_in_sync)


def broadcast_weights(sample_weight, values):
    """Per-sample or per-position weights, broadcast to `values`' shape.

    Args:
        sample_weight: `None`, `(batch,)`, or `(batch, ...)` of up to
            `values`' rank (a trailing axis of size 1 is dropped).
        values: The term's values `(batch, ...)`.

    Returns:
        Float32 weights of `values`' shape, or `None`.
    """
    if sample_weight is None:
        return None
    weights = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    rank, target = len(weights.shape), len(values.shape)
    if rank == target + 1 and weights.shape[-1] == 1:
        weights = ops.squeeze(weights, -1)
        rank -= 1
    if rank > target:
        raise ValueError(
            f"`sample_weight` of shape {tuple(weights.shape)} has more axes "
            f"than the loss values {tuple(values.shape)}. Pass one weight per "
            "sample `(batch,)` or per position `(batch, time)`."
        )
    for _ in range(target - rank):
        weights = ops.expand_dims(weights, -1)
    return ops.broadcast_to(weights, ops.shape(values))


def reduce_values(values, sample_weight=None, mask=None, reduction="sum_over_batch_size"):
    """Reduces per-position values to a scalar as a Keras loss would.

    Args:
        values: Float values `(batch, ...)`, one per position.
        sample_weight: Optional weights, see `broadcast_weights`.
        mask: Optional boolean mask of `values`' shape; `False` positions
            count for nothing (their values may be NaN).
        reduction: One of `REDUCTIONS`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> values = np.array([[1.0, 3.0], [5.0, 7.0]], "float32")
    >>> mask = np.array([[True, True], [True, False]])
    >>> float(reduce_values(values, mask=mask))  # (1 + 3 + 5) / 3
    3.0
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {list(REDUCTIONS)}. Received: "
            f"reduction={reduction!r}."
        )
    values = ops.cast(ops.convert_to_tensor(values), "float32")
    weights = broadcast_weights(sample_weight, values)
    if mask is not None:
        mask = ops.broadcast_to(ops.convert_to_tensor(mask), ops.shape(values))
        float_mask = ops.cast(mask, "float32")
        # `where`, not a product: a masked position's value may be NaN.
        values = ops.where(mask, values, 0.0)
        weights = float_mask if weights is None else weights * float_mask
    total = ops.sum(values if weights is None else values * weights)
    if reduction == "sum":
        # The step divides by N for the means' sake; a global sum is the sum
        # of the replicas' sums, so each replica gives N times its own.
        return total * _num_replicas()
    if reduction == "mean_with_sample_weight" and weights is not None:
        return ops.divide_no_nan(total, global_mean(ops.sum(weights)))
    if mask is not None:
        count = ops.sum(float_mask)
    else:
        count = ops.cast(ops.prod(ops.shape(values)), "float32")
    return ops.divide_no_nan(total, global_mean(count))
