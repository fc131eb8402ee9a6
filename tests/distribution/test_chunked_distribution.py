"""The chunked path (`compile(chunk_size=...)`) under `keras.distribution`.

ModelParallel with a KerasHub backbone's own layout map on a (2, 4) mesh: a
tiny Llama and a tiny Gemma (final logit soft-capping) teacher and student
give the unsharded chunked run's and the unsharded dense run's fit and
evaluate losses and teacher metrics (TeacherKL, TeacherAgreement), the
token embeddings (the head, where tied) stay sharded and no step gathers a
whole head. DataParallel over 8 devices splits every chunk's positions
over the devices and gives one device's losses and teacher metrics."""

import contextlib
import functools
import re

import keras
import numpy as np
import pytest

import keras_kd

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub (the `lm` extra) is not installed")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

VOCAB = 64
CHUNK = 16  # 48 positions a batch: 3 chunks.
# fit's logs compared; evaluate's are compared key by key. The teacher
# metrics come from the chunks on the chunked path, from whole logits on
# the dense one.
LOGGED = ("loss", "student_loss", "distillation_loss", "accuracy", "teacher_kl",
          "teacher_agreement")


def llama(seed, hidden_dim, intermediate_dim, tie):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=4, num_key_value_heads=4,
        hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, tie_word_embeddings=tie)
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def gemma(seed, hidden_dim, intermediate_dim):
    # Gemma 2 style: final logit soft-capping on the tied embedding.
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=4, num_key_value_heads=4,
        hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, head_dim=hidden_dim // 4,
        final_logit_soft_cap=3.0, attention_logit_soft_cap=50.0, use_post_ffw_norm=True,
        use_post_attention_norm=True, query_head_dim_normalize=True)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


# (teacher, student, backbone class). The Llama teacher keeps the map's
# default untied head (`reverse_embeddings`, which the map leaves
# replicated); the Llama student ties its head to the embedding the map
# shards P('model', 'batch'), so the student's head and its gradient are
# sharded. Gemma ties both.
MODELS = {
    "llama": (lambda: llama(1, 16, 32, tie=False), lambda: llama(2, 8, 16, tie=True),
              lambda: keras_hub.models.LlamaBackbone),
    "gemma": (lambda: gemma(1, 16, 32), lambda: gemma(2, 8, 16),
              lambda: keras_hub.models.GemmaBackbone),
}


def token_batches():
    """16 windows of 6 tokens, every other one padded in its last two."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, VOCAB, size=(16, 7)).astype("int32")
    mask = np.ones((16, 6), "int32")
    mask[::2, 4:] = 0
    x = {"token_ids": tokens[:, :-1] * mask, "padding_mask": mask}
    return x, tokens[:, 1:], mask.astype("float32")


def model_parallel(backbone_class):
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"],
                                         devices=keras.distribution.list_devices())
    return keras.distribution.ModelParallel(
        layout_map=backbone_class.get_layout_map(mesh), batch_dim_name="batch")


def all_gathered_shapes(distiller, distribution, batch):
    """The result shapes of the all-gathers in the compiled `train_step` of
    `distiller` (fitted, so built) on `batch` laid out as `distribution`
    lays out data."""
    import jax  # Not at the top: the TensorFlow leg collects this file.

    state = distiller._get_jax_state(trainable_variables=True, non_trainable_variables=True,
                                     optimizer_variables=True, metrics_variables=True)
    batch = jax.tree_util.tree_map(
        lambda a: jax.device_put(a, distribution.get_data_layout(a.shape).backend_layout), batch)
    hlo = jax.jit(distiller.train_step).lower(state, batch).compile().as_text()
    shapes = []
    for line in hlo.splitlines():
        result = re.match(r"\s*(ROOT )?%\S+ = (.*?) all-gather(-start)?\(", line)
        if result:
            shapes += [tuple(int(d) for d in dims.split(",") if d)
                       for dims in re.findall(r"\w+\[([\d,]*)\]", result.group(2))]
    return shapes


def _run(kind, distribution, chunk_size, initial):
    """Fits a Distiller 4 steps and evaluates it; returns the logs, the
    student's weights, both models' variable shardings and (sharded) the
    all-gathers of the compiled train step."""
    make_teacher, make_student, _ = MODELS[kind]
    x, y, sample_weight = token_batches()
    with distribution.scope() if distribution else contextlib.nullcontext():
        teacher, student = make_teacher(), make_student()
        teacher.set_weights(initial[0])
        student.set_weights(initial[1])
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5),
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            alpha=0.5, temperature=2.0, chunk_size=chunk_size,
            metrics=["accuracy", keras_kd.TeacherKL(), keras_kd.TeacherAgreement()])
        assert (distiller.chunked is None) == (chunk_size is None)
        history = distiller.fit(x, y, sample_weight=sample_weight, batch_size=8, epochs=2,
                                shuffle=False, verbose=0).history
        after = distiller.evaluate(x, y, sample_weight=sample_weight, batch_size=8,
                                   verbose=0, return_dict=True)
        shardings = {
            "teacher": {v.path: v.value.sharding for v in teacher.weights},
            "student": {v.path: v.value.sharding for v in student.weights},
        }
        gathered = None
        if distribution is not None:
            first = ({key: value[:8] for key, value in x.items()}, y[:8], sample_weight[:8])
            gathered = all_gathered_shapes(distiller, distribution, first)
        # The token embeddings and (untied) reverse embeddings.
        heads = [tuple(w.shape) for model in (teacher, student)
                 for w in model.backbone.token_embedding.weights]
    return history, after, [v.numpy() for v in student.weights], shardings, gathered, heads


def initial_weights(kind):
    make_teacher, make_student, _ = MODELS[kind]
    teacher = make_teacher()
    # A wider head than the 0.01-stddev initialiser gives: a teacher with
    # opinions worth distilling (not near-uniform logits).
    head = teacher.backbone.token_embedding
    weight = head.embeddings if head.tie_weights else head.reverse_embeddings
    weight.assign(weight * (20.0 if head.tie_weights else 100.0))
    return [v.numpy() for v in teacher.weights], [v.numpy() for v in make_student().weights]


@functools.lru_cache(maxsize=None)
def results(kind):
    """The unsharded dense and chunked runs and the chunked run under
    ModelParallel with the backbone's layout map."""
    initial = initial_weights(kind)
    return initial, {
        "dense": _run(kind, None, None, initial),
        "chunked": _run(kind, None, CHUNK, initial),
        "sharded": _run(kind, model_parallel(MODELS[kind][2]()), CHUNK, initial),
    }


@pytest.fixture(scope="module", params=sorted(MODELS))
def runs(request):
    return request.param, results(request.param)[1]


def test_sharded_chunked_losses_are_the_unsharded_ones(runs):
    kind, results = runs
    history, after, weights, *_ = results["sharded"]
    for name in ("dense", "chunked"):
        reference, reference_after, reference_weights, *_ = results[name]
        assert set(history) == set(reference)
        for key in LOGGED:
            np.testing.assert_allclose(history[key], reference[key], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{kind} {name} {key}")
        assert set(after) == set(reference_after)
        for key in after:
            np.testing.assert_allclose(after[key], reference_after[key], rtol=1e-5,
                                       atol=1e-7, err_msg=f"{kind} {name} {key}")
        for one, sharded in zip(reference_weights, weights):
            np.testing.assert_allclose(sharded, one, rtol=1e-4, atol=1e-6)
    # Training moved the losses, the teacher has a say, and its metrics are
    # not at a bound where a wrong weighting could still match.
    assert after["loss"] < history["student_loss"][0] - 1e-3
    assert min(history["distillation_loss"]) > 1e-2
    assert after["teacher_kl"] > 1e-2 and 0.0 < after["teacher_agreement"] < 1.0


def test_the_heads_stay_sharded(runs):
    kind, results = runs
    one = results["chunked"][3]
    sharded = results["sharded"][3]
    for model in ("teacher", "student"):
        assert all(len(s.device_set) == 1 for s in one[model].values())
        embedding = sharded[model]["token_embedding/embeddings"]
        assert tuple(embedding.spec) == ("model", "batch"), (model, embedding)
        assert len(embedding.device_set) == 8 and not embedding.is_fully_replicated
        split = [p for p, s in sharded[model].items() if not s.is_fully_replicated]
        assert len(split) >= 1 + 7, (model, split)


def test_no_step_gathers_a_whole_head(runs):
    """The compiled train step gathers no model's whole token embedding or
    head onto a device (the map's FSDP-style split of the hidden axis along
    "batch" is gathered for the matmuls: a quarter of the head)."""
    kind, results = runs
    *_, gathered, heads = results["sharded"]
    assert gathered, "expected the layout map's gathers in the step"
    for shape in heads:
        assert VOCAB in shape and shape not in gathered and shape[::-1] not in gathered, (
            kind, shape, gathered)


def test_data_parallel_splits_every_chunk_over_the_devices():
    """Under DataParallel over 8 devices each device computes the logits of
    its share of each chunk: the step gathers nothing (before the chunks
    took rows from the whole batch, every device gathered all hidden
    states and computed every position), and the losses are one device's."""
    initial, reference = results("llama")
    distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
    history, after, weights, _, gathered, _ = _run("llama", distribution, CHUNK, initial)
    assert gathered == []
    one, one_after, one_weights, *_ = reference["chunked"]
    for key in LOGGED:
        np.testing.assert_allclose(history[key], one[key], rtol=1e-5, atol=1e-7, err_msg=key)
    for key in one_after:
        np.testing.assert_allclose(after[key], one_after[key], rtol=1e-5, atol=1e-7)
    for single, eight in zip(one_weights, weights):
        np.testing.assert_allclose(eight, single, rtol=1e-4, atol=1e-6)
