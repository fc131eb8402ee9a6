"""Several teachers as one: Hinton et al.'s ensemble of soft targets.

A `Distiller` given a list of teachers stacks their logits as `(batch,
members, classes)` (online, or from the cache) and combines them in each
step at its current temperature, so temperature schedules apply to cached
ensembles too.
"""

from keras import ops


def combine(member_logits, temperature, weights, ensemble="arithmetic"):
    """The ensemble's logits from its members' logits at `temperature`.

    The members' softened distributions `softmax(z_m / T)` are averaged
    with `weights`: arithmetically (Hinton et al.'s mean of probabilities)
    or geometrically (the normalised weighted product). The result is
    returned as logits `T * log(mean)`, whose softened softmax is exactly
    that mixture (logits are defined up to a constant per sample), so any
    distillation loss can use it. Identical members give back one teacher.

    Args:
        member_logits: `(batch, members, classes)`.
        temperature: The softmax temperature, a scalar.
        weights: One weight per member, summing to 1.
        ensemble: `"arithmetic"` or `"geometric"`.

    Returns:
        Logits `(batch, classes)`.
    """
    log_p = ops.log_softmax(member_logits / temperature, axis=-1)
    weights = ops.convert_to_tensor(weights, log_p.dtype)[None, :, None]
    if ensemble == "geometric":
        log_mixture = ops.sum(weights * log_p, axis=1)
    else:
        log_mixture = ops.logsumexp(log_p + ops.log(weights), axis=1)
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
