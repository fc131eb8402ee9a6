"""Labels of a batch: the label loss, unlabelled samples and class weights.

In a batch of integer labels, `UNLABELLED` (-1) marks a sample without a
label (for one-hot labels, a row of zeros does): `labelled_mask` gives loss-
safe labels and the mask, and `reduce_loss` reduces per-sample losses over
the labelled samples as Keras' `reduction` and `ignore_class` would, exactly
over the global batch under `tf.distribute`. `resolve_student_loss` turns
what a user passes as `student_loss_fn` into a loss on logits.
"""

import functools
import inspect

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd.cache import UNLABELLED

# Reductions a student loss may carry, and what they divide the weighted sum
# of the labelled samples' losses by.
_REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")


def static_rank(tensor):
    """The static rank of a tensor, or `None` when unknown."""
    shape = tensor.shape
    return shape.rank if hasattr(shape, "rank") else len(shape)


def per_sample(values, batch_size):
    """Reduces a loss output to one value per sample, shape `(batch,)`."""
    values = ops.cast(ops.convert_to_tensor(values), "float32")
    if len(values.shape) == 0:
        return ops.broadcast_to(values, (batch_size,))
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


def global_sum(value):
    """Sums `value` over the replicas of a `tf.distribute` strategy.

    Returns the sum divided by the number of replicas, so that each replica's
    `local_sum / global_sum(count)` adds up, over the replicas' gradients
    scaled by `1 / N`, to the global `sum / count`.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce("sum", value) / context.num_replicas_in_sync


def reduce_loss(per_sample_values, sample_weight, mask, reduction):
    """Reduces per-sample losses as Keras' `reduction` would, over `mask`.

    Masked-out samples count for nothing, as with Keras' `ignore_class`: a
    mean is over the samples that are not masked.
    """
    values = ops.cast(per_sample_values, "float32")
    weights = ops.ones_like(values)
    if sample_weight is not None:
        weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    if mask is not None:
        mask = ops.cast(mask, "float32")
        # `where`, not a product: a masked sample's loss may be NaN.
        values = ops.where(mask > 0, values, 0.0)
        weights = weights * mask
    total = ops.sum(values * weights)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight":
        return ops.divide_no_nan(total, global_sum(ops.sum(weights)))
    if mask is None:
        count = ops.cast(ops.shape(values)[0], "float32")
    else:
        count = global_sum(ops.sum(mask))
    return ops.divide_no_nan(total, count)


def resolve_student_loss(identifier):
    """Resolves `student_loss_fn` to a loss that takes logits.

    Args:
        identifier: `None`, a string (function or class name, as
            `keras.losses.get` takes), a config dict, a loss instance or a
            callable `(y_true, logits) -> loss`.

    Returns:
        A `keras.losses.Loss` or a callable.

    Raises:
        ValueError: for a non-callable, a reduction of `"none"`, or a loss
            instance built with `from_logits=False`.
    """
    if identifier is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(identifier, (str, dict)):
        loss = keras.losses.get(identifier)
        if isinstance(loss, keras.losses.Loss):
            config = loss.get_config()
            if "from_logits" in config:
                loss = type(loss).from_config({**config, "from_logits": True})
        elif "from_logits" in inspect.signature(loss).parameters:
            loss = functools.partial(loss, from_logits=True)
        return _checked_student_loss(loss)
    if not callable(identifier):
        raise ValueError(
            "`student_loss_fn` must be a loss or a callable. Received: "
            f"student_loss_fn={identifier!r}."
        )
    return _checked_student_loss(identifier)


def _checked_student_loss(loss):
    if not isinstance(loss, keras.losses.Loss):
        return loss
    config = loss.get_config()
    if config.get("from_logits") is False:
        raise ValueError(
            f"`student_loss_fn` is {type(loss).__name__} with "
            "from_logits=False, but the student outputs logits. Build it "
            f"with `{type(loss).__name__}(from_logits=True)` or name it by "
            "string, which resolves on logits."
        )
    if loss.reduction not in _REDUCTIONS:
        raise ValueError(
            "`student_loss_fn` must reduce to one value per batch. Received "
            f"reduction={loss.reduction!r}. Use one of {list(_REDUCTIONS)}; "
            "to change how samples count, pass `sample_weight`."
        )
    return loss


def ignore_class_of(loss_fn):
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.get_config().get("ignore_class")
    return None


def labelled_mask(y, ignore_class=None):
    """Splits labels into loss-safe labels and a mask of labelled samples.

    Args:
        y: Integer labels `(batch,)` / `(batch, 1)`, where `UNLABELLED`
            marks a sample without a label, or one-hot labels
            `(batch, classes)`, where a row of zeros does.
        ignore_class: A further integer label to mask, as Keras' losses'
            `ignore_class`.

    Returns:
        `(labels, mask)`: the labels with masked integer labels replaced by
        0 (any loss can take them) and a boolean mask `(batch,)`.
    """
    y = ops.convert_to_tensor(y)
    rank = static_rank(y)
    # Labels of unknown rank (e.g. `from_generator` with `TensorSpec(None)`)
    # are taken as integer labels, as Keras' sparse losses would.
    sparse = rank in (None, 1) or (rank == 2 and y.shape[-1] == 1)
    if not sparse:
        return y, ops.sum(ops.abs(ops.cast(y, "float32")), axis=-1) > 0
    flat = ops.reshape(y, (-1,))
    mask = ops.not_equal(flat, ops.cast(UNLABELLED, flat.dtype))
    if ignore_class is not None:
        mask = ops.logical_and(
            mask, ops.not_equal(flat, ops.cast(ignore_class, flat.dtype))
        )
    safe = ops.where(mask, flat, ops.zeros_like(flat))
    if rank is None:
        return safe, mask
    return ops.reshape(safe, ops.shape(y)), mask


def integer_classes(y):
    """Int32 classes `(batch,)` of integer or one-hot labels, and the mask.

    One-hot rows give their arg max; masked samples (see `labelled_mask`)
    give class 0 and `False` in the mask.
    """
    labels, mask = labelled_mask(y)
    if static_rank(labels) not in (None, 1) and labels.shape[-1] != 1:
        labels = ops.argmax(labels, axis=-1)
    return ops.reshape(ops.cast(labels, "int32"), (-1,)), mask


def class_weight_table(class_weight):
    """Turns `{class: weight}` into a list indexed by class, as Keras does."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(
            "`class_weight` must be a non-empty dict {class index: weight}. "
            f"Received: class_weight={class_weight!r}."
        )
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
           for k in class_weight):
        raise ValueError(
            "`class_weight` keys must be class indices (integers >= 0). "
            f"Received keys: {sorted(class_weight, key=str)}."
        )
    return [
        float(class_weight.get(c, 1.0)) for c in range(max(class_weight) + 1)
    ]


def is_one_hot(y, logits):
    """True if `y` holds one-hot (or soft) labels shaped like `logits`."""
    if isinstance(y, dict) or y is None:
        return False
    y_shape = getattr(y, "shape", None)
    if y_shape is None or static_rank(y) is None or static_rank(y) != static_rank(logits):
        return False
    return y_shape[-1] is not None and y_shape[-1] == logits.shape[-1] and (
        y_shape[-1] > 1
    )


def class_weights(y, sample_weight, table):
    """Multiplies per-class weights into the sample weights.

    Args:
        y: Integer or one-hot labels (one-hot: the class is the arg max).
        sample_weight: Per-sample weights, or `None`.
        table: A list of weights indexed by class (`class_weight_table`).
            Classes beyond it, and unlabelled samples, get weight 1.

    Returns:
        Per-sample weights `(batch,)`.
    """
    labels, mask = integer_classes(y)
    size = len(table)
    known = ops.logical_and(mask, labels < size)
    weights = ops.where(
        known,
        ops.take(ops.convert_to_tensor(table, "float32"), ops.clip(labels, 0, size - 1)),
        1.0,
    )
    if sample_weight is not None:
        weights = weights * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return weights


def true_classes(y, teacher_logits):
    """Integer true classes of a batch, the teacher's top class where none.

    Args:
        y: Integer or one-hot labels (with `UNLABELLED` / zero rows for
            samples without one), or `None`.
        teacher_logits: The teacher's logits `(batch, classes)`.

    Returns:
        Int32 classes `(batch,)`.
    """
    teacher_top = ops.cast(ops.argmax(teacher_logits, axis=-1), "int32")
    if y is None:
        return teacher_top
    labels, mask = integer_classes(y)
    return ops.where(mask, labels, teacher_top)
