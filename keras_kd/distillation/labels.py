"""Labels of a batch: the student loss, and which positions are labelled.

The layout of the labels is read from shapes against the student's logits
`(batch, ..., classes)`, never from values:

- *integer class labels* have the logits' shape without the class axis
  (`(batch,)`, `(batch, time)`; a trailing axis of size 1 is allowed), and
  the logits have more than one class. Here, and only here, `UNLABELLED`
  (-1) marks a position without a label, and the loss's own `ignore_class`
  a position to leave out, as Keras does.
- *dense labels* have the logits' shape: one-hot, soft, multi-label or
  one-logit binary targets. No value marks them missing (a row of zeros is
  a valid multi-label target); say so with `keras_kd.targets(label_mask=)`.

`UNLABELLED` positions get only the distillation term; `ignore_class`
positions (and positions a Keras mask removes) count for neither term, as
padding.
"""

import functools
import inspect

import keras
from keras import ops

from keras_kd.distillation.batch import UNLABELLED
from keras_kd.distillation.reduction import REDUCTIONS

SPARSE = "integer class labels"
DENSE = "dense labels"

# Student losses on one-logit or multi-label (sigmoid) outputs.
BINARY_LOSSES = (keras.losses.BinaryCrossentropy, keras.losses.BinaryFocalCrossentropy)


def static_rank(tensor):
    """The static rank of a tensor, or `None` when unknown."""
    shape = tensor.shape
    return shape.rank if hasattr(shape, "rank") else len(shape)


def label_layout(labels, logits):
    """`SPARSE` or `DENSE`: how `labels` relate to the student's `logits`.

    Raises:
        ValueError: for labels whose shape fits neither layout.
    """
    label_rank, logit_rank = static_rank(labels), static_rank(logits)
    classes = logits.shape[-1]
    if label_rank is None:
        # `from_generator` with `TensorSpec(None)`: taken as class indices,
        # as Keras' sparse losses would.
        return SPARSE
    if classes == 1:
        return DENSE
    if label_rank == logit_rank - 1:
        return SPARSE
    if label_rank == logit_rank and labels.shape[-1] == 1:
        return SPARSE
    if label_rank == logit_rank:
        return DENSE
    raise ValueError(
        f"Labels of shape {tuple(labels.shape)} do not fit logits of shape "
        f"{tuple(logits.shape)}: pass class indices of shape "
        f"{tuple(logits.shape[:-1])} or dense targets of shape "
        f"{tuple(logits.shape)}."
    )


def sparse_positions(labels, logits):
    """Integer class labels reshaped to the logits' leading axes."""
    labels = ops.convert_to_tensor(labels)
    if static_rank(labels) is None:  # One class index per position.
        return ops.reshape(labels, ops.shape(logits)[:-1])
    if static_rank(labels) == static_rank(logits):
        labels = ops.squeeze(labels, -1)
    return labels


def label_masks(labels, logits, ignore_class=None, label_mask=None):
    """Loss-safe labels and the two masks of a batch's positions.

    Args:
        labels: The batch's labels.
        logits: The student's logits `(batch, ..., classes)`.
        ignore_class: The student loss's `ignore_class`, or `None`.
        label_mask: An explicit mask of labelled positions, or `None`.

    Returns:
        `(labels, labelled, present)`: the labels with masked class indices
        replaced by 0 (any loss can take them); `labelled`, the positions
        the hard term counts; `present`, the positions that exist for both
        terms (not `ignore_class`). Masks are booleans of the logits'
        leading shape, or `None` when every position counts.
    """
    labels = ops.convert_to_tensor(labels)
    labelled = present = None
    if label_layout(labels, logits) == SPARSE:
        positions = sparse_positions(labels, logits)
        labelled = ops.not_equal(positions, ops.cast(UNLABELLED, positions.dtype))
        if ignore_class is not None:
            present = ops.not_equal(positions, ops.cast(ignore_class, positions.dtype))
            labelled = ops.logical_and(labelled, present)
        safe = ops.where(labelled, positions, ops.zeros_like(positions))
        labels = safe if static_rank(labels) is None else ops.reshape(safe, ops.shape(labels))
    if label_mask is not None:
        explicit = ops.cast(ops.convert_to_tensor(label_mask), "bool")
        if static_rank(explicit) == static_rank(logits):
            explicit = ops.squeeze(explicit, -1)
        labelled = explicit if labelled is None else ops.logical_and(labelled, explicit)
    return labels, labelled, present


def class_indices(labels, logits):
    """Int32 true classes per position `(batch, ...)` of any label layout."""
    labels = ops.convert_to_tensor(labels)
    if label_layout(labels, logits) == SPARSE:
        return ops.cast(sparse_positions(labels, logits), "int32")
    return ops.cast(ops.argmax(labels, axis=-1), "int32")


def true_classes(labels, labelled, teacher_logits, student_logits):
    """True classes per position, the teacher's top class where none.

    For DKD and NKD, which split the classes into the true one and the
    others. Unlabelled positions take the class a teacher that is right
    there would give.
    """
    teacher_top = ops.cast(ops.argmax(teacher_logits, axis=-1), "int32")
    if labels is None:
        return teacher_top
    classes = class_indices(labels, student_logits)
    if labelled is None:
        return classes
    return ops.where(labelled, classes, teacher_top)


def resolve_student_loss(identifier, num_classes=None):
    """Resolves `student_loss_fn` to a loss that takes logits.

    Args:
        identifier: `None`, a string (function or class name, as
            `keras.losses.get` takes), a config dict, a loss instance or a
            callable `(y_true, logits) -> loss`.
        num_classes: The student's number of logits, if known. `None` as
            identifier gives `BinaryCrossentropy(from_logits=True)` for one
            logit, else `SparseCategoricalCrossentropy(from_logits=True)`.

    Returns:
        A `keras.losses.Loss` or a callable.

    Raises:
        ValueError: for a non-callable, a reduction of `"none"`, or a loss
            instance built with `from_logits=False`.
    """
    if identifier is None:
        if num_classes == 1:
            return keras.losses.BinaryCrossentropy(from_logits=True)
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
    if loss.reduction not in REDUCTIONS:
        raise ValueError(
            "`student_loss_fn` must reduce to one value per batch. Received "
            f"reduction={loss.reduction!r}. Use one of {list(REDUCTIONS)}; "
            "to change how samples count, pass `sample_weight`."
        )
    return loss


def ignore_class_of(loss_fn):
    """The `ignore_class` of a Keras loss, or `None`."""
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.get_config().get("ignore_class")
    return None


def reduction_of(loss_fn):
    """The reduction of a Keras loss; Keras' default for other callables."""
    return getattr(loss_fn, "reduction", None) or "sum_over_batch_size"


def is_binary_loss(loss_fn):
    """True for a student loss on sigmoid outputs (binary cross-entropy)."""
    if isinstance(loss_fn, BINARY_LOSSES):
        return True
    function = getattr(loss_fn, "func", loss_fn)  # functools.partial
    return getattr(function, "__name__", "") in (
        "binary_crossentropy", "binary_focal_crossentropy",
    )


def loss_values(loss_fn, labels, logits):
    """A student loss's values per position, before any reduction.

    Keras losses give one value per position (`(batch,)`, `(batch, time)`);
    the class axis is reduced by the loss itself.
    """
    if isinstance(loss_fn, keras.losses.Loss):
        labels, logits = _same_rank(labels, logits)
        values = loss_fn.call(labels, logits)
    else:
        values = loss_fn(labels, logits)
    values = ops.cast(ops.convert_to_tensor(values), "float32")
    leading = static_rank(logits) - 1
    if len(values.shape) == 0:
        return ops.broadcast_to(values, ops.shape(logits)[:leading])
    if len(values.shape) > leading:  # A callable that kept the class axis.
        values = ops.mean(values, axis=tuple(range(leading, len(values.shape))))
    return values


def _same_rank(labels, logits):
    # As `keras.losses.Loss.__call__` does before `call`.
    labels = ops.convert_to_tensor(labels)
    if static_rank(labels) == static_rank(logits) - 1 and logits.shape[-1] == 1:
        labels = ops.expand_dims(labels, -1)
    return labels, logits
