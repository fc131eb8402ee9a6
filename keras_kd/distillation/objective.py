"""The Distiller's objective, in `keras.ops` only: the same on every backend.

A step is one straight line (see `keras_kd.distillation.backend`):

    batch = parse_batch(data)                          # keras_kd.batch
    outputs = forward(distiller, batch, alpha, True)   # student, teacher side
    terms = training_terms(distiller, batch, outputs, alpha)
    ... the backend's gradient and optimizer update ...
    logs = update_metrics(distiller, batch, outputs, terms)

`forward` runs the models through the Distiller's subclass hooks
(`student_logits`, `student_features`, `teacher_logits`, `teacher_features`);
`training_terms` / `evaluation_terms` turn their outputs into the loss and
the values the trackers log, through `compute_student_loss` and
`compute_distillation_loss`. Nothing here knows about tapes, gradients,
replicas or state: the TensorFlow step runs these functions under a
`tf.GradientTape`, the JAX step inside `jax.value_and_grad` over a
`StatelessScope`, as Keras' own trainers run one `compute_loss`.
"""

import inspect
from typing import Any
from typing import NamedTuple

from keras import ops

from keras_kd.distillation import compat
from keras_kd.distillation import teacher as teacher_module
from keras_kd.distillation import validation
from keras_kd.distillation.chunked import LinearHead
from keras_kd.distillation.chunked_objective import chunked_objective
from keras_kd.distillation.batch import UNLABELLED
from keras_kd.distillation.reduction import broadcast_weights
from keras_kd.distillation.reduction import global_mean
from keras_kd.distillation.terms import DistillationTerm
from keras_kd.distillation.terms import combine_masks
from keras_kd.distillation.top_k_loss import CACHE_TEMPERATURE_KEY


class Outputs(NamedTuple):
    """What the models gave for one batch.

    Attributes:
        student_logits: The student's selected logits (with their Keras mask);
            on the chunked path its final hidden states.
        student_features: The student's hint features, or `None`.
        teacher: The teacher side's raw outputs (`Teacher.__call__` or
            `from_cache`; a top-k dict), zeros when it was skipped, or
            `None` (evaluation without teacher metrics); on the chunked
            path the teacher's final hidden states or a top-k dict.
        teacher_features: The teacher's hint features, or `None`.
        teacher_may_skip: Whether the teacher ran only for `alpha < 1`
            (then the distillation term counts only in those steps).
    """

    student_logits: Any
    student_features: Any = None
    teacher: Any = None
    teacher_features: Any = None
    teacher_may_skip: bool = False


class Terms(NamedTuple):
    """The loss of a step and the values its trackers log."""

    loss: Any
    student_loss: Any
    distillation_loss: Any = None
    hint_losses: tuple = ()
    # 1.0, or 0.0 in a step that skipped the teacher (alpha == 1).
    distillation_computed: Any = 1.0
    # The chunked path: `(correct, labelled, present, teacher_values)` per
    # position, for accuracy and the teacher metrics (`teacher_values`, one
    # per teacher metric, `()` when the teacher was not read).
    chunk_metrics: Any = None


def forward(distiller, batch, alpha, training):
    """Runs the student (with gradients) and the teacher side (without).

    The teacher runs with `training=False`, outside the gradient, and only
    when a term needs it: cached outputs replace it, and without hints or
    teacher metrics it runs only while `alpha < 1` (on JAX, in a `fit`
    started below 1, its values are used only while `alpha < 1`: see
    `JAXSteps._run_if`).
    """
    if getattr(distiller, "chunked", None) is not None:
        return _chunked_forward(distiller, batch, training)
    hints = distiller.feature_hints
    teacher_features = online = None
    if hints:
        online, teacher_features = distiller.teacher_features(batch.inputs)
        teacher_features = [ops.stop_gradient(f) for f in teacher_features]
        online = ops.stop_gradient(online) if batch.teacher_outputs is None else None
    if hints:
        student_logits, student_features = distiller.student_features(
            batch.inputs, training=training)
    else:
        student_logits = distiller.student_logits(batch.inputs, training=training)
        student_features = None
    may_skip = (online is None and batch.teacher_outputs is None
                and not distiller._teacher_metrics)
    if online is not None:
        raw = online
    elif batch.teacher_outputs is not None:
        raw = distiller.teacher_side.from_cache(batch.teacher_outputs)
    elif not may_skip:
        raw = ops.stop_gradient(distiller.teacher_logits(batch.inputs))
    else:
        dummy = teacher_module.dummy_logits(student_logits, distiller.teacher_side)
        raw = distiller._run_if(
            alpha < 1.0,
            lambda: ops.stop_gradient(distiller.teacher_logits(batch.inputs)),
            skipped=dummy,
        )
    return Outputs(student_logits, student_features, raw, teacher_features, may_skip)


def _chunked_forward(distiller, batch, training):
    """The chunked path's `Outputs`: the student's final hidden states (in
    `student_logits`) and the teacher's (in `teacher`), or the batch's
    top-k cache dict there; no logits."""
    setup = distiller.chunked
    _check_chunked_cache(distiller, batch.teacher_outputs)
    student_hidden = setup.student.hidden(distiller.student_inputs(batch.inputs), training)
    if batch.teacher_outputs is not None:
        # A top-k cache: the teacher does not run; the term is always computed.
        return Outputs(student_hidden,
                       teacher=distiller.teacher_side.from_cache(batch.teacher_outputs))
    # The teacher always runs (its term's weight is 0 at alpha == 1), but the
    # term is logged as computed only while alpha < 1, as the dense path does.
    may_skip = not distiller._teacher_metrics
    return Outputs(student_hidden, teacher=_chunked_teacher_hidden(distiller, batch),
                   teacher_may_skip=may_skip)


def _chunked_teacher_hidden(distiller, batch):
    return ops.stop_gradient(
        distiller.chunked.teacher.hidden(distiller.teacher_inputs(batch.inputs), False))


def _check_chunked_cache(distiller, cached):
    """Refuses, on the chunked path, a batch's cached teacher outputs it
    cannot read: dense logits, or a top-k cache with teacher metrics."""
    if cached is None:
        return
    if not isinstance(cached, dict):
        raise ValueError(
            "The chunked path (`chunk_size`) distils from the teacher's hidden "
            "states or a top-k cache (`keras_kd.targets(labels, teacher_top_k="
            "...)`); this batch carries cached dense teacher logits "
            "(`teacher_logits`), whose whole `(batch, ..., vocab)` tensor the "
            "chunked path exists to avoid. Write a top-k cache "
            "(`write_top_k_cache`), let the teacher run online, or compile "
            "without `chunk_size` to train on these logits.")
    if distiller._teacher_metrics:
        # As the dense path (`combined_teacher_logits`) refuses it.
        names = ", ".join(repr(m.name) for m in distiller._teacher_metrics)
        raise ValueError(
            "A top-k teacher cache holds the teacher's top k logits only, and the "
            f"teacher metrics ({names}) compare its whole distribution with the "
            "student's: on the chunked path (`chunk_size`) as on the dense one they "
            "need the teacher online. Let the teacher run (targets without "
            "`teacher_top_k`), or drop the teacher metrics.")


def _chunked_terms(distiller, batch, outputs, alpha, training=True):
    """`training_terms` on the chunked path (`chunked_objective`); with
    `training=False` (`evaluation_terms`), the student loss alone."""
    setup = distiller.chunked
    teacher_hidden = teacher_head = teacher_top_k = None
    loss_fn = distiller.distillation_loss_fn
    temperature = ops.cast(distiller._temperature, "float32")
    if isinstance(outputs.teacher, dict):
        # The dense path's top-k loss and temperature (`DistillationTerm`):
        # the cache's, when no temperature was chosen and tail="bin".
        teacher_top_k = outputs.teacher
        loss_fn = distiller.distillation_term.top_k_loss()
        carried = teacher_top_k.get(CACHE_TEMPERATURE_KEY)
        if carried is not None and distiller.distillation_term.follows_cache(loss_fn):
            temperature = ops.cast(ops.reshape(carried, (-1,))[0], "float32")
    elif outputs.teacher is not None:
        teacher_hidden = outputs.teacher
        teacher_head = LinearHead.from_layer(setup.teacher.layer)
    # The teacher metrics, chunk by chunk, wherever the teacher's states are.
    teacher_metrics = distiller._teacher_metrics if teacher_hidden is not None else ()
    result = chunked_objective(
        outputs.student_logits,
        LinearHead.from_layer(setup.student.layer),
        teacher_hidden,
        teacher_head,
        labels=batch.labels,
        sample_weight=batch.sample_weight,
        mask=compat.keras_mask(outputs.student_logits),
        label_mask=batch.label_mask,
        student_loss_fn=distiller.student_loss_fn,
        distillation_loss_fn=None if outputs.teacher is None else loss_fn,
        temperature=temperature,
        alpha=alpha,
        chunk_size=setup.chunk_size,
        training=training,
        teacher_top_k=teacher_top_k,
        teacher_metrics=teacher_metrics,
        # `evaluate` reads the teacher for its metrics only.
        with_divergence=training,
    )
    chunk_metrics = (result.correct, result.labelled, result.present, result.teacher_metrics)
    # The terms come in the divergence's `precision`; the loss the optimizer
    # and the trackers see is float32, as on the dense path.
    student_loss = ops.cast(result.student_loss, "float32")
    if not training:  # `evaluation_terms`: `student.evaluate`'s loss.
        return Terms(student_loss + regularization_loss(distiller.student),
                     student_loss, chunk_metrics=chunk_metrics)
    loss = ops.cast(result.loss, "float32") + regularization_loss(distiller.student)
    computed = ops.cast(alpha < 1.0, "float32") if outputs.teacher_may_skip else 1.0
    return Terms(loss, student_loss, ops.cast(result.distillation_loss, "float32"), (),
                 computed, chunk_metrics)


def evaluation_forward(distiller, batch):
    """The student alone, and the teacher only for teacher metrics. On the
    chunked path the student's final hidden states (and the teacher's, for
    teacher metrics), no logits."""
    if getattr(distiller, "chunked", None) is not None:
        inputs = distiller.student_inputs(batch.inputs)
        student_hidden = distiller.chunked.student.hidden(inputs, False)
        if not distiller._teacher_metrics:
            return Outputs(student_hidden)
        _check_chunked_cache(distiller, batch.teacher_outputs)
        return Outputs(student_hidden, teacher=_chunked_teacher_hidden(distiller, batch))
    student_logits = distiller.student_logits(batch.inputs, training=False)
    raw = None
    if distiller._teacher_metrics:  # Opt-in: only they make evaluate run the teacher.
        raw = (distiller.teacher_side.from_cache(batch.teacher_outputs)
               if batch.teacher_outputs is not None
               else distiller.teacher_logits(batch.inputs))
    return Outputs(student_logits, teacher=raw)


def training_terms(distiller, batch, outputs, alpha):
    """`alpha * hard + (1 - alpha) * distillation + hints + student.losses`."""
    if getattr(distiller, "chunked", None) is not None:
        return _chunked_terms(distiller, batch, outputs, alpha)
    student_logits = outputs.student_logits
    teacher_logits = combined_teacher_logits(distiller, outputs.teacher, student_logits)
    student_loss = distiller.compute_student_loss(
        batch.labels, student_logits, batch.sample_weight, batch.label_mask)
    extra = {"y": batch.labels} if accepts_labels(distiller.compute_distillation_loss) else {}
    distillation_loss = distiller.compute_distillation_loss(
        teacher_logits, student_logits, batch.sample_weight, **extra)
    loss = (alpha * student_loss + (1.0 - alpha) * distillation_loss
            + regularization_loss(distiller.student))
    hint_losses = ()
    if distiller.feature_hints:
        hint_losses = tuple(distiller.feature_hints.losses(
            outputs.student_features, outputs.teacher_features))
    for hint_loss in hint_losses:
        loss = loss + hint_loss
    # At alpha == 1 the teacher did not run: the term was not computed.
    computed = ops.cast(alpha < 1.0, "float32") if outputs.teacher_may_skip else 1.0
    return Terms(loss, student_loss, distillation_loss, hint_losses, computed)


def evaluation_terms(distiller, batch, outputs):
    """`student.evaluate`'s loss: the hard loss plus regularisation, so that
    `val_loss` can drive checkpoints and early stopping. On the chunked
    path the same values, from the student's hidden states in chunks
    (`chunked_objective` without a teacher)."""
    if getattr(distiller, "chunked", None) is not None:
        return _chunked_terms(distiller, batch, outputs, 1.0, training=False)
    student_loss = distiller.compute_student_loss(
        batch.labels, outputs.student_logits, batch.sample_weight, batch.label_mask)
    return Terms(student_loss + regularization_loss(distiller.student), student_loss)


def update_metrics(distiller, batch, outputs, terms):
    """Updates the loss trackers and the compiled and teacher metrics.

    Returns:
        The step's logs (`Model.metrics` results); an evaluation's
        (`terms.distillation_loss is None`) without the training terms.
    """
    # Each replica's terms are its share of the global batch's values (their
    # mean over replicas is the global value, `keras_kd.reduction`), so every
    # replica weighs them by the same global batch size over N: with a last
    # batch split unevenly (or one replica empty) the logs are one device's.
    batch_size = global_mean(ops.cast(ops.shape(outputs.student_logits)[0], "float32"))
    compat.loss_tracker(distiller).update_state(terms.loss, sample_weight=batch_size)
    distiller.student_loss_tracker.update_state(terms.student_loss, sample_weight=batch_size)
    training = terms.distillation_loss is not None
    if training:
        distiller.distillation_loss_tracker.update_state(
            terms.distillation_loss,
            sample_weight=batch_size * terms.distillation_computed)
        for tracker, value in zip(distiller.hint_trackers, terms.hint_losses):
            tracker.update_state(value, sample_weight=batch_size)
    if terms.chunk_metrics is not None:
        correct, labelled, present, teacher_values = terms.chunk_metrics
        _update_chunked_accuracy(distiller, batch, correct, labelled)
        if teacher_values:
            weights = _teacher_metric_weights(batch, present, ops.shape(correct))
            for metric, values in zip(distiller._teacher_metrics, teacher_values):
                metric.update_values(values, weights)
    else:
        _update_compiled_and_teacher_metrics(
            distiller, batch, outputs.student_logits, outputs.teacher)
    logs = metric_logs(distiller, batch)
    if not training:
        for tracker in [distiller.distillation_loss_tracker] + distiller.hint_trackers:
            logs.pop(tracker.name, None)  # Training terms: evaluate has none.
    return logs


def _update_chunked_accuracy(distiller, batch, correct, labelled):
    """The chunked path's compiled accuracy metrics (the only ones it
    takes), from the chunks' per-position hits: a two-column stand-in for
    the logits whose top column is 1 exactly where the student was right
    gives each accuracy metric what the whole logits would."""
    if batch.labels is None:
        return
    stand_in = ops.stack([1.0 - correct, correct], axis=-1)
    sample_weight = batch.sample_weight
    if sample_weight is not None:
        sample_weight = broadcast_weights(sample_weight, labelled)
    compat.update_compiled_metrics(
        distiller, ops.ones(ops.shape(correct), "int32"), stand_in, labelled, sample_weight)


def _update_compiled_and_teacher_metrics(distiller, batch, student_logits, raw_teacher):
    keras_mask = compat.keras_mask(student_logits)
    present = keras_mask
    if batch.labels is not None:
        safe, labelled, present = distiller.student_term.masks(
            batch.labels, student_logits, keras_mask, batch.label_mask)
        mask = labelled if labelled is not None else ops.ones(
            ops.shape(student_logits)[:-1], "bool")
        sample_weight = batch.sample_weight
        if sample_weight is not None:
            sample_weight = broadcast_weights(sample_weight, ops.cast(mask, "float32"))
        compat.update_compiled_metrics(
            distiller, safe, student_logits, ops.cast(mask, "float32"), sample_weight)
    if distiller._teacher_metrics and raw_teacher is not None:
        # At T = 1, as the metrics' docstrings say: an ensemble's mixture
        # at the training temperature is another distribution.
        teacher_logits = combined_teacher_logits(
            distiller, raw_teacher, student_logits, "softmax", temperature=1.0)
        weights = _teacher_metric_weights(batch, present, ops.shape(student_logits)[:-1])
        for metric in distiller._teacher_metrics:
            metric.update_state(teacher_logits, student_logits, weights)


def _teacher_metric_weights(batch, present, shape):
    """The teacher metrics' weights of positions of `shape`: the sample
    weights times `present` (padding and `ignore_class` left out; unlabelled
    positions count), or `None` when all positions weigh 1."""
    weights = combine_masks(present)
    weights = None if weights is None else ops.cast(weights, "float32")
    if batch.sample_weight is not None:
        sw = broadcast_weights(batch.sample_weight, ops.ones(shape))
        weights = sw if weights is None else weights * sw
    return weights


def metric_results(metrics):
    """`{name: result}` of the metrics that are built (a dict result, as
    compiled metrics give, is merged in)."""
    results = {}
    for metric in metrics:
        if getattr(metric, "built", True) is False:
            continue
        result = metric.result()
        if isinstance(result, dict):
            results.update(result)
        else:
            results[metric.name] = result
    return results


def metric_logs(distiller, batch):
    """`{name: result}` of the distiller's metrics after a step."""
    metrics = distiller.metrics
    if batch.labels is None:  # No labels: the label metrics have nothing new.
        metrics = [m for m in metrics if m is not compat.compiled_metrics(distiller)]
    return compat.reducible_logs(metric_results(metrics))


def combined_teacher_logits(distiller, raw, student_logits, kind=None, temperature=None):
    """One teacher's logits for the distillation loss (or `kind`), an
    ensemble's mixed at `temperature` (default: the distiller's)."""
    if isinstance(raw, dict):  # A top-k cache: one teacher, as stored.
        if distiller.align_vocabulary == "prefix":
            raise ValueError(
                "`align_vocabulary='prefix'` cuts dense teacher logits; a top-k "
                "cache holds ids only. Write the cache from the aligned teacher "
                "(e.g. a model that returns `logits[..., :student_vocabulary]`)."
            )
        if distiller.teacher_side.is_ensemble or distiller._teacher_metrics:
            raise ValueError(
                "A top-k teacher cache holds one teacher's top logits: it "
                "takes neither an ensemble nor teacher metrics. Distil the "
                "ensemble online, or drop the teacher metrics."
            )
        return raw
    if kind is None:
        kind = DistillationTerm.kind(distiller._distillation_loss_for(student_logits))
    if distiller.align_vocabulary == "prefix":
        raw = prefix_vocabulary(raw, student_logits.shape[-1])
    if temperature is None:
        temperature = ops.cast(distiller._temperature, "float32")
    logits = distiller.teacher_side.combine(raw, temperature, kind)
    validation.check_same_classes(
        logits.shape[-1], student_logits.shape[-1],
        "Check the models' last layers and any cached teacher logits, or pass "
        "`align_vocabulary='prefix'` for a teacher whose vocabulary is padded.",
    )
    return logits


def prefix_vocabulary(teacher_logits, classes):
    """The teacher's logits for the student's first `classes` ids."""
    teacher_classes = teacher_logits.shape[-1]
    if teacher_classes is not None and classes is not None and teacher_classes < classes:
        raise ValueError(
            f"`align_vocabulary='prefix'` cuts the teacher's {teacher_classes} logits to "
            f"the student's {classes}, but the teacher has fewer. Pass the larger model "
            "as the teacher, or leave `align_vocabulary` unset."
        )
    return teacher_logits[..., :classes]


def regularization_loss(student):
    """The sum of `student.losses` (regularisers, `add_loss`), float32."""
    losses = student.losses
    if not losses:
        return ops.zeros((), "float32")
    return ops.sum(ops.stack([ops.cast(loss, "float32") for loss in losses]))


def no_labels_message(alpha=None):
    """The error for a batch without labels while `alpha > 0`."""
    given = "" if alpha is None else f"alpha={alpha} "
    return (
        "The data has no labels, so the student loss cannot be computed, but "
        f"{given}gives it weight (alpha > 0). To train on the distillation "
        "term alone (a transfer set), set `alpha=0`; or pass labels, with "
        f"{UNLABELLED} (`keras_kd.UNLABELLED`) marking the samples that have none."
    )


def accepts_labels(method):
    """Whether a (user's) `compute_distillation_loss` takes `y`: overrides
    written before it did keep working."""
    parameters = inspect.signature(method).parameters
    return "y" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
