"""`class_weight` as Keras applies it: turned into sample weights in the data.

`Distiller.fit(..., class_weight=...)` and `train_on_batch(...,
class_weight=...)` multiply per-class weights into the data of that call
only, so nothing outlives the call. Unlike Keras' own conversion, it reads
the labels of a `keras_kd.targets` dict (cached teacher outputs ride
along), gives `UNLABELLED` samples weight 1, and weighs each position of
integer class labels `(batch, time)` by its own class (Keras takes the arg
max over time).
"""

import inspect

import keras
import numpy as np
import tensorflow as tf

from keras_kd.distillation import batch as batch_module


def class_weight_table(class_weight):
    """Turns `{class: weight}` into a list indexed by class, as Keras does.

    Raises:
        ValueError: for an empty or non-dict `class_weight`, or keys that
            are not class indices.
    """
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(
            "`class_weight` must be a non-empty dict {class index: weight}. "
            f"Received: class_weight={class_weight!r}."
        )
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
           for k in class_weight):
        raise ValueError(
            "`class_weight` keys must be class indices (integers >= 0). "
            f"Received keys: {sorted(class_weight, key=str)}."
        )
    return [float(class_weight.get(c, 1.0)) for c in range(max(class_weight) + 1)]


def _labels_of(y):
    if batch_module.is_targets_dict(y):
        return y.get(batch_module.LABELS_KEY)
    return y


def weights_for(labels, table, class_axis):
    """Per-sample (or per-position) weights of a batch's labels, as tensors.

    Args:
        labels: Integer class labels or dense labels.
        table: Weights indexed by class (`class_weight_table`). Classes beyond
            it, and `UNLABELLED` positions, get weight 1.
        class_axis: `True` if `labels` have a class axis (one-hot, soft),
            whose arg max is the class; `False` for class indices.

    Returns:
        Float32 weights of the labels' leading shape.
    """
    labels = tf.convert_to_tensor(labels)
    if class_axis:
        classes = tf.cast(tf.argmax(labels, axis=-1), "int32")
        known = tf.reduce_any(labels != 0, axis=-1)
    else:
        if labels.shape.rank is not None and labels.shape.rank >= 2 and labels.shape[-1] == 1:
            labels = tf.squeeze(labels, -1)
        classes = tf.cast(tf.round(tf.cast(labels, "float32")), "int32")
        known = classes != batch_module.UNLABELLED
    size = len(table)
    known = tf.logical_and(tf.logical_and(known, classes >= 0), classes < size)
    values = tf.gather(tf.constant(table, "float32"), tf.clip_by_value(classes, 0, size - 1))
    return tf.where(known, values, 1.0)


def apply_class_weight(x, y, sample_weight, class_weight, class_axis):
    """Data for one `fit` call with `class_weight` turned into sample weights.

    Args:
        x, y, sample_weight: As given to `fit`.
        class_weight: `{class: weight}`.
        class_axis: A function `labels -> bool`, whether labels carry a
            class axis (see `weights_for`).

    Returns:
        `(x, y, sample_weight)` for Keras' `fit`.

    Raises:
        ValueError: for `class_weight` with `sample_weight`, or with data
            without labels.
    """
    table = class_weight_table(class_weight)
    if sample_weight is not None:
        raise ValueError(
            "You cannot pass `class_weight` and `sample_weight` at the same "
            "time. Multiply the class weights into the sample weights instead."
        )
    if isinstance(x, tf.data.Dataset):
        def add_weights(*data):
            inputs, targets, weights = keras.utils.unpack_x_y_sample_weight(data)
            if weights is not None:
                raise ValueError(
                    "The dataset has sample weights; `class_weight` cannot be "
                    "added to them. Multiply the class weights in instead."
                )
            labels = _require_labels(targets)
            return inputs, targets, weights_for(labels, table, class_axis(labels))

        return x.map(add_weights), None, None
    if isinstance(x, keras.utils.PyDataset) or inspect.isgenerator(x):
        return _WeightedBatches.wrap(x, table, class_axis), None, None
    labels = _require_labels(y)
    weights = weights_for(labels, table, class_axis(labels))
    return x, y, np.asarray(weights)


def _require_labels(y):
    labels = _labels_of(y)
    if labels is None:
        raise ValueError(
            "`class_weight` needs labels, but the data has none. Drop "
            "`class_weight` for a transfer set without labels."
        )
    return labels


class _WeightedBatches(keras.utils.PyDataset):
    """A PyDataset or generator whose batches gain class-weight sample weights."""

    @classmethod
    def wrap(cls, source, table, class_axis):
        if inspect.isgenerator(source):
            return (cls._weighted(batch, table, class_axis) for batch in source)
        return cls(source, table, class_axis)

    def __init__(self, source, table, class_axis):
        super().__init__(
            workers=source.workers, use_multiprocessing=source.use_multiprocessing,
            max_queue_size=source.max_queue_size,
        )
        self.source, self.table, self.class_axis = source, table, class_axis

    @staticmethod
    def _weighted(data, table, class_axis):
        x, y, weights = keras.utils.unpack_x_y_sample_weight(data)
        if weights is not None:
            raise ValueError(
                "The batches have sample weights; `class_weight` cannot be "
                "added to them. Multiply the class weights in instead."
            )
        labels = _require_labels(y)
        return x, y, np.asarray(weights_for(labels, table, class_axis(labels)))

    @property
    def num_batches(self):
        return self.source.num_batches

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return self._weighted(self.source[index], self.table, self.class_axis)

    def on_epoch_end(self):
        self.source.on_epoch_end()
