"""KerasHub Llama teacher and student sharded by `LlamaBackbone`'s own
layout map on a (2, 4) mesh: the Distiller's losses are the unsharded ones,
and the teacher's variables stay sharded."""

import contextlib

import keras
import numpy as np
import pytest

import keras_kd

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub (the `lm` extra) is not installed")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

VOCAB = 64


def llama(seed, hidden_dim, num_layers, intermediate_dim):
    """A tiny random-weight Llama (no preset: nothing is downloaded)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=num_layers, num_query_heads=4,
        num_key_value_heads=4, hidden_dim=hidden_dim, intermediate_dim=intermediate_dim)
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def teacher_model():
    return llama(1, hidden_dim=16, num_layers=1, intermediate_dim=32)


def student_model():
    return llama(2, hidden_dim=8, num_layers=1, intermediate_dim=16)


def token_batches():
    """x (token ids and padding mask), next-token labels and the mask as
    sample weights: 16 windows of 6 tokens, the last two padded in half."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, size=(16, 7)).astype("int32")
    mask = np.ones((16, 6), "int32")
    mask[::2, 4:] = 0
    x = {"token_ids": tokens[:, :-1] * mask, "padding_mask": mask}
    return x, tokens[:, 1:], mask.astype("float32")


def model_parallel():
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"],
                                         devices=keras.distribution.list_devices())
    layout_map = keras_hub.models.LlamaBackbone.get_layout_map(mesh)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def _run(distribution, initial):
    """Fits a Distiller 4 steps and evaluates it; returns the logs,
    the student's weights and the teacher's variable shardings."""
    x, y, sample_weight = token_batches()
    with distribution.scope() if distribution else contextlib.nullcontext():
        teacher, student = teacher_model(), student_model()
        teacher.set_weights(initial[0])
        student.set_weights(initial[1])
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            alpha=0.5, temperature=2.0)
        history = distiller.fit(x, y, sample_weight=sample_weight, batch_size=8, epochs=2,
                                shuffle=False, verbose=0).history
        after = distiller.evaluate(x, y, sample_weight=sample_weight, batch_size=8,
                                   verbose=0, return_dict=True)
        shardings = {v.path: v.value.sharding for v in teacher.weights}
    return history, after, [v.numpy() for v in student.weights], shardings


@pytest.fixture(scope="module")
def runs():
    teacher = teacher_model()
    # Llama's 0.01-stddev initialiser gives near-uniform logits; a wider
    # output layer gives the teacher opinions worth distilling.
    teacher.backbone.token_embedding.reverse_embeddings.assign(
        teacher.backbone.token_embedding.reverse_embeddings * 100.0)
    initial = [v.numpy() for v in teacher.weights], [v.numpy() for v in student_model().weights]
    return _run(None, initial), _run(model_parallel(), initial)


def test_sharded_losses_are_the_unsharded_ones(runs):
    (history, after, weights, _), (s_history, s_after, s_weights, _) = runs
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(s_history[key], history[key], rtol=1e-5)
    # evaluate() gives the student's loss (as student.evaluate does).
    assert set(s_after) == set(after) == {"loss", "student_loss"}
    for key in after:
        np.testing.assert_allclose(s_after[key], after[key], rtol=1e-5)
    # Training moved the losses, so equal losses are not two untouched models.
    assert after["loss"] < history["student_loss"][0] - 1e-3
    for one, sharded in zip(weights, s_weights):
        np.testing.assert_allclose(sharded, one, rtol=1e-4, atol=1e-6)


def test_the_teachers_variables_stay_sharded(runs):
    (*_, shardings), (*_, sharded) = runs
    assert all(len(s.device_set) == 1 for s in shardings.values())
    embedding = sharded["token_embedding/embeddings"]
    assert tuple(embedding.spec) == ("model", "batch")
    assert len(embedding.device_set) == 8 and not embedding.is_fully_replicated
    query = sharded["transformer_layer_0/self_attention/query/kernel"]
    assert tuple(query.spec)[:2] == ("model", "batch")
    split = [p for p, s in sharded.items() if not s.is_fully_replicated]
    # Every kernel and the embedding (norm scales stay replicated by the map).
    assert len(split) >= 1 + 7, split


def _opinionated_teacher():
    teacher = teacher_model()
    # As in `runs`: distinct logits, so the top k are not ties broken by noise.
    teacher.backbone.token_embedding.reverse_embeddings.assign(
        teacher.backbone.token_embedding.reverse_embeddings * 100.0)
    return teacher


@pytest.mark.parametrize("values_dtype,chunk_size", [
    ("float32", None), ("float16", None), ("float32", 5)])
def test_write_top_k_cache_runs_the_sharded_teacher(tmp_path, values_dtype, chunk_size):
    """The sharded teacher's cache is the unsharded one's: the same ids, and
    values within float32 (measured: 2.9e-6 for values down to -9.2, another
    summation order of the sharded matmuls) or float16 storage (one float16
    step of the value: 2.4e-4 measured). With `chunk_size`, the sharded
    teacher's chunked cache (hidden states, then the sharded head 5
    positions at a time) is the unsharded dense one's."""
    from keras_kd.distillation.top_k import write_top_k_cache

    x, _, _ = token_batches()
    weights = [v.numpy() for v in _opinionated_teacher().weights]
    caches, embeddings = [], []
    for name, distribution in (("one", None), ("sharded", model_parallel())):
        with distribution.scope() if distribution else contextlib.nullcontext():
            teacher = teacher_model()
            teacher.set_weights(weights)
            written = write_top_k_cache(
                teacher, x, tmp_path / name, k=5, batch_size=8, values_dtype=values_dtype,
                chunk_size=chunk_size if distribution else None)
        caches.append(written)
        embeddings.append(teacher.backbone.token_embedding.embeddings.value.sharding)
    assert tuple(embeddings[1].spec) == ("model", "batch")
    assert not embeddings[1].is_fully_replicated
    assert len(embeddings[0].device_set) == 1
    (one, sharded) = (cache.shard(0) for cache in caches)
    assert one["indices"].shape == (16, 6, 5)
    np.testing.assert_array_equal(sharded["indices"], one["indices"])
    values, sharded_values = np.float32(one["values"]), np.float32(sharded["values"])
    scale = np.abs(values).max()
    if values_dtype == "float32":
        np.testing.assert_allclose(sharded_values, values, rtol=0, atol=1e-5 * scale)
    else:
        step = np.spacing(np.abs(one["values"])).astype("float32")
        assert np.all(np.abs(sharded_values - values) <= step + 1e-5 * scale)
    np.testing.assert_allclose(sharded["log_normalizer"], one["log_normalizer"],
                               rtol=1e-5, atol=1e-6)
    # The stored values are real opinions: a spread of several logits.
    assert values[..., -1].min() < -1.0
    fingerprints = [cache.manifest["teacher_fingerprint"] for cache in caches]
    assert fingerprints[0] == fingerprints[1]
