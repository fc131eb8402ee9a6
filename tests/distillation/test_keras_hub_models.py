"""KerasHub language models as teacher and student: GPT-2 backbones built
from configs (random weights, offline), batches exactly as KerasHub's
CausalLMPreprocessor gives them: `({"token_ids", "padding_mask"}, y,
sample_weight)`. fit, evaluate, generate, save and load, online and from a
top-k cache or a dense one.

Each traced `fit`/`evaluate` of a GPT-2 Distiller costs seconds of tracing,
so the online losses the caches are checked against are computed once,
traced (`online_losses`), and on TensorFlow (`EAGER`) other steps run
eagerly where another test traces the same step on the same batches: the
online `fit` in `online_losses`, the online `evaluate` and `train_on_batch`
in `test_evaluate_equals_student_evaluate_and_padding_is_inert`'s
[sum_over_batch_size] case, a cached `fit` from a dataset in the cache
tests."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import numpy

import keras_kd
from keras_kd.data import sequence_kd
from keras_kd.distillation import cache
from keras_kd.distillation import top_k

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub (the `lm` extra) is not installed")

VOCAB, LENGTH = 30, 10
LOSSES = ("loss", "student_loss", "distillation_loss")
# Where a test runs steps eagerly (another test traces the same step): on
# TensorFlow an eager GPT-2 step costs a fraction of a trace; on JAX its
# op-by-op dispatch costs more than the jit (13 s against 0.3 s for one
# step of fit, 2026-12-07), so there every step is compiled.
EAGER = keras.backend.backend() == "tensorflow"


def causal_lm(width, layers, seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=layers, num_heads=2, hidden_dim=width,
        intermediate_dim=2 * width, max_sequence_length=LENGTH + 1, dropout=0.0)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def preprocessed(seed=0, batch=8):
    """What `CausalLMPreprocessor` returns for sequences of varying length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(batch, LENGTH + 1)).astype("int32")
    mask = np.arange(LENGTH + 1)[None, :] < rng.integers(4, LENGTH + 2, size=(batch, 1))
    ids[~mask] = 0
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], mask[:, 1:].astype("float32")


def with_larger_logits(model, factor=10.0):
    """`model` with its (tied) token embeddings scaled: freshly initialized
    GPT-2s give near-uniform logits, whose KL (~1e-3) is mostly float32
    rounding of terms that cancel; logits of a few units give a KL of ~0.2."""
    embeddings = model.backbone.token_embedding.embeddings
    embeddings.assign(embeddings * factor)
    return model


@pytest.fixture(scope="module")
def models():
    """The teacher and a student the tests only read (SGD(0.0) steps).
    One layer each (a traced step's cost grows with the layers): they
    still differ in width."""
    return (with_larger_logits(causal_lm(32, 1, seed=1)),
            with_larger_logits(causal_lm(16, 1, seed=2)))


@pytest.fixture(scope="module")
def batches():
    """Ten sequences for the cache tests, in two batches of 5."""
    return preprocessed(seed=2, batch=10)


def frozen_distiller(student, teacher, distillation_loss_fn=None, run_eagerly=False):
    """A Distiller whose steps change no weight (SGD(0.0)): its first
    epoch's logs are the losses of the given weights."""
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=2.0,
                      distillation_loss_fn=distillation_loss_fn, run_eagerly=run_eagerly)
    return distiller


def first_epoch_losses(distiller, *data, **fit):
    history = distiller.fit(*data, epochs=1, verbose=0, **fit).history
    return {name: float(history[name][0]) for name in LOSSES}


def online_dataset(batches):
    return tf.data.Dataset.from_tensor_slices(batches).batch(5)


@pytest.fixture(scope="module")
def online_losses(models, batches):
    """The online Distiller's losses on `batches`, one teacher: the
    reference of the cache tests, from a traced step (computed once for the
    three tests that read it; it is the traced online step's value check)."""
    teacher, student = models
    return first_epoch_losses(frozen_distiller(student, teacher), online_dataset(batches))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_evaluate_equals_student_evaluate_and_padding_is_inert(models, reduction):
    teacher, student = models
    x, y, sample_weight = preprocessed()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    # The reference is plain Keras; eager, as its traced path is Keras' own.
    student.compile(loss=loss, weighted_metrics=["sparse_categorical_accuracy"],
                    run_eagerly=EAGER)
    expected = student.evaluate(x, y, sample_weight=sample_weight, verbose=0, return_dict=True)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    # [sum_over_batch_size] traces the evaluate step; the reductions differ
    # in the loss's ops only, [mean_with_sample_weight]'s run eagerly.
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), student_loss_fn=loss, alpha=0.5,
                      weighted_metrics=["sparse_categorical_accuracy"],
                      run_eagerly=EAGER and reduction == "mean_with_sample_weight")
    logs = distiller.evaluate(x, y, sample_weight=sample_weight, verbose=0, return_dict=True)
    # Eager against traced float32: equal but for the last bits.
    assert float(logs["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-5)
    assert float(logs["sparse_categorical_accuracy"]) == pytest.approx(
        float(expected["sparse_categorical_accuracy"]), abs=1e-6)
    # Two steps' values, traced in [sum_over_batch_size] (the traced train
    # step's padding check), eager in [mean_with_sample_weight].
    distiller.run_eagerly = EAGER and reduction == "mean_with_sample_weight"
    first = distiller.train_on_batch(x, y, sample_weight=sample_weight, return_dict=True)
    # Other tokens and labels where the padding mask is off: the same step.
    padded = sample_weight == 0
    noisy_x = {"token_ids": np.where(x["padding_mask"], x["token_ids"], 7),
               "padding_mask": x["padding_mask"]}
    noisy_y = np.where(padded, 5, y)
    second = distiller.train_on_batch(noisy_x, noisy_y, sample_weight=sample_weight,
                                      return_dict=True)
    for name in LOSSES:
        assert float(second[name]) == pytest.approx(float(first[name]), rel=1e-5), name


def test_fit_generate_save_and_load(models, tmp_path):
    teacher, _ = models
    # A student of its own: this test trains it, the others read theirs.
    student = causal_lm(16, 1, seed=2)
    x, y, sample_weight = preprocessed(seed=1, batch=16)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), alpha=0.5, temperature=2.0,
                      distillation_loss_fn="reverse_kl")
    history = distiller.fit(x, y, sample_weight=sample_weight, epochs=3, batch_size=8,
                            verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    prompt = {"token_ids": x["token_ids"][:2], "padding_mask": np.concatenate(
        [np.ones((2, 3), bool), np.zeros((2, LENGTH - 3), bool)], axis=1)}
    # KerasHub's generate fails on JAX under JAX_ENABLE_X64 (int64 and int32
    # slice indices): with x64 off there, as keras_kd's own generation runs.
    with sequence_kd._generation_context(distiller.student):
        generated = distiller.student.generate(prompt, max_length=LENGTH, stop_token_ids=None)
    np.testing.assert_array_equal(generated["token_ids"][:, :3], prompt["token_ids"][:, :3])
    assert generated["token_ids"].shape == (2, LENGTH)
    distiller.save(tmp_path / "distiller.keras")
    distiller.student.save(tmp_path / "student.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    loaded_student = keras.models.load_model(tmp_path / "student.keras")
    # Direct calls: `predict` would trace a function per model.
    expected = numpy(distiller(x, training=False))
    np.testing.assert_allclose(numpy(loaded(x, training=False)), expected, atol=1e-5)
    np.testing.assert_allclose(numpy(loaded_student(x, training=False)), expected, atol=1e-5)
    # Continues with the optimizer's state, through a traced step of the
    # loaded Distiller.
    assert int(loaded.optimizer.iterations) == int(distiller.optimizer.iterations) == 6
    loaded.fit(x, y, sample_weight=sample_weight, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 7


@pytest.fixture(scope="module")
def vocabulary_top_k_cache(models, batches, tmp_path_factory):
    """The teacher's top-k cache of `batches` with k = the vocabulary."""
    teacher, _ = models
    return top_k.write_top_k_cache(
        teacher, tf.data.Dataset.from_tensor_slices(batches[0]).batch(4),
        tmp_path_factory.mktemp("keras_hub") / "top_k", k=VOCAB, temperature=2.0,
        values_dtype="float32")


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
def test_top_k_cache_with_k_equal_vocab_equals_online(
        models, batches, vocabulary_top_k_cache, online_losses, tail):
    teacher, student = models
    cached = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices(batches),
        top_k.top_k_dataset(vocabulary_top_k_cache)).map(
        lambda data, top: (data[0], keras_kd.targets(labels=data[1], teacher_top_k=top),
                           data[2])).batch(5)
    # The tails differ only in the loss's ops: [bin] traces the cached
    # step, [renormalize]'s values are checked in eager steps.
    distiller = frozen_distiller(
        student, teacher, keras_kd.TopKKLDivergence(tail=tail, cache_temperature=2.0),
        run_eagerly=EAGER and tail == "renormalize")
    losses = first_epoch_losses(distiller, cached)
    for name in LOSSES:
        assert losses[name] == pytest.approx(online_losses[name], rel=1e-5), name


@pytest.mark.parametrize("ensemble", [False, True])
def test_a_dense_cache_of_token_ids_and_padding_masks_gives_the_online_losses(
        models, batches, online_losses, tmp_path, ensemble):
    """`compute_teacher_logits` on KerasHub inputs (`token_ids`,
    `padding_mask`), one teacher or an ensemble, read back from its file:
    the cached losses equal the online Distiller's. Before this round the
    dict raised "`x` must hold at least one input", and an ensemble of
    sequence teachers' file, `(samples, members, time, vocab)`, was refused
    on reading ("holds logits of shape ...")."""
    teacher, student = models
    teachers = [teacher, causal_lm(16, 1, seed=3)] if ensemble else teacher
    x, y, sample_weight = batches
    path = tmp_path / "teacher.npz"
    logits = cache.compute_teacher_logits(teachers, x, batch_size=4, path=path)
    assert logits.shape == ((10, 2, LENGTH, VOCAB) if ensemble else (10, LENGTH, VOCAB))
    np.testing.assert_array_equal(
        cache.compute_teacher_logits(teachers, x, batch_size=4, path=path), logits)
    # Eager steps: the traced online step is one teacher's (online_losses);
    # the members' logits meet in the same ops as the cached step's below.
    if ensemble:
        online = first_epoch_losses(frozen_distiller(student, teachers, run_eagerly=EAGER),
                                    online_dataset(batches))
    else:
        online = online_losses
    targets = keras_kd.targets(labels=y, teacher_logits=logits)
    cached = first_epoch_losses(
        frozen_distiller(student, teachers),
        tf.data.Dataset.from_tensor_slices((x, targets, sample_weight)).batch(5))
    # fit(x, targets, sample_weight=(n, time) weights). Before this round
    # Keras' array adapter refused those weights for a dict `y` ("when
    # providing a single `sample_weight` array, it should only have one
    # scalar score per sample"). The adapter runs before the step: eager
    # steps, the traced cached step is the dataset's above.
    from_arrays = first_epoch_losses(
        frozen_distiller(student, teachers, run_eagerly=EAGER), x, targets,
        sample_weight=sample_weight, batch_size=5, shuffle=False)
    for source, losses in (("cached", cached), ("arrays", from_arrays)):
        for name in LOSSES:
            assert losses[name] == pytest.approx(online[name], rel=1e-5), (source, name)
