"""Sequence-level KD data: the teacher's transfer set (Kim & Rush 2016) and
GKD's on-policy batches (Agarwal et al. 2024), on tiny random GPT-2s."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tensorflow_only

import keras_kd
from keras_kd.data import sequence_kd
from keras_kd.data.text import PAD_ID
from keras_kd.data.text import causal_lm_dataset

keras_hub = pytest.importorskip("keras_hub")

VOCABULARY = 20
LENGTH = 12  # The models' maximum sequence length.
PROMPT = 4


def tiny_gpt2(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=LENGTH,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


@pytest.fixture(scope="module")
def teacher():
    return tiny_gpt2(0)


@pytest.fixture(scope="module")
def student():
    """Not trained by any test (the fit test builds its own)."""
    return tiny_gpt2(1)


@pytest.fixture(scope="module")
def prompts():
    return np.random.default_rng(0).integers(2, VOCABULARY, (5, PROMPT)).astype("int32")


@pytest.fixture(scope="module")
def transfer(teacher, prompts):
    """The default (greedy) transfer set, as arrays of all examples."""
    dataset = sequence_kd.teacher_transfer_set(teacher, prompts, LENGTH, batch_size=2)
    return dataset, _concatenate(dataset)


def _concatenate(dataset):
    batches = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset]
    return tf.nest.map_structure(lambda *parts: np.concatenate(parts), *batches)


def _source(num_batches=3, batch_size=2, seed=1):
    """CausalLM batches with inputs of the models' full length; the last
    window is padded."""
    num_tokens = num_batches * batch_size * (LENGTH + 1) - 3
    ids = np.random.default_rng(seed).integers(2, VOCABULARY, num_tokens)
    return causal_lm_dataset(ids, LENGTH, batch_size, drop_remainder=False)


def _as_list(dataset):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset]


def _greedy_generate(model, ids, mask):
    """`model.generate` with KerasHub's greedy sampler, by its public API."""
    model.compile(sampler="greedy")
    return model.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)


# The transfer set.


@pytest.mark.parametrize("sampler", [None, "beam", "top_k"])
def test_the_transfer_set_has_the_causal_lm_format(teacher, prompts, transfer, sampler):
    dataset = transfer[0] if sampler is None else sequence_kd.teacher_transfer_set(
        teacher, prompts, LENGTH, batch_size=2, sampler=sampler)
    expected = causal_lm_dataset(np.arange(2, 40), LENGTH - 1, 2, drop_remainder=False).element_spec
    assert dataset.element_spec == expected
    x, y, weight = _concatenate(dataset)
    assert x["token_ids"].shape == y.shape == weight.shape == (len(prompts), LENGTH - 1)
    # y is x shifted by one, and the prompt is kept.
    np.testing.assert_array_equal(x["token_ids"][:, 1:], y[:, :-1])
    np.testing.assert_array_equal(x["token_ids"][:, :PROMPT], prompts)
    assert ((y >= 0) & (y < VOCABULARY)).all()


def test_the_targets_are_the_teacher_continuation_only(transfer):
    x, y, weight = transfer[1]
    expected = np.zeros(weight.shape, bool)
    expected[:, PROMPT - 1:] = True  # y[:, t] is token t + 1: tokens 4, 5, ... are generated.
    np.testing.assert_array_equal(weight, expected)
    assert x["padding_mask"].all()


def test_the_targets_are_the_teacher_greedy_tokens(teacher, prompts, transfer):
    _, y, _ = transfer[1]
    ids = np.zeros((len(prompts), LENGTH), "int32")
    ids[:, :PROMPT] = prompts
    mask = np.zeros(ids.shape, bool)
    mask[:, :PROMPT] = True
    for step in range(3):  # By hand: logits, argmax, append.
        position = PROMPT + step
        logits = np.asarray(teacher({"token_ids": ids, "padding_mask": mask}, training=False))
        ids[:, position] = logits[:, position - 1].argmax(-1)
        mask[:, position] = True
        np.testing.assert_array_equal(y[:, position - 1], ids[:, position])


@pytest.mark.parametrize("loss_on_prompt", [False, True])
def test_prompts_of_several_lengths_and_stop_tokens_make_padding(
    teacher, prompts, transfer, loss_on_prompt
):
    # Rows 0 and 1 have prompts of 2 and 3 tokens; generation stops after
    # the token that row 2 generates first (it may end other rows too).
    prompt_mask = np.ones(prompts.shape, bool)
    prompt_mask[0, 2:] = False
    prompt_mask[1, 3:] = False
    unstopped = transfer[1][1]
    stop = int(unstopped[2, PROMPT - 1])
    x, y, weight = _concatenate(sequence_kd.teacher_transfer_set(
        teacher, prompts, LENGTH, batch_size=5, prompt_mask=prompt_mask,
        loss_on_prompt=loss_on_prompt, stop_token_ids=[stop]))
    ids = np.concatenate([x["token_ids"], y[:, -1:]], axis=1)  # Whole sequences.
    prompt_lengths = np.array([2, 3, PROMPT, PROMPT, PROMPT])
    # Each sequence is real up to its first generated stop token, then padding.
    real = np.ones(ids.shape, bool)
    for row, length in enumerate(prompt_lengths):
        stops = np.flatnonzero(ids[row, length:] == stop)
        if stops.size:
            real[row, length + stops[0] + 1:] = False
    assert not real[2, PROMPT + 1:].any()
    np.testing.assert_array_equal(x["padding_mask"], real[:, :-1])
    assert (ids[~real] == PAD_ID).all()
    # Rows with the full prompt continue as without a stop token, until it.
    np.testing.assert_array_equal(ids[2:, 1:][real[2:, 1:]], unstopped[2:][real[2:, 1:]])
    # The target y[:, t] is token t + 1: it is real and, unless loss_on_prompt,
    # not in the prompt. The shorter prompts were continued from their end.
    positions = np.arange(1, LENGTH)[None, :]
    expected = real[:, 1:] & (loss_on_prompt | (positions >= prompt_lengths[:, None]))
    np.testing.assert_array_equal(weight, expected)
    np.testing.assert_array_equal(ids[:, :PROMPT][prompt_mask], prompts[prompt_mask])


def test_the_transfer_set_is_deterministic_given_the_seed(teacher, prompts, transfer):
    own_sampler = teacher.sampler

    def sampled(seed):
        # One batch: each call traces `generate` anew, once per batch shape.
        dataset = sequence_kd.teacher_transfer_set(
            teacher, prompts, LENGTH, batch_size=len(prompts), sampler="random", seed=seed)
        return _concatenate(dataset)[1]

    first, again, other = sampled(7), sampled(7), sampled(8)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    # Greedy does not draw; the teacher keeps its own sampler.
    greedy = _concatenate(sequence_kd.teacher_transfer_set(
        teacher, prompts, LENGTH, batch_size=3, seed=5))[1]
    np.testing.assert_array_equal(greedy, transfer[1][1])
    assert teacher.sampler is own_sampler


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX's 64-bit mode")
def test_the_transfer_set_is_generated_under_jax_x64_which_stays_on(teacher, prompts, transfer):
    """With JAX_ENABLE_X64=1 (the float64 references' setting) KerasHub's
    `generate` raised "index arguments to dynamic_slice must be integers of
    the same type, got: int64, int32"; generation now runs with x64 off and
    gives the tokens it gives without x64, and x64 is on again after it."""
    import jax

    with jax.enable_x64(True):
        # Traced here (each call traces `generate`), in one batch.
        dataset = sequence_kd.teacher_transfer_set(
            teacher, prompts, LENGTH, batch_size=len(prompts))
        _, y, _ = _concatenate(dataset)
        assert jax.config.jax_enable_x64
        assert keras.ops.convert_to_tensor(np.float64(1.0)).dtype == np.float64
    with jax.enable_x64(False):
        without = _concatenate(sequence_kd.teacher_transfer_set(
            teacher, prompts, LENGTH, batch_size=len(prompts)))[1]
    np.testing.assert_array_equal(y, without)
    np.testing.assert_array_equal(y, transfer[1][1])


class _NotCausalLM:
    pass


class _WithPreprocessor:
    sampler = generate_function = None
    preprocessor = object()

    def generate(self, *args, **kwargs):
        raise AssertionError("not called")

    def make_generate_function(self):
        raise AssertionError("not called")


@pytest.mark.parametrize(
    "model, bad_prompts, max_length, kwargs, error, match",
    [
        ("dense", None, LENGTH, {}, TypeError,
         r"`teacher` must be a KerasHub CausalLM.*Sequential"),
        (_NotCausalLM(), None, LENGTH, {}, TypeError, r"lacks \['generate'"),
        (_WithPreprocessor(), None, LENGTH, {}, ValueError, r"preprocessor=None"),
        (None, np.zeros((3,), "int32"), LENGTH, {}, ValueError,
         r"\(num_prompts, prompt_length\).*shape \(3,\)"),
        (None, np.zeros((2, 3), "float32"), LENGTH, {}, ValueError, r"dtype float32"),
        (None, None, PROMPT, {}, ValueError, r"max_length=4 for prompts of length 4.*> 4"),
        (None, None, LENGTH + 1, {}, ValueError,
         r"maximum sequence length \(12\).*max_length=13"),
        (None, None, 0, {}, ValueError, r"`max_length` must be a positive integer.*=0"),
        (None, np.full((2, 3), VOCABULARY, "int32"), LENGTH, {}, ValueError,
         r"outside the model's vocabulary \[0, 20\)"),
        (None, None, LENGTH, {"prompt_mask": np.array([[1, 0, 1, 1]] * 5, bool)}, ValueError,
         r"rows \[0, 1, 2, 3, 4\] with a False before a True"),
        (None, None, LENGTH, {"prompt_mask": np.zeros((5, PROMPT), bool)}, ValueError,
         r"without any prompt token"),
        (None, None, LENGTH, {"prompt_mask": np.ones((5, 2), bool)}, ValueError,
         r"shape of `prompts` \(5, 4\)"),
        (None, None, LENGTH, {"batch_size": 0}, ValueError,
         r"`batch_size` must be a positive integer"),
        (None, None, LENGTH, {"seed": -1}, ValueError,
         r"`seed` must be an integer in \[0, 2\*\*31 - 1\]"),
        (None, None, LENGTH, {"sampler": "no such sampler"}, ValueError,
         r"names no KerasHub sampler"),
    ],
)
def test_transfer_set_errors(teacher, prompts, model, bad_prompts, max_length, kwargs, error,
                             match):
    if model is None:
        model = teacher
    elif model == "dense":
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    given = prompts if bad_prompts is None else bad_prompts
    with pytest.raises(error, match=match):
        sequence_kd.teacher_transfer_set(model, given, max_length, **kwargs)


# The on-policy batches.

# On JAX `OnPolicyBatches` refuses to be built (test_backends.py checks the
# error): Keras' JAX `fit` keeps the weights in its compiled step's state, so
# a generation inside fit's input pipeline has no current weights to read.
on_policy = tensorflow_only(
    "OnPolicyBatches generates with the student's weights inside fit's input pipeline; "
    "Keras' JAX fit keeps them in its step state, so the class refuses JAX "
    "(test_backends.py checks the error)")


@on_policy
@pytest.mark.parametrize("kind", ["dataset", "list"])
def test_lmbda_0_gives_the_source_batches_unchanged(student, kind):
    source = _source() if kind == "dataset" else _as_list(_source())
    batches = sequence_kd.OnPolicyBatches(source, student, lmbda=0.0, prompt_length=PROMPT)
    expected = _as_list(_source())
    assert len(batches) == len(expected) == 3
    for index, want in enumerate(expected):
        got = batches[index]
        if kind == "list":
            assert got is source[index]
        tf.nest.map_structure(np.testing.assert_array_equal, got, want)
        assert not batches.is_on_policy(index)


@on_policy
@pytest.mark.parametrize("sampler", [None, "greedy"])
def test_lmbda_1_gives_the_student_continuations_without_labels(student, sampler):
    source = _as_list(_source())
    batches = sequence_kd.OnPolicyBatches(
        source, student, lmbda=1.0, prompt_length=PROMPT, sampler=sampler, seed=3)
    own_sampler = student.sampler
    generated = [batches[index] for index in range(len(batches))]
    assert student.sampler is own_sampler
    for (x, y, weight), (source_x, source_y, source_weight) in zip(generated, source):
        def layout(batch):
            return tf.nest.map_structure(lambda a: (a.shape, a.dtype), batch)

        assert layout((x, y, weight)) == layout((source_x, source_y, source_weight))
        ids, mask = np.asarray(x["token_ids"]), np.asarray(x["padding_mask"])
        # The prompt is the source's, the rest the student's greedy continuation.
        np.testing.assert_array_equal(ids[:, :PROMPT], source_x["token_ids"][:, :PROMPT])
        prompt = np.where(np.arange(LENGTH) < PROMPT, source_x["token_ids"], PAD_ID)
        prompt_mask = np.broadcast_to(np.arange(LENGTH) < PROMPT, ids.shape)
        reference = _greedy_generate(student, prompt.astype("int32"), prompt_mask)
        np.testing.assert_array_equal(ids, reference["token_ids"])
        assert mask.all()
        # No labels: the hard term must not count; weights on generated tokens.
        assert (y == keras_kd.UNLABELLED).all()
        expected = np.zeros(weight.shape, bool)
        expected[:, PROMPT - 1:-1] = True
        np.testing.assert_array_equal(weight, expected)


@on_policy
def test_an_on_policy_batch_keeps_a_short_padded_prompt(student):
    # The source's last batch ends in padding: a row with 2 real tokens
    # keeps those 2 as its prompt and the student continues from there.
    x = {"token_ids": np.zeros((2, LENGTH), "int32"), "padding_mask": np.zeros((2, LENGTH), bool)}
    x["token_ids"][0], x["padding_mask"][0] = np.arange(2, 2 + LENGTH), True
    x["token_ids"][1, :2], x["padding_mask"][1, :2] = [5, 6], True
    y = np.zeros((2, LENGTH), "int32")
    weight = x["padding_mask"].copy()
    batches = sequence_kd.OnPolicyBatches([(x, y, weight)], student, 1.0, PROMPT)
    got_x, _, got_weight = batches[0]
    prompt_mask = np.zeros((2, LENGTH), bool)
    prompt_mask[0, :PROMPT], prompt_mask[1, :2] = True, True
    reference = _greedy_generate(
        student, np.where(prompt_mask, x["token_ids"], PAD_ID), prompt_mask)
    np.testing.assert_array_equal(got_x["token_ids"], reference["token_ids"])
    np.testing.assert_array_equal(got_x["token_ids"][1, :2], [5, 6])
    positions = np.arange(LENGTH)
    last = positions < LENGTH - 1  # The last position has no next token.
    np.testing.assert_array_equal(got_weight[1], (positions >= 1) & last)
    np.testing.assert_array_equal(got_weight[0], (positions >= PROMPT - 1) & last)


@on_policy
def test_the_choice_of_on_policy_batches_is_seeded(student):
    def pattern(seed, epochs=3, lmbda=0.3):
        batches = sequence_kd.OnPolicyBatches(
            _as_list(_source()), student, lmbda=lmbda, prompt_length=PROMPT, seed=seed)
        return [[batches.is_on_policy(i, epoch) for i in range(400)] for epoch in range(epochs)]

    first = pattern(0)
    assert first == pattern(0)
    assert first != pattern(1)
    assert first[0] != first[1]  # Each epoch draws anew.
    fraction = np.mean(first)
    assert abs(fraction - 0.3) < 0.05
    # A draw depends on (seed, epoch, index) only: a larger lmbda adds batches.
    more = pattern(0, lmbda=0.6)
    assert all(m or not f for f_row, m_row in zip(first, more) for f, m in zip(f_row, m_row))


@on_policy
def test_epochs_count_what_keras_begins_and_ends(student):
    batches = sequence_kd.OnPolicyBatches(_source(), student, lmbda=0.5, prompt_length=PROMPT)
    first, cached = batches[0], batches.source_batch(0)
    batches.on_epoch_end()  # Keras' call after reading batches for their shapes.
    assert batches.epoch == 0 and batches.source_batch(0) is cached
    batches.on_epoch_begin()
    tf.nest.map_structure(np.testing.assert_array_equal, batches[0], first)
    batches.on_epoch_end()
    assert batches.epoch == 1 and batches.source_batch(0) is not cached
    draws = [batches.is_on_policy(i) for i in range(50)]
    assert draws == [batches.is_on_policy(i, epoch=1) for i in range(50)]


@on_policy
def test_random_sampling_is_reproducible_per_batch(student):
    batches = sequence_kd.OnPolicyBatches(
        _as_list(_source()), student, lmbda=1.0, prompt_length=PROMPT, sampler="random", seed=0)
    first = [batches[i] for i in range(3)]
    again = [batches[i] for i in reversed(range(3))][::-1]
    for a, b in zip(first, again):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    batches.epoch = 1
    assert any((batches[i][0]["token_ids"] != first[i][0]["token_ids"]).any() for i in range(3))


@on_policy
def test_distiller_fit_on_on_policy_batches(teacher):
    student = tiny_gpt2(2)
    batches = sequence_kd.OnPolicyBatches(
        _source(num_batches=2), student, lmbda=1.0, prompt_length=PROMPT)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), alpha=0.5)
    before = [w.copy() for w in student.get_weights()]
    history = distiller.fit(batches, epochs=1, verbose=0).history
    assert math.isfinite(history["loss"][0]) and history["distillation_loss"][0] > 0
    # Every batch was on-policy, all UNLABELLED: the hard term counted nothing.
    assert history["student_loss"][0] == 0.0
    assert history["loss"][0] == pytest.approx(0.5 * history["distillation_loss"][0], rel=1e-5)
    assert any((a != b).any() for a, b in zip(before, student.get_weights()))
    assert batches.epoch == 1


@on_policy
@pytest.mark.parametrize(
    "source, kwargs, error, match",
    [
        (None, {"lmbda": 1.5}, ValueError, r"`lmbda` must be a number in \[0, 1\].*1.5"),
        (None, {"lmbda": True}, ValueError, r"`lmbda` must be a number"),
        (None, {"prompt_length": 0}, ValueError, r"`prompt_length` must be a positive integer"),
        (None, {"seed": 1.5}, ValueError, r"`seed` must be an integer"),
        ("endless", {}, ValueError, r"finite dataset of known length.*infinite"),
        (7, {}, TypeError, r"`source` must be a finite `tf.data.Dataset`.*int"),
        ([], {}, ValueError, r"`source` has no batch"),
        (None, {"student": "dense"}, TypeError, r"`student` must be a KerasHub CausalLM"),
    ],
)
def test_on_policy_argument_errors(student, source, kwargs, error, match):
    if source is None:
        source = _as_list(_source(num_batches=1))
    elif source == "endless":
        source = _source(num_batches=1).repeat()
    arguments = {"student": student, "lmbda": 0.5, "prompt_length": PROMPT, **kwargs}
    if arguments["student"] == "dense":
        arguments["student"] = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(error, match=match):
        sequence_kd.OnPolicyBatches(source, **arguments)


@on_policy
@pytest.mark.parametrize(
    "batch, prompt_length, match",
    [
        ("pair", PROMPT, r"\(x, y, sample_weight\) batches.*tuple with 2 parts"),
        ("array x", PROMPT, r"dict with 'token_ids' and 'padding_mask'.*ndarray"),
        ("short y", PROMPT, r"all be \(batch, length\).*y \(2, 11\)"),
        ("float y", PROMPT, r"signed integers.*float32"),
        ("full", PROMPT, None),
        ("full", LENGTH, r"1 <= prompt_length <= 11 .*prompt_length=12"),
    ],
)
def test_on_policy_batch_errors(student, batch, prompt_length, match):
    x, y, weight = _as_list(_source(num_batches=1))[0]
    batch = {
        "pair": (x, y),
        "array x": (x["token_ids"], y, weight),
        "short y": (x, y[:, 1:], weight),
        "float y": (x, y.astype("float32"), weight),
        "full": (x, y, weight),
    }[batch]
    batches = sequence_kd.OnPolicyBatches([batch], student, lmbda=0.0, prompt_length=prompt_length)
    if match is None:
        assert batches[0] is batch
        with pytest.raises(IndexError):
            batches[1]
        return
    with pytest.raises(ValueError, match=match):
        batches[0]
