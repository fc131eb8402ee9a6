"""Distillation losses on temperature-softened logits.

Every loss here takes the teacher's logits as `y_true` and the student's
logits as `y_pred`, and works in log space (`log_softmax`), so it stays exact
where probability-space losses clip or overflow: Keras' `KLDivergence` clips
probabilities at 1e-7, which is far off for confident teachers.

They are ordinary `keras.losses.Loss` objects: they can be called on their
own, reduce with `sample_weight`, and round-trip through `get_config`.
A `Distiller` calls their `compute_per_sample` method with its own
temperature variable. A loss built with a `temperature` sets the Distiller's
temperature at `compile` (a different `compile(temperature=...)` is refused),
and the Distiller keeps the loss's `temperature` attribute equal to its own
when it changes, so the two never disagree.
"""

import keras
from keras import ops

from keras_kd.distillation.validation import validate_choice
from keras_kd.distillation.validation import validate_temperature

# A Distiller's temperature when neither `compile` nor its loss gives one.
DEFAULT_TEMPERATURE = 3.0

# Reductions to one value per batch, as Keras' losses name them.
_REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")


def _softened_log_probabilities(logits, temperature):
    return ops.log_softmax(ops.divide(logits, temperature), axis=-1)


class DistillationLoss(keras.losses.Loss):
    """Base class of losses between teacher and student logits.

    Subclasses implement `per_sample_loss(teacher_logits, student_logits,
    temperature)`, the arithmetic on logits already cast to `precision`.
    Logits have shape `(batch, ..., classes)`: every position of the leading
    axes is one distribution (a sequence model's `(batch, time, vocab)` gives
    one per token), and `per_sample_loss` returns one value per position,
    shape `(batch, ...)`. A loss that needs the true classes sets
    `needs_labels = True` and takes a fourth argument, `labels` (integer
    classes of shape `(batch, ...)`, or `None` when called on its own).

    Args:
        temperature: Softmax temperature. `None` (default) leaves it to the
            `Distiller` (1.0 when the loss is called on its own); a number
            also sets the Distiller's temperature at `compile`.
        precision: Dtype of the log-space arithmetic. `"float32"` (default)
            is exact enough for log-softmax differences and runs 2-2.7x
            faster than float64 on vocabulary-sized outputs
            (`benchmarks/cached_path.py`); `"float64"` keeps the loss within
            1e-12 relative where `log p_teacher - log p_student` cancels.
        reduction: `None` (default): in a `Distiller`, reduce as the student
            loss reduces (its `reduction`, sample weights and masks over all
            leading axes), so `alpha` keeps its meaning; called on its own,
            `"sum_over_batch_size"`. Any Keras reduction is honoured as
            given.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default, also under
            mixed precision: a softmax at high temperature in float16 loses
            the soft targets.
    """

    def __init__(
        self,
        temperature=None,
        precision="float32",
        reduction=None,
        name=None,
        dtype="float32",
    ):
        if reduction is not None and reduction not in _REDUCTIONS:
            raise ValueError(
                f"`reduction` must be None (as the student loss) or one of "
                f"{list(_REDUCTIONS)}. Received: reduction={reduction!r}. A "
                "distillation term is reduced to one value per batch."
            )
        super().__init__(
            name=name, reduction=reduction or "sum_over_batch_size", dtype=dtype
        )
        # None: the Distiller reduces this term as its student loss.
        self.own_reduction = reduction
        if temperature is not None:
            temperature = validate_temperature(temperature)
        self.temperature = temperature
        self.precision = validate_choice(
            precision, "precision", {"float32", "float64"}
        )

    needs_labels = False
    # What the loss compares: "softmax" distributions over the class axis,
    # per-class "sigmoid" distributions, or raw "logits". An ensemble of
    # teachers is combined accordingly (see `keras_kd.teacher`), and a
    # softmax over one logit (a constant) is refused.
    distribution = "softmax"

    def call(self, y_true, y_pred):
        temperature = 1.0 if self.temperature is None else self.temperature
        return self.compute_per_sample(y_true, y_pred, temperature)

    def compute_per_sample(self, teacher_logits, student_logits, temperature, labels=None):
        """Returns the loss of each sample, shape `(batch,)`, in `dtype`.

        Args:
            teacher_logits: Teacher logits, shape `(batch, num_classes)`.
            student_logits: Student logits, same shape.
            temperature: Softmax temperature, a positive float or scalar
                tensor (a `Distiller` passes its temperature variable).
            labels: Integer true classes `(batch,)`, for losses that need
                them (`needs_labels`); ignored by the others.

        Returns:
            A tensor of shape `(batch,)`.
        """
        arguments = (
            ops.cast(teacher_logits, self.precision),
            ops.cast(student_logits, self.precision),
            ops.cast(temperature, self.precision),
        )
        if self.needs_labels:
            arguments += (labels,)
        values = self.per_sample_loss(*arguments)
        return ops.cast(values, self.dtype)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        """The loss of each sample; inputs are already in `precision`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `per_sample_loss`."
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "precision": self.precision,
                "reduction": self.own_reduction,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class KLDivergenceWithTemperature(DistillationLoss):
    """Hinton's distillation loss: `T**2 * KL(softmax(t/T) || softmax(s/T))`.

    The `T**2` factor keeps the gradient's scale the same as `T` changes
    (Hinton et al., 2015): the gradient with respect to the student logits is
    `T * (softmax(s/T) - softmax(t/T))`. Computed in log space, the loss is
    exactly 0 for identical logits and never negative.

    Args:
        temperature: Softmax temperature, or `None` for the Distiller's.
        scale_by_temperature_squared: Multiply by `T**2` (default). Set to
            `False` to reproduce the keras.io example, which does not.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Example:

    >>> import numpy as np
    >>> loss = KLDivergenceWithTemperature(temperature=4.0)
    >>> teacher = np.array([[2.0, 0.5, -1.0]])
    >>> float(loss(teacher, teacher))
    0.0
    """

    def __init__(
        self,
        temperature=None,
        scale_by_temperature_squared=True,
        precision="float32",
        reduction=None,
        name="kl_divergence_with_temperature",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.scale_by_temperature_squared = bool(scale_by_temperature_squared)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        teacher_log_p = _softened_log_probabilities(teacher_logits, temperature)
        student_log_p = _softened_log_probabilities(student_logits, temperature)
        kl = ops.sum(
            ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1
        )
        # Rounding can leave -1e-9 where the exact value is 0.
        kl = ops.maximum(kl, 0.0)
        if self.scale_by_temperature_squared:
            kl = kl * (temperature**2)
        return kl

    def get_config(self):
        config = super().get_config()
        config.update(
            {"scale_by_temperature_squared": self.scale_by_temperature_squared}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftTargetCrossEntropy(DistillationLoss):
    """Cross-entropy against the teacher's softened probabilities ("cse").

    `T**2 * H(softmax(t/T), softmax(s/T))`. It differs from
    `KLDivergenceWithTemperature` by the teacher's entropy, a constant for the
    student, so both give the same gradients; this one is the "cse" soft loss
    of the CIFAR-10 reference experiment (E4).

    Args:
        temperature: Softmax temperature, or `None` for the Distiller's.
        scale_by_temperature_squared: Multiply by `T**2` (default).
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetCrossEntropy(temperature=1.0)
    >>> round(float(loss(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]]))), 4)
    0.6931
    """

    def __init__(
        self,
        temperature=None,
        scale_by_temperature_squared=True,
        precision="float32",
        reduction=None,
        name="soft_target_cross_entropy",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.scale_by_temperature_squared = bool(scale_by_temperature_squared)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        teacher_p = ops.softmax(ops.divide(teacher_logits, temperature), axis=-1)
        student_log_p = _softened_log_probabilities(student_logits, temperature)
        cross_entropy = -ops.sum(teacher_p * student_log_p, axis=-1)
        if self.scale_by_temperature_squared:
            cross_entropy = cross_entropy * (temperature**2)
        return cross_entropy

    def get_config(self):
        config = super().get_config()
        config.update(
            {"scale_by_temperature_squared": self.scale_by_temperature_squared}
        )
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class DistillationMeanSquaredError(DistillationLoss):
    """Mean squared error between teacher and student outputs ("mse").

    With `space="probabilities"` (default, the "mse" soft loss of E4) it
    compares `softmax(t/T)` with `softmax(s/T)`; with `space="logits"` it
    compares the raw logits (Caruana-style logit matching, no temperature).
    The mean is over the class axis; no `T**2` factor is applied.

    Args:
        temperature: Softmax temperature, or `None` for the Distiller's.
        space: `"probabilities"` or `"logits"`.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Example:

    >>> import numpy as np
    >>> loss = DistillationMeanSquaredError(space="logits")
    >>> float(loss(np.array([[1.0, 3.0]]), np.array([[0.0, 1.0]])))
    2.5
    """

    def __init__(
        self,
        temperature=None,
        space="probabilities",
        precision="float32",
        reduction=None,
        name="distillation_mean_squared_error",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.space = validate_choice(space, "space", {"probabilities", "logits"})

    @property
    def distribution(self):
        return "logits" if self.space == "logits" else "softmax"

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        if self.space == "logits":
            teacher_values, student_values = teacher_logits, student_logits
        else:
            teacher_values = ops.softmax(
                ops.divide(teacher_logits, temperature), axis=-1
            )
            student_values = ops.softmax(
                ops.divide(student_logits, temperature), axis=-1
            )
        return ops.mean(ops.square(student_values - teacher_values), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update({"space": self.space})
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class BinaryKLDivergenceWithTemperature(DistillationLoss):
    """Distillation of sigmoid outputs: one-logit and multi-label models.

    Each logit is its own Bernoulli distribution `sigmoid(z / T)`; the loss
    is the per-class KL divergence of the student's from the teacher's,
    averaged over the classes (as `keras.losses.BinaryCrossentropy`
    averages) and scaled by `T**2`:

        T**2 * mean_c KL(Bern(sigmoid(t_c / T)) || Bern(sigmoid(s_c / T)))

    The gradient with respect to a student logit is `T * (sigmoid(s/T) -
    sigmoid(t/T)) / classes`. A `Distiller` whose student has one logit, or
    whose student loss is a binary cross-entropy, uses it by default:
    a softmax over one logit is constant and would distil nothing.

    Args:
        temperature: Temperature, or `None` for the Distiller's.
        scale_by_temperature_squared: Multiply by `T**2` (default).
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Example:

    >>> import numpy as np
    >>> loss = BinaryKLDivergenceWithTemperature(temperature=1.0)
    >>> round(float(loss(np.array([[0.0]]), np.array([[0.0]]))), 6)
    0.0
    >>> round(float(loss(np.array([[0.0]]), np.array([[2.0]]))), 4)
    0.4338
    """

    distribution = "sigmoid"

    def __init__(
        self,
        temperature=None,
        scale_by_temperature_squared=True,
        precision="float32",
        reduction=None,
        name="binary_kl_divergence_with_temperature",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.scale_by_temperature_squared = bool(scale_by_temperature_squared)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        t, s = teacher_logits / temperature, student_logits / temperature
        # log sigmoid(x) = -softplus(-x): exact in the tails.
        log_p, log_not_p = -ops.softplus(-t), -ops.softplus(t)
        log_q, log_not_q = -ops.softplus(-s), -ops.softplus(s)
        kl = ops.exp(log_p) * (log_p - log_q) + ops.exp(log_not_p) * (log_not_p - log_not_q)
        kl = ops.maximum(ops.mean(kl, axis=-1), 0.0)
        if self.scale_by_temperature_squared:
            kl = kl * (temperature**2)
        return kl

    def get_config(self):
        config = super().get_config()
        config.update(
            {"scale_by_temperature_squared": self.scale_by_temperature_squared}
        )
        return config


_DISTILLATION_LOSS_ALIASES = {
    "binary_kl_divergence": BinaryKLDivergenceWithTemperature,
    "sigmoid_kl": BinaryKLDivergenceWithTemperature,
    "kl_divergence": KLDivergenceWithTemperature,
    "kld": KLDivergenceWithTemperature,
    "kl": KLDivergenceWithTemperature,
    "cse": SoftTargetCrossEntropy,
    "soft_target_cross_entropy": SoftTargetCrossEntropy,
    "mse": DistillationMeanSquaredError,
}


def get_distillation_loss(identifier):
    """Returns a distillation loss from a name, an instance or a callable.

    Strings name keras_kd's log-space losses (`"kl_divergence"`/`"kld"`/
    `"kl"`, `"cse"`, `"mse"`, `"sigmoid_kl"`, the methods of
    `keras_kd.logit_methods`: `"dkd"`, `"dist"`, `"logit_standardized_kd"`,
    `"nkd"`, and the sequence divergences of `keras_kd.divergences`:
    `"forward_kl"`, `"reverse_kl"`, `"generalized_jsd"`, `"skew_kl"`,
    `"skew_reverse_kl"`), never Keras'
    probability-space functions of the same name: Keras' `"kl_divergence"` string applied to logits is the
    defect of `keras.distillation`'s default loss.

    Args:
        identifier: `None` (Hinton's KL with `T**2`), a string above, a
            `DistillationLoss`, or any Keras loss or callable taking
            `(teacher_probabilities, student_probabilities)`.

    Returns:
        A loss object or callable.

    Raises:
        ValueError: for an unknown string or a non-callable.
    """
    if identifier is None:
        return KLDivergenceWithTemperature()
    if isinstance(identifier, str):
        from keras_kd.distillation.divergences import DIVERGENCES
        from keras_kd.distillation.logit_methods import LOGIT_METHODS

        aliases = {**_DISTILLATION_LOSS_ALIASES, **LOGIT_METHODS, **DIVERGENCES}
        key = identifier.lower()
        if key not in aliases:
            raise ValueError(
                "Unknown `distillation_loss_fn`. Received: "
                f"distillation_loss_fn={identifier!r}. Use one of "
                f"{sorted(aliases)}, a keras_kd loss instance or a Keras "
                "loss instance."
            )
        return aliases[key]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if not callable(identifier):
        raise ValueError(
            "`distillation_loss_fn` must be a loss or a callable. Received: "
            f"distillation_loss_fn={identifier!r}."
        )
    return identifier


def resolve_temperature(temperature, loss):
    """The temperature meant by `compile(temperature=..., distillation_loss_fn=
    loss)`: the one given, else the loss's own, else `DEFAULT_TEMPERATURE`.

    Raises:
        ValueError: if both are given and disagree.
    """
    own = loss.temperature if isinstance(loss, DistillationLoss) else None
    if temperature is None:
        return DEFAULT_TEMPERATURE if own is None else own
    temperature = validate_temperature(temperature)
    if own is not None and own != temperature:
        raise ValueError(
            f"`distillation_loss_fn` carries temperature={own}, but compile "
            f"got temperature={temperature}. Give the temperature once: "
            f"either `compile(temperature={temperature})` with a loss built "
            f"without one, or the loss's own and no `temperature`."
        )
    return temperature
