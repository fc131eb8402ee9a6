"""`chunked_distillation_loss` against float64 NumPy references (values, and
gradients by central differences) and against the dense keras_kd losses on
materialised logits, for every divergence, with weights, padding labels,
soft-capping, tied heads and chunk sizes that do and do not divide N.

Backend-neutral: runs under `KERAS_BACKEND=tensorflow` and `jax`."""

import keras
import numpy as np
import pytest
from conftest import value_and_gradients
from keras import ops

from keras_kd.distillation import divergences
from keras_kd.distillation import losses
from keras_kd.distillation.chunked import LinearHead
from keras_kd.distillation.chunked import chunked_distillation_loss
from keras_kd.distillation.reduction import reduce_values

N, HS, HT, V = 7, 4, 5, 11
IGNORE = -100
TEMPERATURE = 2.0

# (id, loss factory, float64 reference D(p_teacher, p_student), scaled by T^2)
DIVERGENCES = [
    ("forward_kl", lambda: divergences.ForwardKL(), lambda p, q: kl64(p, q), True),
    ("kl_unscaled", lambda: losses.KLDivergenceWithTemperature(scale_by_temperature_squared=False), lambda p, q: kl64(p, q), False),
    ("cse", lambda: losses.SoftTargetCrossEntropy(), lambda p, q: -np.sum(p * np.log(q), -1), True),
    ("reverse_kl", lambda: divergences.ReverseKL(), lambda p, q: kl64(q, p), True),
    ("jsd_0.5", lambda: divergences.GeneralizedJSD(beta=0.5), lambda p, q: jsd64(p, q, 0.5), True),
    ("jsd_0.1", lambda: divergences.GeneralizedJSD(beta=0.1), lambda p, q: jsd64(p, q, 0.1), True),
    ("jsd_0", lambda: divergences.GeneralizedJSD(beta=0.0), lambda p, q: kl64(p, q), True),
    ("jsd_1", lambda: divergences.GeneralizedJSD(beta=1.0), lambda p, q: kl64(q, p), True),
    ("skew_kl", lambda: divergences.SkewKL(skew=0.1), lambda p, q: kl64(p, 0.1 * p + 0.9 * q), True),
    ("skew_reverse_kl", lambda: divergences.SkewReverseKL(skew=0.3), lambda p, q: kl64(q, 0.3 * q + 0.7 * p), True),
]
IDS = [d[0] for d in DIVERGENCES]


def kl64(p, q):
    return np.sum(p * np.log(p / q), axis=-1)


def jsd64(p, q, beta):
    m = beta * p + (1 - beta) * q
    return beta * kl64(p, m) + (1 - beta) * kl64(q, m)


def log_softmax64(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def cap64(z, cap):
    return z if cap is None else cap * np.tanh(z / cap)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, V, N)
    labels[[2, 5]] = IGNORE  # ignore_class positions
    weights = rng.uniform(0.5, 2.0, N)
    weights[[2, 5]] = 0.0
    weights[6] = 0.0  # a padding position with a real label
    return {
        "student_hidden": rng.normal(size=(N, HS)),
        "student_kernel": rng.normal(size=(HS, V)),
        "student_bias": rng.normal(size=(V,)),
        "teacher_hidden": rng.normal(size=(N, HT)),
        "teacher_kernel": 1.5 * rng.normal(size=(HT, V)),
        "teacher_bias": rng.normal(size=(V,)),
        "labels": labels,
        "weights": weights / weights.sum(),
        "distillation_weights": rng.uniform(0.0, 1.0, N) * (weights > 0) / 3,
    }


def reference(problem, reference_divergence, scaled, student=None, caps=(None, None), temperature=TEMPERATURE):
    """Float64 loss, per-position CE and divergence of the dense objective."""
    hidden, kernel, bias = student or (
        problem["student_hidden"], problem["student_kernel"], problem["student_bias"]
    )
    s = cap64(hidden @ kernel + bias, caps[0])
    t = cap64(problem["teacher_hidden"] @ problem["teacher_kernel"] + problem["teacher_bias"], caps[1])
    labels = problem["labels"]
    valid = (labels >= 0) & (labels < V)
    log_q1 = log_softmax64(s)
    ce = np.where(valid, -log_q1[np.arange(N), np.where(valid, labels, 0)], 0.0)
    p = np.exp(log_softmax64(t / temperature))
    q = np.exp(log_softmax64(s / temperature))
    kd = reference_divergence(p, q) * (temperature**2 if scaled else 1.0)
    loss = np.sum(problem["weights"] * ce) + np.sum(problem["distillation_weights"] * kd)
    return loss, ce, kd


def numeric_gradients(problem, reference_divergence, scaled, caps=(None, None), step=1e-5):
    """Central differences of the float64 loss w.r.t. hidden, kernel, bias."""
    params = [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    grads = []
    for index, param in enumerate(params):
        grad = np.zeros_like(param)
        for position in np.ndindex(param.shape):
            values = []
            for sign in (1.0, -1.0):
                shifted = [p.copy() for p in params]
                shifted[index][position] += sign * step
                values.append(reference(problem, reference_divergence, scaled, shifted, caps)[0])
            grad[position] = (values[0] - values[1]) / (2 * step)
        grads.append(grad)
    return grads


def run_chunked(problem, loss, chunk_size, caps=(None, None), training=True, transposed=False,
                compiled=True):
    def fn(hidden, kernel, bias):
        head = LinearHead(
            ops.transpose(kernel) if transposed else kernel,
            bias=bias,
            transposed=transposed,
            soft_cap=caps[0],
        )
        teacher = LinearHead(
            np.asarray(problem["teacher_kernel"], "float32"),
            bias=np.asarray(problem["teacher_bias"], "float32"),
            soft_cap=caps[1],
        )
        terms = chunked_distillation_loss(
            hidden,
            head,
            np.asarray(problem["teacher_hidden"], "float32"),
            teacher,
            problem["labels"],
            np.asarray(problem["weights"], "float32"),
            distillation_weights=np.asarray(problem["distillation_weights"], "float32"),
            divergence=loss,
            temperature=TEMPERATURE,
            chunk_size=chunk_size,
            training=training,
        )
        return terms.loss, terms

    value, grads, terms = value_and_gradients(
        fn, [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]],
        compiled=compiled,
    )
    return float(value), grads, terms


@pytest.mark.parametrize("chunk_size", [3, 7, 16])
@pytest.mark.parametrize("name,make_loss,reference_divergence,scaled", DIVERGENCES, ids=IDS)
def test_values_and_gradients_match_float64_reference(
    problem, name, make_loss, reference_divergence, scaled, chunk_size
):
    loss, ce, kd = reference(problem, reference_divergence, scaled)
    value, grads, terms = run_chunked(problem, make_loss(), chunk_size)
    np.testing.assert_allclose(value, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(terms.cross_entropy), ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(terms.distillation), kd, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, numeric_gradients(problem, reference_divergence, scaled)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,make_loss,reference_divergence,scaled", DIVERGENCES[:5], ids=IDS[:5])
def test_equals_dense_keras_kd_losses(problem, name, make_loss, reference_divergence, scaled):
    """Values and gradients equal the dense loss on materialised logits."""
    loss = make_loss()
    labels = problem["labels"]
    valid = (labels >= 0) & (labels < V)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def dense(hidden, kernel, bias):
        student = ops.matmul(hidden, kernel) + bias
        teacher = ops.convert_to_tensor(
            (problem["teacher_hidden"] @ problem["teacher_kernel"] + problem["teacher_bias"]).astype("float32")
        )
        kd = loss.compute_per_sample(teacher, student, TEMPERATURE)
        ce = cross_entropy(np.where(valid, labels, 0), student)
        total = ops.sum(problem["weights"].astype("float32") * ce) + ops.sum(
            problem["distillation_weights"].astype("float32") * kd
        )
        return total, (ce, kd)

    want, want_grads, dense_values = value_and_gradients(
        dense, [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    )
    value, grads, terms = run_chunked(problem, loss, chunk_size=4)
    np.testing.assert_allclose(value, float(want), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(terms.cross_entropy), np.where(valid, np.asarray(dense_values[0]), 0.0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(np.asarray(terms.distillation), np.asarray(dense_values[1]), rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["forward_kl", "jsd_0.5"])
def test_soft_capping_and_tied_head(problem, name):
    """Gemma's `cap * tanh(logits / cap)` on both heads; the student's head
    given as a `(vocab, hidden)` tied embedding (`transposed=True`)."""
    _, make_loss, reference_divergence, scaled = DIVERGENCES[IDS.index(name)]
    caps = (2.5, 4.0)
    loss, _, kd = reference(problem, reference_divergence, scaled, caps=caps)
    value, grads, terms = run_chunked(problem, make_loss(), 3, caps=caps, transposed=True)
    np.testing.assert_allclose(value, loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms.distillation), kd, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, numeric_gradients(problem, reference_divergence, scaled, caps=caps)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_chunk_of_one_correct_and_teacher_terms(problem):
    _, make_loss, reference_divergence, scaled = DIVERGENCES[0]
    _, _, terms = run_chunked(problem, make_loss(), chunk_size=1)
    labels = problem["labels"]
    valid = (labels >= 0) & (labels < V)
    s = problem["student_hidden"] @ problem["student_kernel"] + problem["student_bias"]
    t = problem["teacher_hidden"] @ problem["teacher_kernel"] + problem["teacher_bias"]
    np.testing.assert_array_equal(
        np.asarray(terms.correct), (valid & (s.argmax(-1) == labels)).astype("float32")
    )
    teacher_ce = np.where(valid, -log_softmax64(t)[np.arange(N), np.where(valid, labels, 0)], 0.0)
    np.testing.assert_allclose(np.asarray(terms.teacher_cross_entropy), teacher_ce, rtol=1e-5, atol=1e-6)
    _, ce, kd = reference(problem, reference_divergence, scaled)
    np.testing.assert_allclose(np.asarray(terms.distillation), kd, rtol=1e-5, atol=1e-6)


def test_evaluation_mode_gives_the_same_values(problem):
    loss = divergences.GeneralizedJSD(beta=0.5)
    value, _, train_terms = run_chunked(problem, loss, chunk_size=3)
    eval_terms = chunked_distillation_loss(
        problem["student_hidden"].astype("float32"),
        LinearHead(problem["student_kernel"].astype("float32"), problem["student_bias"].astype("float32")),
        problem["teacher_hidden"].astype("float32"),
        LinearHead(problem["teacher_kernel"].astype("float32"), problem["teacher_bias"].astype("float32")),
        problem["labels"],
        problem["weights"].astype("float32"),
        distillation_weights=problem["distillation_weights"].astype("float32"),
        divergence=loss,
        temperature=TEMPERATURE,
        chunk_size=3,
        training=False,
    )
    assert float(eval_terms.loss) == pytest.approx(value, rel=1e-6)
    for got, want in zip(eval_terms, train_terms):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_weights_fold_a_keras_reduction(problem, reduction):
    """`weights = w / count` or `w / sum(w)` makes `loss` what
    `reduce_values` gives for each term, with a mask and sample weights."""
    rng = np.random.default_rng(3)
    sample_weight = rng.uniform(0.5, 2.0, N).astype("float32")
    mask = problem["labels"] >= 0
    denominator = mask.sum() if reduction == "sum_over_batch_size" else (sample_weight * mask).sum()
    w = (sample_weight * mask / denominator).astype("float32")
    alpha = 0.3
    terms = chunked_distillation_loss(
        problem["student_hidden"].astype("float32"),
        LinearHead(problem["student_kernel"].astype("float32")),
        problem["teacher_hidden"].astype("float32"),
        LinearHead(problem["teacher_kernel"].astype("float32")),
        problem["labels"],
        alpha * w,
        distillation_weights=(1 - alpha) * w,
        divergence="reverse_kl",
        temperature=TEMPERATURE,
        chunk_size=2,
        training=False,
    )
    want = alpha * reduce_values(
        terms.cross_entropy, sample_weight, mask, reduction
    ) + (1 - alpha) * reduce_values(terms.distillation, sample_weight, mask, reduction)
    np.testing.assert_allclose(float(terms.loss), float(want), rtol=1e-6)


def test_gradient_scales_with_upstream(problem):
    """Only `loss` carries a gradient, scaled by the caller's upstream."""
    loss = divergences.SkewKL(skew=0.1)
    _, grads, _ = run_chunked(problem, loss, chunk_size=5)
    head_teacher = LinearHead(problem["teacher_kernel"].astype("float32"), problem["teacher_bias"].astype("float32"))

    def scaled(hidden, kernel, bias):
        terms = chunked_distillation_loss(
            hidden, LinearHead(kernel, bias), problem["teacher_hidden"].astype("float32"), head_teacher,
            problem["labels"], problem["weights"].astype("float32"),
            distillation_weights=problem["distillation_weights"].astype("float32"),
            divergence=loss, temperature=TEMPERATURE, chunk_size=5,
        )
        # The per-position outputs are constants: they add no gradient.
        return -3.0 * terms.loss + ops.sum(terms.distillation) + ops.sum(terms.cross_entropy), ()

    _, scaled_grads, _ = value_and_gradients(
        scaled, [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    )
    for got, want in zip(scaled_grads, grads):
        np.testing.assert_allclose(got, -3.0 * want, rtol=1e-5, atol=1e-7)


def test_compiled_step_with_unknown_positions(problem):
    """Inside `tf.function` with an unknown number of positions (TF) or
    `jax.jit` (JAX), values and gradients equal the eager ones."""
    loss = divergences.GeneralizedJSD(beta=0.5)
    eager_value, eager_grads, _ = run_chunked(problem, loss, chunk_size=3, compiled=False)
    teacher = LinearHead(problem["teacher_kernel"].astype("float32"), problem["teacher_bias"].astype("float32"))

    def step(hidden, kernel, bias, teacher_hidden, labels, weights, distillation_weights):
        return chunked_distillation_loss(
            hidden, LinearHead(kernel, bias), teacher_hidden, teacher, labels, weights,
            distillation_weights=distillation_weights, divergence=loss,
            temperature=TEMPERATURE, chunk_size=3,
        ).loss

    data = [
        problem["teacher_hidden"].astype("float32"),
        problem["labels"].astype("int32"),
        problem["weights"].astype("float32"),
        problem["distillation_weights"].astype("float32"),
    ]
    params = [problem[k].astype("float32") for k in ("student_hidden", "student_kernel", "student_bias")]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, HS)), tf.TensorSpec((HS, V)), tf.TensorSpec((V,)),
                tf.TensorSpec((None, HT)), tf.TensorSpec((None,), tf.int32),
                tf.TensorSpec((None,)), tf.TensorSpec((None,)),
            ]
        )
        def compiled(*arguments):
            with tf.GradientTape() as tape:
                tape.watch(arguments[:3])
                value = step(*arguments)
            return value, tape.gradient(value, arguments[:3])

        value, grads = compiled(*params, *data)
    elif keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(jax.value_and_grad(step, argnums=(0, 1, 2)))
        value, grads = compiled(*params, *data)
    else:
        pytest.skip("compiled step for TF and JAX only")
    np.testing.assert_allclose(float(value), eager_value, rtol=1e-6)
    for got, want in zip(grads, eager_grads):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, "8", True, None])
def test_bad_chunk_size_is_refused(problem, chunk_size):
    head = LinearHead(problem["student_kernel"].astype("float32"))
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive integer") as info:
        chunked_distillation_loss(
            problem["student_hidden"].astype("float32"), head,
            problem["student_hidden"].astype("float32"), head,
            problem["labels"], problem["weights"], chunk_size=chunk_size,
        )
    assert f"chunk_size={chunk_size!r}" in str(info.value)
    assert "chunk_size=1024" in str(info.value)


def test_mismatched_heads_and_unsupported_losses_are_refused(problem):
    hidden = problem["student_hidden"].astype("float32")
    head = LinearHead(problem["student_kernel"].astype("float32"))
    other = LinearHead(np.zeros((HS, V + 1), "float32"))
    arguments = (problem["labels"], problem["weights"])
    with pytest.raises(ValueError, match="share a vocabulary.*11.*12"):
        chunked_distillation_loss(hidden, head, hidden, other, *arguments)
    with pytest.raises(ValueError, match=r"`teacher_hidden` must be `\(positions, 4\)`"):
        chunked_distillation_loss(hidden, head, np.zeros((N, 3), "float32"), head, *arguments)
    with pytest.raises(ValueError, match="chunked path computes forward KL"):
        chunked_distillation_loss(hidden, head, hidden, head, *arguments, divergence="mse")
    with pytest.raises(ValueError, match="`soft_cap` must be None or a positive"):
        LinearHead(problem["student_kernel"], soft_cap=0)


def test_head_from_layers():
    """`LinearHead.from_layer` reads a Dense and a tied / untied, soft-capped
    ReversibleEmbedding as their own calls compute logits."""
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(3, 4)).astype("float32")
    dense = keras.layers.Dense(6)
    dense.build((None, 4))
    for tie in (True, False):
        embedding = keras.layers.ReversibleEmbedding(6, 4, tie_weights=tie, logit_soft_cap=3.0)
        embedding.build((None,))
        if not tie:
            embedding.reverse_embeddings.assign(rng.normal(size=(4, 6)))
        head = LinearHead.from_layer(embedding)
        np.testing.assert_allclose(
            np.asarray(_cap(head.logits(hidden), head.soft_cap)),
            np.asarray(embedding(hidden, reverse=True)),
            rtol=1e-6,
        )
    head = LinearHead.from_layer(dense)
    np.testing.assert_allclose(np.asarray(head.logits(hidden)), np.asarray(dense(hidden)), rtol=1e-6)
    with pytest.raises(ValueError, match="needs the output head"):
        LinearHead.from_layer(keras.layers.ReLU())


def _cap(logits, cap):
    return logits if cap is None else ops.tanh(logits / cap) * cap


# ---------------------------------------------------------------------------
# A top-k teacher cache (`teacher_top_k`) in place of the teacher's hidden
# states, and no teacher at all (the Distiller's evaluate).

K = 4
CACHE_TEMPERATURE = 2.0


def top_k_cache(problem, k=K, temperature=CACHE_TEMPERATURE):
    """The teacher's top-k cache of the problem, float64, as `top_k_logits`
    writes it; `cache_temperature` per position as `top_k_dataset` gives."""
    t = problem["teacher_hidden"] @ problem["teacher_kernel"] + problem["teacher_bias"]
    indices = np.argsort(-t, axis=-1)[:, :k]
    values = np.take_along_axis(t, indices, -1)
    scaled = t / temperature
    top = scaled.max(-1, keepdims=True)
    log_normalizer = (top + np.log(np.exp(scaled - top).sum(-1, keepdims=True)))[:, 0]
    return {"indices": indices.astype("int32"), "values": values,
            "log_normalizer": log_normalizer, "cache_temperature": np.full(N, temperature),
            "vocab_size": np.full(N, V, "int32")}


def top_k_reference(problem, cache, tail, temperature, student=None):
    """Float64 loss and per-position top-k KL (T**2 included), from the
    definitions in `top_k_kl_divergence`'s docstring."""
    hidden, kernel, bias = student or (
        problem["student_hidden"], problem["student_kernel"], problem["student_bias"])
    s = hidden @ kernel + bias
    labels = problem["labels"]
    valid = (labels >= 0) & (labels < V)
    ce = np.where(valid, -log_softmax64(s)[np.arange(N), np.where(valid, labels, 0)], 0.0)
    indices, values = cache["indices"], cache["values"]
    if tail == "renormalize":
        log_p = log_softmax64(values / temperature)
        log_q = log_softmax64(np.take_along_axis(s, indices, -1) / temperature)
        kl = np.sum(np.exp(log_p) * (log_p - log_q), -1)
    else:
        p = np.exp(values / temperature - cache["log_normalizer"][:, None])
        q = np.take_along_axis(np.exp(log_softmax64(s / temperature)), indices, -1)
        p_tail, q_tail = 1.0 - p.sum(-1), 1.0 - q.sum(-1)
        kl = np.sum(p * np.log(p / q), -1) + p_tail * np.log(p_tail / q_tail)
    kd = temperature**2 * kl
    loss = np.sum(problem["weights"] * ce) + np.sum(problem["distillation_weights"] * kd)
    return loss, ce, kd


def run_top_k(problem, cache, loss, temperature, chunk_size, dtype="float32", training=True):
    def fn(hidden, kernel, bias):
        terms = chunked_distillation_loss(
            hidden, LinearHead(kernel, bias), None, None,
            problem["labels"], np.asarray(problem["weights"], dtype),
            distillation_weights=np.asarray(problem["distillation_weights"], dtype),
            divergence=loss, temperature=temperature, chunk_size=chunk_size,
            training=training, teacher_top_k=cache,
        )
        return terms.loss, terms

    value, grads, terms = value_and_gradients(
        fn, [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]], dtype)
    return float(value), grads, terms


# (tail, temperature): "bin" at the cache's temperature (the only one it
# takes), "renormalize" at another.
TOP_K_CASES = [("bin", CACHE_TEMPERATURE), ("renormalize", 3.0)]


@pytest.mark.parametrize("chunk_size", [3, 16])
@pytest.mark.parametrize("tail,temperature", TOP_K_CASES)
def test_top_k_cache_matches_float64_reference(problem, tail, temperature, chunk_size):
    """Values, and gradients by central differences of the float64
    definition, in float32 (what a Distiller computes)."""
    cache = {key: (value.astype("float32") if value.dtype == np.float64 else value)
             for key, value in top_k_cache(problem).items()}
    loss = losses.get_distillation_loss(None)  # Not a TopKKLDivergence: refused.
    with pytest.raises(ValueError, match="`divergence` must be a `TopKKLDivergence`"):
        run_top_k(problem, cache, loss, temperature, chunk_size)
    from keras_kd.distillation.top_k_loss import TopKKLDivergence

    want, ce, kd = top_k_reference(problem, top_k_cache(problem), tail, temperature)
    value, grads, terms = run_top_k(problem, cache, TopKKLDivergence(tail=tail), temperature,
                                    chunk_size)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms.cross_entropy), ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(terms.distillation), kd, rtol=1e-5, atol=1e-6)
    assert terms.teacher_cross_entropy is None
    params = [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    step = 1e-6
    for index, (got, array) in enumerate(zip(grads, params)):
        numeric = np.zeros_like(array)
        for position in np.ndindex(array.shape):
            shifted = [[a.copy() for a in params] for _ in range(2)]
            shifted[0][index][position] += step
            shifted[1][index][position] -= step
            numeric[position] = (
                top_k_reference(problem, top_k_cache(problem), tail, temperature, shifted[0])[0]
                - top_k_reference(problem, top_k_cache(problem), tail, temperature, shifted[1])[0]
            ) / (2 * step)
        np.testing.assert_allclose(got, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [K, V])
@pytest.mark.parametrize("tail,temperature", TOP_K_CASES)
def test_top_k_cache_equals_dense_top_k_loss_in_float64(problem, tail, temperature, k):
    """Float64 throughout: the chunked values and gradients are those of
    `top_k_kl_divergence` on materialised logits (autodiff), to 1e-10; with
    k = vocab (no tail: the clamped branch) too."""
    from keras_kd.distillation.top_k_loss import TopKKLDivergence
    from keras_kd.distillation.top_k_loss import top_k_kl_divergence

    cache = top_k_cache(problem, k=k)
    labels = problem["labels"]
    valid = (labels >= 0) & (labels < V)

    def dense(hidden, kernel, bias):
        logits = ops.matmul(hidden, kernel) + bias
        kd = top_k_kl_divergence(
            cache["indices"], cache["values"], cache["log_normalizer"], logits, temperature,
            tail=tail, cache_temperature=CACHE_TEMPERATURE, precision="float64")
        log_q = ops.log_softmax(logits, axis=-1)
        picked = ops.take_along_axis(log_q, np.where(valid, labels, 0)[:, None], axis=-1)[:, 0]
        ce = ops.where(valid, -picked, 0.0)
        total = ops.sum(problem["weights"] * ce) + ops.sum(problem["distillation_weights"] * kd)
        return total, (ce, kd)

    params = [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    want, want_grads, (ce, kd) = value_and_gradients(dense, params, "float64")
    value, grads, terms = run_top_k(
        problem, cache, TopKKLDivergence(tail=tail, precision="float64"), temperature, 3,
        dtype="float64")
    np.testing.assert_allclose(value, float(want), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(terms.distillation), np.asarray(kd), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(terms.cross_entropy), np.asarray(ce), rtol=1e-10, atol=1e-12)
    for got, expected in zip(grads, want_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # Evaluation mode: the same values.
    _, _, evaluated = run_top_k(
        problem, cache, TopKKLDivergence(tail=tail, precision="float64"), temperature, 3,
        dtype="float64", training=False)
    np.testing.assert_allclose(np.asarray(evaluated.distillation), np.asarray(terms.distillation),
                               rtol=1e-12)


def test_top_k_cache_checks_as_the_dense_loss(problem):
    """The dense loss's refusals: a tail="bin" temperature other than the
    cache's, a cache of another vocabulary, a cache without a temperature."""
    from keras_kd.distillation.top_k_loss import TopKKLDivergence

    cache = {key: (value.astype("float32") if value.dtype == np.float64 else value)
             for key, value in top_k_cache(problem).items()}
    with pytest.raises(ValueError, match=r"cache_temperature=2\.0.*Received: temperature=3\.0"):
        run_top_k(problem, cache, TopKKLDivergence(), 3.0, 4)
    with pytest.raises(ValueError, match="vocabulary of 12 ids.*11 logits"):
        run_top_k(problem, {**cache, "vocab_size": np.full(N, V + 1)}, TopKKLDivergence(),
                  CACHE_TEMPERATURE, 4)
    bare = {key: cache[key] for key in ("indices", "values", "log_normalizer")}
    with pytest.raises(ValueError, match="carry no `cache_temperature`"):
        run_top_k(problem, bare, TopKKLDivergence(), CACHE_TEMPERATURE, 4)
    # Told the cache's temperature, hand-made rows are taken.
    run_top_k(problem, bare, TopKKLDivergence(cache_temperature=CACHE_TEMPERATURE),
              CACHE_TEMPERATURE, 4)


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_without_a_teacher_the_student_cross_entropy_alone(problem, chunk_size):
    """`teacher_hidden`, `teacher_head` and `teacher_top_k` all None (the
    Distiller's evaluate): the loss is `sum(weights * ce)`, its gradient the
    cross-entropy's, the divergence 0."""

    def fn(hidden, kernel, bias):
        terms = chunked_distillation_loss(
            hidden, LinearHead(kernel, bias), None, None, problem["labels"],
            np.asarray(problem["weights"], "float32"),
            distillation_weights=np.asarray(problem["distillation_weights"], "float32"),
            divergence="not a loss: unread", chunk_size=chunk_size)
        return terms.loss, terms

    params = [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    value, grads, terms = value_and_gradients(fn, params)
    alone = {**problem, "distillation_weights": np.zeros(N)}
    want, ce, _ = reference(alone, DIVERGENCES[0][2], True)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(terms.cross_entropy), ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(terms.distillation), np.zeros(N))
    assert terms.teacher_cross_entropy is None
    head = LinearHead(problem["student_kernel"].astype("float32"))
    with pytest.raises(ValueError, match="`teacher_hidden` and `teacher_head` together"):
        chunked_distillation_loss(problem["student_hidden"].astype("float32"), head, None, head,
                                  problem["labels"], problem["weights"])
    for got, expected in zip(grads, numeric_gradients(alone, DIVERGENCES[0][2], True)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)



def _teacher_metric_run(problem, dtype, chunk_size, caps, training, with_divergence=True,
                        metrics=True):
    """`chunked_distillation_loss` with `teacher_metrics` (TeacherKL and
    TeacherAgreement in `dtype`; none with `metrics=False`)."""
    from keras_kd import TeacherAgreement
    from keras_kd import TeacherKL

    metrics = [TeacherKL(dtype=dtype), TeacherAgreement(dtype=dtype)] if metrics else ()

    def fn(hidden, kernel, bias):
        teacher = LinearHead(np.asarray(problem["teacher_kernel"], dtype),
                             bias=np.asarray(problem["teacher_bias"], dtype), soft_cap=caps[1])
        terms = chunked_distillation_loss(
            hidden, LinearHead(kernel, bias, soft_cap=caps[0]),
            np.asarray(problem["teacher_hidden"], dtype), teacher, problem["labels"],
            np.asarray(problem["weights"], dtype),
            distillation_weights=np.asarray(problem["distillation_weights"], dtype),
            divergence=divergences.GeneralizedJSD(beta=0.5, precision=dtype),
            temperature=TEMPERATURE, chunk_size=chunk_size, training=training,
            teacher_metrics=metrics, with_divergence=with_divergence)
        return terms.loss, terms

    params = [problem["student_hidden"], problem["student_kernel"], problem["student_bias"]]
    if not training:  # No gradient to take.
        value, terms = fn(*(np.asarray(p, dtype) for p in params))
        return float(value), None, terms
    value, grads, terms = value_and_gradients(fn, params, dtype)
    return float(value), grads, terms


def _teacher_metrics64(problem, caps):
    """Float64 `KL(softmax(t) || softmax(s))` at T = 1 and argmax agreement,
    per position."""
    s = cap64(problem["student_hidden"] @ problem["student_kernel"] + problem["student_bias"],
              caps[0])
    t = cap64(problem["teacher_hidden"] @ problem["teacher_kernel"] + problem["teacher_bias"],
              caps[1])
    log_p, log_q = log_softmax64(t), log_softmax64(s)
    return np.sum(np.exp(log_p) * (log_p - log_q), -1), (t.argmax(-1) == s.argmax(-1)) * 1.0


@pytest.mark.parametrize("chunk_size", [3, 16])
@pytest.mark.parametrize("caps", [(None, None), (2.5, 4.0)])
def test_teacher_metrics_per_position_match_float64_reference(problem, chunk_size, caps):
    """`teacher_metrics`: each chunk's TeacherKL (T = 1, whatever the
    divergence's temperature) and TeacherAgreement, per position, within
    1e-12 of the float64 definitions in float64 (1e-5 in float32); the loss
    and its gradients are those without the metrics; `with_divergence=False`
    (evaluate) gives the same metric values and a divergence of 0."""
    # A teacher near the student (its states and kernel plus one more
    # column), so that they agree at some positions and not at others.
    rng = np.random.default_rng(3)
    problem = {
        **problem,
        "teacher_hidden": np.concatenate([problem["student_hidden"], rng.normal(size=(N, 1))], 1),
        "teacher_kernel": np.concatenate(
            [1.3 * problem["student_kernel"], 1.5 * rng.normal(size=(1, V))], 0),
        "teacher_bias": problem["student_bias"],
    }
    kl, agreement = _teacher_metrics64(problem, caps)
    assert 0.0 < agreement.mean() < 1.0 and kl.min() > 1e-3
    for dtype, rtol in (("float64", 1e-12), ("float32", 1e-5)):
        value, grads, terms = _teacher_metric_run(problem, dtype, chunk_size, caps, True)
        got_kl, got_agreement = (np.asarray(v) for v in terms.teacher_metrics)
        assert got_kl.dtype == np.dtype(dtype) and got_kl.shape == (N,)
        np.testing.assert_allclose(got_kl, kl, rtol=rtol, atol=rtol * 1e-2)
        np.testing.assert_array_equal(got_agreement, agreement)
        bare_value, bare_grads, bare = _teacher_metric_run(problem, dtype, chunk_size, caps, True,
                                                           metrics=False)
        assert bare.teacher_metrics == ()
        np.testing.assert_allclose(value, bare_value, rtol=rtol)
        for got, want in zip(grads, bare_grads):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)
        _, _, evaluated = _teacher_metric_run(problem, dtype, chunk_size, caps, False,
                                              with_divergence=False)
        np.testing.assert_array_equal(np.asarray(evaluated.distillation), np.zeros(N))
        np.testing.assert_allclose(np.asarray(evaluated.cross_entropy),
                                   np.asarray(terms.cross_entropy), rtol=rtol)
        for got, want in zip(evaluated.teacher_metrics, terms.teacher_metrics):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol)


def test_teacher_metrics_need_the_teacher_states(problem):
    from keras_kd import TeacherKL

    cache = {key: (value.astype("float32") if value.dtype == np.float64 else value)
             for key, value in top_k_cache(problem).items()}
    head = LinearHead(problem["student_kernel"].astype("float32"))
    hidden = problem["student_hidden"].astype("float32")
    with pytest.raises(ValueError, match="top-k cache.*top k logits.*teacher_metrics=.*TeacherKL"):
        chunked_distillation_loss(hidden, head, None, None, problem["labels"], problem["weights"],
                                  teacher_top_k=cache, teacher_metrics=[TeacherKL()])
    with pytest.raises(ValueError, match="need `teacher_hidden` and `teacher_head`; none"):
        chunked_distillation_loss(hidden, head, None, None, problem["labels"], problem["weights"],
                                  teacher_metrics=[TeacherKL()])
