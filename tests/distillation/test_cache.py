import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp

import keras_kd
from keras_kd import Distiller
from keras_kd.distillation import cache
from keras_kd.data import datasets


@pytest.fixture
def teacher():
    keras.utils.set_random_seed(20)
    return make_mlp([16], name="teacher")


def test_cached_and_online_training_give_the_same_weights(teacher, tiny_data):
    x, y = tiny_data
    logits = cache.compute_teacher_logits(teacher, x, batch_size=32)
    weights = []
    for teacher_logits in (None, logits):
        keras.utils.set_random_seed(21)
        distiller = Distiller(student=make_mlp([8]), teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), temperature=4.0)
        # The same seeded shuffle: logits travel with their samples.
        train = datasets.make_dataset(
            x, y, name=None, scaling=None, batch_size=16, shuffle=True, seed=5,
            teacher_logits=teacher_logits,
        )
        distiller.fit(train, epochs=3, verbose=0)
        weights.append([w.numpy() for w in distiller.student.weights])
    for online, cached in zip(*weights):
        np.testing.assert_allclose(cached, online, atol=1e-6)


def test_cache_file_round_trip_and_reuse(teacher, tiny_data, tmp_path, monkeypatch):
    x, _ = tiny_data
    path = tmp_path / "teacher.npz"
    calls = []
    forward_pass = cache._forward_pass

    def counted_forward_pass(*args):
        calls.append(1)
        return forward_pass(*args)

    monkeypatch.setattr(cache, "_forward_pass", counted_forward_pass)
    first = cache.compute_teacher_logits(teacher, x, path=path)
    # float32 in another batching than predict's (JAX: 2e-5 of the tiniest).
    np.testing.assert_allclose(first, teacher.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    assert path.exists() and calls == [1]

    # A matching key is read from disk: the teacher is not run again.
    second = cache.compute_teacher_logits(teacher, x, path=path)
    assert calls == [1]
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("num_samples, batch_size", [(64, 16), (50, 16), (5, 64), (1, 1)])
def test_forward_pass_matches_predict_for_any_last_batch(teacher, num_samples, batch_size):
    """The last batch is padded to one shape; the padding never leaks out."""
    x = np.random.default_rng(22).normal(size=(num_samples, 6)).astype("float32")
    logits = cache.compute_teacher_logits(teacher, x, batch_size=batch_size)
    assert logits.shape == (num_samples, 4) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, teacher.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_empty_inputs_are_refused(teacher):
    with pytest.raises(ValueError, match=r"`x` must hold at least one input.*\(0, 6\)"):
        cache.compute_teacher_logits(teacher, np.zeros((0, 6), "float32"))


def test_changed_teacher_or_data_invalidates_the_key(teacher, tiny_data, tmp_path):
    x, _ = tiny_data
    path = tmp_path / "teacher.npz"
    cache.compute_teacher_logits(teacher, x, path=path)
    changed_data = x.copy()
    changed_data[0, 0] += 1e-3
    with pytest.raises(cache.CacheError, match="another teacher or other inputs"):
        cache.compute_teacher_logits(teacher, changed_data, path=path)
    kernel = teacher.layers[0].kernel
    kernel.assign(kernel.numpy() + 1e-4)
    with pytest.raises(cache.CacheError, match="rebuild=True"):
        cache.compute_teacher_logits(teacher, x, path=path)
    rebuilt = cache.compute_teacher_logits(teacher, x, path=path, rebuild=True)
    np.testing.assert_allclose(rebuilt, teacher.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    assert cache.fingerprint_model(teacher) != cache.fingerprint_model(make_mlp([16]))


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign"])
def test_corrupt_or_foreign_file_is_refused(teacher, tiny_data, tmp_path, damage):
    x, _ = tiny_data
    path = tmp_path / "teacher.npz"
    cache.compute_teacher_logits(teacher, x, path=path)
    content = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(content[: len(content) // 2]))
        match = "truncated"
    elif damage == "flip":
        with np.load(path) as data:
            items = dict(data)
        items["logits"] = items["logits"].copy()
        items["logits"][3, 1] += 1.0
        np.savez(path, **items)
        match = "checksum"
    else:
        np.savez(path, something_else=np.zeros(3))
        match = "not a keras_kd cache"
    with pytest.raises(cache.CacheError, match=match):
        cache.compute_teacher_logits(teacher, x, path=path)


def test_probability_teacher_logits(tiny_data):
    x, _ = tiny_data
    keras.utils.set_random_seed(22)
    base = make_mlp([16])
    probabilities = keras.Sequential([base, keras.layers.Softmax()])
    logits = cache.compute_teacher_logits(
        probabilities, x, teacher_outputs="probabilities"
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras.ops.softmax(logits)),
        probabilities.predict(x, verbose=0),
        rtol=1e-5, atol=1e-7,
    )


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="tf.distribute is TensorFlow's; JAX: tests/distribution")
def test_cache_under_mirrored_strategy(teacher, tiny_data):
    x, y = tiny_data
    logits = cache.compute_teacher_logits(teacher, x)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    results = []
    for scope in (tf.distribute.get_strategy(), strategy):
        with scope.scope():
            keras.utils.set_random_seed(23)
            distiller = Distiller(student=make_mlp([8]), teacher=teacher)
            distiller.compile(optimizer=keras.optimizers.SGD(0.1))
        train = datasets.make_dataset(
            x, y, name=None, scaling=None, batch_size=32, teacher_logits=logits
        )
        history = distiller.fit(train, epochs=2, verbose=0)
        results.append(([w.numpy() for w in distiller.student.weights], history.history))
    for a, b in zip(results[0][0], results[1][0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(
        results[0][1]["distillation_loss"], results[1][1]["distillation_loss"], rtol=1e-5
    )


def _text_teacher(seed=30):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.TextVectorization(
        vocabulary=["a", "b", "c", "d"], output_sequence_length=3)(inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(6, 8)(ids))
    return keras.Model(inputs, keras.layers.Dense(4)(hidden))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="string inputs (TextVectorization) run on TensorFlow")
def test_text_inputs_are_cached_and_read_back(tmp_path):
    """Text (a `keras.Input(dtype="string")` teacher). Before this round the
    last batch of a `tf.string`/bytes array was padded with integer zeros
    (TypeError converting it to a tensor), and the file's key hashed the
    object array's pointers, so the same text was another key each run."""
    words = np.array(["a", "b", "c", "d", "e"])
    rng = np.random.default_rng(3)
    text = [[" ".join(rng.choice(words, 3))] for _ in range(10)]
    teacher = _text_teacher()
    expected = keras.ops.convert_to_numpy(teacher(tf.constant(text)))
    path = tmp_path / "text.npz"
    first = cache.compute_teacher_logits(teacher, tf.constant(text), batch_size=4, path=path)
    np.testing.assert_allclose(first, expected, rtol=1e-6, atol=1e-6)
    # The same text as new bytes objects, or as NumPy str: the same file.
    copies = np.array([[bytes(bytearray(s[0].encode()))] for s in text], dtype=object)
    for same in (copies, np.array(text)):
        np.testing.assert_array_equal(
            cache.compute_teacher_logits(teacher, same, batch_size=4, path=path), first)
    other = [list(row) for row in text]
    other[-1] = ["a a a"]
    with pytest.raises(cache.CacheError, match="another teacher or other inputs"):
        cache.compute_teacher_logits(teacher, np.array(other), batch_size=4, path=path)


def test_a_dict_of_inputs_is_cached_and_keyed_by_every_input(teacher, tmp_path):
    """Dicts (a functional model with two named inputs). Before this round
    `np.asarray(dict)` made a scalar and the call raised "`x` must hold at
    least one input"."""
    keras.utils.set_random_seed(31)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(4)(
        keras.layers.Concatenate()([a, b])))
    rng = np.random.default_rng(4)
    x = {"a": rng.normal(size=(7, 3)).astype("float32"),
         "b": rng.normal(size=(7, 2)).astype("float32")}
    path = tmp_path / "dict.npz"
    logits = cache.compute_teacher_logits(model, x, batch_size=3, path=path)
    np.testing.assert_allclose(logits, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(cache.compute_teacher_logits(model, x, path=path), logits)
    with pytest.raises(cache.CacheError, match="other inputs"):
        cache.compute_teacher_logits(model, dict(x, b=x["b"] + 1), path=path)
    with pytest.raises(ValueError, match=r"same number of samples.*'/a': 7, '/b': 6"):
        cache.compute_teacher_logits(model, dict(x, b=x["b"][:6]))


def _two_output_teacher(as_list):
    keras.utils.set_random_seed(32)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    aux, logits = keras.layers.Dense(2, name="aux")(hidden), keras.layers.Dense(4, name="logits")(hidden)
    return keras.Model(inputs, [aux, logits] if as_list else {"aux": aux, "logits": logits})


@pytest.mark.parametrize("as_list", [False, True])
def test_a_teacher_with_several_outputs_is_cached_by_its_selected_output(tiny_data, as_list):
    """`output=` selects the logits as `Distiller(teacher_output=...)` does
    (a key or an output name), and the cached step is the online step.
    Before this round `compute_teacher_logits` had no such argument: it
    raised "Say which one holds the logits with `Distiller(teacher_output=...)`",
    an argument it does not take."""
    x, y = tiny_data
    x, y = x[:12], y[:12]
    teacher = _two_output_teacher(as_list)
    with pytest.raises(ValueError, match=r"several outputs.*compute_teacher_logits\(output=\.\.\.\)"):
        cache.compute_teacher_logits(teacher, x)
    logits = cache.compute_teacher_logits(teacher, x, batch_size=5, output="logits")
    predicted = teacher.predict(x, verbose=0)
    np.testing.assert_allclose(logits, predicted[1] if as_list else predicted["logits"],
                               rtol=1e-5, atol=1e-6)
    weights = []
    for teacher_logits in (None, logits):
        keras.utils.set_random_seed(33)
        distiller = Distiller(student=make_mlp([5]), teacher=teacher, teacher_output="logits")
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0)
        labels = y if teacher_logits is None else {"labels": y, "teacher_logits": teacher_logits}
        distiller.fit(tf.data.Dataset.from_tensor_slices((x, labels)).batch(6), epochs=2, verbose=0)
        weights.append([w.numpy() for w in distiller.student.weights])
    for online, cached in zip(*weights):
        np.testing.assert_allclose(cached, online, rtol=1e-5, atol=1e-6)


def test_arrays_of_cached_logits_take_sample_weights_as_online(teacher, tiny_data):
    """`fit(x, targets(y, teacher_logits=t), sample_weight=w)` on NumPy
    arrays (and evaluate, class_weight, validation_data): the online run's
    losses. Before this round Keras' array adapter read the targets dict as
    two outputs and repeated `w` over them, and the step raised a TypeError
    ("Expected any non-tensor type, but got a tensor instead")."""
    x, y = tiny_data
    x, y = x[:12], y[:12].copy()
    y[3] = keras_kd.UNLABELLED
    weights = np.random.default_rng(5).uniform(0.5, 2.0, size=(12,)).astype("float32")
    logits = cache.compute_teacher_logits(teacher, x)
    runs = {}
    for source in ("online", "cached"):
        labels = y if source == "online" else keras_kd.targets(labels=y, teacher_logits=logits)
        logs = {}
        for name, kwargs in (
            ("weighted", {"sample_weight": weights, "validation_data": (x, labels, weights)}),
            ("class_weight", {"class_weight": {0: 0.0, 1: 2.0, 2: 1.0, 3: 0.5}}),
        ):
            keras.utils.set_random_seed(34)
            distiller = Distiller(student=make_mlp([5]), teacher=teacher)
            distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0,
                              metrics=[keras_kd.TeacherKL()])
            history = distiller.fit(x, labels, batch_size=6, shuffle=False, epochs=2, verbose=0,
                                    **kwargs).history
            logs[name] = {key: np.float64(value) for key, value in history.items()}
            logs[name + "_evaluate"] = distiller.evaluate(
                x, labels, sample_weight=weights, batch_size=6, verbose=0, return_dict=True)
        runs[source] = logs
    assert runs["cached"].keys() == runs["online"].keys()
    for name, online in runs["online"].items():
        assert runs["cached"][name].keys() == online.keys(), name
        for key, value in online.items():
            np.testing.assert_allclose(runs["cached"][name][key], value, rtol=1e-5, err_msg=f"{name} {key}")
