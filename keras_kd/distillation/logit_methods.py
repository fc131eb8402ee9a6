"""Published logit-distillation methods beyond Hinton's KD.

Each is a `DistillationLoss` (log-space, float32 by default, serializable)
that follows the conventions of its authors' reference code: reductions,
`T**2` factors, the unbiased standard deviation, epsilons. In
`Distiller.compile(distillation_loss_fn=...)` each can also be named by a
string: `"dkd"`, `"dist"`, `"logit_standardized_kd"`, `"nkd"`.

DKD and NKD split the classes into the true class and the others, so they
need labels: the `Distiller` passes them. On a sample without a label
(`UNLABELLED`, or `fit(x)` without labels) the teacher's top class stands
in for the true class, which is what a teacher that is right on that sample
would say.
"""

import keras
from keras import ops

from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import KLDivergenceWithTemperature

# The authors' code masks the true class with -1000 * onehot before the
# softmax; in float64 exp(-1000) is 0 at any temperature >= 1, as there.
_TRUE_CLASS_OFFSET = 1000.0
# Removes a class from a softmax: exp underflows to exactly 0 and, unlike
# -inf, no 0 * inf can reach a value or a gradient.
_REMOVED = -1e9


def _kl_rows(log_p, log_q):
    """`sum_j p_j (log p_j - log q_j)` per row, with 0 log 0 = 0."""
    p = ops.exp(log_p)
    return ops.sum(ops.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def _target_classes(labels, teacher_logits):
    """Integer labels, or the teacher's top class where there are none."""
    if labels is None:
        return ops.argmax(teacher_logits, axis=-1)
    return ops.reshape(ops.cast(labels, "int32"), ops.shape(teacher_logits)[:-1])


@keras.saving.register_keras_serializable(package="keras_kd")
class DecoupledKD(DistillationLoss):
    """Decoupled knowledge distillation, DKD (Zhao et al., CVPR 2022).

    Hinton's KD splits into a target-class term (TCKD: the binary
    distribution "true class or not") and a non-target term (NCKD: the
    distribution over the other classes), weighted `alpha` and `beta`:

        TCKD = T**2 * KL([p_t, 1 - p_t] || [p_s, 1 - p_s]),  p = softmax(z/T)_g
        NCKD = T**2 * KL(softmax(z_t/T - 1000 onehot(g)) || same for z_s)
        loss = alpha * TCKD + beta * NCKD, averaged over the batch.

    As in the authors' code (mdistiller). Their linear warm-up of the whole
    term over the first 20 epochs is a schedule, not part of the loss: see
    `dkd_warmup`.

    Args:
        alpha: Weight of TCKD (authors: 1.0).
        beta: Weight of NCKD (authors: 8.0 on CIFAR-100, 0.5 on ImageNet).
        temperature: Softmax temperature, or `None` for the Distiller's
            (authors: 4.0 on CIFAR-100, 1.0 on ImageNet).
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss.

    Example:

    >>> import numpy as np
    >>> loss = DecoupledKD(temperature=4.0)
    >>> logits = np.array([[3.0, 1.0, -2.0]])
    >>> float(loss(logits, logits))
    0.0
    """

    needs_labels = True

    def __init__(
        self,
        alpha=1.0,
        beta=8.0,
        temperature=None,
        precision="float32",
        reduction=None,
        name="decoupled_kd",
        dtype="float32",
    ):
        super().__init__(temperature=temperature, precision=precision,
                         reduction=reduction, name=name, dtype=dtype)
        self.alpha = float(alpha)
        self.beta = float(beta)

    def per_sample_loss(self, teacher_logits, student_logits, temperature, labels=None):
        target = _target_classes(labels, teacher_logits)
        true_class = ops.one_hot(target, ops.shape(student_logits)[-1], dtype=self.precision)
        log_p_t = ops.log_softmax(teacher_logits / temperature, axis=-1)
        log_p_s = ops.log_softmax(student_logits / temperature, axis=-1)

        def binary(log_p):
            # [log p_g, log(sum of the others)], exact where p_g is close to 1.
            log_target = ops.sum(log_p * true_class, axis=-1)
            others = ops.where(true_class > 0, _REMOVED, log_p)
            return ops.stack([log_target, ops.logsumexp(others, axis=-1)], axis=-1)

        tckd = _kl_rows(binary(log_p_t), binary(log_p_s))
        offset = _TRUE_CLASS_OFFSET * true_class
        nckd = _kl_rows(
            ops.log_softmax(teacher_logits / temperature - offset, axis=-1),
            ops.log_softmax(student_logits / temperature - offset, axis=-1),
        )
        return (self.alpha * tckd + self.beta * nckd) * temperature**2

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}


def dkd_warmup(epochs=20):
    """DKD's warm-up as an `AlphaScheduler` schedule.

    The authors multiply the DKD term by `min(epoch / epochs, 1)` next to a
    cross-entropy of weight 1. In the Distiller's `alpha * CE + (1 - alpha)
    * DKD`, the same ratio of the two terms is `alpha = 1 / (1 + w)`.

    Args:
        epochs: Epochs of the linear warm-up (authors: 20).

    Returns:
        A function `epoch -> alpha` for `keras_kd.AlphaScheduler`.

    Example:

    >>> schedule = dkd_warmup(20)
    >>> schedule(0), schedule(10), schedule(40)
    (1.0, 0.6666666666666666, 0.5)
    """
    def schedule(epoch):
        weight = min(epoch / epochs, 1.0)
        return 1.0 / (1.0 + weight)

    return schedule


@keras.saving.register_keras_serializable(package="keras_kd")
class DIST(DistillationLoss):
    """DIST: distillation from a stronger teacher (Huang et al., NeurIPS 2022).

    Matches relations instead of exact probabilities, with `y = softmax(z /
    tau)`:

        inter = 1 - mean over samples of pearson(y_s[i, :], y_t[i, :])
        intra = 1 - mean over classes of pearson(y_s[:, j], y_t[:, j])
        loss = tau**2 * (beta * inter + gamma * intra)

    Pearson's correlation is the cosine of mean-centred vectors with eps
    1e-8, as in the authors' code. The intra-class term is a statistic of the
    whole batch: each sample's value carries its share, so the batch mean of
    the per-sample values is the loss. Sample weights weight the inter-class
    term per sample and scale the batch term by their mean; under
    `tf.distribute` the batch term is that of each replica's batch.

    Args:
        beta: Weight of the inter-class term (authors: 1.0).
        gamma: Weight of the intra-class term (authors: 1.0).
        temperature: `tau`, or `None` for the Distiller's (authors: 4 on
            CIFAR, 1 on ImageNet).
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss.

    Example:

    >>> import numpy as np
    >>> loss = DIST(temperature=1.0)
    >>> logits = np.array([[3.0, 1.0, -2.0], [0.0, 2.0, 1.0]])
    >>> round(float(loss(logits, logits)), 6)
    0.0
    """

    def __init__(
        self,
        beta=1.0,
        gamma=1.0,
        temperature=None,
        precision="float32",
        reduction=None,
        name="dist",
        dtype="float32",
    ):
        super().__init__(temperature=temperature, precision=precision,
                         reduction=reduction, name=name, dtype=dtype)
        self.beta = float(beta)
        self.gamma = float(gamma)

    @staticmethod
    def _pearson(a, b, axis, eps=1e-8):
        a = a - _mean(a, axis=axis, keepdims=True)
        b = b - _mean(b, axis=axis, keepdims=True)
        norms = sqrt_zero_gradient_at_zero(ops.sum(a * a, axis=axis)) * sqrt_zero_gradient_at_zero(
            ops.sum(b * b, axis=axis))
        return ops.sum(a * b, axis=axis) / (norms + eps)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        # Every position of `(batch, ..., classes)` is a sample of the
        # relations: the intra-class term runs over all of them.
        leading = ops.shape(student_logits)[:-1]
        classes = ops.shape(student_logits)[-1]
        y_s = ops.softmax(ops.reshape(student_logits, (-1, classes)) / temperature, axis=-1)
        y_t = ops.softmax(ops.reshape(teacher_logits, (-1, classes)) / temperature, axis=-1)
        inter = 1.0 - self._pearson(y_s, y_t, axis=1)
        intra = 1.0 - _mean(self._pearson(y_s, y_t, axis=0), axis=0)
        values = temperature**2 * (self.beta * inter + self.gamma * intra)
        return ops.reshape(values, leading)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "gamma": self.gamma}


def _mean(x, axis, keepdims=False):
    # `ops.mean` in `x`'s dtype: Keras' JAX `mean` computes float64 in
    # float32 (`result_type(x.dtype, "float32")`), which `precision=
    # "float64"` must not.
    count = ops.cast(ops.shape(x)[axis], x.dtype)
    return ops.sum(x, axis=axis, keepdims=keepdims) / count


def sqrt_zero_gradient_at_zero(x):
    """`sqrt(x)` for `x >= 0`, whose gradient at `x == 0` is 0, not infinite.

    A row of equal logits (a student whose ReLUs are all off gives its
    bias: zeros at initialisation) has zero spread, and the chain rule
    through `sqrt` there is `0 * inf`: NaN on PyTorch (`SqrtBackward`) and
    JAX, which would poison every weight. TensorFlow's tape gives the
    gradient this function gives everywhere.

    Args:
        x: A non-negative tensor.

    Returns:
        `sqrt(x)`, with the gradient of the other terms alone where `x == 0`.

    Example:

    >>> import numpy as np
    >>> np.asarray(sqrt_zero_gradient_at_zero(np.array([0.0, 4.0]))).tolist()
    [0.0, 2.0]
    """
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, ops.ones_like(x))),
                     ops.zeros_like(x))


def standardize_logits(logits, eps=1e-7):
    """Z-scores each row: `(z - mean) / (eps + std)`, std unbiased (N - 1).

    As in the logit-standardisation authors' code (torch's `std`); note that
    `keras.ops.std` is the population std.
    """
    count = ops.cast(ops.shape(logits)[-1], logits.dtype)
    centred = logits - ops.mean(logits, axis=-1, keepdims=True)
    std = sqrt_zero_gradient_at_zero(
        ops.sum(centred * centred, axis=-1, keepdims=True) / (count - 1.0))
    return centred / (eps + std)


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitStandardizedKD(KLDivergenceWithTemperature):
    """KD on standardised logits (Sun et al., CVPR 2024).

    Teacher and student logits are each z-scored per sample
    (`standardize_logits`), then Hinton's `T**2 * KL` applies. The student
    need not match the teacher's logit scale, only their relations. The
    label loss keeps the raw logits. Authors: base T = 2, KD weight 9, CE
    0.1 (in the Distiller: `alpha=0.1/9.1`, or any alpha with Adam, which
    ignores the loss scale).

    Args:
        temperature: Softmax temperature, or `None` for the Distiller's.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss.

    Example:

    >>> import numpy as np
    >>> loss = LogitStandardizedKD(temperature=2.0)
    >>> teacher = np.array([[4.0, 2.0, 0.0]])
    >>> round(float(loss(teacher, 10 * teacher)), 6)  # Same after z-scoring.
    0.0
    """

    def __init__(
        self,
        temperature=None,
        precision="float32",
        reduction=None,
        name="logit_standardized_kd",
        dtype="float32",
    ):
        super().__init__(temperature=temperature, precision=precision,
                         reduction=reduction, name=name, dtype=dtype)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        return super().per_sample_loss(
            standardize_logits(teacher_logits), standardize_logits(student_logits), temperature
        )

    def get_config(self):
        config = super().get_config()
        config.pop("scale_by_temperature_squared", None)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class NormalizedKD(DistillationLoss):
    """Normalized KD, NKD (Yang et al., ICCV 2023).

    A target term at T = 1 and a normalised non-target term at T:

        target = -p_t[g] * log p_s[g],          p = softmax(z)
        non_target = -gamma * T**2 * sum_{j != g} q_t,j log q_s,j,
                     q = softmax(z^{-g} / T) over the classes other than g
        loss = mean over the batch of (target + non_target)

    As in the authors' code. The true class's logit is removed, not masked,
    before the non-target softmax.

    Args:
        gamma: Weight of the non-target term (authors: 1.5).
        temperature: Temperature of the non-target term, or `None` for the
            Distiller's (authors: 1.0).
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss.

    Example:

    >>> import numpy as np
    >>> loss = NormalizedKD(temperature=1.0)
    >>> logits = np.array([[0.0, 0.0]])
    >>> round(float(loss(logits, logits)), 4)  # -0.5 log 0.5; one other class.
    0.3466
    """

    needs_labels = True

    def __init__(
        self,
        gamma=1.5,
        temperature=None,
        precision="float32",
        reduction=None,
        name="normalized_kd",
        dtype="float32",
    ):
        super().__init__(temperature=temperature, precision=precision,
                         reduction=reduction, name=name, dtype=dtype)
        self.gamma = float(gamma)

    def per_sample_loss(self, teacher_logits, student_logits, temperature, labels=None):
        target = _target_classes(labels, teacher_logits)
        true_class = ops.one_hot(target, ops.shape(student_logits)[-1], dtype=self.precision)
        log_p_s = ops.log_softmax(student_logits, axis=-1)
        p_t = ops.softmax(teacher_logits, axis=-1)
        target_term = -ops.sum(true_class * p_t, axis=-1) * ops.sum(true_class * log_p_s, axis=-1)
        # Removes the true class from both softmaxes.
        removed = _REMOVED * true_class
        log_q_s = ops.log_softmax(student_logits / temperature + removed, axis=-1)
        q_t = ops.softmax(teacher_logits / temperature + removed, axis=-1)
        cross = ops.sum(ops.where(true_class > 0, 0.0, q_t * log_q_s), axis=-1)
        return target_term - self.gamma * temperature**2 * cross

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


LOGIT_METHODS = {
    "dkd": DecoupledKD,
    "decoupled_kd": DecoupledKD,
    "dist": DIST,
    "logit_standardized_kd": LogitStandardizedKD,
    "ls_kd": LogitStandardizedKD,
    "nkd": NormalizedKD,
    "normalized_kd": NormalizedKD,
}
