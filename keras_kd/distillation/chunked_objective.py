"""The Distiller's objective from hidden states, in chunks of positions.

`chunked_objective` is what a `Distiller` step computes from two models'
logits (`alpha * student_loss + (1 - alpha) * distillation_loss`, reduced
as `keras_kd.distillation.terms` reduces them, the student's accuracy
over real tokens and the teacher metrics' values), computed from the final
hidden states and the heads by
`keras_kd.distillation.chunked.chunked_distillation_loss`, so no
`(batch, time, vocab)` tensor ever exists. The masks follow
`keras_kd.distillation.labels.label_masks`: `UNLABELLED` positions get only
the distillation term, the student loss's `ignore_class` and a Keras mask
remove a position from both, `label_mask` from the student term only.
Each reduction's divisor is folded into per-position weights known before
the pass (`fold_reduction`), which is what lets the one pass compute both
the values and their gradients.
"""

import collections
import types

import keras
from keras import ops

from keras_kd.distillation import labels as labels_module
from keras_kd.distillation.chunked import chunked_distillation_loss
from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import get_distillation_loss
from keras_kd.distillation.reduction import REDUCTIONS
from keras_kd.distillation.reduction import _num_replicas
from keras_kd.distillation.reduction import broadcast_weights
from keras_kd.distillation.reduction import global_mean
from keras_kd.distillation.reduction import reduce_values
from keras_kd.distillation.terms import combine_masks

ChunkedObjective = collections.namedtuple(
    "ChunkedObjective",
    [
        "loss",
        "student_loss",
        "distillation_loss",
        "accuracy",
        "correct",
        "metric_weights",
        "terms",
        "labelled",
        "present",
        "teacher_metrics",
    ],
)
ChunkedObjective.__doc__ = """What `chunked_objective` returns.

Attributes:
    loss: Scalar `alpha * student_loss + (1 - alpha) * distillation_loss`,
        the only output with a gradient (to the student's hidden states and
        head).
    student_loss: The reduced hard loss, as `StudentTerm` gives it on dense
        logits (float32, no gradient).
    distillation_loss: The reduced distillation term, as `DistillationTerm`
        gives it (float32, no gradient).
    accuracy: The student's accuracy over the labelled positions, weighted
        by the sample weights: `sparse_categorical_accuracy` as a weighted
        metric reports it for this batch (float32).
    correct: `(batch, ...)` 1.0 where the student's top token is the label.
    metric_weights: `(batch, ...)` float32 weights of the labelled
        positions (sample weight times mask): `keras.metrics.Mean().
        update_state(correct, metric_weights)` accumulates the accuracy
        across batches as `SparseCategoricalAccuracy` would.
    terms: The `ChunkedTerms` per position, `(N,)` flat.
    labelled: `(batch, ...)` float32 1.0 at the labelled positions (the
        metric weights before sample weights).
    present: `(batch, ...)` boolean mask of the positions both terms count
        (not padding, not `ignore_class`), or `None` when all count: the
        teacher metrics' mask, as on the dense path.
    teacher_metrics: For each of the `teacher_metrics` given, its
        `(batch, ...)` per-position values (computed chunk by chunk);
        `metric.update_values(values, weights)`, `weights` the sample
        weights times `present`, accumulates what `metric.update_state`
        would on the whole logits.
"""


def fold_reduction(shape, sample_weight=None, mask=None, reduction="sum_over_batch_size"):
    """Per-position weights `w` with `sum(values * w) == reduce_values(values,
    sample_weight, mask, reduction)` for any `values` of `shape`.

    Args:
        shape: The leading shape `(batch, ...)` of the values.
        sample_weight: Optional weights, per sample or per position.
        mask: Optional boolean mask of `shape`.
        reduction: One of `keras_kd.distillation.reduction.REDUCTIONS`.

    Returns:
        Float32 weights of `shape`.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {list(REDUCTIONS)}. Received: "
            f"reduction={reduction!r}."
        )
    template = ops.zeros(shape, "float32")
    weights = broadcast_weights(sample_weight, template)
    if mask is not None:
        float_mask = ops.cast(ops.broadcast_to(ops.convert_to_tensor(mask), shape), "float32")
        weights = float_mask if weights is None else weights * float_mask
    unit = ops.ones(shape, "float32") if weights is None else weights
    if reduction == "sum":
        return unit * _num_replicas()
    if reduction == "mean_with_sample_weight" and weights is not None:
        denominator = global_mean(ops.sum(unit))
    elif mask is not None:
        denominator = global_mean(ops.sum(float_mask))
    else:
        denominator = global_mean(ops.cast(ops.prod(ops.convert_to_tensor(shape)), "float32"))
    # As `ops.divide_no_nan`: nothing to count gives 0.
    safe = ops.where(denominator > 0.0, denominator, ops.ones_like(denominator))
    return ops.where(denominator > 0.0, unit / safe, ops.zeros_like(unit))


def _student_loss_settings(student_loss_fn):
    """`(ignore_class, reduction)` of a sparse cross-entropy student loss."""
    if student_loss_fn is None:
        return None, "sum_over_batch_size"
    if isinstance(student_loss_fn, keras.losses.SparseCategoricalCrossentropy):
        config = student_loss_fn.get_config()
        if config.get("from_logits") is False:
            raise ValueError(
                "The chunked path computes the student's cross-entropy on "
                "logits; `student_loss_fn` is SparseCategoricalCrossentropy("
                "from_logits=False). Build it with `from_logits=True`."
            )
        if config.get("axis", -1) != -1:
            raise ValueError(
                "The chunked path reduces the vocabulary on the last axis. "
                f"Received: SparseCategoricalCrossentropy(axis={config['axis']})."
            )
        return config.get("ignore_class"), student_loss_fn.reduction
    raise ValueError(
        "The chunked path computes the student loss as a sparse categorical "
        "cross-entropy on integer token labels. Received: student_loss_fn="
        f"{student_loss_fn!r}. Pass `keras.losses.SparseCategoricalCrossentropy("
        "from_logits=True, ...)` (any `reduction`, `ignore_class`) or None, or "
        "use the dense path (no `chunk_size`) for other student losses."
    )


def chunked_objective(
    student_hidden,
    student_head,
    teacher_hidden=None,
    teacher_head=None,
    labels=None,
    sample_weight=None,
    mask=None,
    label_mask=None,
    student_loss_fn=None,
    distillation_loss_fn=None,
    temperature=1.0,
    alpha=0.1,
    chunk_size=1024,
    training=True,
    teacher_top_k=None,
    teacher_metrics=(),
    with_divergence=True,
):
    """A Distiller step's loss and terms from hidden states, in chunks.

    Equal, value for value, to the dense path on logits `cap(hidden @ kernel
    + bias)`: `StudentTerm` on the student's logits and `DistillationTerm`
    on both models' (or on the top-k cache), `alpha`-weighted, with the
    same masks and reductions; and to `sparse_categorical_accuracy` over
    the labelled positions.

    Args:
        student_hidden: `(batch, ..., Hs)` student final hidden states.
        student_head: The student's `LinearHead`
            (`keras_kd.distillation.chunked_models.model_head`).
        teacher_hidden: `(batch, ..., Ht)` teacher hidden states, or `None`
            with `teacher_top_k`. With `teacher_head` and `teacher_top_k`
            also `None`, no teacher: the student loss alone (what the
            Distiller's `evaluate` reports; pass `alpha=1`), the
            distillation loss 0.
        teacher_head: The teacher's `LinearHead`, or `None` with
            `teacher_top_k` (or without a teacher).
        labels: Integer token labels `(batch, ...)` (a trailing axis of 1
            allowed), `UNLABELLED` (-1) for positions without one; `None`
            for an unlabelled batch (the student term is then 0).
        sample_weight: Optional weights `(batch,)` or `(batch, ...)`.
        mask: Optional Keras mask `(batch, ...)` (padding): such positions
            count for neither term.
        label_mask: Optional mask of labelled positions (student term only).
        student_loss_fn: `None` or a `SparseCategoricalCrossentropy(
            from_logits=True)`, whose `reduction` and `ignore_class` apply.
        distillation_loss_fn: A divergence the chunked path computes (see
            `chunked_distillation_loss`), `TopKKLDivergence` with
            `teacher_top_k`; `None` for forward KL (`TopKKLDivergence()` with
            a cache). Reduced as the student loss unless built with its own
            `reduction`.
        temperature: Softmax temperature of the divergence.
        alpha: Weight of the student loss, a float or scalar tensor.
        chunk_size: Positions whose logits exist at once.
        training: Whether `loss` needs a gradient.
        teacher_top_k: Optional top-k cache batch: `indices`, `values`
            `(batch, ..., k)`, `log_normalizer` `(batch, ...)`, and the
            `cache_temperature` / `vocab_size` `top_k_dataset` adds.
        teacher_metrics: `TeacherMetric`s (`keras_kd.TeacherKL`,
            `TeacherAgreement`, ...) to compute chunk by chunk from both
            models' logits at T = 1; needs `teacher_hidden` and
            `teacher_head`.
        with_divergence: `False`: the teacher is read for
            `teacher_metrics` only, the distillation loss is 0 (the
            Distiller's `evaluate`).

    Returns:
        A `ChunkedObjective`.

    Raises:
        ValueError: for a student loss other than a sparse cross-entropy on
            logits, an unsupported divergence, a bad `chunk_size`, or heads
            and states whose sizes disagree.
    """
    ignore_class, reduction = _student_loss_settings(student_loss_fn)
    student_only = teacher_hidden is None and teacher_head is None and teacher_top_k is None
    loss_fn = get_distillation_loss(distillation_loss_fn) if (
        distillation_loss_fn is not None or teacher_top_k is None) and not student_only else None
    own = getattr(loss_fn, "own_reduction", None) if isinstance(loss_fn, DistillationLoss) else None
    distillation_reduction = own or reduction

    student_hidden = ops.convert_to_tensor(student_hidden)
    leading = tuple(student_hidden.shape[:-1])
    if any(d is None for d in leading):
        leading_shape = ops.shape(student_hidden)[:-1]
    else:
        leading_shape = leading
    vocab = student_head.vocabulary_size
    if labels is not None:
        # The Distiller's own masks, from a stand-in for the logits' shape.
        logits_like = types.SimpleNamespace(shape=leading + (vocab,))
        labels = ops.convert_to_tensor(labels)
        if labels_module.label_layout(labels, logits_like) != labels_module.SPARSE:
            raise ValueError(
                "The chunked path needs integer token labels of shape "
                f"{leading} (one id per position). Received: labels of shape "
                f"{tuple(labels.shape)}."
            )
        _, labelled, present = labels_module.label_masks(labels, logits_like, ignore_class, label_mask)
        positions = ops.cast(labels_module.sparse_positions(labels, logits_like), "int32")
    else:
        labelled = present = None
        positions = ops.full(leading_shape, -1, "int32")
    labelled = combine_masks(labelled, mask)
    present = combine_masks(present, mask)
    if labels is None:
        labelled = ops.zeros(leading_shape, "bool")

    alpha = ops.cast(alpha, "float32")
    student_weights = alpha * fold_reduction(leading_shape, sample_weight, labelled, reduction)
    distillation_weights = (1.0 - alpha) * fold_reduction(
        leading_shape, sample_weight, present, distillation_reduction)

    def flat(x, dtype=None):
        x = ops.convert_to_tensor(x)
        x = ops.reshape(x, (-1,) + tuple(x.shape[len(leading):]))
        return x if dtype is None else ops.cast(x, dtype)

    safe_labels = ops.where(labelled, positions, ops.full_like(positions, -1))
    top_k_rows = None
    if teacher_top_k is not None:
        top_k_rows = dict(teacher_top_k)
        for key in ("indices", "values", "log_normalizer"):
            top_k_rows[key] = flat(teacher_top_k[key])
    terms = chunked_distillation_loss(
        flat(student_hidden),
        student_head,
        None if teacher_hidden is None else flat(teacher_hidden),
        teacher_head,
        flat(safe_labels),
        flat(student_weights),
        distillation_weights=flat(distillation_weights),
        divergence=loss_fn,
        temperature=temperature,
        chunk_size=chunk_size,
        training=training,
        teacher_top_k=top_k_rows,
        teacher_metrics=teacher_metrics,
        with_divergence=with_divergence,
    )

    def unflat(values):
        return ops.reshape(values, leading_shape)

    if labels is None:
        student_loss = ops.zeros((), "float32")
    else:
        student_loss = reduce_values(unflat(terms.cross_entropy), sample_weight, labelled, reduction)
    distillation_loss = reduce_values(
        unflat(terms.distillation), sample_weight, present, distillation_reduction)
    correct = ops.cast(unflat(terms.correct), "float32")
    metric_weights = ops.cast(labelled, "float32")
    if sample_weight is not None:
        metric_weights = metric_weights * broadcast_weights(sample_weight, correct)
    denominator = ops.sum(metric_weights)
    accuracy = ops.where(
        denominator > 0.0,
        ops.sum(correct * metric_weights) / ops.where(denominator > 0.0, denominator, 1.0),
        0.0,
    )
    return ChunkedObjective(
        loss=terms.loss,
        student_loss=ops.stop_gradient(student_loss),
        distillation_loss=ops.stop_gradient(distillation_loss),
        accuracy=accuracy,
        correct=correct,
        metric_weights=metric_weights,
        terms=terms,
        labelled=ops.cast(labelled, "float32"),
        present=present,
        teacher_metrics=tuple(unflat(values) for values in terms.teacher_metrics),
    )
