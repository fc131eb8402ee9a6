"""Diagnostics of a distilled student: calibration, and how closely it
follows its teacher.

`ExpectedCalibrationError` is an ordinary Keras metric on labels and logits.
`TeacherAgreement` and `TeacherKL` compare the student with the teacher: in
`Distiller.compile(metrics=[...])` the Distiller feeds them the teacher's
logits. During `fit` those are at hand; in `evaluate` they are opt-in,
because they make `evaluate` run the teacher (which it otherwise does not).
An ensemble's members are mixed at T = 1 for them (its predictive
distribution), whatever the training temperature. On the chunked path
(`compile(chunk_size=...)`) they are computed chunk by chunk from both
models' hidden states and heads (`TeacherMetric.per_sample` on one chunk of
positions at a time), so they need no whole logits either.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_kd")
class ExpectedCalibrationError(keras.metrics.Metric):
    """Expected calibration error (ECE) of a classifier that outputs logits.

    The predictions are binned by confidence (the top softmax probability)
    into `num_bins` equal-width bins; ECE is the mean over samples of
    `|accuracy(bin) - confidence(bin)|` (Guo et al., 2017). 0 is perfectly
    calibrated. Sample weights weight the samples (0 leaves one out, as the
    Distiller does for unlabelled samples).

    Args:
        num_bins: Number of confidence bins (15 is common).
        name: Name of the metric.
        dtype: Dtype of the metric's variables.

    Example:

    >>> import numpy as np
    >>> metric = ExpectedCalibrationError(num_bins=10)
    >>> metric.update_state(np.array([0, 1]), np.array([[9.0, 0.0], [9.0, 0.0]]))
    >>> round(float(metric.result()), 4)  # Confident (0.9999), right half the time.
    0.4999
    """

    def __init__(self, num_bins=15, name="expected_calibration_error", dtype="float32"):
        super().__init__(name=name, dtype=dtype)
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ValueError(
                f"`num_bins` must be a positive integer. Received: num_bins={num_bins!r}."
            )
        self.num_bins = num_bins
        self.counts = self.add_variable((num_bins,), initializer="zeros", name="counts")
        self.confidences = self.add_variable((num_bins,), initializer="zeros", name="confidences")
        self.hits = self.add_variable((num_bins,), initializer="zeros", name="hits")

    def update_state(self, y_true, y_pred, sample_weight=None):
        probabilities = ops.softmax(ops.cast(y_pred, "float32"), axis=-1)
        confidence = ops.max(probabilities, axis=-1)
        predicted = ops.argmax(probabilities, axis=-1)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] != 1:
            y_true = ops.argmax(y_true, axis=-1)
        y_true = ops.reshape(ops.cast(y_true, predicted.dtype), (-1,))
        correct = ops.cast(ops.equal(predicted, y_true), "float32")
        weight = ops.ones_like(confidence)
        if sample_weight is not None:
            weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        bins = ops.minimum(
            ops.cast(ops.floor(confidence * self.num_bins), "int32"), self.num_bins - 1
        )
        in_bin = ops.one_hot(bins, self.num_bins) * weight[:, None]
        self.counts.assign_add(ops.sum(in_bin, axis=0))
        self.confidences.assign_add(ops.sum(in_bin * confidence[:, None], axis=0))
        self.hits.assign_add(ops.sum(in_bin * correct[:, None], axis=0))

    def result(self):
        gaps = ops.abs(self.hits - self.confidences)
        return ops.divide_no_nan(ops.sum(gaps), ops.sum(self.counts))

    def reset_state(self):
        for variable in (self.counts, self.confidences, self.hits):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins}


class TeacherMetric(keras.metrics.Mean):
    """Base of the metrics a `Distiller` feeds with the teacher's logits.

    `update_state(teacher_logits, student_logits, sample_weight)`; a
    subclass implements `per_sample(teacher_logits, student_logits)`: the
    value of each position from its own row of logits (`(..., vocab)` in,
    `(...)` out), in the metric's dtype. The weighted mean of those values
    is the metric.

    The Distiller's chunked path (`compile(chunk_size=...)`) never builds
    whole logits: it calls `per_sample` on one chunk of `(chunk_size,
    vocab)` rows at a time and accumulates the values with
    `update_values`, which gives what `update_state` gives on the whole
    logits for any `per_sample` that reads each position's row alone. A
    subclass that overrides `update_state` is refused there (it may need
    the whole logits).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> class TeacherTopProbability(TeacherMetric):
    ...     def per_sample(self, teacher_logits, student_logits):
    ...         top = ops.argmax(teacher_logits, axis=-1)
    ...         student = ops.softmax(student_logits, axis=-1)
    ...         return ops.take_along_axis(student, top[..., None], axis=-1)[..., 0]
    >>> metric = TeacherTopProbability()
    >>> metric.update_state(np.array([[2.0, 0.0]]), np.array([[0.0, 0.0]]))
    >>> float(metric.result())
    0.5
    """

    def update_state(self, teacher_logits, student_logits, sample_weight=None):
        return self.update_values(
            self.position_values(teacher_logits, student_logits), sample_weight)

    def position_values(self, teacher_logits, student_logits):
        """`per_sample` on logits cast to the metric's dtype.

        Args:
            teacher_logits: The teacher's logits at T = 1, `(..., vocab)`.
            student_logits: The student's logits, `(..., vocab)`.

        Returns:
            The values `(...)`, in the metric's dtype.
        """
        return self.per_sample(
            ops.cast(teacher_logits, self.dtype), ops.cast(student_logits, self.dtype)
        )

    def update_values(self, values, sample_weight=None):
        """Accumulates values `position_values` gave, as `update_state`.

        Args:
            values: `(batch, ...)` values of the positions.
            sample_weight: Optional weights broadcastable to `values`.
        """
        return super().update_state(values, sample_weight=sample_weight)

    def per_sample(self, teacher_logits, student_logits):
        raise NotImplementedError(f"{type(self).__name__} must implement `per_sample`.")


@keras.saving.register_keras_serializable(package="keras_kd")
class TeacherAgreement(TeacherMetric):
    """Fraction of samples on which student and teacher pick the same class.

    Args:
        name: Name of the metric.
        dtype: Dtype of the metric's variables.

    Example:

    >>> import numpy as np
    >>> metric = TeacherAgreement()
    >>> metric.update_state(np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]]))
    >>> float(metric.result())
    0.5
    """

    def __init__(self, name="teacher_agreement", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def per_sample(self, teacher_logits, student_logits):
        return ops.cast(
            ops.equal(ops.argmax(teacher_logits, -1), ops.argmax(student_logits, -1)), "float32"
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class TeacherKL(TeacherMetric):
    """Mean `KL(softmax(t) || softmax(s))` between teacher and student at T = 1.

    The distance left between the two models' predictive distributions, in
    nats, independent of the training temperature.

    Args:
        name: Name of the metric.
        dtype: Dtype of the metric's variables.

    Example:

    >>> import numpy as np
    >>> metric = TeacherKL()
    >>> metric.update_state(np.array([[1.0, 2.0]]), np.array([[1.0, 2.0]]))
    >>> float(metric.result())
    0.0
    """

    def __init__(self, name="teacher_kl", dtype="float32"):
        super().__init__(name=name, dtype=dtype)

    def per_sample(self, teacher_logits, student_logits):
        log_t = ops.log_softmax(teacher_logits, axis=-1)
        log_s = ops.log_softmax(student_logits, axis=-1)
        return ops.maximum(ops.sum(ops.exp(log_t) * (log_t - log_s), axis=-1), 0.0)
