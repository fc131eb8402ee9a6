"""The Distiller's chunked path (`compile(chunk_size=...)`): fit gives the
dense path's losses, logs and weights, on KerasHub causal LMs and a
Functional model with a `Dense` head; and its refusals."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller

VOCAB, TIME, BATCH = 37, 6, 4


def _functional(width, seed, name, mask_zero=False):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((TIME,), dtype="int32")
    # Unit-scale embeddings: the models disagree, so the divergence is far
    # from 0 (a tiny KL is float32 cancellation noise on either path).
    x = keras.layers.Embedding(
        VOCAB, width, mask_zero=mask_zero,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))(tokens)
    x = keras.layers.Dense(width, activation="tanh")(x)
    logits = keras.layers.Dense(VOCAB, name="lm_head")(x)
    return keras.Model(tokens, logits, name=name)


def _data(seed=0, padded=True):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (BATCH, TIME)).astype("int32")
    labels = rng.integers(0, VOCAB, (BATCH, TIME)).astype("int32")
    weights = rng.uniform(0.5, 2.0, (BATCH, TIME)).astype("float32")
    if padded:  # The last positions of two rows are padding.
        weights[0, -2:] = 0.0
        weights[2, -3:] = 0.0
        labels[1, 0] = -1  # keras_kd.UNLABELLED: distillation term only.
    return tokens, labels, weights


# The dense path is the reference the chunked path is held to: it runs
# eagerly (no tf.function to trace, the bulk of a fit's time here). Its traced
# path has its own tests (test_distiller.py, test_metrics.py, test_top_k.py),
# and a bug of the traced step that both paths shared shows here as a
# difference from the eager reference. `chunked_eagerly=True` runs the
# chunked path eagerly too, in cases whose traced path another test covers
# (named there). (Eagerly, shapes are static and TensorFlow's
# `tf.custom_gradient` takes another route:
# test_run_eagerly_trains_as_the_dense_path.) On TensorFlow only: on JAX
# a step run eagerly dispatches op by op and costs more than its jit
# compile.
EAGER_IS_CHEAP = keras.backend.backend() == "tensorflow"


def _fit(make_models, chunk_size, alpha, reduction, ignore_class=None, epochs=2, data=None,
         chunked_eagerly=False):
    """Logs, the student's weights before and its weights after `fit`."""
    student, teacher = make_models()
    initial = [np.array(keras.ops.convert_to_numpy(v)) for v in student.trainable_variables]
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        run_eagerly=EAGER_IS_CHEAP and (chunk_size is None or chunked_eagerly),
        # "sum" gives ~20x the gradient: a smaller step keeps float32 noise small.
        optimizer=keras.optimizers.SGD(0.05 if reduction == "sum" else 0.5),
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=reduction, ignore_class=ignore_class),
        alpha=alpha, temperature=2.0, chunk_size=chunk_size,
        # Computed from the chunks' hits on the chunked path.
        metrics=["accuracy"],
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="weighted_acc")])
    tokens, labels, weights = (data or _data)()
    assert (distiller.chunked is None) == (chunk_size is None)
    history = distiller.fit(tokens, labels, sample_weight=weights, batch_size=2,
                            epochs=epochs, shuffle=False, verbose=0)
    return history.history, initial, [v.numpy() if hasattr(v, "numpy") else np.asarray(v)
                                      for v in student.trainable_variables]


def _assert_same(make_models, alpha, reduction, ignore_class=None, data=None,
                 chunked_eagerly=False):
    # Eagerly, one epoch (two steps) holds the second step's weights too.
    epochs = 1 if chunked_eagerly and EAGER_IS_CHEAP else 2
    dense_logs, initial, dense_weights = _fit(make_models, None, alpha, reduction, ignore_class,
                                              epochs, data)
    chunked_logs, _, chunked_weights = _fit(make_models, 5, alpha, reduction, ignore_class,
                                            epochs, data, chunked_eagerly)
    assert set(chunked_logs) == set(dense_logs)
    assert {"accuracy", "weighted_acc"} <= set(dense_logs)
    for key in dense_logs:
        np.testing.assert_allclose(chunked_logs[key], dense_logs[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    moved = False
    for chunked, dense in zip(chunked_weights, dense_weights):
        np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-6)
    for before, after in zip(initial, dense_weights):
        moved = moved or not np.allclose(before, after)
    assert moved  # The comparison is of trained weights.


def _functional_pair():
    return _functional(8, 1, "student"), _functional(12, 2, "teacher")


@pytest.mark.parametrize("alpha,reduction,ignore_class,chunked_eagerly", [
    (0.3, "sum_over_batch_size", None, False),
    # Traced: "sum" with `ignore_class` in test_top_k_cache_matches_dense_in_float64
    # (the same student term) and test_keras_mask_matches_dense ("sum").
    (0.3, "sum", 3, True),
    # Traced: alpha = 1 without teacher metrics, the one case whose step
    # skips the teacher and logs the distillation term as not computed
    # (with teacher metrics the teacher always runs).
    (1.0, "sum_over_batch_size", 3, False),
])
def test_functional_dense_head_matches_dense(alpha, reduction, ignore_class, chunked_eagerly):
    _assert_same(_functional_pair, alpha, reduction, ignore_class,
                 chunked_eagerly=chunked_eagerly)


def test_keras_mask_matches_dense():
    _assert_same(lambda: (_functional(8, 1, "student", mask_zero=True),
                          _functional(12, 2, "teacher", mask_zero=True)), 0.5, "sum", None)


def _hub_pair(kind):
    keras_hub = pytest.importorskip("keras_hub")

    def make():
        models = []
        for seed, width in ((1, 8), (2, 16)):
            keras.utils.set_random_seed(seed)
            if kind == "gpt2":
                backbone = keras_hub.models.GPT2Backbone(
                    vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=width,
                    intermediate_dim=2 * width, max_sequence_length=TIME)
                models.append(keras_hub.models.GPT2CausalLM(backbone=backbone))
            elif kind == "llama":
                backbone = keras_hub.models.LlamaBackbone(
                    vocabulary_size=VOCAB, num_layers=1, num_query_heads=2,
                    num_key_value_heads=1, hidden_dim=width, intermediate_dim=2 * width)
                models.append(keras_hub.models.LlamaCausalLM(backbone=backbone))
            else:  # Gemma 2 style: final_logit_soft_cap on the tied embedding.
                backbone = keras_hub.models.GemmaBackbone(
                    vocabulary_size=VOCAB, num_layers=1, num_query_heads=2,
                    num_key_value_heads=1, hidden_dim=width, intermediate_dim=2 * width,
                    head_dim=width // 2, final_logit_soft_cap=1.5,
                    attention_logit_soft_cap=50.0, use_post_ffw_norm=True,
                    use_post_attention_norm=True, query_head_dim_normalize=True)
                models.append(keras_hub.models.GemmaCausalLM(backbone=backbone))
        return models[0], models[1]

    return make


def _hub_data():
    tokens, labels, weights = _data()
    return {"token_ids": tokens, "padding_mask": weights > 0}, labels, weights


@pytest.mark.parametrize("kind,alpha,reduction,chunked_eagerly", [
    # `LinearHead.from_layer` runs in the step and builds each head's ops:
    # llama's (untied `reverse_embeddings`, the hard term at alpha 0.4) and
    # gemma's (tied, with a soft cap) are traced; gpt2's is tied like
    # gemma's without the cap, and runs eagerly.
    ("gpt2", 0.4, "sum_over_batch_size", True),
    ("llama", 0.4, "sum", False),
    ("gemma", 0.0, "sum_over_batch_size", False),
])
def test_keras_hub_causal_lm_matches_dense(kind, alpha, reduction, chunked_eagerly):
    _assert_same(_hub_pair(kind), alpha, reduction, data=_hub_data,
                 chunked_eagerly=chunked_eagerly)


def test_gemma_head_has_soft_cap():
    from keras_kd.distillation.chunked import LinearHead
    from keras_kd.distillation.chunked_models import model_head

    student, _ = _hub_pair("gemma")()
    head = LinearHead.from_layer(model_head(student).layer)
    assert head.soft_cap == 1.5 and head.transposed


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True, "8"])
def test_bad_chunk_size(chunk_size):
    student, teacher = _functional_pair()
    with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
        Distiller(student=student, teacher=teacher).compile(chunk_size=chunk_size)


@pytest.mark.parametrize("heads", [{"student_head": "lm_head"}, {"teacher_head": "lm_head"}])
def test_head_names_without_chunk_size_refused(heads):
    """Accepted silently before (read-only review), where write_top_k_cache
    refuses `teacher_head` without `chunk_size`."""
    student, teacher = _functional_pair()
    with pytest.raises(ValueError, match=r"need `chunk_size`.*chunk_size=None.*chunk_size=1024"):
        Distiller(student=student, teacher=teacher).compile(**heads)


def test_vocabularies_differ():
    from keras_kd.distillation.chunked import LinearHead
    from keras_kd.distillation.distiller import check_head_vocabularies

    student = LinearHead(keras.ops.zeros((8, VOCAB)))
    teacher = LinearHead(keras.ops.zeros((VOCAB + 3, 12)), transposed=True)
    with pytest.raises(ValueError, match="needs one vocabulary.*37 ids.*40.*student_head="):
        check_head_vocabularies(student, teacher, "lm_head", "embedding")
    check_head_vocabularies(student, student, "lm_head", "lm_head")  # Same: no error.


def test_head_with_softmax_refused():
    from keras_kd.distillation.chunked_models import model_head

    tokens = keras.Input((TIME,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(tokens)
    model = keras.Model(tokens, keras.layers.Dense(VOCAB, activation="softmax")(x))
    with pytest.raises(ValueError, match="`teacher_head`.*activation.*without `chunk_size`"):
        model_head(model, argument="teacher_head")


def test_last_layer_not_dense_refused():
    tokens = keras.Input((TIME,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(tokens)
    x = keras.layers.Dense(VOCAB)(x)
    student = keras.Model(tokens, keras.layers.Activation("linear", name="after")(x))
    teacher = _functional(12, 2, "teacher")
    with pytest.raises(ValueError, match="cannot identify the head.*'after'.*student_head="):
        Distiller(student=student, teacher=teacher).compile(chunk_size=4)


def test_named_head():
    tokens = keras.Input((TIME,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 8)(tokens)
    x = keras.layers.Dense(VOCAB, name="head")(x)
    student = keras.Model(tokens, keras.layers.Activation("linear", name="after")(x))
    with pytest.raises(ValueError, match="does not compute"):
        Distiller(student=student, teacher=_functional(12, 2, "teacher")).compile(
            chunk_size=4, student_head="head")
    with pytest.raises(ValueError, match="names no layer"):
        Distiller(student=student, teacher=_functional(12, 2, "teacher")).compile(
            chunk_size=4, student_head="missing")


@pytest.mark.parametrize("metrics", [["mae"], "top_k_categorical_accuracy"])
def test_metrics_refused(metrics):
    student, teacher = _functional_pair()
    with pytest.raises(ValueError, match="chunked path.*metrics other than accuracy.*without `chunk_size`"):
        Distiller(student=student, teacher=teacher).compile(metrics=metrics, chunk_size=4)


def test_cached_teacher_outputs_refused():
    from keras_kd.distillation import objective
    from keras_kd.distillation.batch import parse_batch

    student, teacher = _functional_pair()
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(chunk_size=4)
    tokens, labels, _ = _data()
    batch = parse_batch((tokens, labels))._replace(teacher_outputs=np.zeros((BATCH, TIME, VOCAB)))
    with pytest.raises(ValueError, match="cached dense teacher logits.*top-k cache.*without `chunk_size`"):
        objective.forward(distiller, batch, 0.5, True)


def test_hints_and_ensembles_refused():
    student, teacher = _functional_pair()
    other = _functional(12, 3, "other")
    with pytest.raises(ValueError, match="chunked path.*a teacher ensemble"):
        Distiller(student=student, teacher=[teacher, other]).compile(chunk_size=4)


def test_compile_config_keeps_chunk_size():
    student, teacher = _functional_pair()
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(chunk_size=4, student_head="lm_head")
    config = distiller.get_compile_config()
    assert config["chunk_size"] == 4 and config["student_head"] == "lm_head"
    assert config["teacher_head"] is None


def test_saved_distiller_keeps_chunked_path(tmp_path):
    student, teacher = _functional_pair()
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd", chunk_size=5, student_head="lm_head")
    tokens, labels, weights = _data()
    distiller.fit(tokens, labels, sample_weight=weights, batch_size=2, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.chunked is not None and loaded.chunked.chunk_size == 5
    assert loaded.chunked.student.layer.name == "lm_head"
    loaded.fit(tokens, labels, sample_weight=weights, batch_size=2, epochs=1, verbose=0)


# ---------------------------------------------------------------------------
# A top-k teacher cache on the chunked path: the student's hidden states in
# chunks against the cached ids, values and tail, as the dense Distiller.

CACHE_TEMPERATURE = 2.0


def _top_k_targets(teacher, tokens, labels, k=5):
    """`targets(labels, teacher_top_k=...)` of the teacher's top k at the
    cache temperature, per sample as `top_k_dataset` gives them."""
    from keras_kd.distillation import top_k

    indices, values, log_normalizer = top_k.top_k_logits(
        teacher(tokens), k, temperature=CACHE_TEMPERATURE)
    n = len(tokens)
    cache = {"indices": np.asarray(indices), "values": np.asarray(values),
             "log_normalizer": np.asarray(log_normalizer),
             "cache_temperature": np.full(n, CACHE_TEMPERATURE, "float32"),
             "vocab_size": np.full(n, VOCAB, "int32")}
    return keras_kd_targets(labels, teacher_top_k=cache)


def keras_kd_targets(labels, **kwargs):
    from keras_kd import targets

    return targets(labels, **kwargs)


def _fit_top_k(make_models, chunk_size, reduction, loss, temperature, ignore_class=None,
               data=None, chunked_eagerly=False):
    student, teacher = make_models()
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        run_eagerly=EAGER_IS_CHEAP and (chunk_size is None or chunked_eagerly),  # See `_fit`.
        optimizer=keras.optimizers.SGD(0.05 if reduction == "sum" else 0.5),
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=reduction, ignore_class=ignore_class),
        distillation_loss_fn=loss, alpha=0.3, temperature=temperature, chunk_size=chunk_size,
        metrics=["accuracy"])
    tokens, labels, weights = (data or _data)()
    y = _top_k_targets(teacher, tokens, labels)
    # A dataset: Keras' array adapter takes no sample weights beside a nested `y`.
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices((tokens, y, weights)).batch(2)
    history = distiller.fit(batches, epochs=2, verbose=0)
    evaluated = distiller.evaluate(tokens, labels, sample_weight=weights, batch_size=2,
                                   verbose=0, return_dict=True)
    return history.history, evaluated, [np.asarray(keras.ops.convert_to_numpy(v))
                                        for v in student.trainable_variables]


@pytest.mark.parametrize("tail,temperature,reduction,ignore_class,chunked_eagerly", [
    # tail="bin" with no temperature chosen: the cache's, as on the dense path.
    ("bin", None, "sum_over_batch_size", None, False),
    # Traced: this case in float64, test_top_k_cache_matches_dense_in_float64.
    ("renormalize", 3.0, "sum", 3, True),
])
def test_top_k_cache_matches_dense(tail, temperature, reduction, ignore_class, chunked_eagerly):
    from keras_kd import TopKKLDivergence

    results = {}
    for name, chunk_size in (("dense", None), ("chunked", 5)):
        loss = None if tail == "bin" and temperature is None else TopKKLDivergence(tail=tail)
        results[name] = _fit_top_k(_functional_pair, chunk_size, reduction, loss, temperature,
                                   ignore_class, chunked_eagerly=chunked_eagerly)
    (dense_logs, dense_eval, dense_weights), (logs, evaluated, weights) = (
        results["dense"], results["chunked"])
    assert set(logs) == set(dense_logs) and float(dense_logs["distillation_loss"][0]) > 0.0
    # Two float32 epochs summed in other orders: 2.3e-5 apart on TF 2.20
    # (renormalize, sum). The float64 test below holds the paths to 1e-7.
    for key in dense_logs:
        np.testing.assert_allclose(logs[key], dense_logs[key], rtol=1e-4, atol=1e-6, err_msg=key)
    for key in dense_eval:
        np.testing.assert_allclose(evaluated[key], dense_eval[key], rtol=1e-4, atol=1e-6,
                                   err_msg=key)
    for got, want in zip(weights, dense_weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_top_k_cache_matches_dense_in_float64():
    """With float64 weights and arithmetic (`precision="float64"`) the
    chunked path trains as the dense one within 1e-7. Failed before:
    the chunked terms came in the divergence's precision and their sum with
    the float32 regularisation loss raised a TypeError."""
    from keras_kd import TopKKLDivergence

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # (Keras keeps the first one it made.)
    try:
        results = [_fit_top_k(_functional_pair, chunk_size, "sum",
                              TopKKLDivergence(tail="renormalize", precision="float64",
                                               dtype="float64"), 3.0, 3)
                   for chunk_size in (None, 5)]
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    (dense_logs, _, dense_weights), (logs, _, weights) = results
    assert dense_weights[0].dtype == np.float64
    # The logs pass through float32 trackers.
    np.testing.assert_allclose(logs["distillation_loss"], dense_logs["distillation_loss"],
                               rtol=1e-6)
    # 2.3e-8 apart: the paths round alpha (0.3) to float32 in other places.
    for got, want in zip(weights, dense_weights):
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_top_k_cache_with_keras_mask_matches_dense():
    make = lambda: (_functional(8, 1, "student", mask_zero=True),  # noqa: E731
                    _functional(12, 2, "teacher", mask_zero=True))

    def data():
        tokens, labels, weights = _data()
        tokens[1, -2:] = 0  # Masked positions.
        return tokens, labels, weights

    from keras_kd import TopKKLDivergence

    # tail="bin" at the cache's temperature, chosen explicitly.
    dense = _fit_top_k(make, None, "sum_over_batch_size", TopKKLDivergence(), CACHE_TEMPERATURE,
                       data=data)
    chunked = _fit_top_k(make, 4, "sum_over_batch_size", TopKKLDivergence(), CACHE_TEMPERATURE,
                         data=data)
    for logs, want in ((chunked[0], dense[0]), (chunked[1], dense[1])):
        for key in want:
            np.testing.assert_allclose(logs[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for got, want in zip(chunked[2], dense[2]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_top_k_cache_refusals_on_the_chunked_path():
    """What the dense path refuses on a cache, the chunked path refuses:
    another tail="bin" temperature; a loss that cannot read a cache."""
    student, teacher = _functional_pair()
    tokens, labels, _ = _data()
    y = _top_k_targets(teacher, tokens, labels)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(temperature=1.0, chunk_size=4)
    with pytest.raises(ValueError, match=r"cache_temperature=2\.0.*Received: temperature=1\.0"):
        distiller.train_on_batch(tokens, y)
    distiller.compile(distillation_loss_fn="reverse_kl", chunk_size=4)
    with pytest.raises(ValueError, match="cannot read.*TopKKLDivergence"):
        distiller.train_on_batch(tokens, y)


def _one_epoch(chunk_size, policy=None, **compile_kwargs):
    """Loss and student weights (as float32) after one epoch of a tiny
    Functional pair, dense (`chunk_size=None`, eagerly: see `_fit`) or
    chunked."""
    if chunk_size is None and EAGER_IS_CHEAP:
        compile_kwargs["run_eagerly"] = True
    vocab, length = 37, 6
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, vocab, (4, length)).astype("int32")
    labels = rng.integers(0, vocab, (4, length)).astype("int32")

    def model(width, name, seed):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((length,), dtype="int32")
        x = keras.layers.Embedding(vocab, width, dtype=policy)(inputs)
        x = keras.layers.Dense(width, activation="tanh", dtype=policy)(x)
        return keras.Model(inputs, keras.layers.Dense(vocab, name="lm_head", dtype=policy)(x),
                           name=name)

    student, teacher = model(8, "s", 1), model(12, "t", 2)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5), alpha=0.3, temperature=2.0,
                      chunk_size=chunk_size, distillation_loss_fn="generalized_jsd",
                      **compile_kwargs)
    loss = distiller.fit(tokens, labels, batch_size=2, shuffle=False, verbose=0).history["loss"][0]
    return loss, [np.asarray(keras.ops.cast(v, "float32")) for v in student.trainable_variables]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_as_the_dense_path(policy):
    """Failed before (read-only review): under a mixed policy a chunk's
    values and gradients came in the compute dtype and the float32 buffers
    refused them (TF: XlaDynamicUpdateSlice "float32 does not match
    bfloat16"; JAX: dynamic_update_slice "same dtypes"). Now the same loss
    and update as the dense path, to the compute dtype's precision."""
    dense_loss, dense_weights = _one_epoch(None, policy)
    chunked_loss, chunked_weights = _one_epoch(3, policy)
    assert np.isfinite(chunked_loss)
    np.testing.assert_allclose(chunked_loss, dense_loss, rtol=2e-3)
    for chunked, dense in zip(chunked_weights, dense_weights):
        np.testing.assert_allclose(chunked, dense, atol=2e-3)


def test_run_eagerly_trains_as_the_dense_path():
    """Failed before on TensorFlow (read-only review): eager
    `tf.custom_gradient` hands the gradient function the variables the
    forward read (the Distiller's temperature) and wants their gradients:
    "too many values to unpack (expected 2)". Now the dense path's loss and
    update."""
    dense_loss, dense_weights = _one_epoch(None, run_eagerly=True)
    chunked_loss, chunked_weights = _one_epoch(3, run_eagerly=True)
    np.testing.assert_allclose(chunked_loss, dense_loss, rtol=1e-5)
    for chunked, dense in zip(chunked_weights, dense_weights):
        np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# Teacher metrics (`TeacherKL`, `TeacherAgreement`, a subclass's
# `per_sample`) on the chunked path: computed chunk by chunk from both
# models' hidden states, as the dense Distiller computes them on logits.

METRIC_SAMPLES = 7  # In batches of 3: the last batch is partial.


def _metric_pair(mask_zero=False):
    """A student and a teacher of its architecture and weights with a
    scaled, perturbed head: they agree at about half the positions (random
    pairs at none), and their KL is far from 0."""
    student = _functional(8, 1, "student", mask_zero)
    teacher = _functional(8, 1, "teacher", mask_zero)
    head = teacher.get_layer("lm_head")
    noise = np.random.default_rng(9).normal(size=head.kernel.shape)
    head.kernel.assign(3.0 * np.asarray(head.kernel) + 0.3 * noise.astype(head.kernel.dtype))
    return student, teacher


def _metric_data(ignore_class=None, per_sample=False):
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, VOCAB, (METRIC_SAMPLES, TIME)).astype("int32")
    tokens[:2, -2:] = 0  # Padding ids: masked where the embedding masks zeros.
    labels = rng.integers(0, VOCAB, tokens.shape).astype("int32")
    labels[3, :2] = -1  # keras_kd.UNLABELLED: the teacher metrics count them.
    if ignore_class is not None:
        labels[4, 1:3] = ignore_class  # Counted by neither.
    weights = rng.uniform(0.5, 2.0, tokens.shape).astype("float32")
    weights[5, -3:] = 0.0
    if per_sample:
        weights = rng.uniform(0.5, 2.0, METRIC_SAMPLES).astype("float32")
    return tokens, labels, weights


def _teacher_top_probability():
    """A user's `TeacherMetric`: the student's probability of the teacher's
    top token (its `per_sample` reads each position's row alone)."""
    from keras import ops

    from keras_kd.distillation.metrics import TeacherMetric

    class TeacherTopProbability(TeacherMetric):
        def per_sample(self, teacher_logits, student_logits):
            top = ops.argmax(teacher_logits, axis=-1)
            student = ops.softmax(student_logits, axis=-1)
            return ops.take_along_axis(student, top[..., None], axis=-1)[..., 0]

    return TeacherTopProbability(name="teacher_top_probability")


def _fit_with_teacher_metrics(chunk_size, mask_zero, ignore_class, alpha, per_sample,
                              dtype="float32", epochs=2):
    from keras_kd import GeneralizedJSD
    from keras_kd import TeacherAgreement
    from keras_kd import TeacherKL

    student, teacher = _metric_pair(mask_zero)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        # The dense reference eagerly (see `_fit`) over 11 steps (one epoch);
        # over 16 (two epochs) its trace is the cheaper.
        run_eagerly=EAGER_IS_CHEAP and chunk_size is None and epochs == 1,
        optimizer=keras.optimizers.SGD(0.5),
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, ignore_class=ignore_class),
        distillation_loss_fn=GeneralizedJSD(beta=0.5, precision=dtype),
        alpha=alpha, temperature=2.0, chunk_size=chunk_size,
        metrics=["accuracy", TeacherKL(dtype=dtype), TeacherAgreement(dtype=dtype),
                 _teacher_top_probability()])
    tokens, labels, weights = _metric_data(ignore_class, per_sample)
    before = distiller.evaluate(tokens, labels, sample_weight=weights, batch_size=3, verbose=0,
                                return_dict=True)
    history = distiller.fit(tokens, labels, sample_weight=weights, batch_size=3, epochs=epochs,
                            shuffle=False, verbose=0,
                            validation_data=(tokens[:5], labels[:5], weights[:5]))
    evaluated = distiller.evaluate(tokens, labels, sample_weight=weights, batch_size=3,
                                   verbose=0, return_dict=True)
    return before, history.history, evaluated


TEACHER_METRIC_KEYS = {"teacher_kl", "teacher_agreement", "teacher_top_probability"}


@pytest.mark.parametrize("mask_zero,ignore_class,alpha,per_sample", [
    (False, None, 0.3, False),
    (True, 3, 0.3, True),
    (True, None, 1.0, False),  # alpha = 1: the teacher runs for the metrics alone.
])
def test_teacher_metrics_in_fit_and_evaluate_match_dense(mask_zero, ignore_class, alpha,
                                                         per_sample):
    """Every key of evaluate (before and after fit) and of fit's logs
    (training and `val_`) equals the dense Distiller's within 1e-5, with
    per-position or per-sample weights, a Keras mask, `ignore_class`,
    `UNLABELLED` and a partial last batch. Failed before: the chunked path
    refused teacher metrics."""
    dense = _fit_with_teacher_metrics(None, mask_zero, ignore_class, alpha, per_sample)
    chunked = _fit_with_teacher_metrics(5, mask_zero, ignore_class, alpha, per_sample)
    assert 0.0 < dense[0]["teacher_agreement"] < 1.0 and dense[0]["teacher_kl"] > 0.1
    assert TEACHER_METRIC_KEYS | {"val_" + key for key in TEACHER_METRIC_KEYS} <= set(dense[1])
    for got, want in zip(chunked, dense):
        assert set(got) == set(want) and TEACHER_METRIC_KEYS <= set(got)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_teacher_metrics_match_dense_in_float64():
    """Float64 weights and arithmetic (`precision="float64"`, float64
    metrics): the teacher metrics of evaluate (before and after an epoch)
    and of fit equal the dense path's within 1e-7. (Not closer: the dense
    path rounds the teacher's logits to float32, `Distiller.teacher_logits`,
    and the weights the paths train differ by ~1e-8, rounding alpha to
    float32 in other places; the chunked values are within 1e-12 of a
    float64 NumPy reference, `test_chunked_evaluate.py`.)"""
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        dense = _fit_with_teacher_metrics(None, True, 3, 0.3, False, dtype="float64", epochs=1)
        chunked = _fit_with_teacher_metrics(5, True, 3, 0.3, False, dtype="float64", epochs=1)
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    (dense_before, dense_logs, dense_evaluated), (before, logs, evaluated) = dense, chunked
    for key in TEACHER_METRIC_KEYS:
        np.testing.assert_allclose(before[key], dense_before[key], rtol=1e-7, err_msg=key)
        for name in (key, "val_" + key):
            np.testing.assert_allclose(logs[name], dense_logs[name], rtol=1e-7, err_msg=name)
        np.testing.assert_allclose(evaluated[key], dense_evaluated[key], rtol=1e-7, err_msg=key)


def test_teacher_metric_overriding_update_state_refused():
    """A `TeacherMetric` that overrides `update_state` may need the whole
    logits: refused naming the chunked path and what to implement instead."""
    from keras_kd.distillation.metrics import TeacherMetric

    class WholeBatch(TeacherMetric):
        def update_state(self, teacher_logits, student_logits, sample_weight=None):
            return super().update_state(teacher_logits, student_logits, sample_weight)

        def per_sample(self, teacher_logits, student_logits):
            return teacher_logits[..., 0]

    student, teacher = _functional_pair()
    with pytest.raises(ValueError, match=(
            r"chunked path \(chunk_size=4\).*teacher metrics that override `update_state`.*"
            r"`per_sample`.*WholeBatch.*without `chunk_size`")):
        Distiller(student=student, teacher=teacher).compile(metrics=[WholeBatch()], chunk_size=4)
    # Keras' compiled metrics other than accuracy stay refused beside them.
    from keras_kd import TeacherKL

    with pytest.raises(ValueError, match="compiled metrics other than accuracy.*'mae'") as error:
        Distiller(student=student, teacher=teacher).compile(
            metrics=["accuracy", "mae", TeacherKL()], chunk_size=4)
    assert "TeacherKL" not in str(error.value)


def test_teacher_metrics_with_top_k_cache_refused_on_both_paths():
    """A top-k cache holds the teacher's top k logits only: teacher metrics
    are refused on it by both paths, in fit and in evaluate."""
    from keras_kd import TeacherKL

    student, teacher = _functional_pair()
    tokens, labels, _ = _data()
    y = _top_k_targets(teacher, tokens, labels)
    for chunk_size in (None, 4):
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(chunk_size=chunk_size, metrics=[TeacherKL()])
        for step in (distiller.train_on_batch, distiller.test_on_batch):
            with pytest.raises(ValueError, match="top-k teacher cache.*teacher metrics"):
                step(tokens, y)
