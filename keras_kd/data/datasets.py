"""Ready-to-fit `tf.data` pipelines for MNIST, CIFAR-10 and any arrays.

`make_dataset` caches the raw images, orders each epoch as a pure function
of `(seed, epoch)` (stateless ops, so every entry point gives the same order
for the same seed), augments inside the graph (no `py_function`), batches,
preprocesses per batch and prefetches. Loading the arrays (file formats,
sources, splits) is `keras_kd.loaders`; its public names are re-exported
here, so `datasets.load_arrays` and `datasets.select` work as before.
"""

import functools

import numpy as np
import tensorflow as tf

from keras_kd.distillation import cache as cache_module
from keras_kd.data.loaders import DATASETS as DATASETS
from keras_kd.data.loaders import NUM_CLASSES as NUM_CLASSES
from keras_kd.data.loaders import SAMPLE_SHA256 as SAMPLE_SHA256
from keras_kd.data.loaders import SOURCES as SOURCES
from keras_kd.data.loaders import DataNotFoundError as DataNotFoundError
from keras_kd.data.loaders import _check_name
from keras_kd.data.loaders import check_labels as check_labels
from keras_kd.data.loaders import keras_cache_dir as keras_cache_dir
from keras_kd.data.loaders import load_arrays as load_arrays
from keras_kd.data.loaders import load_sample as load_sample
from keras_kd.data.loaders import read_cifar_binary_batch as read_cifar_binary_batch
from keras_kd.data.loaders import read_cifar_python_batch as read_cifar_python_batch
from keras_kd.data.loaders import read_idx as read_idx
from keras_kd.data.loaders import sample_path as sample_path
from keras_kd.data.loaders import select as select
from keras_kd.data.loaders import stratified_split as stratified_split
from keras_kd.distillation.validation import validate_choice

SCALINGS = ("unit", "symmetric", "standardize")
LAYOUTS = ("image", "flat")

# Per-channel statistics of the training sets, for `scaling="standardize"`.
_MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _one_image_or_batch(augment):
    """Lets a batch augmentation also take one image `(h, w, c)`."""

    @functools.wraps(augment)
    def wrapper(images, seed, *args, **kwargs):
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            return augment(images[None], seed, *args, **kwargs)[0]
        return augment(images, seed, *args, **kwargs)

    return wrapper


@_one_image_or_batch
def random_translate(images, seed, max_shift=2):
    """Shifts each image by up to `max_shift` pixels each way, zero-filled.

    One offset per image, drawn from `seed` for the whole batch at once: the
    batch is shifted by two gathers, not image by image.

    Args:
        images: A batch `(n, h, w, c)` or one image `(h, w, c)`.
        seed: A stateless seed, shape `(2,)`.
        max_shift: Largest shift in pixels.

    Returns:
        The shifted images, same shape.

    Example:

    >>> images = tf.ones((4, 28, 28, 1), tf.uint8)
    >>> tuple(random_translate(images, seed=[0, 1]).shape)
    (4, 28, 28, 1)
    """
    height, width = images.shape[1], images.shape[2]
    padded = tf.pad(
        images, [[0, 0], [max_shift, max_shift], [max_shift, max_shift], [0, 0]]
    )
    # Offset 0..2 * max_shift into the padded image, per image, per axis.
    offsets = tf.random.stateless_uniform(
        [tf.shape(images)[0], 2], seed, maxval=2 * max_shift + 1, dtype=tf.int32
    )
    rows = offsets[:, :1] + tf.range(height)
    columns = offsets[:, 1:] + tf.range(width)
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, columns, axis=2, batch_dims=1)


@_one_image_or_batch
def random_crop_and_flip(images, seed, padding=4):
    """CIFAR augmentation: zero-pad by `padding`, random crop, random flip.

    Args:
        images: A batch `(n, h, w, c)` or one image `(h, w, c)`.
        seed: A stateless seed, shape `(2,)`.
        padding: Padding in pixels before the crop.

    Returns:
        The augmented images, same shape; each is mirrored left-right with
        probability 1/2.

    Example:

    >>> images = tf.ones((4, 32, 32, 3), tf.uint8)
    >>> tuple(random_crop_and_flip(images, seed=[0, 1]).shape)
    (4, 32, 32, 3)
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = random_translate(images, crop_seed, padding)
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], flip_seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)


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


def load_preprocessed(
    name="mnist", source="sample", limit=None, scaling="unit", layout="image", data_dir=None
):
    """The train and test splits as float32 model inputs, ready for `fit`.

    Args:
        name: `"mnist"` or `"cifar10"`.
        source: See `load_arrays`; `"sample"` is the bundled MNIST sample.
        limit: Use only this many training examples.
        scaling: See `preprocess`.
        layout: See `preprocess`.
        data_dir: See `load_arrays`.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, inputs as float32 NumPy.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_preprocessed(limit=100)
    >>> x_train.shape, float(x_train.max()) <= 1.0
    ((100, 28, 28, 1), True)
    """
    splits = []
    for split, split_limit in (("train", limit), ("test", None)):
        images, labels = select(name, split, source=source, data_dir=data_dir, limit=split_limit)
        splits.append((preprocess(images, name, scaling, layout).numpy(), labels))
    return tuple(splits)


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
        start_epoch: `None` (default) for a dataset of one epoch per
            iteration: the k-th iteration is epoch k. An integer gives
            instead an endless stream of epochs `start_epoch,
            start_epoch + 1, ...`; fit it with `steps_per_epoch` (see
            `steps_per_epoch`) and `initial_epoch=start_epoch`. Either way
            epoch k's order and augmentation depend only on `(seed, k)`, so
            a run resumed at epoch k sees the same batches as an
            uninterrupted one.

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
        if teacher_logits.ndim not in (2, 3) or len(teacher_logits) != len(images):
            raise ValueError(
                f"`teacher_logits` must have shape ({len(images)}, "
                f"num_classes), one row per image (or ({len(images)}, members, "
                f"num_classes) for an ensemble). Received {teacher_logits.shape}."
            )
        if num_classes is None:
            num_classes = teacher_logits.shape[-1]
        elif teacher_logits.shape[-1] != num_classes:
            raise ValueError(
                f"`teacher_logits` have {teacher_logits.shape[-1]} classes but "
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

    def prepare_batch(batch_seed, batch_images):
        if augment_fn is not None:
            batch_images = augment_fn(batch_images, batch_seed)
        return preprocess(batch_images, name, scaling, layout)

    dataset = _epoch_stream(
        elements, start_epoch, shuffle, prepare_batch, seed, batch_size, drop_remainder
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _epoch_stream(elements, start_epoch, shuffle, prepare_batch, seed, batch_size, drop_remainder):
    """Batches of epochs, each epoch a function of `(seed, epoch)` alone.

    With an integer `start_epoch`: the endless stream of epochs
    `start_epoch, start_epoch + 1, ...`. With `None`: one epoch per
    iteration, epoch k on the k-th iteration (as Keras iterates a finite
    dataset once per epoch), the same epochs as the stream from 0.
    `prepare_batch(batch_seed, images)` turns each batch of raw images into
    model inputs; `batch_seed` is its own stateless seed.
    """
    if start_epoch is not None and (
        isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0
    ):
        raise ValueError(
            "`start_epoch` must be a non-negative integer or None. "
            f"Received: start_epoch={start_epoch!r}."
        )
    tensors = tf.nest.map_structure(tf.convert_to_tensor, elements)
    size = len(elements[0])

    def one_epoch(epoch):
        # Stateless ops keyed by (seed, epoch), not Dataset.shuffle: its seed
        # must be a Python int, and here the epoch is a tensor.
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        if shuffle:
            order = tf.argsort(tf.random.stateless_uniform([size], epoch_seed))
        else:
            order = tf.range(size)
        augment_seed = tf.random.experimental.stateless_split(epoch_seed, 2)[1]

        # One gather and one vectorised augmentation per batch, never per
        # image, in a single parallel map.
        def make_batch(index, batch_order):
            images, *rest = tf.nest.map_structure(lambda t: tf.gather(t, batch_order), tensors)
            batch_seed = tf.random.experimental.stateless_fold_in(augment_seed, index)
            return (prepare_batch(batch_seed, images), *rest)

        batch_orders = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
        batch_orders = batch_orders.batch(batch_size, drop_remainder=drop_remainder)
        return batch_orders.enumerate().map(make_batch, num_parallel_calls=tf.data.AUTOTUNE)

    if start_epoch is not None:
        # Declared endless, so that `fit` without `steps_per_epoch` says so.
        stream = tf.data.Dataset.counter(start_epoch).flat_map(one_epoch)
        return stream.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    # The iteration count lives in a variable, as `Dataset.shuffle`'s own
    # reshuffling keeps a seed-generator state between iterations.
    iterations = tf.Variable(-1, dtype=tf.int64, trainable=False)
    epoch = tf.data.Dataset.range(1).map(lambda _: iterations.assign_add(1))
    # flat_map hides the length; declared, Keras knows the steps of an epoch
    # (a progress bar with a total, no "ran out of data" warning).
    batches = steps_per_epoch(size, batch_size, drop_remainder)
    return epoch.flat_map(one_epoch).apply(tf.data.experimental.assert_cardinality(batches))


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
