"""MNIST and CIFAR-10 as NumPy arrays: sources and splits.

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

The file formats are read by `keras_kd.file_formats`. The `tf.data`
pipelines that feed these arrays to a model are in `keras_kd.datasets`,
which also re-exports this module's public names.
"""

import hashlib
import io
import os
from importlib import resources

import numpy as np

from keras_kd.distillation import cache as cache_module
from keras_kd.data.file_formats import _find_in_directory
from keras_kd.data.file_formats import _load_npz
from keras_kd.data.file_formats import read_cifar_binary_batch as read_cifar_binary_batch
from keras_kd.data.file_formats import read_cifar_python_batch as read_cifar_python_batch
from keras_kd.data.file_formats import read_idx as read_idx
from keras_kd.distillation.validation import validate_choice
from keras_kd.distillation.validation import validate_fraction

SAMPLE_SHA256 = "3125cfd8a5bf446d1f5470d1dce782f6894fd55621dd4303160c10ba58aa7732"
DATASETS = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NUM_CLASSES = 10
SOURCES = ("auto", "sample", "files", "keras", "tfds")


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
    (8000, 28, 28, 1)
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
