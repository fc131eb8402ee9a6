"""Token-level divergences of LLM distillation, as distillation losses.

Each loss compares the teacher's and the student's softened distributions
`p = softmax(z / T)` at every position of `(batch, ..., vocab)` logits (one
distribution per token of a `(batch, time, vocab)` language model) and
returns one value per position. All work in log space and are multiplied by
`T**2`, keras_kd's convention, so at `T = 1` they equal the published forms:

- `ForwardKL`: `KL(p_T || p_S)`, Hinton's KD applied per token.
- `ReverseKL`: `KL(p_S || p_T)`, the token-level reverse KL of MiniLLM
  (Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models",
  ICLR 2024).
- `GeneralizedJSD`: the generalized Jensen-Shannon divergence of GKD
  (Agarwal et al., "On-Policy Distillation of Language Models: Learning from
  Self-Generated Mistakes", ICLR 2024), as TRL's
  `GKDTrainer.generalized_jsd_loss` computes it.
- `SkewKL` and `SkewReverseKL`: the skew KL divergences of DistiLLM (Ko et
  al., "DistiLLM: Towards Streamlined Distillation for Large Language
  Models", ICML 2024).

`DIVERGENCES` maps their string names to the classes.
"""

import math

import keras
from keras import ops

from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import KLDivergenceWithTemperature
from keras_kd.distillation.losses import _softened_log_probabilities
from keras_kd.distillation.validation import validate_fraction

# Hinton's loss, applied to every position of `(batch, ..., vocab)` logits.
ForwardKL = KLDivergenceWithTemperature


def _kl(log_p, log_q):
    """`KL(p || q)` over the last axis, from log-probabilities."""
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    # Rounding can leave -1e-9 where the exact value is 0.
    return ops.maximum(kl, 0.0)


# Below this |log q - log p|, `log(w + (1 - w) exp(d))` is computed as
# `log1p((1 - w) expm1(d))`: exactly 0 at d = 0 and well conditioned (the
# argument of log1p stays in [-0.4, 0.65]); beyond it, as a logaddexp.
_NEAR = 0.5


def _kl_to_mixture(log_p, log_q, weight):
    """`KL(p || weight * p + (1 - weight) * q)` over the last axis.

    Written as `-sum p log(weight + (1 - weight) q / p)` with the ratio taken
    in log space, `d = log q - log p`: the same value as a KL against
    `log M = logaddexp(log p + log weight, log q + log(1 - weight))`, but
    exactly 0 where `q == p`, where `log p - log M` would round to +-1e-8.
    """
    if weight == 1.0:
        return ops.zeros_like(log_p[..., 0])
    if weight == 0.0:
        return _kl(log_p, log_q)
    d = log_q - log_p
    near = ops.log1p((1.0 - weight) * ops.expm1(ops.clip(d, -_NEAR, _NEAR)))
    # logaddexp(log weight, d + log(1 - weight)) as `a + softplus(b - a)`:
    # `ops.logaddexp` computes float64 inputs in float32 on JAX (Keras casts
    # to `result_type(..., float)`), softplus keeps the dtype, and its
    # gradient is exact (a max/abs form splits it wrongly at ties on TF).
    log_weight = math.log(weight)
    far = log_weight + ops.softplus(d + (math.log1p(-weight) - log_weight))
    log_ratio = ops.where(ops.abs(d) < _NEAR, near, far)
    kl = ops.sum(ops.exp(log_p) * (0.0 - log_ratio), axis=-1)
    # Rounding can leave -1e-9 where the exact value is 0.
    return ops.maximum(kl, 0.0)


def _generalized_jsd(teacher_log_p, student_log_p, beta):
    """`beta KL(p_T || M) + (1 - beta) KL(p_S || M)` over the last axis.

    Both sides need a log-ratio to `M = beta p_T + (1 - beta) p_S`:
    `log M/p_T = log(beta + (1 - beta) e^d)` and `log M/p_S = log M/p_T - d`,
    `d = log p_S - log p_T`. One of them is evaluated as `log(w + (1 - w)
    e^-|d|)` (the side whose ratio stays in `[log w, 0]`, stable), the other
    follows by adding `|d|`: one transcendental pass for both sides, no
    cancellation, and exactly 0 where `d == 0`.
    """
    d = student_log_p - teacher_log_p
    student_above = d > 0.0
    # w: the mixture weight of the side whose ratio is evaluated.
    # Both weights from Python floats: exact even for beta near 0 or 1.
    w = ops.where(student_above, ops.full_like(d, 1.0 - beta), ops.full_like(d, beta))
    one_minus_w = ops.where(student_above, ops.full_like(d, beta), ops.full_like(d, 1.0 - beta))
    # -|d|, written so that its gradient at d == 0 is 1, not abs's 0.
    e = ops.where(student_above, -d, d)
    near = ops.log1p(one_minus_w * ops.expm1(ops.maximum(e, -_NEAR)))
    far = ops.log(w + one_minus_w * ops.exp(e))
    small = ops.where(e > -_NEAR, near, far)
    log_ratio_teacher = ops.where(student_above, small + d, small)  # log M / p_T
    log_ratio_student = ops.where(student_above, small, small - d)  # log M / p_S
    teacher_side = ops.sum(ops.exp(teacher_log_p) * (0.0 - log_ratio_teacher), axis=-1)
    student_side = ops.sum(ops.exp(student_log_p) * (0.0 - log_ratio_student), axis=-1)
    # Rounding can leave -1e-9 where the exact value is 0.
    return beta * ops.maximum(teacher_side, 0.0) + (1.0 - beta) * ops.maximum(student_side, 0.0)


@keras.saving.register_keras_serializable(package="keras_kd")
class ReverseKL(DistillationLoss):
    """Reverse KL, `T**2 * KL(softmax(s/T) || softmax(t/T))` (MiniLLM).

    The token-level form of MiniLLM's objective (Gu et al., ICLR 2024): the
    student's distribution comes first, so the student is pushed to put its
    mass where the teacher's is large (mode seeking) rather than to cover all
    of it. MiniLLM optimises the sequence-level reverse KL with policy
    gradients; this is the per-token term that its baselines and GKD's
    `beta = 1` use.

    Args:
        temperature: Softmax temperature, or `None` for the Distiller's.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Example:

    >>> import numpy as np
    >>> loss = ReverseKL(temperature=1.0)
    >>> teacher = np.array([[0.0, 0.0]])
    >>> student = np.array([[np.log(3.0), 0.0]])  # p_S = [0.75, 0.25]
    >>> round(float(loss(teacher, student)), 4)  # 0.75 ln 1.5 + 0.25 ln 0.5
    0.1308
    """

    def __init__(
        self,
        temperature=None,
        precision="float32",
        reduction=None,
        name="reverse_kl",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        teacher_log_p = _softened_log_probabilities(teacher_logits, temperature)
        student_log_p = _softened_log_probabilities(student_logits, temperature)
        return _kl(student_log_p, teacher_log_p) * (temperature**2)


@keras.saving.register_keras_serializable(package="keras_kd")
class GeneralizedJSD(DistillationLoss):
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024).

    As TRL's `GKDTrainer.generalized_jsd_loss`, with `p = softmax(z/T)`:

        beta == 0:  KL(p_T || p_S)                      (forward KL)
        beta == 1:  KL(p_S || p_T)                      (reverse KL)
        otherwise:  beta * KL(p_T || M) + (1 - beta) * KL(p_S || M),
                    M = beta * p_T + (1 - beta) * p_S

    TRL takes `log M` as a logsumexp of the log-probabilities; here both KLs
    against `M` come from the one log-ratio `log p_S - log p_T` (the same
    value, exactly 0 for identical logits), never from probabilities.
    TRL applies no `T**2` factor; this loss multiplies by
    `T**2` as keras_kd's other losses do, so at `T = 1` it equals TRL's
    per-token values. `beta = 0.5` gives the symmetric Jensen-Shannon
    divergence. Note that, as in TRL, the ends are special cases: the
    mixture form tends to 0 as `beta` approaches 0 or 1, while `beta` equal
    to 0 or 1 gives the full forward or reverse KL.

    Args:
        beta: Weight of the teacher in the mixture, in `[0, 1]`; TRL's
            default is 0.5.
        temperature: Softmax temperature, or `None` for the Distiller's.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Raises:
        ValueError: if `beta` is not a number in `[0, 1]`.

    Example:

    >>> import numpy as np
    >>> loss = GeneralizedJSD(beta=0.5, temperature=1.0)
    >>> teacher = np.array([[30.0, 0.0]])  # p_T ~ [1, 0]
    >>> student = np.array([[0.0, 30.0]])  # p_S ~ [0, 1]
    >>> round(float(loss(teacher, student)), 4)  # ln 2, the JSD's maximum
    0.6931
    """

    def __init__(
        self,
        beta=0.5,
        temperature=None,
        precision="float32",
        reduction=None,
        name="generalized_jsd",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.beta = validate_fraction(beta, "beta")

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        teacher_log_p = _softened_log_probabilities(teacher_logits, temperature)
        student_log_p = _softened_log_probabilities(student_logits, temperature)
        beta = self.beta
        if beta == 0.0:
            jsd = _kl(teacher_log_p, student_log_p)
        elif beta == 1.0:
            jsd = _kl(student_log_p, teacher_log_p)
        else:
            jsd = _generalized_jsd(teacher_log_p, student_log_p, beta)
        return jsd * (temperature**2)

    def get_config(self):
        config = super().get_config()
        config.update({"beta": self.beta})
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class SkewKL(DistillationLoss):
    """Skew KL of DistiLLM: `T**2 * KL(p_T || a p_T + (1 - a) p_S)`.

    Ko et al. (ICML 2024), with `a = skew` and `p = softmax(z/T)`. Mixing
    some of the teacher into the student's distribution bounds the loss and
    its gradient where the student gives a token almost no mass. `skew = 0`
    is the forward KL (`ForwardKL`); `skew = 1` is identically 0. DistiLLM's
    code computes the cross-entropy `-sum p_T log(mixture)`, which differs
    from this KL by the teacher's entropy, a constant for the student, so
    the gradients are the same.

    Args:
        skew: The teacher's weight `a` in the mixture, in `[0, 1]`
            (DistiLLM: 0.1).
        temperature: Softmax temperature, or `None` for the Distiller's.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Raises:
        ValueError: if `skew` is not a number in `[0, 1]`.

    Example:

    >>> import numpy as np
    >>> loss = SkewKL(skew=0.1, temperature=1.0)
    >>> teacher = np.array([[2.0, 0.5, -1.0]])
    >>> float(loss(teacher, teacher))
    0.0
    """

    def __init__(
        self,
        skew=0.1,
        temperature=None,
        precision="float32",
        reduction=None,
        name="skew_kl",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.skew = validate_fraction(skew, "skew")

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        teacher_log_p = _softened_log_probabilities(teacher_logits, temperature)
        student_log_p = _softened_log_probabilities(student_logits, temperature)
        kl = _kl_to_mixture(teacher_log_p, student_log_p, self.skew)
        return kl * (temperature**2)

    def get_config(self):
        config = super().get_config()
        config.update({"skew": self.skew})
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class SkewReverseKL(DistillationLoss):
    """Skew reverse KL of DistiLLM: `T**2 * KL(p_S || (1 - a) p_T + a p_S)`.

    Ko et al. (ICML 2024), with `a = skew` and `p = softmax(z/T)`: the
    reverse KL against a mixture that keeps a fraction `a` of the student.
    `skew = 0` is the reverse KL (`ReverseKL`); `skew = 1` is identically 0.

    Args:
        skew: The student's weight `a` in the mixture, in `[0, 1]`
            (DistiLLM: 0.1).
        temperature: Softmax temperature, or `None` for the Distiller's.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss, `"float32"` by default.

    Raises:
        ValueError: if `skew` is not a number in `[0, 1]`.

    Example:

    >>> import numpy as np
    >>> loss = SkewReverseKL(skew=0.1, temperature=2.0)
    >>> logits = np.zeros((2, 5, 8))  # (batch, time, vocab)
    >>> tuple(loss.compute_per_sample(logits, logits, 2.0).shape)
    (2, 5)
    """

    def __init__(
        self,
        skew=0.1,
        temperature=None,
        precision="float32",
        reduction=None,
        name="skew_reverse_kl",
        dtype="float32",
    ):
        super().__init__(
            temperature=temperature,
            precision=precision,
            reduction=reduction,
            name=name,
            dtype=dtype,
        )
        self.skew = validate_fraction(skew, "skew")

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        teacher_log_p = _softened_log_probabilities(teacher_logits, temperature)
        student_log_p = _softened_log_probabilities(student_logits, temperature)
        kl = _kl_to_mixture(student_log_p, teacher_log_p, self.skew)
        return kl * (temperature**2)

    def get_config(self):
        config = super().get_config()
        config.update({"skew": self.skew})
        return config


DIVERGENCES = {
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "generalized_jsd": GeneralizedJSD,
    "jsd": GeneralizedJSD,
    "skew_kl": SkewKL,
    "skew_reverse_kl": SkewReverseKL,
}
