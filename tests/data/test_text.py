"""keras_kd.text: the bundled plays, the character vocabulary, causal-LM
batches (as KerasHub's CausalLMPreprocessor makes them) and bits per
character (against NumPy in float64)."""

import gzip
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.data import text

SHARED_TEXT = "/work/shared/data/shakespeare-10-plays.txt"

# Two famous lines or names per play, each found in that play only.
FAMOUS_WORDS = {
    "Hamlet": ("To be, or not to be", "Alas, poor Yorick"),
    "King Lear": ("Blow, winds, and crack your cheeks", "Cordelia"),
    "Othello": ("green-ey'd monster", "Desdemona"),
    "Romeo and Juliet": ("wherefore art thou Romeo", "Juliet"),
    "Julius Caesar": ("Et tu, Brute", "Friends, Romans, countrymen"),
    "The Merchant of Venice": ("pound of flesh", "quality of mercy"),
    "A Midsummer Night's Dream": ("course of true love never did run smooth", "PUCK"),
    "Much Ado About Nothing": ("Benedick", "DOGBERRY"),
    "Twelfth Night": ("If music be the food of love", "MALVOLIO"),
    "As You Like It": ("All the world's a stage", "Rosalind"),
}
HEADINGS = (
    "HAMLET, PRINCE OF DENMARK",
    "THE TRAGEDY OF KING LEAR",
    "OTHELLO, THE MOOR OF VENICE",
    "ROMEO AND JULIET",
    "JULIUS CAESAR",
    "THE MERCHANT OF VENICE",
    "A MIDSUMMER NIGHT'S DREAM",
    "MUCH ADO ABOUT NOTHING",
    "TWELFTH NIGHT; OR, WHAT YOU WILL",
    "AS YOU LIKE IT",
)


@pytest.fixture(scope="module")
def plays():
    return text.load_plays()


# --- The plays -------------------------------------------------------------


def test_ten_plays_in_file_order(plays):
    assert len(plays) == 10
    assert [title for title, _ in plays] == list(text.PLAY_TITLES) == list(FAMOUS_WORDS)
    # Lossless: the plays joined give back the file.
    assert "".join(play for _, play in plays) == text.load_text()
    assert len(text.load_text()) == 1_317_534


@pytest.mark.parametrize("index", range(10))
def test_each_play_opens_with_its_heading_and_holds_its_famous_words(plays, index):
    title, play = plays[index]
    assert play.startswith(HEADINGS[index] + "\n\nby William Shakespeare\n")
    assert play.count("by William Shakespeare") == 1
    assert len(play) > 90_000
    for words in FAMOUS_WORDS[title]:
        assert words in play
        others = [other for other, other_text in plays if other != title and words in other_text]
        assert others == [], f"{words!r} of {title} also in {others}"


def test_bundled_gzip_equals_the_shared_file_byte_for_byte():
    if not os.path.isfile(SHARED_TEXT):
        pytest.skip(f"{SHARED_TEXT} is not on this machine")
    with open(SHARED_TEXT, "rb") as f:
        shared = f.read()
    with gzip.open(text.shakespeare_path(), "rb") as f:
        bundled = f.read()
    assert bundled == shared
    assert text.load_plays(SHARED_TEXT) == text.load_plays()


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
def test_a_copy_loads_from_txt_or_gz(tmp_path, plays, suffix):
    content = text.load_text().encode("ascii")
    path = tmp_path / f"copy{suffix}"
    path.write_bytes(gzip.compress(content) if suffix.endswith(".gz") else content)
    assert text.load_plays(path) == plays


def _nine_plays():
    return "".join(play for _, play in text.load_plays()[:9]).encode()


@pytest.mark.parametrize(
    "name, content, error, match",
    [
        ("absent.txt", None, FileNotFoundError, r"names no file.*absent\.txt"),
        ("odd.txt", b"Just some text.\n", ValueError, r"found 0 play heading\(s\).*odd\.txt"),
        ("nine.txt", "nine", ValueError, r"found 9 play heading\(s\).*nine\.txt"),
        ("broken.txt.gz", b"not gzip at all", ValueError, r"not readable gzip.*broken\.txt\.gz"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), ValueError, r"not UTF-8.*latin1\.txt"),
    ],
)
def test_a_missing_or_odd_file_gives_a_clear_error(tmp_path, name, content, error, match):
    path = tmp_path / name
    if content == "nine":
        content = _nine_plays()
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=match):
        text.load_plays(str(path))


def test_path_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"Received: path=3 of type int"):
        text.load_text(3)


# --- The vocabulary --------------------------------------------------------


@pytest.fixture(scope="module")
def vocabulary():
    return text.CharacterVocabulary.from_text(text.load_text())


def test_vocabulary_of_the_plays(vocabulary):
    assert vocabulary.vocabulary_size == len(vocabulary) == len(set(text.load_text())) + 2
    ids = vocabulary.encode(text.load_text())
    assert ids.dtype == np.int32 and ids.shape == (1_317_534,)
    assert ids.min() == 2  # No padding and no unknown in the text itself.
    assert vocabulary.decode(ids) == text.load_text()


@pytest.mark.parametrize(
    "sample", ["", "a", "To be, or not to be", "Et tu, Brute!\n[Dies.]", "{PUCK}\n\n"]
)
def test_encode_decode_round_trip(vocabulary, sample):
    ids = vocabulary.encode(sample)
    assert ids.shape == (len(sample),)
    assert vocabulary.decode(ids) == sample
    assert vocabulary.decode(tf.constant(ids, tf.int32)) == sample


def test_ids_padding_and_unknown():
    vocabulary = text.CharacterVocabulary("ba", unknown="?")
    assert (text.PAD_ID, text.OOV_ID) == (0, 1)
    assert vocabulary.encode("abcb").tolist() == [3, 2, 1, 2]
    assert vocabulary.decode([3, 2, 1, 0, 0]) == "ab?"
    assert vocabulary.decode(np.array([[2, 0], [1, 3]])) == ["b", "?a"]
    assert vocabulary.decode([]) == ""


def test_config_round_trip_through_json(vocabulary):
    config = json.loads(json.dumps(vocabulary.get_config()))
    restored = text.CharacterVocabulary.from_config(config)
    assert restored == vocabulary
    assert restored.encode("Hamlet").tolist() == vocabulary.encode("Hamlet").tolist()


@pytest.mark.parametrize(
    "characters, match",
    [
        ("", r"`characters` is empty"),
        ("abca", r"`characters` repeats \['a'\]"),
        (["a", "bc"], r"one-character strings only"),
        (5, r"Received: characters=5"),
    ],
)
def test_bad_characters(characters, match):
    with pytest.raises(ValueError, match=match):
        text.CharacterVocabulary(characters)


@pytest.mark.parametrize(
    "ids, match",
    [([0, 4], r"\[0, 4\).*from 0 to 4"), ([-1], r"from -1 to -1"), ([0.5], r"must be integers")],
)
def test_decode_rejects_foreign_ids(ids, match):
    with pytest.raises(ValueError, match=match):
        text.CharacterVocabulary("ab").decode(ids)


def test_encode_rejects_non_strings():
    with pytest.raises(ValueError, match=r"`text` must be a string.*bytes"):
        text.CharacterVocabulary("ab").encode(b"ab")


# --- Causal-LM batches -----------------------------------------------------


class _CharacterTokenizer:
    """The minimum CausalLMPreprocessor needs of a tokenizer."""

    start_token_id = None
    end_token_id = None
    pad_token_id = text.PAD_ID

    def __init__(self, vocabulary):
        self.vocabulary = vocabulary

    def __call__(self, strings):
        strings = [s.decode() if isinstance(s, bytes) else s for s in np.asarray(strings).tolist()]
        return tf.ragged.constant(
            [self.vocabulary.encode(s).tolist() for s in strings], dtype=tf.int32
        )


def _manual_batches(ids, sequence_length, batch_size, drop_remainder):
    """CausalLMPreprocessor's logic by hand, on windows of L + 1 ids."""
    window = sequence_length + 1
    batches = []
    starts = list(range(0, len(ids), window))
    for first in range(0, len(starts), batch_size):
        group = starts[first : first + batch_size]
        if drop_remainder and len(group) < batch_size:
            break
        token_ids = np.zeros((len(group), window), np.int32)
        padding_mask = np.zeros((len(group), window), bool)
        for row, start in enumerate(group):
            piece = ids[start : start + window]
            token_ids[row, : len(piece)] = piece
            padding_mask[row, : len(piece)] = True
        x = {"token_ids": token_ids[:, :-1], "padding_mask": padding_mask[:, :-1]}
        batches.append((x, token_ids[:, 1:], padding_mask[:, 1:]))
    return batches


def _assert_same_batch(actual, expected):
    (x, y, weight), (x_expected, y_expected, weight_expected) = actual, expected
    assert sorted(x) == ["padding_mask", "token_ids"]
    for got, want in [
        (x["token_ids"], x_expected["token_ids"]),
        (x["padding_mask"], x_expected["padding_mask"]),
        (y, y_expected),
        (weight, weight_expected),
    ]:
        want = tf.convert_to_tensor(want)
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("sequence_length, batch_size", [(5, 2), (7, 3), (1, 4)])
def test_batches_equal_keras_hub_causal_lm_preprocessor(sequence_length, batch_size):
    keras_hub = pytest.importorskip("keras_hub")
    sample = text.load_plays()[3][1][:200] + "!"  # 201 characters: the last window is short.
    vocabulary = text.CharacterVocabulary.from_text(sample)
    preprocessor = keras_hub.models.CausalLMPreprocessor(
        tokenizer=_CharacterTokenizer(vocabulary),
        sequence_length=sequence_length,
        add_start_token=False,
        add_end_token=False,
    )
    window = sequence_length + 1
    windows = [sample[i : i + window] for i in range(0, len(sample), window)]
    assert len(windows[-1]) < window
    batches = list(
        text.causal_lm_dataset(
            vocabulary.encode(sample), sequence_length, batch_size, drop_remainder=False
        )
    )
    assert len(batches) == math.ceil(len(windows) / batch_size)
    for index, batch in enumerate(batches):
        strings = windows[index * batch_size : (index + 1) * batch_size]
        _assert_same_batch(batch, preprocessor(tf.constant(strings)))


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize(
    "num_tokens, sequence_length, batch_size", [(100, 8, 4), (64, 7, 2), (9, 2, 1)]
)
def test_batches_equal_a_manual_construction(
    num_tokens, sequence_length, batch_size, drop_remainder
):
    ids = np.random.default_rng(num_tokens).integers(1, 50, size=num_tokens)
    dataset = text.causal_lm_dataset(
        ids, sequence_length, batch_size, drop_remainder=drop_remainder
    )
    expected = _manual_batches(ids, sequence_length, batch_size, drop_remainder)
    batches = list(dataset)
    assert len(batches) == len(expected) == int(dataset.cardinality())
    for batch, want in zip(batches, expected):
        _assert_same_batch(batch, want)
    spec = dataset.element_spec
    shape = (batch_size if drop_remainder else None, sequence_length)
    assert spec[0]["token_ids"] == tf.TensorSpec(shape, tf.int32)
    assert spec[0]["padding_mask"] == tf.TensorSpec(shape, tf.bool)
    assert spec[1] == tf.TensorSpec(shape, tf.int32)
    assert spec[2] == tf.TensorSpec(shape, tf.bool)


def test_the_last_batch_is_padded_without_drop_remainder(vocabulary):
    ids = vocabulary.encode(text.load_plays()[9][1])  # As You Like It: 125,231 characters.
    sequence_length, batch_size = 64, 32
    batches = list(text.causal_lm_dataset(ids, sequence_length, batch_size, drop_remainder=False))
    windows = math.ceil(len(ids) / (sequence_length + 1))
    assert len(batches) == math.ceil(windows / batch_size)
    x, y, weight = batches[-1]
    assert x["token_ids"].shape[0] == windows % batch_size
    assert not weight.numpy().all()
    assert not x["padding_mask"].numpy()[-1].all()
    np.testing.assert_array_equal(y.numpy()[~weight.numpy()], text.PAD_ID)
    # Every real token is a target once, but each window's first token.
    assert sum(int(w.numpy().sum()) for _, _, w in batches) == len(ids) - windows
    full = list(text.causal_lm_dataset(ids, sequence_length, batch_size))
    assert len(full) == windows // batch_size
    assert all(w.numpy().all() for _, _, w in full)


def _epochs(dataset, count):
    return [np.concatenate([x["token_ids"].numpy() for x, _, _ in dataset]) for _ in range(count)]


def test_shuffle_is_a_function_of_seed_and_epoch():
    ids = np.arange(2, 402)
    make = lambda seed: text.causal_lm_dataset(  # noqa: E731
        ids, 9, 4, shuffle=True, seed=seed, drop_remainder=False
    )
    first, second = _epochs(make(7), 2), _epochs(make(7), 2)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # Reshuffled each epoch.
    assert not np.array_equal(first[0], _epochs(make(8), 1)[0])
    keras.utils.set_random_seed(99)  # The global seed does not matter.
    np.testing.assert_array_equal(first[0], _epochs(make(7), 1)[0])
    plain = _epochs(text.causal_lm_dataset(ids, 9, 4, drop_remainder=False), 1)[0]
    assert not np.array_equal(first[0], plain)
    # The same windows, in another order.
    np.testing.assert_array_equal(np.sort(first[0], axis=0), np.sort(plain, axis=0))
    assert sorted(map(tuple, first[0])) == sorted(map(tuple, plain))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sequence_length=0), r"`sequence_length` must be a positive integer.*=0"),
        (dict(batch_size=2.0), r"`batch_size` must be a positive integer.*=2\.0"),
        (dict(token_ids=np.zeros((2, 5), int)), r"1-D array.*shape \(2, 5\)"),
        (dict(token_ids=np.ones(5, "float32")), r"dtype float32"),
        (dict(token_ids=[]), r"non-empty"),
        (dict(token_ids=[-3, 2]), r"non-negative.*from -3"),
        (dict(seed="a", shuffle=True), r"`seed` must be an integer or None"),
        (dict(batch_size=20), r"fewer than batch_size=20.*drop_remainder=False"),
    ],
)
def test_dataset_argument_errors(kwargs, match):
    arguments = dict(token_ids=np.arange(2, 40), sequence_length=4, batch_size=2)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        text.causal_lm_dataset(**arguments)


# --- Bits per character ----------------------------------------------------


def _tiny_model(vocabulary_size, seed, kernel_initializer="glorot_uniform"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(vocabulary_size, 8),
            keras.layers.Dense(vocabulary_size, kernel_initializer=kernel_initializer),
        ]
    )


def _numpy_bits_per_character(model, dataset):
    embedding, kernel, bias = (np.asarray(w, np.float64) for w in model.get_weights())
    nats, tokens = 0.0, 0.0
    for x, y, weight in dataset:
        logits = embedding[x["token_ids"].numpy()] @ kernel + bias
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        cross_entropy = -np.take_along_axis(log_probs, y.numpy()[..., None], -1)[..., 0]
        weight = weight.numpy().astype(np.float64)
        nats += (cross_entropy * weight).sum()
        tokens += weight.sum()
    return nats / tokens / np.log(2), tokens


@pytest.mark.parametrize("sequence_length, batch_size, seed", [(16, 4, 0), (7, 5, 1), (31, 2, 2)])
def test_bits_per_character_equals_numpy_float64(vocabulary, sequence_length, batch_size, seed):
    ids = vocabulary.encode(text.load_plays()[4][1][:1500])
    dataset = text.causal_lm_dataset(ids, sequence_length, batch_size, drop_remainder=False)
    model = _tiny_model(vocabulary.vocabulary_size, seed)
    # Trained a little, so that the logits are far from uniform.
    model.compile(
        keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    pairs = dataset.map(lambda x, y, w: (x["token_ids"], y, w))
    model.fit(pairs, epochs=2, shuffle=False, verbose=0)
    expected, tokens = _numpy_bits_per_character(model, dataset)
    metrics = text.language_model_metrics(model, dataset)
    assert metrics["tokens"] == tokens < len(ids)  # Padding and window starts excluded.
    assert metrics["bits_per_character"] == pytest.approx(expected, rel=1e-6)
    assert text.bits_per_character(model, dataset) == metrics["bits_per_character"]
    assert metrics["perplexity"] == pytest.approx(2 ** expected, rel=1e-5)
    assert expected < math.log2(vocabulary.vocabulary_size) - 0.5
    # Word pieces: the same nats shared over more characters.
    halved = text.language_model_metrics(model, dataset, num_characters=int(2 * tokens))
    assert halved["bits_per_character"] == pytest.approx(expected / 2, rel=1e-6)
    assert halved["bits_per_token"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "kernel_initializer, tolerance", [("zeros", 1e-9), ("glorot_uniform", 0.05)]
)
def test_an_untrained_model_gives_about_log2_of_the_vocabulary(
    vocabulary, kernel_initializer, tolerance
):
    ids = vocabulary.encode(text.load_plays()[0][1][:3000])
    dataset = text.causal_lm_dataset(ids, 32, 8, drop_remainder=False)
    model = _tiny_model(vocabulary.vocabulary_size, 0, kernel_initializer)
    bits = text.bits_per_character(model, dataset)
    assert bits == pytest.approx(math.log2(vocabulary.vocabulary_size), abs=tolerance)


def test_a_keras_hub_gpt2_causal_lm_trains_and_evaluates_on_the_batches(vocabulary):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    ids = vocabulary.encode(text.load_plays()[2][1][:2000])
    dataset = text.causal_lm_dataset(ids, 16, 8, drop_remainder=False)
    before = text.language_model_metrics(model, dataset)
    uniform = math.log2(vocabulary.vocabulary_size)
    assert before["bits_per_character"] == pytest.approx(uniform, abs=0.1)
    # The dict inputs go to the model as they are; the same number by hand.
    nats = 0.0
    for x, y, weight in dataset:
        logits = np.asarray(model(x), np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        cross_entropy = -np.take_along_axis(log_probs, y.numpy()[..., None], -1)[..., 0]
        nats += (cross_entropy * weight.numpy()).sum()
    assert before["nats"] == pytest.approx(nats, rel=1e-6)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    model.fit(dataset, epochs=3, shuffle=False, verbose=0)
    assert text.bits_per_character(model, dataset) < before["bits_per_character"] - 0.5


@pytest.mark.parametrize(
    "element, match",
    [((tf.zeros((1, 2), tf.int32),), r"\(x, y\) or \(x, y, sample_weight\).*1 parts")],
)
def test_metrics_argument_errors(element, match):
    model = _tiny_model(4, 0)
    dataset = tf.data.Dataset.from_tensors(element)
    with pytest.raises(ValueError, match=match):
        text.language_model_metrics(model, dataset)


def test_no_weighted_token_and_bad_num_characters():
    model = _tiny_model(4, 0)
    ids = tf.zeros((1, 3), tf.int32)
    dataset = tf.data.Dataset.from_tensors((ids, ids, tf.zeros((1, 3))))
    with pytest.raises(ValueError, match=r"no weighted target token"):
        text.bits_per_character(model, dataset)
    with pytest.raises(ValueError, match=r"`num_characters` must be a positive integer.*=0"):
        text.bits_per_character(model, dataset, num_characters=0)
