"""Several teachers as one: the ensemble rules, per kind of loss.

An ensemble's member outputs are stacked on a *member axis* that the
teacher side knows from the list of teachers (never from a rank): `(members,
batch, ..., classes)`. `combine` turns them into one teacher's logits for
the loss at hand, at the distiller's current temperature, so schedules
apply to cached ensembles too:

- softmax losses (KD, the logit methods, the sequence divergences): the
  members' softened distributions `softmax(z_m / T)` are averaged,
  arithmetically (Hinton et al.'s mixture) or geometrically, and returned
  as logits `T * log(mixture)`, whose softened softmax is that mixture.
- sigmoid losses: each class's Bernoulli distributions are averaged the
  same way; returned as logits `T * logit(mixture)`.
- logit-space losses (`DistillationMeanSquaredError(space="logits")`): the
  weighted mean of the members' logits (whose softmax is the geometric
  mixture at T = 1).

Identical members give back one teacher: exactly its logits for sigmoid and
logit-space losses, its logits shifted by a constant per position (which
no softmax loss sees) for softmax losses.
"""

from keras import ops


def combine(member_logits, temperature, weights, ensemble="arithmetic", kind="softmax"):
    """One teacher's logits from its members' logits.

    Args:
        member_logits: `(members, batch, ..., classes)`.
        temperature: The softmax temperature, a scalar.
        weights: One weight per member, summing to 1.
        ensemble: `"arithmetic"` or `"geometric"`.
        kind: `"softmax"`, `"sigmoid"` or `"logits"`: what the loss compares.

    Returns:
        Logits `(batch, ..., classes)`.

    Example:

    >>> import numpy as np
    >>> z = np.array([[[2.0, 0.0]], [[2.0, 0.0]]], "float32")  # 2 members
    >>> np.asarray(combine(z, 1.0, [0.5, 0.5], kind="logits")).tolist()
    [[2.0, 0.0]]
    """
    rank = len(member_logits.shape)
    weights = ops.reshape(
        ops.convert_to_tensor(weights, member_logits.dtype), (-1,) + (1,) * (rank - 1)
    )
    if kind == "logits" or (kind == "sigmoid" and ensemble == "geometric"):
        # The geometric mean of Bernoullis is the sigmoid of the mean logit.
        return ops.sum(weights * member_logits, axis=0)
    scaled = member_logits / temperature
    log_weights = ops.log(weights)
    if kind == "sigmoid":
        log_p = ops.logsumexp(log_weights - ops.softplus(-scaled), axis=0)
        log_not_p = ops.logsumexp(log_weights - ops.softplus(scaled), axis=0)
        return temperature * (log_p - log_not_p)
    log_p = ops.log_softmax(scaled, axis=-1)
    if ensemble == "geometric":
        log_mixture = ops.sum(weights * log_p, axis=0)
    else:
        log_mixture = ops.logsumexp(log_p + log_weights, axis=0)
    return temperature * log_mixture


def normalized_weights(weights, count):
    """`weights` scaled to sum to 1 (equal weights for `None`), checked."""
    if weights is None:
        return [1.0 / count] * count
    weights = [float(w) for w in weights]
    if len(weights) != count or not all(w > 0 for w in weights):
        raise ValueError(
            f"`teacher_weights` must hold one positive weight per teacher ({count}). "
            f"Received: teacher_weights={weights!r}."
        )
    return [w / sum(weights) for w in weights]
