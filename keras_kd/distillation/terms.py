"""The two loss terms of a `Distiller`, each with one signature.

`StudentTerm` is the hard loss on the labels, `DistillationTerm` the loss
between teacher and student. Both give one value per position of the
student's logits `(batch, ..., classes)` and reduce it with
`keras_kd.distillation.reduction.reduce_values`, exactly as the student loss reduces its
own: the same `reduction`, the sample weights over all leading axes, the
masks. So `alpha` weighs two numbers of the same kind, also with padding.
A distillation loss built with its own `reduction` keeps it.
"""

import keras
from keras import ops

from keras_kd.distillation import labels as labels_module
from keras_kd.distillation.losses import BinaryKLDivergenceWithTemperature
from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import KLDivergenceWithTemperature
from keras_kd.distillation.reduction import reduce_values
from keras_kd.distillation.top_k_loss import CACHE_TEMPERATURE_KEY
from keras_kd.distillation.top_k_loss import TopKKLDivergence


def combine_masks(*masks):
    """The logical and of the masks that are not `None` (or `None`)."""
    present = [ops.cast(m, "bool") for m in masks if m is not None]
    if not present:
        return None
    mask = present[0]
    for other in present[1:]:
        mask = ops.logical_and(mask, other)
    return mask


class StudentTerm:
    """The hard loss: the student's logits against the labels.

    Args:
        loss_fn: The resolved `student_loss_fn`.
        default: Whether the user left `student_loss_fn` unset; the loss then
            follows the labels: categorical cross-entropy for dense labels,
            binary cross-entropy for one logit.
    """

    name = "student_loss"

    def __init__(self, loss_fn, default):
        self.loss_fn = loss_fn
        self.default = default

    def resolve(self, logits, labels=None):
        """The loss for these logits (and labels)."""
        if not self.default:
            return self.loss_fn
        if logits.shape[-1] == 1:
            return keras.losses.BinaryCrossentropy(from_logits=True)
        if labels is not None and labels_module.label_layout(labels, logits) == labels_module.DENSE:
            return keras.losses.CategoricalCrossentropy(from_logits=True)
        return self.loss_fn

    def reduction(self, logits):
        return labels_module.reduction_of(self.resolve(logits))

    def masks(self, labels, logits, keras_mask=None, label_mask=None):
        """`(safe_labels, labelled, present)`, see `labels.label_masks`; the
        Keras mask of the logits is part of both masks."""
        loss_fn = self.resolve(logits, labels)
        safe, labelled, present = labels_module.label_masks(
            labels, logits, labels_module.ignore_class_of(loss_fn), label_mask
        )
        return safe, combine_masks(labelled, keras_mask), combine_masks(present, keras_mask)

    def __call__(self, labels, logits, sample_weight=None, keras_mask=None, label_mask=None):
        """The reduced hard loss (a float32 scalar; 0 without labels)."""
        if labels is None:
            return ops.zeros((), "float32")
        loss_fn = self.resolve(logits, labels)
        safe, labelled, _ = self.masks(labels, logits, keras_mask, label_mask)
        values = labels_module.loss_values(loss_fn, safe, ops.cast(logits, "float32"))
        return reduce_values(values, sample_weight, labelled, labels_module.reduction_of(loss_fn))


class DistillationTerm:
    """The loss between the teacher's and the student's logits.

    Args:
        loss_fn: A keras_kd `DistillationLoss`, or any Keras loss or callable
            on softened probabilities `(teacher_p, student_p)`, which is given
            `softmax(logits / T)` of both (as in the keras.io example).
        temperature: The Distiller's temperature variable.
        default: Whether the user left `distillation_loss_fn` unset; the loss
            then follows the outputs: sigmoid KD for one logit or a binary
            student loss, softmax KD otherwise.
    """

    name = "distillation_loss"

    def __init__(self, loss_fn, temperature, default=False):
        self.loss_fn = loss_fn
        self.temperature = temperature
        self.default = default
        self._top_k_default = None
        # Set by the Distiller when no temperature was chosen: top-k batches
        # of a tail="bin" loss then run at the temperature they carry.
        self.follow_cache_temperature = False

    def resolve(self, logits, student_loss_fn, top_k=False):
        """The loss for these student logits; `top_k` for batches that carry
        a top-k teacher cache."""
        loss_fn = self.loss_fn
        if top_k:
            return self.top_k_loss()
        binary = logits.shape[-1] == 1 or labels_module.is_binary_loss(student_loss_fn)
        if self.default and binary:
            loss_fn = BinaryKLDivergenceWithTemperature()
        kind = self.kind(loss_fn)
        if logits.shape[-1] == 1 and kind == "softmax":
            raise ValueError(
                f"The student has one logit, and `distillation_loss_fn` "
                f"({type(loss_fn).__name__}) compares softmax distributions: a "
                "softmax over one logit is constant, so it would distil nothing. "
                "Use `keras_kd.BinaryKLDivergenceWithTemperature()` (the default "
                "for one logit) or leave `distillation_loss_fn` unset."
            )
        return loss_fn

    def top_k_loss(self):
        """The loss for batches that carry a top-k teacher cache.

        Left unset, the top-k form of Hinton's KD (`TopKKLDivergence()`,
        which reads the cache's temperature from the batches).

        Raises:
            ValueError: if the compiled loss cannot read a top-k cache.
        """
        if self.default:
            if self._top_k_default is None:
                self._top_k_default = TopKKLDivergence()
            return self._top_k_default
        if not getattr(self.loss_fn, "takes_top_k", False):
            raise ValueError(
                "The batches carry a top-k teacher cache (`teacher_top_k`), "
                f"which {type(self.loss_fn).__name__} cannot read. Compile with "
                "`distillation_loss_fn=keras_kd.TopKKLDivergence()` (tail='bin', "
                "at the cache's temperature; tail='renormalize' for any "
                "temperature), or leave `distillation_loss_fn` unset."
            )
        return self.loss_fn

    def follows_cache(self, loss_fn):
        """Whether top-k batches of `loss_fn` run at their own temperature."""
        return (self.follow_cache_temperature and getattr(loss_fn, "tail", None) == "bin"
                and getattr(loss_fn, "temperature", None) is None)

    @staticmethod
    def kind(loss_fn):
        """What the loss compares: `"softmax"`, `"sigmoid"` or `"logits"`."""
        return getattr(loss_fn, "distribution", "softmax")

    def values(self, loss_fn, teacher_logits, student_logits, true_classes=None):
        """The loss per position `(batch, ...)`."""
        temperature = ops.cast(self.temperature, "float32")
        if isinstance(teacher_logits, dict):  # A top-k cache.
            if keras.backend.backend() == "torch":
                # `top_k_loss` holds TensorFlow ops (asserts, `tf.convert_
                # _to_tensor`), which cut PyTorch's autograd graph.
                raise NotImplementedError(
                    "The top-k teacher cache loss runs on the TensorFlow and JAX "
                    f"backends; Keras runs on 'torch' (loss received: "
                    f"{type(loss_fn).__name__}). Distil online (no cache), or set "
                    "`KERAS_BACKEND=tensorflow` or `KERAS_BACKEND=jax` to train from "
                    "the cache (write_top_k_cache itself runs on PyTorch)."
                )
            carried = teacher_logits.get(CACHE_TEMPERATURE_KEY)
            if carried is not None and self.follows_cache(loss_fn):
                # One cache per batch (checked at the first batch).
                temperature = ops.cast(ops.reshape(carried, (-1,))[0], "float32")
            return loss_fn.compute_top_k(teacher_logits, student_logits, temperature)
        teacher_logits = ops.cast(teacher_logits, "float32")
        student_logits = ops.cast(student_logits, "float32")
        if isinstance(loss_fn, DistillationLoss):
            return loss_fn.compute_per_sample(
                teacher_logits, student_logits, temperature,
                true_classes if loss_fn.needs_labels else None,
            )
        teacher_p = ops.softmax(teacher_logits / temperature, axis=-1)
        student_p = ops.softmax(student_logits / temperature, axis=-1)
        if isinstance(loss_fn, keras.losses.Loss):
            values = loss_fn.call(teacher_p, student_p)
        else:
            values = loss_fn(teacher_p, student_p)
        values = ops.cast(ops.convert_to_tensor(values), "float32")
        leading = len(student_logits.shape) - 1
        if len(values.shape) > leading:
            values = ops.mean(values, axis=tuple(range(leading, len(values.shape))))
        return values

    def __call__(self, loss_fn, teacher_logits, student_logits, sample_weight=None,
                 mask=None, reduction="sum_over_batch_size", true_classes=None):
        """The reduced distillation term (a float32 scalar).

        `reduction` is the student loss's; a keras_kd loss built with its own
        `reduction`, and any other Keras loss instance, use their own.
        """
        if isinstance(loss_fn, DistillationLoss):
            own = loss_fn.own_reduction
        else:
            own = getattr(loss_fn, "reduction", None)
        values = self.values(loss_fn, teacher_logits, student_logits, true_classes)
        return reduce_values(values, sample_weight, mask, own or reduction)


def default_distillation_loss():
    """Hinton's KD (`T**2 * KL` of softened softmaxes)."""
    return KLDivergenceWithTemperature()
