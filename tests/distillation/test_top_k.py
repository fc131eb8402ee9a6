import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import compiled
from conftest import gradients
from conftest import numpy
from conftest import runtime_check_error
from conftest import tensorflow_only
from conftest import value_and_gradients

import keras_kd
from keras_kd.distillation import top_k
from keras_kd.distillation.cache import CacheError
from keras_kd.distillation.cache import fingerprint_model

VOCAB = 50
TIME = 6


# --- float64 NumPy references ------------------------------------------------


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def dense_kl(teacher, student, temperature):
    log_p = _log_softmax(np.float64(teacher) / temperature)
    log_q = _log_softmax(np.float64(student) / temperature)
    return temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)


def _top(teacher, k):
    return np.argsort(-np.float64(teacher), axis=-1, kind="stable")[..., :k]


def bin_kl(teacher, student, k, temperature):
    """KL over the k teacher-top tokens plus one tail bin, tails summed exactly."""
    index = _top(teacher, k)
    p = np.exp(_log_softmax(np.float64(teacher) / temperature))
    q = np.exp(_log_softmax(np.float64(student) / temperature))
    mask = np.zeros(p.shape, bool)
    np.put_along_axis(mask, index, True, axis=-1)
    p_k, q_k = np.take_along_axis(p, index, -1), np.take_along_axis(q, index, -1)
    p_tail, q_tail = np.where(mask, 0, p).sum(-1), np.where(mask, 0, q).sum(-1)
    kl = (p_k * np.log(p_k / q_k)).sum(-1)
    tail = np.where(p_tail > 0, p_tail * np.log(np.where(p_tail > 0, p_tail, 1) / q_tail), 0)
    return temperature**2 * (kl + tail)


def renormalized_kl(teacher, student, k, temperature):
    index = _top(teacher, k)
    t = np.take_along_axis(np.float64(teacher), index, -1)
    s = np.take_along_axis(np.float64(student), index, -1)
    return dense_kl(t, s, temperature)


REFERENCES = {"bin": bin_kl, "renormalize": renormalized_kl}


def _logits(shape, seed, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype("float32")


def _loss(teacher, student, k, temperature, tail, precision="float32"):
    indices, values, log_normalizer = top_k.top_k_logits(teacher, k, temperature)
    return top_k.top_k_kl_divergence(
        indices, values, log_normalizer, student, temperature, tail=tail,
        cache_temperature=temperature, precision=precision,
    )


# --- top_k_logits and the divergence -------------------------------------------


def test_top_k_logits_shapes_order_and_normalizer():
    logits = _logits((2, TIME, VOCAB), 0)
    indices, values, log_normalizer = top_k.top_k_logits(logits, 5, temperature=2.0)
    assert keras.backend.standardize_dtype(indices.dtype) == "int32"
    assert indices.shape == (2, TIME, 5)
    assert values.shape == (2, TIME, 5) and log_normalizer.shape == (2, TIME)
    np.testing.assert_array_equal(numpy(indices), _top(logits, 5))
    assert np.all(np.diff(numpy(values), axis=-1) <= 0)
    np.testing.assert_allclose(
        numpy(values), np.take_along_axis(logits, _top(logits, 5), -1)
    )
    expected = np.log(np.exp(np.float64(logits) / 2.0).sum(-1))
    np.testing.assert_allclose(numpy(log_normalizer), expected, rtol=1e-6)


@pytest.mark.parametrize("k", [0, VOCAB + 1, 2.0])
def test_top_k_logits_refuses_bad_k(k):
    with pytest.raises(ValueError, match="`k` must"):
        top_k.top_k_logits(_logits((2, VOCAB), 0), k)


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_k_equal_to_vocab_is_the_dense_kl(tail, temperature):
    teacher, student = _logits((3, TIME, VOCAB), 1), _logits((3, TIME, VOCAB), 2)
    loss = _loss(teacher, student, VOCAB, temperature, tail)
    assert loss.shape == (3, TIME)
    np.testing.assert_allclose(
        numpy(loss), dense_kl(teacher, student, temperature), rtol=2e-5, atol=1e-6
    )


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_k_below_vocab_matches_the_numpy_reference(tail, k, temperature):
    teacher, student = _logits((2, TIME, VOCAB), 3), _logits((2, TIME, VOCAB), 4)
    loss = _loss(teacher, student, k, temperature, tail)
    expected = REFERENCES[tail](teacher, student, k, temperature)
    np.testing.assert_allclose(numpy(loss), expected, rtol=1e-4, atol=1e-6)
    if tail == "bin":  # The tail bin's KL bounds the dense KL from below.
        assert np.all(expected <= dense_kl(teacher, student, temperature) + 1e-12)


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
def test_gradient_matches_finite_differences_of_the_reference(tail):
    teacher, student = _logits((1, 2, 7), 5), np.float64(_logits((1, 2, 7), 6))
    k, temperature = 3, 1.5
    indices, values, log_normalizer = top_k.top_k_logits(teacher, k, temperature)
    (gradient,) = gradients(
        lambda variable: keras.ops.sum(top_k.top_k_kl_divergence(
            indices, keras.ops.cast(values, "float64"),
            keras.ops.cast(log_normalizer, "float64"),
            variable, temperature, tail=tail, cache_temperature=temperature,
            precision="float64",
        )), [student], dtype="float64")
    numeric = np.zeros_like(student)
    step = 1e-6
    for position in np.ndindex(student.shape):
        plus, minus = student.copy(), student.copy()
        plus[position] += step
        minus[position] -= step
        reference = REFERENCES[tail]
        numeric[position] = (
            reference(teacher, plus, k, temperature).sum()
            - reference(teacher, minus, k, temperature).sum()
        ) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, atol=1e-6)
    assert np.abs(gradient).max() > 1e-3


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
@pytest.mark.parametrize("k, scale", [(VOCAB, 2.0), (4, 100.0), (VOCAB, 100.0)])
def test_gradients_stay_finite_when_tails_vanish(tail, k, scale):
    """k = vocab (tail exactly 0) and near one-hot logits (tails ~1e-40)."""
    teacher = _logits((2, TIME, VOCAB), 7, scale)
    student = _logits((2, TIME, VOCAB), 8, scale)
    loss, (gradient,), _ = value_and_gradients(
        lambda s: (keras.ops.sum(_loss(teacher, s, k, 1.0, tail)), None), [student])
    loss = numpy(_loss(teacher, student, k, 1.0, tail))
    assert np.all(np.isfinite(loss)) and np.all(loss >= 0)
    assert np.all(np.isfinite(gradient))
    if k == VOCAB:
        np.testing.assert_allclose(
            loss, dense_kl(teacher, student, 1.0), rtol=1e-4, atol=1e-4
        )


def test_bin_refuses_another_temperature_than_the_cache():
    teacher, student = _logits((2, TIME, VOCAB), 9), _logits((2, TIME, VOCAB), 10)
    indices, values, log_normalizer = top_k.top_k_logits(teacher, 5, temperature=2.0)
    with pytest.raises(ValueError, match=r"cache_temperature=2\.0.*temperature=3\.0"):
        top_k.top_k_kl_divergence(
            indices, values, log_normalizer, student, 3.0, cache_temperature=2.0
        )
    # A temperature variable eagerly, and a symbolic temperature in a
    # compiled function (a tf.function, jax.jit).
    variable = keras.Variable(3.0)
    with pytest.raises(ValueError, match="tail='renormalize'"):
        top_k.top_k_kl_divergence(
            indices, values, log_normalizer, student, variable, cache_temperature=2.0
        )

    loss = compiled(lambda t: top_k.top_k_kl_divergence(
        indices, values, log_normalizer, student, t, cache_temperature=2.0
    ))

    with pytest.raises(runtime_check_error(), match="cache_temperature"):
        numpy(loss(keras.ops.convert_to_tensor(3.0)))
    np.testing.assert_allclose(
        numpy(loss(keras.ops.convert_to_tensor(2.0))), bin_kl(teacher, student, 5, 2.0),
        rtol=1e-4, atol=1e-6
    )
    # renormalize works at any temperature.
    renormalized = top_k.top_k_kl_divergence(
        indices, values, log_normalizer, student, 3.0, tail="renormalize",
        cache_temperature=2.0,
    )
    np.testing.assert_allclose(
        numpy(renormalized), renormalized_kl(teacher, student, 5, 3.0), rtol=1e-4, atol=1e-6
    )


def test_unknown_tail_is_refused():
    logits = _logits((2, VOCAB), 0)
    with pytest.raises(ValueError, match="`tail` must be one of"):
        top_k.top_k_kl_divergence(*top_k.top_k_logits(logits, 2), logits, 1.0, tail="drop")


def test_bytes_per_token():
    assert top_k.bytes_per_token(16) == 16 * 4 + 16 * 2 + 4
    assert top_k.bytes_per_token(8, "float32") == 8 * 4 + 8 * 4 + 4
    assert top_k.bytes_per_token(8, np.float32) == 68
    with pytest.raises(ValueError, match="values_dtype"):
        top_k.bytes_per_token(8, "bfloat16")


# --- Storage -----------------------------------------------------------------


def _teacher(seed=20):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((TIME,), dtype="int32"),
        keras.layers.Embedding(VOCAB, 8),
        keras.layers.Dense(VOCAB),
    ])


@pytest.fixture(scope="module")
def teacher():
    return _teacher()


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, size=(20, TIME)).astype("int32")


def _concatenated(cache):
    shards = [cache.shard(n) for n in range(cache.num_shards)]
    return {key: np.concatenate([s[key] for s in shards]) for key in top_k.TOP_K_KEYS}


# values_dtype x center_values in full (centering changes what float16
# rounds). The inputs, arrays or a dataset, only feed the writer its batches
# (fingerprinted alike): each of the two meets both values_dtypes and both
# center_values, not all four pairs.
@pytest.mark.parametrize("values_dtype, center_values, as_dataset", [
    ("float16", True, False), ("float16", False, True),
    ("float32", True, True), ("float32", False, False)])
def test_round_trip_equals_top_k_logits(
    teacher, tokens, tmp_path, values_dtype, center_values, as_dataset
):
    k, temperature = 7, 2.0
    inputs = tf.data.Dataset.from_tensor_slices(tokens).batch(4) if as_dataset else tokens
    path = tmp_path / "cache"
    written = top_k.write_top_k_cache(
        teacher, inputs, path, k, temperature=temperature,
        batch_size=None if as_dataset else 4, shard_tokens=3 * TIME,
        values_dtype=values_dtype, center_values=center_values,
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert written.manifest == manifest
    assert (manifest["k"], manifest["temperature"], manifest["vocab_size"]) == (k, 2.0, VOCAB)
    assert manifest["num_examples"] == 20 and manifest["num_tokens"] == 20 * TIME
    assert [s["examples"] for s in manifest["shards"]] == [3] * 6 + [2]
    assert manifest["inputs_fingerprint"] == top_k.fingerprint_inputs(tokens)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

    cache = top_k.read_top_k_cache(path, teacher=teacher, inputs_fingerprint=top_k.fingerprint_inputs(tokens))
    stored = _concatenated(cache)
    assert isinstance(cache.shard(0)["values"], np.memmap)
    assert stored["values"].dtype == values_dtype and stored["indices"].dtype == np.int32
    indices, values, log_normalizer = (
        numpy(a) for a in top_k.top_k_logits(teacher(tokens), k, temperature)
    )
    if center_values:
        log_normalizer = log_normalizer - values[..., 0] / temperature
        values = values - values[..., :1]
    np.testing.assert_array_equal(stored["indices"], indices)
    tolerance = 2e-3 if values_dtype == "float16" else 1e-6
    np.testing.assert_allclose(stored["values"], values, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(stored["log_normalizer"], log_normalizer, rtol=1e-6, atol=1e-6)
    # The cached losses are the losses of the teacher's own top k.
    student = _logits((20, TIME, VOCAB), 11)
    for tail in ("bin", "renormalize"):
        from_cache = top_k.top_k_kl_divergence(
            **stored, student_logits=student, temperature=temperature, tail=tail,
            cache_temperature=cache.temperature,
        )
        expected = REFERENCES[tail](numpy(teacher(tokens)), student, k, temperature)
        np.testing.assert_allclose(numpy(from_cache), expected, rtol=1e-2 if values_dtype == "float16" else 1e-4)


def test_a_changed_teacher_is_refused(teacher, tokens, tmp_path):
    path = tmp_path / "cache"
    top_k.write_top_k_cache(teacher, tokens, path, 4, batch_size=8)
    changed = _teacher()
    weights = changed.get_weights()
    weights[-1][0] += 1e-3
    changed.set_weights(weights)
    with pytest.raises(CacheError, match="another teacher.*rebuild=True"):
        top_k.read_top_k_cache(path, teacher=changed)
    with pytest.raises(CacheError, match="another teacher"):
        top_k.write_top_k_cache(changed, tokens, path, 4, batch_size=8)
    rebuilt = top_k.write_top_k_cache(changed, tokens, path, 4, batch_size=8, rebuild=True)
    assert rebuilt.manifest["teacher_fingerprint"] == fingerprint_model(changed)
    top_k.read_top_k_cache(path, teacher=changed)
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_an_existing_cache_is_reused_or_refused(teacher, tokens, tmp_path, monkeypatch):
    path = tmp_path / "cache"
    top_k.write_top_k_cache(teacher, tokens, path, 4, batch_size=8)
    mtime = os.path.getmtime(path / "manifest.json")
    # Same teacher, inputs (batched otherwise) and settings: kept as is.
    top_k.write_top_k_cache(teacher, tokens, path, 4, batch_size=5)
    assert os.path.getmtime(path / "manifest.json") == mtime
    with pytest.raises(CacheError, match="other settings"):
        top_k.write_top_k_cache(teacher, tokens, path, 5, batch_size=8)
    with pytest.raises(CacheError, match="other inputs"):
        top_k.write_top_k_cache(teacher, tokens[::-1].copy(), path, 4, batch_size=8)


@pytest.mark.parametrize("verify", ["open", "lazy"])
def test_a_corrupted_shard_is_detected_by_its_checksum(teacher, tokens, tmp_path, verify):
    path = tmp_path / "cache"
    top_k.write_top_k_cache(teacher, tokens, path, 4, batch_size=8, shard_tokens=10 * TIME)
    shard_file = path / "shard-00001-values.npy"
    data = bytearray(shard_file.read_bytes())
    data[-3] ^= 0xFF  # A value's byte: the header, shape and size stay valid.
    shard_file.write_bytes(bytes(data))
    if verify == "open":
        with pytest.raises(CacheError, match="checksum of shard-00001-values.npy"):
            top_k.read_top_k_cache(path)
    else:
        dataset = top_k.top_k_dataset(path, verify="lazy")
        with pytest.raises(Exception, match="checksum of shard-00001-values.npy"):
            list(dataset)
    # Without verification the damage goes unseen: shapes are still right.
    top_k.read_top_k_cache(path, verify="none").shard(1)


def test_a_missing_or_foreign_directory_is_a_cache_error(tmp_path):
    with pytest.raises(CacheError, match="manifest.json"):
        top_k.read_top_k_cache(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CacheError, match="format version"):
        top_k.read_top_k_cache(tmp_path)


def test_an_interrupted_write_leaves_nothing(teacher, tokens, tmp_path):
    def batches():
        yield tokens[:4]
        yield tokens[4:8]
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError, match="reader died"):
        top_k.write_top_k_cache(teacher, batches(), tmp_path / "cache", 4, shard_tokens=TIME)
    assert os.listdir(tmp_path) == []


def _dict_teacher():
    keras.utils.set_random_seed(30)
    token_ids = keras.Input((TIME,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((TIME,), dtype="bool", name="padding_mask")
    hidden = keras.layers.Embedding(VOCAB, 8)(token_ids)
    hidden = hidden * keras.ops.cast(padding_mask, "float32")[..., None]
    logits = keras.layers.Dense(VOCAB)(hidden)
    return keras.Model(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        {"logits": logits, "hidden": hidden},
    )


def test_the_dataset_zips_with_the_inputs_and_batches(tokens, tmp_path):
    teacher = _dict_teacher()
    mask = np.ones_like(tokens, bool)
    mask[:, -2:] = False
    x = {"token_ids": tokens, "padding_mask": mask}
    y = np.roll(tokens, -1, axis=1)
    inputs = tf.data.Dataset.from_tensor_slices(x)
    with pytest.raises(ValueError, match="output='hidden'|output="):
        top_k.write_top_k_cache(teacher, inputs.batch(8), tmp_path / "c", 4)
    cache = top_k.write_top_k_cache(
        teacher, inputs.batch(8), tmp_path / "cache", 4, output="logits",
        shard_tokens=7 * TIME,
    )
    assert cache.num_shards == 3
    teacher_top_k = top_k.top_k_dataset(tmp_path / "cache", teacher=teacher)
    assert teacher_top_k.element_spec["indices"].shape == (TIME, 4)
    train = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices((x, y)), teacher_top_k
    ).map(lambda xy, t: (xy[0], {"labels": xy[1], "teacher_top_k": t})).batch(6)
    batches = list(train)
    assert [len(b[0]["token_ids"]) for b in batches] == [6, 6, 6, 2]
    batch_x, batch_y = batches[1]
    np.testing.assert_array_equal(batch_x["token_ids"], tokens[6:12])
    np.testing.assert_array_equal(batch_y["labels"], y[6:12])
    expected = numpy(top_k.top_k_logits(teacher(x)["logits"], 4)[0])[6:12]
    np.testing.assert_array_equal(batch_y["teacher_top_k"]["indices"], expected)
    student = keras.Sequential([keras.layers.Embedding(VOCAB, 4), keras.layers.Dense(VOCAB)])
    # The elements carry the cache's temperature: `**element` passes it.
    np.testing.assert_array_equal(batch_y["teacher_top_k"]["cache_temperature"], [1.0] * 6)
    loss = top_k.top_k_kl_divergence(
        **batch_y["teacher_top_k"], student_logits=student(numpy(batch_x["token_ids"])),
        temperature=1.0,
    )
    assert loss.shape == (6, TIME) and np.all(np.isfinite(numpy(loss)))


@pytest.mark.parametrize("batch_size", [1, 3, 7, 8, 20, 64])
@pytest.mark.parametrize("drop_remainder", [False, True])
def test_batched_dataset_equals_the_unbatched_one_batched(
    seven_example_shards, batch_size, drop_remainder
):
    # Shards of 7 examples: batch sizes below, at, across and above them.
    cache = seven_example_shards
    assert [s["examples"] for s in cache.manifest["shards"]] == [7, 7, 6]
    expected = list(top_k.top_k_dataset(cache).batch(batch_size, drop_remainder=drop_remainder))
    batched = top_k.top_k_dataset(cache, batch_size=batch_size, drop_remainder=drop_remainder)
    got = list(batched)
    assert len(got) == len(expected) == (20 // batch_size if drop_remainder
                                         else -(-20 // batch_size))
    for got_batch, expected_batch in zip(got, expected):
        for key in top_k.TOP_K_KEYS:
            np.testing.assert_array_equal(got_batch[key], expected_batch[key])
    leading = batched.element_spec["indices"].shape[0]
    assert leading == (batch_size if drop_remainder else None)


@pytest.mark.parametrize("batch_size", [0, -2, 2.0, True, "8"])
def test_batched_dataset_refuses_a_bad_batch_size(seven_example_shards, batch_size):
    cache = seven_example_shards
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer.*Received"):
        top_k.top_k_dataset(cache, batch_size=batch_size)


def test_batches_of_several_lengths_go_to_separate_shards(tmp_path):
    keras.utils.set_random_seed(40)
    teacher = keras.Sequential([keras.layers.Embedding(VOCAB, 8), keras.layers.Dense(VOCAB)])
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, VOCAB, (3, length)).astype("int32") for length in (4, 4, 9)]
    cache = top_k.write_top_k_cache(teacher, batches, tmp_path / "cache", 3)
    assert [s["example_shape"] for s in cache.manifest["shards"]] == [[4], [9]]
    examples = list(top_k.top_k_dataset(cache))
    assert [e["indices"].shape[0] for e in examples] == [4] * 6 + [9] * 3
    np.testing.assert_array_equal(
        examples[-1]["indices"], top_k.top_k_logits(teacher(batches[2]), 3)[0][-1]
    )
    # Batched, a batch never mixes lengths: the run of 4s ends short.
    sizes = [(len(b["indices"]), b["indices"].shape[1])
             for b in top_k.top_k_dataset(cache, batch_size=4)]
    assert sizes == [(4, 4), (2, 4), (3, 9)]


def test_fingerprint_inputs_ignores_batching_not_content(tokens):
    one = top_k.fingerprint_inputs(tf.data.Dataset.from_tensor_slices(tokens).batch(3))
    assert one == top_k.fingerprint_inputs(tokens, batch_size=7)
    changed = tokens.copy()
    changed[5, 2] += 1
    assert one != top_k.fingerprint_inputs(changed)
    assert one != top_k.fingerprint_inputs(tokens[:-1])


# ---------------------------------------------------------------------------
# The tf.data reader against the stored arrays.


@pytest.fixture(scope="module")
def seven_example_shards(teacher, tokens, tmp_path_factory):
    """One cache (read only) for the tests of batching: shards of 7, 7, 6."""
    return top_k.write_top_k_cache(teacher, tokens, tmp_path_factory.mktemp("top_k") / "cache",
                                   5, batch_size=4, shard_tokens=7 * TIME)


# The reader passes the stored arrays as they are: `center_values` changes
# what the writer stores, not how it is read (the round trip above checks
# it), so its two values ride with the two values_dtypes.
STORED_SETTINGS = (("float16", True), ("float32", False))


@pytest.fixture(scope="module")
def stored_caches(teacher, tokens, tmp_path_factory):
    """One cache per (values_dtype, center_values), written once, read only."""
    root = tmp_path_factory.mktemp("stored")
    return {
        (values_dtype, center_values): top_k.write_top_k_cache(
            teacher, tokens, root / f"{values_dtype}-{center_values}", 5, temperature=2.0,
            batch_size=8, shard_tokens=3 * TIME, values_dtype=values_dtype,
            center_values=center_values)
        for values_dtype, center_values in STORED_SETTINGS
    }


@pytest.mark.parametrize("values_dtype, center_values", STORED_SETTINGS)
@pytest.mark.parametrize("batch_size", [None, 4])
def test_the_dataset_holds_the_stored_arrays(
    stored_caches, values_dtype, center_values, batch_size
):
    cache = stored_caches[values_dtype, center_values]
    stored = _concatenated(cache)  # Through np.load's memory maps.
    dataset = top_k.top_k_dataset(cache, batch_size=batch_size)
    elements = list(dataset)
    if batch_size is None:
        read = {key: np.stack([e[key].numpy() for e in elements]) for key in elements[0]}
    else:
        read = {key: np.concatenate([e[key].numpy() for e in elements]) for key in elements[0]}
    assert sorted(read) == sorted(
        top_k.TOP_K_KEYS + (top_k.CACHE_TEMPERATURE_KEY, top_k.VOCAB_SIZE_KEY))
    assert set(read[top_k.VOCAB_SIZE_KEY].tolist()) == {VOCAB}
    for key in top_k.TOP_K_KEYS:
        assert read[key].dtype == stored[key].dtype
        np.testing.assert_array_equal(read[key], stored[key])
    np.testing.assert_array_equal(read["cache_temperature"], np.full(20, 2.0, "float32"))
    assert int(dataset.cardinality()) == (20 if batch_size is None else 5)


def test_the_dataset_keeps_its_order_when_tf_data_may_reorder(teacher, tokens, tmp_path):
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path / "cache", 3, batch_size=8,
                                    shard_tokens=2 * TIME)
    options = tf.data.Options()
    options.deterministic = False
    dataset = top_k.top_k_dataset(cache, batch_size=2).with_options(options)
    read = np.concatenate([e["indices"].numpy() for e in dataset])
    np.testing.assert_array_equal(read, _concatenated(cache)["indices"])


def test_a_truncated_shard_is_a_cache_error_even_unverified(teacher, tokens, tmp_path):
    path = tmp_path / "cache"
    top_k.write_top_k_cache(teacher, tokens, path, 3, batch_size=8, shard_tokens=5 * TIME)
    shard_file = path / "shard-00001-indices.npy"
    shard_file.write_bytes(shard_file.read_bytes()[:-10])
    with pytest.raises(CacheError, match=r"truncated or padded shard file shard-00001-indices"):
        top_k.top_k_dataset(path, verify="none")


@pytest.mark.parametrize("as_dataset", [False, True])
def test_writing_refuses_x_y_tuples(teacher, tokens, tmp_path, as_dataset):
    data = (tokens, tokens)
    if as_dataset:
        data = tf.data.Dataset.from_tensor_slices(data).batch(4)
    with pytest.raises(ValueError, match=r"holds tuples.*model inputs only"):
        top_k.write_top_k_cache(teacher, data, tmp_path / "cache", 3)


# ---------------------------------------------------------------------------
# A Distiller on a top-k cache: the cache's temperature travels with it.


def _lm(seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((TIME,), dtype="int32"),
        keras.layers.Embedding(VOCAB, 8),
        keras.layers.Dense(VOCAB),
    ])


@pytest.fixture(scope="module")
def cached_batches(teacher, tokens, tmp_path_factory):
    """Batches of 5 with the teacher's top 6 at temperature 2.0, from one
    cache written once (the tests only read it)."""
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path_factory.mktemp("cached") / "cache",
                                    6, temperature=2.0, batch_size=8)
    labels = np.roll(tokens, -1, axis=1)
    inputs = tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(5)
    return tf.data.Dataset.zip(inputs, top_k.top_k_dataset(cache, batch_size=5)).map(
        lambda xy, t: (xy[0], keras_kd.targets(xy[1], teacher_top_k=t)))


def _top_k_distiller(teacher, loss=None, temperature=2.0, jit_compile=False, run_eagerly=False):
    distiller = keras_kd.Distiller(student=_lm(3), teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5,
                      temperature=temperature, distillation_loss_fn=loss,
                      jit_compile=jit_compile, run_eagerly=run_eagerly)
    return distiller


def test_the_default_loss_reads_the_cache_and_its_temperature(teacher, cached_batches):
    logs = {}
    # The explicit loss, the reference, in eager steps: its traced step is
    # test_hand_made_batches_need_a_cache_temperature's (`told`).
    for name, loss, run_eagerly in (
            ("default", None, False),
            ("explicit", keras_kd.TopKKLDivergence(cache_temperature=2.0), True)):
        logs[name] = _top_k_distiller(teacher, loss, run_eagerly=run_eagerly).fit(
            cached_batches, epochs=1, verbose=0).history
    assert float(logs["default"]["distillation_loss"][0]) > 0.0
    for key in ("loss", "distillation_loss"):  # Traced against eager float32.
        assert float(logs["default"][key][0]) == pytest.approx(
            float(logs["explicit"][key][0]), rel=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("call", ["fit", "train_on_batch"])
def test_a_temperature_other_than_the_caches_is_refused(
    teacher, cached_batches, jit_compile, call, library_defaults
):
    # Before, the default cache_temperature=1.0 met a cache written at 2.0
    # and the loss came out ~10x too large without a word; under XLA the
    # in-graph assert is dropped, so the check runs in Python.
    distiller = _top_k_distiller(teacher, temperature=1.0, jit_compile=jit_compile)
    assert distiller.jit_compile == jit_compile  # XLA on, where asked (no op determinism).
    with pytest.raises(ValueError, match=r"cache_temperature=2\.0.*Received: temperature=1\.0"):
        if call == "fit":
            distiller.fit(cached_batches, epochs=1, verbose=0)
        else:
            x, y = next(iter(cached_batches))
            distiller.train_on_batch(x, y)
    if call == "train_on_batch":
        # Refused in Python before a step was built, alike with XLA or
        # without: the fit from the state it leaves runs in
        # [train_on_batch-False], an XLA fit after a refusal in [fit-True]
        # (an XLA compile, ~2 s, is spared here).
        assert distiller.train_function is None
        if jit_compile:
            return
    distiller.temperature = 2.0
    distiller.fit(cached_batches, epochs=1, verbose=0)


def test_a_temperature_change_during_a_cached_fit_is_refused(teacher, cached_batches):
    distiller = _top_k_distiller(teacher)

    class Heat(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            distiller.temperature = 4.0

    with pytest.raises(ValueError, match=r"cache_temperature=2\.0.*Received: temperature=4\.0"):
        distiller.fit(cached_batches, epochs=2, verbose=0, callbacks=[Heat()])
    # The tie ends with the fit.
    distiller.temperature = 4.0
    assert distiller.temperature == 4.0


def test_an_explicit_cache_temperature_must_match_the_batches(teacher, cached_batches):
    distiller = _top_k_distiller(teacher, keras_kd.TopKKLDivergence(cache_temperature=1.0))
    with pytest.raises(ValueError, match=r"cache_temperature=1\.0\) was given.*temperature=2\.0"):
        distiller.fit(cached_batches, epochs=1, verbose=0)


def test_hand_made_batches_need_a_cache_temperature(teacher, tokens):
    logits = teacher(tokens)
    indices, values, log_normalizer = top_k.top_k_logits(logits, 4, temperature=2.0)
    by_hand = {"indices": indices, "values": values, "log_normalizer": log_normalizer}
    labels = np.roll(tokens, -1, axis=1)
    distiller = _top_k_distiller(teacher)
    with pytest.raises(ValueError, match=r"carry no `cache_temperature`.*cache_temperature=<"):
        distiller.train_on_batch(tokens, keras_kd.targets(labels, teacher_top_k=by_hand))
    told = _top_k_distiller(teacher, keras_kd.TopKKLDivergence(cache_temperature=2.0))
    told.train_on_batch(tokens, keras_kd.targets(labels, teacher_top_k=by_hand))
    # A scalar cache_temperature in hand-made arrays is read, and checked.
    carried = {**by_hand, "cache_temperature": 2.0}
    cold = _top_k_distiller(teacher, temperature=1.0)
    with pytest.raises(ValueError, match=r"cache_temperature=2\.0.*Received: temperature=1\.0"):
        cold.train_on_batch(tokens, keras_kd.targets(labels, teacher_top_k=carried))


def test_chunks_are_complete_teacher_top_k_dicts(teacher, tokens, tmp_path):
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path / "cache", 3, temperature=2.0,
                                    batch_size=8, shard_tokens=7 * TIME)
    chunks = list(cache.chunks(size=6))
    assert [len(c["indices"]) for c in chunks] == [6, 6, 6, 2]
    stored = _concatenated(cache)
    for key in top_k.TOP_K_KEYS:
        np.testing.assert_array_equal(np.concatenate([c[key] for c in chunks]), stored[key])
    np.testing.assert_array_equal(np.concatenate([c["cache_temperature"] for c in chunks]),
                                  np.full(20, 2.0, "float32"))


@tensorflow_only("string inputs: jax.jit takes no string arrays (the JAX writer jits the teacher)")
def test_a_cache_of_text_inputs_is_reused_for_the_same_text(tmp_path):
    """A teacher that takes strings: writing the cache again with the same
    text reopens it. Before this round the inputs' fingerprint hashed the
    pointers of the object arrays `tf.string` converts to, and the second
    call raised "made for other inputs"."""
    keras.utils.set_random_seed(40)
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.TextVectorization(
        vocabulary=["a", "b", "c", "d"], output_sequence_length=3)(inputs)
    logits = keras.layers.Dense(6)(keras.layers.Embedding(6, 8)(ids))
    teacher = keras.Model(inputs, logits)
    text = tf.constant([["a b"], ["c d a"], ["d"], ["b b c"], ["a"]])
    path = tmp_path / "text"
    first = top_k.write_top_k_cache(teacher, tf.data.Dataset.from_tensor_slices(text).batch(2),
                                    path, k=3, values_dtype="float32")
    again = top_k.write_top_k_cache(teacher, np.array([["a b"], ["c d a"], ["d"], ["b b c"], ["a"]]),
                                    path, k=3, batch_size=3, values_dtype="float32")
    assert again.manifest["inputs_fingerprint"] == first.manifest["inputs_fingerprint"]
    indices, values, _ = (numpy(a) for a in top_k.top_k_logits(teacher(text, training=False), 3))
    stored = _concatenated(again)
    np.testing.assert_array_equal(stored["indices"], indices)
    np.testing.assert_allclose(stored["values"], values - values[..., :1], rtol=1e-6, atol=1e-6)
    with pytest.raises(CacheError, match="other inputs"):
        top_k.write_top_k_cache(teacher, tf.data.Dataset.from_tensor_slices(text[::-1]).batch(2),
                                path, k=3, values_dtype="float32")


def test_a_list_output_is_selected_by_its_name_as_the_distiller_does(tokens, tmp_path):
    """`output="logits"` for a teacher returning `[hidden, logits]`:
    `Distiller(teacher_output="logits")` takes the output name, and so does
    the writer now. Before this round it raised inside the traced forward
    pass (`outputs["logits"]` of a list)."""
    keras.utils.set_random_seed(41)
    token_ids = keras.Input((TIME,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 8, name="hidden")(token_ids)
    teacher = keras.Model(token_ids, [hidden, keras.layers.Dense(VOCAB, name="logits")(hidden)])
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path / "cache", 4, batch_size=8,
                                    output="logits", values_dtype="float32")
    indices, _, _ = top_k.top_k_logits(teacher(tokens, training=False)[1], 4)
    np.testing.assert_array_equal(_concatenated(cache)["indices"], numpy(indices))
    with pytest.raises(ValueError, match=r"several outputs.*write_top_k_cache\(output=\.\.\.\)"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "other", 4)
