"""MNIST and CIFAR-10 as NumPy arrays and ready-to-fit `tf.data` pipelines.

Sources, tried in this order by `source="auto"`:

1. `data_dir`, if given: `mnist.npz` (or any `.npz` in the Keras layout), the
   four raw MNIST IDX files (plain or `.gz`), or CIFAR-10 in either official
   format, `cifar-10-batches-py` (pickled) or `cifar-10-batches-bin`;
2. the Keras cache, `$KERAS_HOME/datasets` or `~/.keras/datasets`, in the
   same layouts;
3. `tensorflow_datasets` with its own `data_dir`, without downloading unless
   `download=True`.

`source="sample"` is the 10,000 real MNIST digits shipped inside the package
(the default for demos, tests and CPU benchmarks). Each source can also be
chosen explicitly (`"files"`, `"keras"`, `"tfds"`). When nothing is found the
loader fails at once with an error that lists where it looked.

Pipelines cache the raw images, shuffle with a seed (reshuffled each epoch),
augment inside the graph (no `py_function`), batch and prefetch.
"""

import gzip
import hashlib
import io
import os
import pickle
import zipfile
from importlib import resources

import numpy as np
import tensorflow as tf

from keras_kd import cache as cache_module
from keras_kd.validation import validate_choice
from keras_kd.validation import validate_fraction

SAMPLE_SHA256 = "3125cfd8a5bf446d1f5470d1dce782f6894fd55621dd4303160c10ba58aa7732"
DATASETS = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NUM_CLASSES = 10
SOURCES = ("auto", "sample", "files", "keras", "tfds")
SCALINGS = ("unit", "symmetric", "standardize")
LAYOUTS = ("image", "flat")

# Per-channel statistics of the training sets, for `scaling="standardize"`.
_MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3
# Upper bound of the epoch stream of `make_dataset(start_epoch=...)`.
_MAX_EPOCHS = 1_000_000


class DataNotFoundError(FileNotFoundError):
    """No source of the requested dataset could be reached."""


def _check_name(name):
    return validate_choice(name, "name", set(DATASETS))


def sample_path():
    """Returns the path of the bundled `mnist-10k.npz` sample."""
    return str(resources.files("keras_kd").joinpath("data/mnist-10k.npz"))


def load_sample():
    """Loads the bundled MNIST sample, checking its sha256.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: 8,000 and 2,000 real MNIST
        digits, uint8 images of shape `(n, 28, 28)` and int labels.

    Raises:
        ValueError: if the file's checksum does not match (a damaged install).
    """
    path = sample_path()
    with open(path, "rb") as f:
        content = f.read()
    digest = hashlib.sha256(content).hexdigest()
    if digest != SAMPLE_SHA256:
        raise ValueError(
            f"The bundled MNIST sample {path} is damaged: sha256 {digest}, "
            f"expected {SAMPLE_SHA256}. Reinstall keras-kd."
        )
    return _load_npz(io.BytesIO(content), path)


def _load_npz(file, description):
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in keys if k in data}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Cannot read {description} as an .npz file: {error}. Replace it "
            "with an intact copy."
        ) from error
    missing = set(keys) - set(arrays)
    if missing:
        raise ValueError(
            f"{description} lacks the arrays {sorted(missing)}. "
            "Expected the layout of keras.datasets' mnist.npz: "
            "x_train, y_train, x_test, y_test."
        )
    return (arrays["x_train"], arrays["y_train"]), (
        arrays["x_test"],
        arrays["y_test"],
    )


def _open_maybe_gzip(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if path.endswith(".gz"):
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError) as error:
            raise ValueError(
                f"{path} is not a valid gzip file ({error}). Download it again."
            ) from error
    return content


def read_idx(path):
    """Reads one MNIST IDX file (plain or `.gz`) into a uint8 array.

    Args:
        path: Path of an `idx1` (labels) or `idx3` (images) file.

    Returns:
        A uint8 array of shape `(n,)` or `(n, rows, cols)`.

    Raises:
        ValueError: for a wrong magic number or a truncated file.
    """
    content = _open_maybe_gzip(path)
    if len(content) < 8:
        raise ValueError(f"{path} is truncated: {len(content)} bytes.")
    magic = int.from_bytes(content[:4], "big")
    if magic not in (2049, 2051):
        raise ValueError(
            f"{path} is not an MNIST IDX file: magic number {magic:#010x}, "
            "expected 0x00000801 (labels) or 0x00000803 (images)."
        )
    num_dims = magic & 0xFF
    header = 4 + 4 * num_dims
    if len(content) < header:
        raise ValueError(f"{path} is truncated: {len(content)} bytes.")
    shape = tuple(
        int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big")
        for i in range(num_dims)
    )
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise ValueError(
            f"{path} is truncated or has trailing bytes: {len(content)} "
            f"bytes, expected {expected} for shape {shape}. Download it again."
        )
    return np.frombuffer(content, np.uint8, offset=header).reshape(shape)


def _find_idx(directory):
    paths = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if os.path.isfile(os.path.join(directory, candidate)):
                paths[key] = os.path.join(directory, candidate)
                break
    return paths if len(paths) == len(_IDX_FILES) else None


def _load_idx_dir(paths):
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels):
            raise ValueError(
                f"{paths['x_' + split]} holds {len(images)} images but "
                f"{paths['y_' + split]} holds {len(labels)} labels. Use "
                "matching files."
            )
    return (arrays["x_train"], arrays["y_train"]), (
        arrays["x_test"],
        arrays["y_test"],
    )


class _CifarUnpickler(pickle.Unpickler):
    """Accepts only what the CIFAR-10 python batches contain."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is forbidden"
            )
        return super().find_class(module, name)


def read_cifar_python_batch(path):
    """Reads one `cifar-10-batches-py` file with a restricted unpickler.

    Only NumPy arrays, dtypes and builtin containers are accepted, so a
    tampered data directory cannot run code.

    Args:
        path: Path of a batch file such as `data_batch_1` or `test_batch`.

    Returns:
        `(images, labels)`: uint8 `(n, 32, 32, 3)` and int64 `(n,)`.

    Raises:
        ValueError: for a file that is not a CIFAR-10 python batch.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} is not a CIFAR-10 python batch: {error}. Only NumPy "
                "arrays and builtin types are accepted; use the official "
                "cifar-10-batches-py files."
            ) from error
        except (EOFError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{path} is truncated or corrupt ({error}). Download it again."
            ) from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path} does not hold a CIFAR-10 batch dictionary.")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{path} lacks the 'data' or 'labels' entry of a CIFAR-10 batch."
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (n, 3072). Received "
            f"{data.dtype} {data.shape}."
        )
    if len(data) != len(labels):
        raise ValueError(
            f"{path} holds {len(data)} images but {len(labels)} labels."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_binary_batch(path):
    """Reads one `cifar-10-batches-bin` file of 3073-byte records.

    Args:
        path: Path of a file such as `data_batch_1.bin`.

    Returns:
        `(images, labels)`: uint8 `(n, 32, 32, 3)` and int64 `(n,)`.

    Raises:
        ValueError: if the size is not a multiple of 3073 bytes.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if not content or len(content) % _CIFAR_RECORD_BYTES:
        raise ValueError(
            f"{path} has {len(content)} bytes, not a whole number of "
            f"{_CIFAR_RECORD_BYTES}-byte CIFAR-10 records: it is truncated or "
            "not a cifar-10-batches-bin file. Download it again."
        )
    records = np.frombuffer(content, np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


def _load_cifar_dir(directory, reader, suffix):
    parts = []
    for names in (_CIFAR_TRAIN_BATCHES, ["test_batch"]):
        batches = [reader(os.path.join(directory, n + suffix)) for n in names]
        parts.append(
            (
                np.concatenate([b[0] for b in batches]),
                np.concatenate([b[1] for b in batches]),
            )
        )
    return tuple(parts)


def _find_in_directory(name, directory):
    """Returns a loader for `name` found in `directory`, or None."""
    if name == "mnist":
        for candidate in ("mnist.npz", "mnist-10k.npz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return lambda path=path: _load_npz(path, path)
        idx = _find_idx(directory)
        if idx is None:
            idx = _find_idx(os.path.join(directory, "mnist"))
        if idx is not None:
            return lambda: _load_idx_dir(idx)
        return None
    for base in (directory, os.path.join(directory, "cifar10")):
        python_dir = os.path.join(base, "cifar-10-batches-py")
        if os.path.isfile(os.path.join(python_dir, "test_batch")):
            return lambda d=python_dir: _load_cifar_dir(
                d, read_cifar_python_batch, ""
            )
        binary_dir = os.path.join(base, "cifar-10-batches-bin")
        if os.path.isfile(os.path.join(binary_dir, "test_batch.bin")):
            return lambda d=binary_dir: _load_cifar_dir(
                d, read_cifar_binary_batch, ".bin"
            )
        path = os.path.join(base, "cifar10.npz")
        if os.path.isfile(path):
            return lambda path=path: _load_npz(path, path)
    return None


def keras_cache_dir():
    """The Keras datasets cache: `$KERAS_HOME/datasets` or `~/.keras/datasets`."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.join(home, "datasets")


def _load_tfds(name, data_dir, download):
    import tensorflow_datasets as tfds

    splits = []
    for split in ("train", "test"):
        dataset = tfds.load(
            name,
            split=split,
            data_dir=data_dir,
            download=download,
            as_supervised=True,
        )
        # Batches rather than `batch_size=-1`, which aborts the process on
        # generator-backed datasets such as tfds' mock data.
        batches = list(tfds.as_numpy(dataset.batch(10000)))
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        splits.append((images, labels.astype(np.int64)))
    return tuple(splits)


def load_arrays(name, source="auto", data_dir=None, download=False):
    """Loads a dataset as NumPy arrays.

    Args:
        name: `"mnist"` or `"cifar10"`.
        source: `"auto"` (the order in the module docstring), `"sample"`
            (bundled MNIST digits), `"files"` (only `data_dir`), `"keras"`
            (only the Keras cache) or `"tfds"`.
        data_dir: A directory holding the dataset files, also passed to
            `tfds` as its `data_dir`.
        download: Let `tfds` download the dataset (needs internet).

    Returns:
        `((x_train, y_train), (x_test, y_test))` with uint8 images
        (`(n, 28, 28)` for MNIST, `(n, 32, 32, 3)` for CIFAR-10) and int64
        labels.

    Raises:
        DataNotFoundError: if no source holds the dataset; the message lists
            where it looked and how to supply the files.
        ValueError: for an unknown name or source, or corrupt files.

    Example:

    >>> (x_train, y_train), _ = load_arrays("mnist", source="sample")
    >>> x_train.shape
    (8000, 28, 28)
    """
    _check_name(name)
    validate_choice(source, "source", set(SOURCES))
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
    if source == "sample":
        if name != "mnist":
            raise ValueError(
                "`source='sample'` exists only for MNIST. Received: "
                f"name={name!r}. Pass `data_dir` with CIFAR-10 files."
            )
        return _validated(load_sample(), name, sample_path())
    looked = []
    if source in ("auto", "files"):
        if data_dir is None and source == "files":
            raise ValueError(
                "`source='files'` needs `data_dir`. Received: data_dir=None."
            )
        if data_dir is not None:
            if not os.path.isdir(data_dir):
                raise DataNotFoundError(
                    f"`data_dir` does not exist: data_dir={data_dir!r}. Pass "
                    "a directory that holds the dataset files."
                )
            loader = _find_in_directory(name, data_dir)
            if loader is not None:
                return _validated(loader(), name, data_dir)
            looked.append(f"files in {data_dir}")
    if source in ("auto", "keras"):
        cache_dir = keras_cache_dir()
        loader = _find_in_directory(name, cache_dir) if os.path.isdir(cache_dir) else None
        if loader is not None:
            return _validated(loader(), name, cache_dir)
        looked.append(f"the Keras cache {cache_dir}")
    if source in ("auto", "tfds"):
        try:
            return _validated(_load_tfds(name, data_dir, download), name, "tfds")
        except Exception as error:  # tfds raises several types when absent.
            if source == "tfds" and download:
                raise
            looked.append(
                f"tensorflow_datasets (data_dir={data_dir}, download="
                f"{download}): {type(error).__name__}"
            )
    expected = (
        "mnist.npz, or the four IDX files train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz]"
        if name == "mnist"
        else "the directory cifar-10-batches-py or cifar-10-batches-bin"
    )
    hint = " Or use source='sample' for the bundled MNIST digits." if name == "mnist" else ""
    raise DataNotFoundError(
        f"Could not find the {name} dataset. Looked in: "
        + "; ".join(looked)
        + f". Put {expected} in a directory and pass it as `data_dir` "
        "(`--data-dir` on the command line), or pass download=True where "
        "there is internet." + hint
    )


def _validated(splits, name, origin):
    image_shape = DATASETS[name]
    checked = []
    for split, (images, labels) in zip(("train", "test"), splits):
        images, labels = np.asarray(images), np.asarray(labels).reshape(-1)
        if images.ndim == 3 and image_shape[-1] == 1:
            images = images[..., None]
        if images.shape[1:] != image_shape:
            raise ValueError(
                f"{origin}: {split} images have shape {images.shape[1:]}, "
                f"expected {image_shape} for {name}."
            )
        check_labels(labels, images, f"{origin} ({split})")
        checked.append((images, labels.astype(np.int64)))
    return tuple(checked)


def check_labels(
    labels, images=None, origin="labels", num_classes=NUM_CLASSES,
    allow_unlabelled=False,
):
    """Raises a clear error for labels outside `[0, num_classes)`.

    Args:
        labels: Integer class labels.
        images: Optional images whose count must match.
        origin: Where the labels came from, for the message.
        num_classes: Number of classes.
        allow_unlabelled: Also accept `UNLABELLED` (-1).
    """
    labels = np.asarray(labels)
    if images is not None and len(images) != len(labels):
        raise ValueError(
            f"{origin}: {len(images)} images but {len(labels)} labels. Each "
            "image needs exactly one label."
        )
    if allow_unlabelled:
        labels = labels[labels != cache_module.UNLABELLED]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise ValueError(
            f"{origin}: label {bad} is outside [0, {num_classes}). Labels "
            f"must be class indices 0..{num_classes - 1}; pass the matching "
            "`num_classes`."
        )


def stratified_split(labels, validation_fraction, seed=0):
    """Deterministic stratified split into train and validation indices.

    Args:
        labels: Integer labels.
        validation_fraction: Fraction of each class held out, in `[0, 1)`.
        seed: The split depends only on this seed and the labels.

    Returns:
        `(train_indices, validation_indices)`, each sorted.
    """
    validation_fraction = validate_fraction(validation_fraction, "validation_fraction")
    if validation_fraction >= 1.0:
        raise ValueError(
            "`validation_fraction` must be below 1. Received: "
            f"validation_fraction={validation_fraction}."
        )
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    validation = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(len(members) * validation_fraction))
        validation.extend(rng.permutation(members)[:count])
    validation = np.sort(np.asarray(validation, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), validation)
    return train, validation


def select(
    name,
    split="train",
    source="auto",
    data_dir=None,
    download=False,
    exclude_classes=(),
    validation_fraction=0.0,
    seed=0,
    limit=None,
):
    """Loads one split as arrays, with class exclusion and a validation split.

    Args:
        name: `"mnist"` or `"cifar10"`.
        split: `"train"`, `"validation"` (held out of the training set by
            `validation_fraction`) or `"test"`.
        source: See `load_arrays`.
        data_dir: See `load_arrays`.
        download: See `load_arrays`.
        exclude_classes: Classes removed from the training split only (the
            "digit 3 never seen" experiment); validation and test stay whole.
        validation_fraction: Fraction of each training class held out.
        seed: Seed of the validation split.
        limit: Keep at most this many examples (the first ones).

    Returns:
        `(images, labels)`: uint8 images with a channel axis, int64 labels.
    """
    validate_choice(split, "split", {"train", "validation", "test"})
    (x_train, y_train), (x_test, y_test) = load_arrays(
        name, source=source, data_dir=data_dir, download=download
    )
    if split == "test":
        images, labels = x_test, y_test
    else:
        if split == "validation" and not validation_fraction:
            raise ValueError(
                "split='validation' needs `validation_fraction` > 0. "
                f"Received: validation_fraction={validation_fraction}."
            )
        train_index, validation_index = stratified_split(
            y_train, validation_fraction, seed
        )
        index = train_index if split == "train" else validation_index
        images, labels = x_train[index], y_train[index]
        if split == "train" and exclude_classes:
            keep = ~np.isin(labels, list(exclude_classes))
            if not keep.any():
                raise ValueError(
                    f"exclude_classes={tuple(exclude_classes)} removes every "
                    f"example of the {name} training split. Exclude fewer "
                    "classes."
                )
            images, labels = images[keep], labels[keep]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(
                f"`limit` must be a positive integer. Received: limit={limit!r}."
            )
        images, labels = images[:limit], labels[:limit]
    return images, labels


def random_translate(image, seed, max_shift=2):
    """Shifts an image by up to `max_shift` pixels each way, zero-filled.

    Args:
        image: An `(h, w, c)` tensor.
        seed: A stateless seed, shape `(2,)`.
        max_shift: Largest shift in pixels.

    Returns:
        The shifted image, same shape.
    """
    height, width, channels = image.shape
    padded = tf.pad(image, [[max_shift, max_shift], [max_shift, max_shift], [0, 0]])
    return tf.image.stateless_random_crop(
        padded, (height, width, channels), seed=seed
    )


def random_crop_and_flip(image, seed, padding=4):
    """CIFAR augmentation: zero-pad by `padding`, random crop, random flip.

    Args:
        image: An `(h, w, c)` tensor.
        seed: A stateless seed, shape `(2,)`.
        padding: Padding in pixels before the crop.

    Returns:
        The augmented image, same shape.
    """
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2)
    )
    image = random_translate(image, crop_seed, padding)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def preprocess(images, name, scaling="unit", layout="image"):
    """Turns uint8 images into float32 model inputs (works on tensors).

    Args:
        images: uint8 images `(..., h, w, c)`.
        name: `"mnist"` or `"cifar10"`, for the standardisation statistics.
        scaling: `"unit"` ([0, 1]), `"symmetric"` ([-1, 1] as
            `(x - 0.5) / 0.5`), `"standardize"` (per-channel mean/std) or
            `None` for inputs that are already preprocessed (only cast to
            float32).
        layout: `"image"` keeps `(h, w, c)`; `"flat"` gives vectors (784 for
            MNIST, for MLPs).

    Returns:
        A float32 tensor.
    """
    validate_choice(scaling, "scaling", set(SCALINGS) | {None})
    validate_choice(layout, "layout", set(LAYOUTS))
    if scaling is None:
        x = tf.cast(images, tf.float32)
    else:
        x = tf.cast(images, tf.float32) / 255.0
    if scaling == "symmetric":
        x = (x - 0.5) / 0.5
    elif scaling == "standardize":
        mean, std = _MEAN_STD[name]
        x = (x - tf.constant(mean)) / tf.constant(std)
    if layout == "flat":
        x = tf.reshape(x, [tf.shape(x)[0], -1])
    return x


def make_dataset(
    images,
    labels,
    name="mnist",
    batch_size=128,
    shuffle=False,
    augment=False,
    seed=0,
    scaling="unit",
    layout="image",
    drop_remainder=False,
    sample_weight=None,
    teacher_logits=None,
    num_classes=None,
    start_epoch=None,
):
    """Builds a ready-to-fit `tf.data.Dataset` from in-memory arrays.

    The raw uint8 images are cached, shuffled with `seed` (a new order each
    epoch), augmented in TF ops, batched, preprocessed per batch and
    prefetched. Sample weights and cached teacher logits travel with their
    samples through the shuffle.

    Args:
        images: uint8 images `(n, h, w)` or `(n, h, w, c)` (float values
            0-255 work too), or any float inputs `(n, ...)` with
            `scaling=None`. Floats already in [0, 1] with a `scaling` that
            divides by 255 are refused, not scaled twice.
        labels: Integer labels `(n,)`; `UNLABELLED` (-1) marks samples
            without a label. `None` for an unlabelled transfer set (fit it
            with `alpha=0`).
        name: `"mnist"` or `"cifar10"`: chooses the augmentation and the
            standardisation statistics. `None` for other arrays (with
            `scaling=None`, no augmentation).
        batch_size: Batch size.
        shuffle: Shuffle each epoch.
        augment: Random translation by 2 px (MNIST) or 4-px-padded crop and
            flip (CIFAR-10). Keep it off for evaluation.
        seed: Seed of the shuffle and the augmentation.
        scaling: See `preprocess`.
        layout: See `preprocess`.
        drop_remainder: Drop the last incomplete batch.
        sample_weight: Optional per-sample weights.
        teacher_logits: Optional cached teacher logits `(n, num_classes)`;
            the target then becomes `{"labels": y, "teacher_logits": t}`,
            which `Distiller` reads instead of running the teacher.
        num_classes: Number of classes, for the label check. Defaults to
            the width of `teacher_logits` if given, else 10.
        start_epoch: `None` (default) for a dataset of one epoch that
            reshuffles each time it is iterated. An integer gives instead an
            endless stream of epochs `start_epoch, start_epoch + 1, ...`
            whose order and augmentation depend only on `(seed, epoch)`, so
            a run resumed at epoch `k` sees the same batches as an
            uninterrupted one. Fit it with `steps_per_epoch` (see
            `steps_per_epoch`) and `initial_epoch=start_epoch`.

    Returns:
        A `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)` batches.

    Example:

    >>> (x, y), _ = load_arrays("mnist", source="sample")
    >>> dataset = make_dataset(x, y, batch_size=64, shuffle=True)
    >>> tuple(next(iter(dataset))[0].shape)
    (64, 28, 28, 1)
    """
    if name is not None:
        _check_name(name)
    elif augment or scaling == "standardize":
        raise ValueError(
            "`augment` and scaling='standardize' need the dataset `name` "
            "('mnist' or 'cifar10'). Received: name=None."
        )
    images = np.asarray(images)
    if images.ndim == 3 and name is not None:
        images = images[..., None]
    if images.ndim < 2:
        raise ValueError(
            "`images` must have one row per example. Received shape "
            f"{images.shape}."
        )
    if len(images) == 0:
        raise ValueError(
            "`images` is empty: there is nothing to train or evaluate on. "
            "Check `limit`, `exclude_classes` and the data source."
        )
    if teacher_logits is not None:
        teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
        if teacher_logits.ndim != 2 or len(teacher_logits) != len(images):
            raise ValueError(
                f"`teacher_logits` must have shape ({len(images)}, "
                f"num_classes), one row per image. Received "
                f"{teacher_logits.shape}."
            )
        if num_classes is None:
            num_classes = teacher_logits.shape[1]
        elif teacher_logits.shape[1] != num_classes:
            raise ValueError(
                f"`teacher_logits` have {teacher_logits.shape[1]} classes but "
                f"num_classes={num_classes}."
            )
    if num_classes is None:
        num_classes = NUM_CLASSES
    if labels is not None:
        check_labels(labels, images, "`labels`", num_classes, allow_unlabelled=True)
    elif sample_weight is not None:
        raise ValueError(
            "`sample_weight` needs `labels`: a batch of `(x, sample_weight)` "
            "reads as `(x, y)`. Pass labels, with -1 (`UNLABELLED`) for "
            "samples that have none."
        )
    if scaling is not None and images.dtype.kind == "f" and np.max(images) <= 1.0:
        raise ValueError(
            f"`images` are floats in [{np.min(images):g}, {np.max(images):g}] "
            f"(dtype {images.dtype}), already scaled, but scaling={scaling!r} "
            "divides by 255 again. Pass `scaling=None` for inputs that are "
            "already preprocessed, or the raw uint8 images."
        )
    if augment and images.dtype != np.uint8:
        raise ValueError(
            "Augmentation works on raw uint8 images. Received dtype "
            f"{images.dtype}; pass the images before scaling."
        )
    if teacher_logits is not None and augment:
        raise ValueError(
            "Cached `teacher_logits` were computed on un-augmented images, "
            "so they do not match augmented inputs. Turn `augment` off, or "
            "let the Distiller run the teacher on each augmented batch."
        )
    validate_choice(scaling, "scaling", set(SCALINGS) | {None})
    validate_choice(layout, "layout", set(LAYOUTS))

    targets = {}
    if labels is not None:
        targets[cache_module.LABELS_KEY] = np.asarray(labels, np.int64).reshape(-1)
    if teacher_logits is not None:
        targets[cache_module.TEACHER_LOGITS_KEY] = teacher_logits
    if teacher_logits is None:
        targets = targets.get(cache_module.LABELS_KEY)
    elements = (images,) if targets is None else (images, targets)
    if sample_weight is not None:
        elements += (np.asarray(sample_weight, dtype=np.float32).reshape(-1),)
    augment_fn = None
    if augment:
        augment_fn = random_translate if name == "mnist" else random_crop_and_flip
    if start_epoch is None:
        dataset = tf.data.Dataset.from_tensor_slices(elements).cache()
        dataset = _shuffled_and_augmented(dataset, len(images), shuffle, augment_fn, seed)
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    else:
        dataset = _epoch_stream(
            elements, start_epoch, shuffle, augment_fn, seed, batch_size, drop_remainder
        )

    def preprocess_batch(batch_images, *rest):
        return (preprocess(batch_images, name, scaling, layout), *rest)

    dataset = dataset.map(preprocess_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _shuffled_and_augmented(dataset, size, shuffle, augment_fn, seed):
    """One epoch per iteration, reshuffled and re-augmented each time."""
    if shuffle:
        dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    if augment_fn is None:
        return dataset
    # One stateless seed per sample, the same for the same `seed` whatever
    # order the parallel map runs in, and different each epoch.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def augment_element(element, element_seed):
        image, *rest = element
        return (augment_fn(image, element_seed), *rest)

    return tf.data.Dataset.zip(dataset, seeds).map(
        augment_element, num_parallel_calls=tf.data.AUTOTUNE
    )


def _epoch_stream(elements, start_epoch, shuffle, augment_fn, seed, batch_size, drop_remainder):
    """Epochs `start_epoch, start_epoch + 1, ...`, each a function of `(seed, epoch)`."""
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
        raise ValueError(
            "`start_epoch` must be a non-negative integer or None. "
            f"Received: start_epoch={start_epoch!r}."
        )
    tensors = tf.nest.map_structure(tf.convert_to_tensor, elements)
    size = len(elements[0])

    def gather(i):
        return tf.nest.map_structure(lambda t: tf.gather(t, i), tensors)

    def one_epoch(epoch):
        # Stateless ops keyed by (seed, epoch), not Dataset.shuffle: its seed
        # must be a Python int, and here the epoch is a tensor.
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        if shuffle:
            order = tf.argsort(tf.random.stateless_uniform([size], epoch_seed))
        else:
            order = tf.range(size)
        epoch_data = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
        if augment_fn is None:
            epoch_data = epoch_data.map(gather)
        else:
            # One stateless seed per position in the epoch.
            def gather_and_augment(position, i):
                image, *rest = gather(i)
                element_seed = tf.stack([epoch_seed[0] * 1_000_003 + epoch, position])
                return (augment_fn(image, element_seed), *rest)

            epoch_data = epoch_data.enumerate().map(
                gather_and_augment, num_parallel_calls=tf.data.AUTOTUNE
            )
        # Batched inside the epoch: no batch straddles two epochs.
        return epoch_data.batch(batch_size, drop_remainder=drop_remainder)

    return tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(one_epoch)


def steps_per_epoch(num_examples, batch_size, drop_remainder=False):
    """Number of batches in one epoch of `num_examples`.

    Args:
        num_examples: Examples per epoch.
        batch_size: Batch size.
        drop_remainder: Whether the last incomplete batch is dropped.

    Returns:
        The number of batches, for `fit(steps_per_epoch=...)` on a dataset
        built with `make_dataset(start_epoch=...)`.
    """
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def load_dataset(
    name,
    split="train",
    batch_size=128,
    source="auto",
    data_dir=None,
    download=False,
    scaling="unit",
    layout="image",
    augment=False,
    shuffle=None,
    exclude_classes=(),
    validation_fraction=0.0,
    seed=0,
    limit=None,
    drop_remainder=False,
):
    """Loads MNIST or CIFAR-10 as a ready-to-fit `tf.data.Dataset`.

    Args:
        name: `"mnist"` or `"cifar10"`.
        split: `"train"`, `"validation"` or `"test"`.
        batch_size: Batch size.
        source: See `load_arrays`; `"sample"` is the bundled MNIST sample.
        data_dir: See `load_arrays`.
        download: See `load_arrays`.
        scaling: See `preprocess`.
        layout: See `preprocess`.
        augment: See `make_dataset`; only allowed on the training split.
        shuffle: Defaults to `True` for the training split, else `False`.
        exclude_classes: Classes removed from the training split.
        validation_fraction: Fraction of each class held out for validation.
        seed: Seed of the split, the shuffle and the augmentation.
        limit: Keep at most this many examples.
        drop_remainder: Drop the last incomplete batch.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches.

    Example:

    >>> train = load_dataset("mnist", source="sample", batch_size=64)
    >>> test = load_dataset("mnist", "test", source="sample", batch_size=64)
    """
    if augment and split != "train":
        raise ValueError(
            "Augmentation is for training only. Received: "
            f"augment=True with split={split!r}."
        )
    images, labels = select(
        name, split, source, data_dir, download, exclude_classes,
        validation_fraction, seed, limit,
    )
    return make_dataset(
        images,
        labels,
        name=name,
        batch_size=batch_size,
        shuffle=split == "train" if shuffle is None else shuffle,
        augment=augment,
        seed=seed,
        scaling=scaling,
        layout=layout,
        drop_remainder=drop_remainder,
    )
