import gzip
import os
import pickle

import numpy as np
import pytest
import tensorflow as tf

from conftest import fake_images
from conftest import write_cifar_python

from keras_kd.data import datasets
from keras_kd.data import file_formats
from keras_kd.data import loaders


def write_idx(path, array, compress=False):
    magic = (0x08 << 8) | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(
        d.to_bytes(4, "big") for d in array.shape
    )
    content = header + array.astype(np.uint8).tobytes()
    if compress:
        content = gzip.compress(content)
        path = str(path) + ".gz"
    with open(path, "wb") as f:
        f.write(content)
    return path


def fake_labels(n, seed=0):
    return np.arange(n) % 10


@pytest.fixture
def idx_dir(tmp_path, request):
    compress = getattr(request, "param", False)
    arrays = {
        "x_train": fake_images(30, (28, 28), 1),
        "y_train": fake_labels(30),
        "x_test": fake_images(20, (28, 28), 2),
        "y_test": fake_labels(20),
    }
    for key, stem in file_formats._IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key], compress)
    return tmp_path, arrays


def write_cifar_binary(directory, n_per_batch=3):
    directory = os.path.join(directory, "cifar-10-batches-bin")
    os.makedirs(directory)
    expected = {}
    for index, name in enumerate(file_formats._CIFAR_TRAIN_BATCHES + ["test_batch"]):
        planes = fake_images(n_per_batch, (3, 32, 32), index)
        labels = (np.arange(n_per_batch) + index) % 10
        records = np.concatenate(
            [labels[:, None].astype(np.uint8), planes.reshape(n_per_batch, -1)], 1
        )
        with open(os.path.join(directory, name + ".bin"), "wb") as f:
            f.write(records.tobytes())
        expected[name] = (planes.transpose(0, 2, 3, 1), labels)
    return directory, expected


@pytest.mark.parametrize("idx_dir", [False, True], indirect=True, ids=["plain", "gz"])
def test_idx_files(idx_dir):
    directory, arrays = idx_dir
    (x_train, y_train), (x_test, y_test) = datasets.load_arrays(
        "mnist", source="files", data_dir=str(directory)
    )
    np.testing.assert_array_equal(x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(y_test, arrays["y_test"])
    assert x_test.shape == (20, 28, 28, 1)


def test_idx_wrong_magic_and_truncation(tmp_path):
    path = write_idx(tmp_path / "labels", np.arange(10, dtype=np.uint8))
    content = open(path, "rb").read()
    open(path, "wb").write(b"\x00\x00\x09\x99" + content[4:])
    with pytest.raises(ValueError, match="magic number"):
        datasets.read_idx(path)
    open(path, "wb").write(content[:-3])
    with pytest.raises(ValueError, match="truncated"):
        datasets.read_idx(path)


def test_idx_mismatched_counts(idx_dir):
    directory, _ = idx_dir
    write_idx(directory / "train-labels-idx1-ubyte", fake_labels(29))
    with pytest.raises(ValueError, match="30 images but .* 29 labels"):
        datasets.load_arrays("mnist", source="files", data_dir=str(directory))


def test_cifar_python_format(tmp_path):
    _, expected = write_cifar_python(tmp_path)
    (x_train, y_train), (x_test, y_test) = datasets.load_arrays(
        "cifar10", source="files", data_dir=str(tmp_path)
    )
    assert x_train.shape == (20, 32, 32, 3) and x_test.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(x_train[:4], expected["data_batch_1"][0])
    np.testing.assert_array_equal(x_test, expected["test_batch"][0])
    np.testing.assert_array_equal(y_test, expected["test_batch"][1])


def test_cifar_binary_format(tmp_path):
    _, expected = write_cifar_binary(tmp_path)
    (x_train, y_train), (x_test, y_test) = datasets.load_arrays(
        "cifar10", source="files", data_dir=str(tmp_path)
    )
    np.testing.assert_array_equal(x_train[3:6], expected["data_batch_2"][0])
    np.testing.assert_array_equal(y_train[3:6], expected["data_batch_2"][1])
    np.testing.assert_array_equal(x_test, expected["test_batch"][0])


def test_cifar_binary_wrong_record_size(tmp_path):
    directory, _ = write_cifar_binary(tmp_path)
    path = os.path.join(directory, "test_batch.bin")
    open(path, "ab").write(b"\x00\x01")
    with pytest.raises(ValueError, match="3073-byte"):
        datasets.load_arrays("cifar10", source="files", data_dir=str(tmp_path))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/keras_kd_pwned",))


def test_cifar_pickle_with_foreign_objects_is_refused(tmp_path):
    directory, _ = write_cifar_python(tmp_path)
    with open(os.path.join(directory, "test_batch"), "wb") as f:
        pickle.dump({b"data": _Exploit(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match="forbidden"):
        datasets.load_arrays("cifar10", source="files", data_dir=str(tmp_path))
    assert not os.path.exists("/tmp/keras_kd_pwned")


def test_npz_file(tmp_path):
    np.savez(
        tmp_path / "mnist.npz",
        x_train=fake_images(12, (28, 28)), y_train=fake_labels(12),
        x_test=fake_images(5, (28, 28)), y_test=fake_labels(5),
    )
    (x_train, _), (x_test, _) = datasets.load_arrays("mnist", data_dir=str(tmp_path))
    assert x_train.shape == (12, 28, 28, 1) and x_test.shape == (5, 28, 28, 1)


@pytest.mark.parametrize("damage", ["truncated", "missing arrays"])
def test_bad_npz_file(tmp_path, damage):
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=fake_images(3, (28, 28)))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
        match = "Cannot read .* as an .npz file"
    else:
        match = r"lacks the arrays \['x_test', 'y_test', 'y_train'\]"
    with pytest.raises(ValueError, match=match):
        datasets.load_arrays("mnist", source="files", data_dir=str(tmp_path))


def test_keras_cache_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    os.makedirs(tmp_path / "datasets")
    write_cifar_python(str(tmp_path / "datasets"))
    (x_train, _), _ = datasets.load_arrays("cifar10", source="keras")
    assert x_train.shape == (20, 32, 32, 3)


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        (x_train, y_train), (x_test, _) = datasets.load_arrays("mnist", source="tfds")
    assert x_train.shape == (12, 28, 28, 1)
    assert y_train.dtype == np.int64


def test_bundled_sample_checksum_and_counts():
    (x_train, y_train), (x_test, y_test) = datasets.load_arrays("mnist", source="sample")
    assert x_train.shape == (8000, 28, 28, 1) and x_test.shape == (2000, 28, 28, 1)
    np.testing.assert_array_equal(
        np.bincount(y_train), [796, 880, 787, 806, 789, 699, 814, 860, 766, 803]
    )
    np.testing.assert_array_equal(
        np.bincount(y_test), [205, 247, 204, 226, 191, 164, 200, 210, 178, 175]
    )


def test_damaged_sample_is_detected(tmp_path, monkeypatch):
    damaged = tmp_path / "mnist-10k.npz"
    content = bytearray(open(datasets.sample_path(), "rb").read())
    content[-100] ^= 0xFF
    damaged.write_bytes(bytes(content))
    monkeypatch.setattr(loaders, "sample_path", lambda: str(damaged))
    with pytest.raises(ValueError, match="damaged"):
        datasets.load_sample()


def test_nothing_reachable_fails_fast_with_places(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    start = time.monotonic()
    with pytest.raises(datasets.DataNotFoundError) as error:
        datasets.load_arrays("cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    message = str(error.value)
    assert str(tmp_path) in message and "Keras cache" in message
    assert "cifar-10-batches-py" in message and "data_dir" in message


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "fashion"}, "name='fashion'"),
        ({"name": "mnist", "source": "web"}, "source='web'"),
        ({"name": "cifar10", "source": "sample"}, "only for MNIST"),
        ({"name": "mnist", "data_dir": "/no/such/dir"}, "does not exist"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        datasets.load_arrays(**kwargs)


def test_labels_out_of_range():
    images = fake_images(4, (28, 28))
    with pytest.raises(ValueError, match="label 12 is outside"):
        datasets.make_dataset(images, np.array([0, 1, 12, 3]))


def test_empty_input_and_excluding_everything():
    with pytest.raises(ValueError, match="empty"):
        datasets.make_dataset(np.zeros((0, 28, 28), np.uint8), np.zeros(0))
    with pytest.raises(ValueError, match="removes every example"):
        datasets.select("mnist", source="sample", exclude_classes=range(10))


def test_exclude_classes_applies_to_training_only():
    x, y = datasets.select("mnist", source="sample", exclude_classes=(3,))
    assert 3 not in y and len(y) == 8000 - 806
    _, y_test = datasets.select("mnist", "test", source="sample", exclude_classes=(3,))
    assert (y_test == 3).sum() == 226


def test_validation_split_is_deterministic_and_stratified():
    labels = np.repeat(np.arange(10), 50)
    train_a, val_a = datasets.stratified_split(labels, 0.2, seed=1)
    train_b, val_b = datasets.stratified_split(labels, 0.2, seed=1)
    _, val_c = datasets.stratified_split(labels, 0.2, seed=2)
    np.testing.assert_array_equal(val_a, val_b)
    assert not np.array_equal(val_a, val_c)
    assert np.all(np.bincount(labels[val_a]) == 10)
    assert len(np.intersect1d(train_a, val_a)) == 0 and len(train_a) + len(val_a) == 500


def _batches(dataset):
    return np.concatenate([batch[0].numpy() for batch in dataset])


def _shift_of(augmented, original, max_shift):
    """The `(dy, dx)` window of the zero-padded original equal to `augmented`."""
    height, width = original.shape[:2]
    padded = np.pad(original, [(max_shift,) * 2, (max_shift,) * 2, (0, 0)])
    for dy in range(2 * max_shift + 1):
        for dx in range(2 * max_shift + 1):
            if np.array_equal(padded[dy : dy + height, dx : dx + width], augmented):
                return dy, dx
    return None


def _is_shift_of(augmented, original, max_shift):
    return _shift_of(augmented, original, max_shift) is not None


def test_mnist_jitter_is_a_shift_of_at_most_two_pixels():
    images, labels = datasets.select("mnist", source="sample", limit=64)
    dataset = datasets.make_dataset(
        images, labels, batch_size=16, augment=True, scaling="unit", seed=3
    )
    first, second = _batches(dataset), _batches(dataset)
    original = images.astype("float32") / 255.0
    assert all(_is_shift_of(a, o, 2) for a, o in zip(first, original))
    assert not all(_is_shift_of(a, o, 1) for a, o in zip(first, original))
    assert not np.array_equal(first, second)  # A new jitter each epoch.
    again = _batches(
        datasets.make_dataset(images, labels, batch_size=16, augment=True, seed=3)
    )
    np.testing.assert_array_equal(first, again)  # Same seed, same jitter.


def test_cifar_crop_keeps_shape_and_flip_flips():
    images = fake_images(64, (32, 32, 3))
    cropped = datasets.random_crop_and_flip(images, seed=[1, 2]).numpy()
    assert cropped.shape == (64, 32, 32, 3)
    flipped = datasets.random_crop_and_flip(images, seed=[1, 2], padding=0).numpy()
    is_flip = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
    is_same = [np.array_equal(f, i) for f, i in zip(flipped, images)]
    assert all(a or b for a, b in zip(is_flip, is_same))
    assert 16 < sum(is_flip) < 48  # About half, each image drawn on its own.


@pytest.mark.parametrize("padding", [1, 4])
def test_batched_crop_matches_numpy_crop_of_each_image(padding):
    images = fake_images(32, (32, 32, 3))
    seed = [5, 6]
    augmented = datasets.random_crop_and_flip(images, seed, padding).numpy()
    shifts = []
    for image, result in zip(images, augmented):
        # Whichever way it was flipped, the result is one window of the
        # zero-padded original, within the padding.
        shift = _shift_of(result, image, padding) or _shift_of(result[:, ::-1], image, padding)
        assert shift is not None
        shifts.append(shift)
    # Each image draws its own offset: not one shift for the whole batch.
    assert len(set(shifts)) >= 4
    # A single image gives the same result as the first of a batch of one.
    one = datasets.random_crop_and_flip(images[0], seed, padding).numpy()
    np.testing.assert_array_equal(
        one, datasets.random_crop_and_flip(images[:1], seed, padding).numpy()[0]
    )


@pytest.mark.parametrize(
    "scaling, low, high", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)]
)
def test_scaling_and_flat_layout(scaling, low, high):
    images = np.array([[[0, 255]]], np.uint8).repeat(28, 1).repeat(14, 2)[..., None]
    images = np.broadcast_to(images, (2, 28, 28, 1))
    dataset = datasets.make_dataset(
        images, np.array([0, 1]), batch_size=2, scaling=scaling, layout="flat"
    )
    x = next(iter(dataset))[0].numpy()
    assert x.shape == (2, 784) and x.dtype == np.float32
    assert x.min() == low and x.max() == high


def test_standardize_uses_channel_statistics():
    images = np.full((1, 32, 32, 3), 255, np.uint8)
    x = datasets.preprocess(images, "cifar10", scaling="standardize").numpy()
    np.testing.assert_allclose(
        x[0, 0, 0], (1 - np.array([0.4914, 0.4822, 0.4465])) / [0.2470, 0.2435, 0.2616],
        rtol=1e-5,
    )


def test_weights_and_teacher_logits_travel_with_their_samples():
    images = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(28, 1).repeat(28, 2)
    labels = np.arange(20) % 10
    logits = np.tile(np.arange(20, dtype=np.float32)[:, None], (1, 10))
    weights = np.arange(20, dtype=np.float32)
    dataset = datasets.make_dataset(
        images, labels, batch_size=5, shuffle=True, seed=4, scaling="unit",
        sample_weight=weights, teacher_logits=logits,
    )
    seen = []
    for x, y, w in dataset:
        ids = np.round(x.numpy()[:, 0, 0, 0] * 255).astype(int)
        np.testing.assert_array_equal(y["labels"].numpy(), ids % 10)
        np.testing.assert_array_equal(y["teacher_logits"].numpy()[:, 0], ids)
        np.testing.assert_array_equal(w.numpy(), ids)
        seen.extend(ids)
    assert sorted(seen) == list(range(20)) and seen != list(range(20))


def test_cached_logits_refuse_augmentation():
    with pytest.raises(ValueError, match="un-augmented"):
        datasets.make_dataset(
            fake_images(4, (28, 28)), np.arange(4), augment=True,
            teacher_logits=np.zeros((4, 10), np.float32),
        )


def test_load_dataset_end_to_end():
    train = datasets.load_dataset(
        "mnist", source="sample", batch_size=100, limit=300,
        validation_fraction=0.1, augment=True,
    )
    val = datasets.load_dataset(
        "mnist", "validation", source="sample", batch_size=100, validation_fraction=0.1
    )
    assert sum(int(b[0].shape[0]) for b in train) == 300
    class_counts = [796, 880, 787, 806, 789, 699, 814, 860, 766, 803]
    expected = sum(int(round(0.1 * c)) for c in class_counts)  # Per class.
    assert sum(int(b[0].shape[0]) for b in val) == expected
    with pytest.raises(ValueError, match="training only"):
        datasets.load_dataset("mnist", "test", source="sample", augment=True)


@pytest.mark.parametrize("augment", [False, True])
def test_epoch_indexed_dataset_resumes_at_any_epoch(augment):
    x, y = datasets.select("mnist", "train", source="sample", limit=40)

    def epochs(start, count):
        dataset = datasets.make_dataset(
            x, y, batch_size=16, shuffle=True, augment=augment, seed=4, start_epoch=start
        )
        steps = datasets.steps_per_epoch(len(x), 16)
        batches = list(dataset.take(steps * count))
        return [batches[i * steps:(i + 1) * steps] for i in range(count)]

    from_start = epochs(0, 3)
    from_two = epochs(2, 1)
    for a, b in zip(from_start[2], from_two[0]):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # Each epoch is a permutation of the whole set, in a new order.
    labels = [np.concatenate([b[1] for b in epoch]) for epoch in from_start]
    assert all(sorted(l) == sorted(y) for l in labels)
    assert not np.array_equal(labels[0], labels[1])
    # The one-epoch-per-iteration dataset (start_epoch=None) gives the same
    # epochs: its k-th iteration is epoch k of the stream.
    per_iteration = datasets.make_dataset(
        x, y, batch_size=16, shuffle=True, augment=augment, seed=4
    )
    for epoch in from_start:
        for a, b in zip(epoch, per_iteration):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


def test_same_seed_same_epochs_for_fit_from_every_entry_point():
    """`fit` on the one-epoch dataset and on the epoch stream (the resumable
    runs' entry point) trains on the same batches: the same weights."""
    import keras

    x, y = datasets.select("mnist", "train", source="sample", limit=64)

    def trained(start_epoch):
        keras.utils.set_random_seed(2)
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
        model.compile(keras.optimizers.SGD(0.1),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        dataset = datasets.make_dataset(
            x, y, batch_size=16, shuffle=True, seed=5, layout="flat", start_epoch=start_epoch
        )
        steps = None if start_epoch is None else datasets.steps_per_epoch(len(x), 16)
        model.fit(dataset, epochs=3, steps_per_epoch=steps, verbose=0)
        return model.get_weights()

    for a, b in zip(trained(None), trained(0)):
        np.testing.assert_array_equal(a, b)


def test_steps_per_epoch():
    assert datasets.steps_per_epoch(100, 32) == 4
    assert datasets.steps_per_epoch(100, 32, drop_remainder=True) == 3


def test_float_images_already_scaled_are_not_scaled_twice():
    images = np.random.default_rng(0).uniform(size=(8, 28, 28)).astype("float32")
    with pytest.raises(ValueError, match=r"already scaled.*scaling=None"):
        datasets.make_dataset(images, np.zeros(8, "int64"))
    # The fix the message names: the values pass through unchanged.
    x, _ = next(iter(datasets.make_dataset(images, np.zeros(8, "int64"), scaling=None)))
    np.testing.assert_array_equal(x.numpy()[..., 0], images)
    # Floats holding 0-255 values are scaled like the uint8 images.
    raw = (images * 255).round()
    x, _ = next(iter(datasets.make_dataset(raw, np.zeros(8, "int64"))))
    np.testing.assert_allclose(x.numpy()[..., 0], raw / 255, rtol=1e-6)


@pytest.mark.parametrize("cached", [False, True])
def test_unlabelled_and_marked_samples(cached):
    images = np.random.default_rng(1).integers(0, 255, (8, 28, 28)).astype("uint8")
    logits = np.ones((8, 10), "float32") if cached else None
    unlabelled = datasets.make_dataset(images, None, teacher_logits=logits, batch_size=8)
    batch = next(iter(unlabelled))
    if cached:
        assert set(batch[1]) == {"teacher_logits"}
    else:
        assert len(batch) == 1  # Just x: `fit(dataset)` sees no labels.
    marked = np.array([0, -1, 2, -1, 4, 5, 6, 7])
    batch = next(iter(datasets.make_dataset(images, marked, batch_size=8)))
    np.testing.assert_array_equal(batch[1].numpy(), marked)
    with pytest.raises(ValueError, match="label -2"):
        datasets.make_dataset(images, marked - 1)
    with pytest.raises(ValueError, match="`sample_weight` needs `labels`"):
        datasets.make_dataset(images, None, sample_weight=np.ones(8))


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_one_epoch_dataset_declares_its_batches(drop_remainder):
    """Keras reads the number of steps from the cardinality: with it, `fit`
    shows a total and does not warn that the input "ran out of data"."""
    import warnings

    import keras

    x, y = datasets.select("mnist", "train", source="sample", limit=100)
    dataset = datasets.make_dataset(
        x, y, batch_size=32, shuffle=True, drop_remainder=drop_remainder
    )
    expected = datasets.steps_per_epoch(100, 32, drop_remainder)
    assert int(dataset.cardinality()) == expected
    assert len(list(dataset)) == len(list(dataset)) == expected
    model = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(dataset, epochs=2, shuffle=False, verbose=0)
    assert not [w for w in caught if "ran out of data" in str(w.message)]
    stream = datasets.make_dataset(x, y, batch_size=32, start_epoch=0)
    assert int(stream.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
