"""The batch contract of a `Distiller`: what each part of a batch means.

A batch is what Keras' `fit` hands a step: `x`, `(x, y)` or `(x, y,
sample_weight)`. `parse_batch` turns it into a `Batch` with named parts, once,
and nothing else in the Distiller looks at the raw data.

- `inputs`: `x`, given to the student (and to the teacher).
- `labels`: `y` for the student (hard) loss, or `None` (a transfer set).
- `sample_weight`: weights of both terms, per sample `(batch,)` or per
  position `(batch, time)` (KerasHub's padding masks), or `None`.
- `teacher_outputs`: cached teacher outputs, or `None` (the teacher runs).
- `label_mask`: which samples (or positions) have a label, given
  explicitly, or `None`.

Cached outputs and explicit label masks ride in `y` as a dict with the
reserved keys below, made by `targets(...)`:

    y = {"labels": y, "teacher_logits": t}            # cached logits
    y = {"labels": y, "label_mask": m}                 # dense labels, some missing

Apart from these keys, the only marker read from values is `UNLABELLED`
(-1) in integer class labels (see `keras_kd.labels`).
"""

from typing import Any
from typing import NamedTuple

import keras

LABELS_KEY = "labels"
TEACHER_LOGITS_KEY = "teacher_logits"
TEACHER_TOP_K_KEY = "teacher_top_k"
LABEL_MASK_KEY = "label_mask"
RESERVED_KEYS = (LABELS_KEY, TEACHER_LOGITS_KEY, TEACHER_TOP_K_KEY, LABEL_MASK_KEY)

# The label of a sample (or position) without one, in integer class labels:
# it gets only the distillation term.
UNLABELLED = -1


class Batch(NamedTuple):
    """One batch, parsed: see the module docstring."""

    inputs: Any
    labels: Any = None
    sample_weight: Any = None
    teacher_outputs: Any = None
    label_mask: Any = None


def targets(labels=None, teacher_logits=None, teacher_top_k=None, label_mask=None):
    """The `y` of a batch that carries more than labels.

    Args:
        labels: The labels, or `None` (no hard term for the batch).
        teacher_logits: Cached teacher logits `(batch, ..., classes)` (for an
            ensemble `(batch, members, ..., classes)`); the teacher then
            does not run in training steps.
        teacher_top_k: Cached top-k teacher logits, a dict made by
            `keras_kd.top_k` (`{"indices", "values", "log_normalizer"}`).
        label_mask: Booleans `(batch,)` or `(batch, ...)`: `False` marks a
            sample (or position) without a label, which then gets only the
            distillation term. The way to say so for dense labels (one-hot,
            multi-label, soft labels), where no value can mean "missing".

    Returns:
        A dict with the reserved keys that were given.

    Example:

    >>> import numpy as np
    >>> y = targets(labels=np.eye(3)[[0, 2]], label_mask=np.array([True, False]))
    >>> sorted(y)
    ['label_mask', 'labels']
    """
    parts = {
        LABELS_KEY: labels,
        TEACHER_LOGITS_KEY: teacher_logits,
        TEACHER_TOP_K_KEY: teacher_top_k,
        LABEL_MASK_KEY: label_mask,
    }
    return {key: value for key, value in parts.items() if value is not None}


def is_targets_dict(y):
    """True for a `y` made by `targets` (a dict of reserved keys only)."""
    return isinstance(y, dict) and bool(y) and all(key in RESERVED_KEYS for key in y)


def parse_batch(data):
    """Parses what Keras hands a step into a `Batch`.

    Args:
        data: `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`.

    Returns:
        A `Batch`.

    Raises:
        ValueError: for a `y` dict that mixes reserved keys with others.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(y, dict) and any(key in RESERVED_KEYS for key in y):
        if not is_targets_dict(y):
            others = sorted(key for key in y if key not in RESERVED_KEYS)
            raise ValueError(
                f"`y` mixes the Distiller's reserved keys {list(RESERVED_KEYS)} "
                f"with other keys {others}. Put the labels under 'labels' "
                "(see `keras_kd.targets`)."
            )
        teacher_outputs = y.get(TEACHER_LOGITS_KEY, y.get(TEACHER_TOP_K_KEY))
        if isinstance(sample_weight, dict) and set(sample_weight) == set(y):
            # Keras' array adapter repeats one sample-weight array over the
            # parts of a dict `y` (see `replicate_sample_weight`): one array.
            sample_weight = next(sample_weight[key] for key in RESERVED_KEYS if key in y)
        return Batch(
            inputs=x,
            labels=y.get(LABELS_KEY),
            sample_weight=sample_weight,
            teacher_outputs=teacher_outputs,
            label_mask=y.get(LABEL_MASK_KEY),
        )
    return Batch(inputs=x, labels=y, sample_weight=sample_weight)


def replicate_sample_weight(y, sample_weight):
    """`sample_weight` as Keras' array adapter takes it with `y`.

    Keras reads a dict `y` as several outputs: it repeats a per-sample
    `(n,)` array over them and refuses any other shape (a per-position
    `(n, time)` weight). For a `targets(...)` dict the weights are the
    batch's one sample weight, so they are repeated here, whatever their
    shape, and `parse_batch` reads them back as one array.

    Args:
        y: The `y` given to `fit`/`evaluate`.
        sample_weight: Their `sample_weight`, or `None`.

    Returns:
        `sample_weight`, or a dict of it per key of a `targets` dict `y`.
    """
    if sample_weight is None or not is_targets_dict(y) or isinstance(sample_weight, dict):
        return sample_weight
    return {key: sample_weight for key in y}
