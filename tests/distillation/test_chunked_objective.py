"""`chunked_objective` equals the Distiller's dense terms (`StudentTerm`,
`DistillationTerm` on materialised logits) with `UNLABELLED` labels,
`ignore_class`, a Keras mask, `label_mask`, per-sample and per-position
sample weights and every reduction; values and gradients also against a
float64 NumPy reference. Backend-neutral (TF and JAX)."""

import keras
import numpy as np
import pytest
from conftest import value_and_gradients
from keras import ops

from keras_kd.distillation import divergences
from keras_kd.distillation.chunked import LinearHead
from keras_kd.distillation.chunked_objective import chunked_objective
from keras_kd.distillation.terms import DistillationTerm
from keras_kd.distillation.terms import StudentTerm

B, T, HS, HT, V = 2, 5, 4, 3, 9
IGNORE = -100
TEMPERATURE = 2.0
ALPHA = 0.3


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(11)
    labels = rng.integers(0, V, (B, T))
    labels[0, 1] = -1  # UNLABELLED: distillation only
    labels[1, 3] = IGNORE  # ignore_class: neither term
    mask = np.ones((B, T), bool)
    mask[1, 4] = False  # Keras padding mask
    label_mask = np.ones((B, T), bool)
    label_mask[0, 3] = False
    return {
        "student_hidden": rng.normal(size=(B, T, HS)),
        "student_kernel": rng.normal(size=(HS, V)),
        "student_bias": rng.normal(size=(V,)),
        "teacher_hidden": rng.normal(size=(B, T, HT)),
        "teacher_kernel": 1.5 * rng.normal(size=(HT, V)),
        "labels": labels,
        "mask": mask,
        "label_mask": label_mask,
        "per_sample": rng.uniform(0.5, 2.0, B),
        "per_position": rng.uniform(0.0, 2.0, (B, T)),
    }


def float_value_and_gradients(fn, arguments):
    value, grads, aux = value_and_gradients(fn, arguments)
    return float(value), grads, aux


def params(batch):
    return [batch["student_hidden"], batch["student_kernel"], batch["student_bias"]]


def chunked(batch, loss_fn, sample_weight, reduction, chunk_size=3):
    student_loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE, reduction=reduction)

    def fn(hidden, kernel, bias):
        result = chunked_objective(
            hidden, LinearHead(kernel, bias),
            batch["teacher_hidden"].astype("float32"),
            LinearHead(batch["teacher_kernel"].astype("float32")),
            labels=batch["labels"], sample_weight=sample_weight, mask=batch["mask"],
            label_mask=batch["label_mask"], student_loss_fn=student_loss_fn,
            distillation_loss_fn=loss_fn, temperature=TEMPERATURE, alpha=ALPHA,
            chunk_size=chunk_size,
        )
        return result.loss, result

    return float_value_and_gradients(fn, params(batch))


def dense(batch, loss_fn, sample_weight, reduction):
    """The Distiller's dense terms on materialised logits."""
    student_loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE, reduction=reduction)
    student_term = StudentTerm(student_loss_fn, default=False)
    distillation_term = DistillationTerm(loss_fn, TEMPERATURE)
    teacher_logits = ops.convert_to_tensor(
        (batch["teacher_hidden"] @ batch["teacher_kernel"]).astype("float32"))
    keras_mask = ops.convert_to_tensor(batch["mask"])

    def fn(hidden, kernel, bias):
        logits = ops.matmul(hidden, kernel) + bias
        student = student_term(batch["labels"], logits, sample_weight, keras_mask, batch["label_mask"])
        _, _, present = student_term.masks(batch["labels"], logits, keras_mask)
        distillation = distillation_term(
            loss_fn, teacher_logits, logits, sample_weight, present,
            student_term.reduction(logits))
        return ALPHA * student + (1 - ALPHA) * distillation, (student, distillation, logits)

    return float_value_and_gradients(fn, params(batch))


LOSSES = {
    "forward_kl": lambda: divergences.ForwardKL(),
    "generalized_jsd": lambda: divergences.GeneralizedJSD(beta=0.5),
    "reverse_kl": lambda: divergences.ReverseKL(),
    "skew_kl": lambda: divergences.SkewKL(skew=0.1),
    "own_sum": lambda: divergences.SkewReverseKL(skew=0.2, reduction="sum"),
}


REDUCTIONS = ["sum_over_batch_size", "mean_with_sample_weight", "sum"]
# Every weight kind with forward KL; every loss with no and per-position weights.
CASES = [
    (loss_name, reduction, weights)
    for loss_name in sorted(LOSSES)
    for reduction in REDUCTIONS
    for weights in ["none", "per_sample", "per_position"]
    if loss_name == "forward_kl" or weights != "per_sample"
]


@pytest.mark.parametrize("loss_name,reduction,weights", CASES)
def test_equals_dense_distiller_terms(batch, loss_name, reduction, weights):
    loss_fn = LOSSES[loss_name]()
    sample_weight = None if weights == "none" else batch[weights].astype("float32")
    value, grads, result = chunked(batch, loss_fn, sample_weight, reduction)
    want, want_grads, (student, distillation, logits) = dense(batch, loss_fn, sample_weight, reduction)
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(result.student_loss), float(student), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(result.distillation_loss), float(distillation), rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Accuracy over the labelled positions, as a weighted Keras metric.
    labels = batch["labels"]
    labelled = (labels >= 0) & batch["mask"] & batch["label_mask"]
    metric = keras.metrics.SparseCategoricalAccuracy()
    metric_weight = labelled.astype("float32")
    if sample_weight is not None:
        metric_weight = metric_weight * (sample_weight if sample_weight.ndim == 2 else sample_weight[:, None])
    metric.update_state(np.where(labelled, labels, 0), logits, sample_weight=metric_weight)
    np.testing.assert_allclose(float(result.accuracy), float(metric.result()), rtol=1e-6)
    mean = keras.metrics.Mean()
    mean.update_state(result.correct, result.metric_weights)
    np.testing.assert_allclose(float(mean.result()), float(metric.result()), rtol=1e-6)


def log_softmax64(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference64(batch, hidden, kernel, bias, sample_weight, reduction):
    """Float64 objective with forward KL, written from the definitions."""
    s = hidden @ kernel + bias
    t = batch["teacher_hidden"] @ batch["teacher_kernel"]
    labels = batch["labels"]
    labelled = (labels >= 0) & batch["mask"] & batch["label_mask"]
    present = (labels != IGNORE) & batch["mask"]
    ce = -np.take_along_axis(log_softmax64(s), np.where(labelled, labels, 0)[..., None], -1)[..., 0]
    log_p, log_q = log_softmax64(t / TEMPERATURE), log_softmax64(s / TEMPERATURE)
    kd = TEMPERATURE**2 * np.sum(np.exp(log_p) * (log_p - log_q), -1)
    w = np.ones((B, T)) if sample_weight is None else np.broadcast_to(
        sample_weight if sample_weight.ndim == 2 else sample_weight[:, None], (B, T))

    def reduce(values, m):
        total = np.sum(values * w * m)
        if reduction == "sum":
            return total
        if reduction == "mean_with_sample_weight":
            return total / np.sum(w * m)
        return total / np.sum(m)

    return ALPHA * reduce(ce, labelled) + (1 - ALPHA) * reduce(kd, present)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_values_and_gradients_match_float64_reference(batch, reduction):
    sample_weight = batch["per_position"]
    value, grads, _ = chunked(batch, divergences.ForwardKL(), sample_weight.astype("float32"), reduction, 4)
    arrays = params(batch)
    want = reference64(batch, *arrays, sample_weight, reduction)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    step = 1e-6
    for index, (got, array) in enumerate(zip(grads, arrays)):
        numeric = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            shifted = [[a.copy() for a in arrays] for _ in range(2)]
            shifted[0][index][position] += step
            shifted[1][index][position] -= step
            numeric[position] = (
                reference64(batch, *shifted[0], sample_weight, reduction)
                - reference64(batch, *shifted[1], sample_weight, reduction)
            ) / (2 * step)
        np.testing.assert_allclose(got, numeric, rtol=1e-5, atol=1e-6)


def test_unlabelled_batch_and_bad_student_loss(batch):
    hidden = batch["student_hidden"].astype("float32")
    head = LinearHead(batch["student_kernel"].astype("float32"))
    teacher = LinearHead(batch["teacher_kernel"].astype("float32"))
    result = chunked_objective(
        hidden, head, batch["teacher_hidden"].astype("float32"), teacher, labels=None,
        alpha=0.0, temperature=TEMPERATURE, chunk_size=4, training=False)
    assert float(result.student_loss) == 0.0
    np.testing.assert_allclose(float(result.loss), float(result.distillation_loss), rtol=1e-6)
    with pytest.raises(ValueError, match="sparse categorical cross-entropy"):
        chunked_objective(hidden, head, batch["teacher_hidden"], teacher, labels=batch["labels"],
                          student_loss_fn=keras.losses.MeanSquaredError())
    with pytest.raises(ValueError, match="from_logits=True"):
        chunked_objective(hidden, head, batch["teacher_hidden"], teacher, labels=batch["labels"],
                          student_loss_fn=keras.losses.SparseCategoricalCrossentropy())


def _top_k_cache(batch, k=4):
    """The teacher's top-k cache at TEMPERATURE, float32, per sample."""
    t = batch["teacher_hidden"] @ batch["teacher_kernel"]
    indices = np.argsort(-t, axis=-1)[..., :k]
    scaled = t / TEMPERATURE
    top = scaled.max(-1, keepdims=True)
    return {
        "indices": indices.astype("int32"),
        "values": np.take_along_axis(t, indices, -1).astype("float32"),
        "log_normalizer": (top + np.log(np.exp(scaled - top).sum(-1, keepdims=True)))[..., 0]
        .astype("float32"),
        "cache_temperature": np.full(B, TEMPERATURE, "float32"),
        "vocab_size": np.full(B, V, "int32"),
    }


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_top_k_cache_equals_dense_distiller_terms(batch, tail, reduction):
    """With a top-k cache: `StudentTerm` and `DistillationTerm` on the
    cache dict (`TopKKLDivergence.compute_top_k` on whole logits), with the
    masks, per-position weights and each reduction; values and gradients."""
    from keras_kd.distillation.top_k_loss import TopKKLDivergence

    cache = _top_k_cache(batch)
    loss_fn = TopKKLDivergence(tail=tail)
    sample_weight = batch["per_position"].astype("float32")
    student_loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=IGNORE, reduction=reduction)

    def fn(hidden, kernel, bias):
        result = chunked_objective(
            hidden, LinearHead(kernel, bias), labels=batch["labels"],
            sample_weight=sample_weight, mask=batch["mask"], label_mask=batch["label_mask"],
            student_loss_fn=student_loss_fn, distillation_loss_fn=loss_fn,
            temperature=TEMPERATURE, alpha=ALPHA, chunk_size=3, teacher_top_k=cache)
        return result.loss, result

    student_term = StudentTerm(student_loss_fn, default=False)
    distillation_term = DistillationTerm(loss_fn, TEMPERATURE)
    keras_mask = ops.convert_to_tensor(batch["mask"])

    def dense(hidden, kernel, bias):
        logits = ops.matmul(hidden, kernel) + bias
        student = student_term(batch["labels"], logits, sample_weight, keras_mask,
                               batch["label_mask"])
        _, _, present = student_term.masks(batch["labels"], logits, keras_mask)
        distillation = distillation_term(loss_fn, cache, logits, sample_weight, present,
                                         student_term.reduction(logits))
        return ALPHA * student + (1 - ALPHA) * distillation, (student, distillation)

    value, grads, result = float_value_and_gradients(fn, params(batch))
    want, want_grads, (student, distillation) = float_value_and_gradients(dense, params(batch))
    assert float(distillation) > 0.0
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(result.student_loss), float(student), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(result.distillation_loss), float(distillation), rtol=1e-5,
                               atol=1e-6)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
