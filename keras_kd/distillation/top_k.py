"""Top-k teacher-logit caches for sequence models (language models).

A language-model teacher gives logits of shape `(batch, time, vocab)`; the
dense cache of `keras_kd.cache` would cost `4 * vocab` bytes per token
(201 kB for GPT-2's 50,257 tokens). This module keeps, per token, only the
teacher's `k` largest logits, their token ids and the log-normaliser
`logsumexp(logits / T)` over the full vocabulary (`bytes_per_token`: 100
bytes at `k=16`), as DistillKit's offline logits and Megatron-LM's top-k
logits distillation do.

`top_k_kl_divergence` compares such a cached teacher with a student's full
logits in one of two ways:

- `tail="bin"`: both distributions over `k + 1` bins, the `k` cached tokens
  and one bin for the rest of the vocabulary. The teacher's tail mass is
  exact, but needs the log-normaliser at the loss's temperature, so the
  cache is made at one `temperature` and only that temperature is accepted.
- `tail="renormalize"`: both distributions renormalised over the `k` cached
  tokens. Any temperature works; the mass outside the top k is ignored.

With `k = vocab` both equal the dense `T**2 * KL(softmax(t/T) ||
softmax(s/T))` of `KLDivergenceWithTemperature`.

`write_top_k_cache` runs the teacher once over the inputs, batch by batch,
and writes a directory of `.npy` shards with a JSON manifest (fingerprints
of the teacher's weights and of the inputs, checksums); `read_top_k_cache`
checks it and memory-maps the shards; `top_k_dataset` streams it as a
`tf.data.Dataset` of per-example (or per-batch) dicts to `zip` with the
inputs, read by tf.data itself.
"""

import hashlib
import json
import math
import numbers
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd.distillation import teacher as teacher_module
from keras_kd.distillation.cache import CacheError
from keras_kd.distillation.fingerprints import InputsHasher as _InputsHasher
from keras_kd.distillation.fingerprints import fingerprint_model
from keras_kd.distillation.fingerprints import flatten as _flatten
from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import KLDivergenceWithTemperature
from keras_kd.distillation.validation import validate_choice
from keras_kd.distillation.validation import validate_temperature

TOP_K_FORMAT = "keras_kd.top_k"
TOP_K_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

# The keys of a cached example, as `top_k_dataset` yields them; they are
# also the argument names of `top_k_kl_divergence`.
TOP_K_KEYS = ("indices", "values", "log_normalizer")
# Added to every element by `top_k_dataset`: the cache's temperature, so
# that a loss never has to be told it (and cannot be told it wrongly).
CACHE_TEMPERATURE_KEY = "cache_temperature"
# Added likewise: the teacher's vocabulary size, from the manifest, so that a
# student of another vocabulary is refused at the first batch.
VOCAB_SIZE_KEY = "vocab_size"
TEACHER_TOP_K_KEY = "teacher_top_k"

TAILS = ("bin", "renormalize")
_VALUES_DTYPES = ("float16", "float32")
_VERIFY = ("open", "lazy", "none")

# Tokens per shard by default: 1 Mi tokens, 100 MiB at k=16 in float16.
DEFAULT_SHARD_TOKENS = 1 << 20
# Examples per chunk of `TopKCache.chunks` (in-memory copies).
_DATASET_CHUNK = 256
_HASH_BLOCK = 1 << 20


def bytes_per_token(k, values_dtype="float16"):
    """Returns the bytes a top-k cache stores per token.

    `k * 4` (int32 token ids) `+ k * itemsize` (the values) `+ 4` (the
    float32 log-normaliser), against `4 * vocab` for a dense float32 cache.

    Args:
        k: Number of cached logits per token.
        values_dtype: `"float16"` (default) or `"float32"`.

    Returns:
        An `int`.

    Raises:
        ValueError: if `k` is not a positive integer or `values_dtype` is
            not one of the two.

    Example:

    >>> bytes_per_token(16)
    100
    >>> 4 * 50257  # A dense float32 row of GPT-2's vocabulary.
    201028
    """
    k = _validate_k(k)
    values_dtype = validate_choice(
        str(np.dtype(values_dtype)) if _is_dtype(values_dtype) else values_dtype,
        "values_dtype",
        set(_VALUES_DTYPES),
    )
    return k * 4 + k * np.dtype(values_dtype).itemsize + 4


def _is_dtype(value):
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


def _validate_k(k, vocab_size=None):
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(
            f"`k` must be a positive integer (logits kept per token). "
            f"Received: k={k!r}. Use e.g. k=16."
        )
    if vocab_size is not None and k > vocab_size:
        raise ValueError(
            f"`k` must be at most the vocabulary size {vocab_size}. Received: "
            f"k={k}. Pass k<={vocab_size} (k={vocab_size} keeps every logit)."
        )
    return int(k)


def top_k_logits(logits, k, temperature=1.0):
    """Returns the `k` largest logits, their ids and the log-normaliser.

    Args:
        logits: Teacher logits of shape `(..., vocab)`, e.g. `(batch, time,
            vocab)`.
        k: Number of logits to keep per position, `1 <= k <= vocab`.
        temperature: The temperature of the log-normaliser (default 1.0).

    Returns:
        A tuple `(indices, values, log_normalizer)`: `indices` int32 `(...,
        k)`, the token ids of the largest logits; `values` float32 `(...,
        k)`, those logits, in descending order; `log_normalizer` float32
        `(...)`, `logsumexp(logits / temperature)` over the full vocabulary.
        The teacher's top-k log-probabilities at `temperature` are `values /
        temperature - log_normalizer`, and its remaining (tail) mass is `1 -
        sum(exp(values / temperature - log_normalizer))`.

    Raises:
        ValueError: if `k` is not an integer in `[1, vocab]` or `temperature`
            is not a positive number.

    Example:

    >>> indices, values, log_normalizer = top_k_logits([[0.0, 2.0, 1.0]], k=2)
    >>> indices.numpy().tolist(), values.numpy().tolist()
    ([[1, 2]], [[2.0, 1.0]])
    >>> round(float(log_normalizer[0]), 4)  # log(1 + e**2 + e)
    2.4076
    """
    temperature = validate_temperature(temperature)
    logits = ops.cast(ops.convert_to_tensor(logits), "float32")
    if len(logits.shape) < 1 or logits.shape[-1] is None:
        raise ValueError(
            "`logits` must have a known last (vocabulary) axis. Received: "
            f"logits of shape {tuple(logits.shape)}."
        )
    k = _validate_k(k, logits.shape[-1])
    values, indices = tf.math.top_k(logits, k=k, sorted=True)
    log_normalizer = tf.reduce_logsumexp(logits / temperature, axis=-1)
    return tf.cast(indices, tf.int32), values, log_normalizer


def _log1mexp(x):
    """`log(1 - exp(x))` for `x < 0`, accurate on both sides of `-log 2`."""
    return ops.where(
        x > -math.log(2.0),
        ops.log(-ops.expm1(x)),
        ops.log1p(-ops.exp(x)),
    )


def _static_values(value):
    """A NumPy array of `value` if known without running a graph, else None."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return np.asarray(float(value))
    if isinstance(value, np.ndarray) or tf.executing_eagerly():
        return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
    static = tf.get_static_value(value)
    return None if static is None else np.asarray(static, dtype=np.float64)


def bin_temperature_message(cache_temperature=None):
    """Why `tail="bin"` refuses a temperature, and what to do."""
    if cache_temperature is None:  # Known only when the graph runs.
        held, use = "the cache's temperature (the batch's cache_temperature)", "that value"
    else:
        held, use = f"cache_temperature={cache_temperature}", f"temperature={cache_temperature}"
    return (
        f"tail='bin' needs the teacher's log-normaliser at the loss's "
        f"temperature, and the cache holds it at {held}. Pass {use} (the "
        "Distiller's `temperature`), rebuild the cache at the temperature you "
        "want (write_top_k_cache(..., temperature=T)), or use "
        "tail='renormalize', which works at any temperature."
    )


@tf.autograph.experimental.do_not_convert
def _check_bin_temperature(temperature, cache_temperature):
    """Refuses a `bin` temperature other than the cache's; returns deps.

    Either may be a number or a tensor (the cache's may come per example
    from `top_k_dataset`). Known values are checked now; symbolic ones by
    an assert in the graph, which XLA drops: the Distiller also checks
    eagerly on the first batch (see `TopKKLDivergence`).
    """
    static_temperature = _static_values(temperature)
    static_cache = _static_values(cache_temperature)
    if static_temperature is not None and static_cache is not None:
        if static_cache.size and not np.allclose(
            static_cache, static_temperature, rtol=1e-6, atol=0.0
        ):
            shown = float(static_cache.reshape(-1)[0])
            received = float(static_temperature.reshape(-1)[0])
            raise ValueError(
                f"{bin_temperature_message(shown)} Received: temperature={received}."
            )
        return []
    # A symbolic temperature (a Distiller's variable inside tf.function).
    return [
        tf.debugging.assert_near(
            tf.cast(cache_temperature, tf.float32),
            tf.cast(temperature, tf.float32) + tf.zeros_like(
                tf.cast(cache_temperature, tf.float32)),
            rtol=1e-6,
            message=bin_temperature_message(
                float(static_cache.reshape(-1)[0])
                if static_cache is not None and static_cache.size else None),
        )
    ]


@tf.autograph.experimental.do_not_convert
def top_k_kl_divergence(
    indices,
    values,
    log_normalizer,
    student_logits,
    temperature,
    tail="bin",
    cache_temperature=1.0,
    precision="float32",
    vocab_size=None,
):
    """`T**2 * KL(teacher || student)` per position, from a top-k teacher.

    Two treatments of the vocabulary outside the teacher's top k:

    - `tail="bin"` (default): `k + 1` bins, the `k` cached tokens and one
      tail bin holding the rest of the mass: `1 - sum(p_T[top k])` for the
      teacher (from the full-vocabulary `log_normalizer`) and `1 -
      sum(p_S[top k])` for the student, both computed in log space
      (`log(1 - exp(logsumexp(...)))`, clamped so that a tail of ~0 gives
      neither NaN losses nor NaN gradients; a tail below ~1e-7 in float32
      counts as 0). The teacher's tail is exact, so with any `k` the loss
      is a lower bound of the dense KL that it approaches as `k` grows.
      The cache's `log_normalizer` is `logsumexp(z / cache_temperature)`,
      so `temperature` must equal `cache_temperature`.
    - `tail="renormalize"`: both distributions renormalised over the `k`
      cached tokens, the teacher's `softmax(values / T)` and the student's
      `log_softmax(student_logits[indices] / T)`. It works at any
      temperature and ignores `log_normalizer`, but drops the tail mass.

    With `k = vocab` both equal the dense `T**2 * KL(softmax(t/T) ||
    softmax(s/T))` (`KLDivergenceWithTemperature`).

    The first three arguments are the keys of `top_k_dataset`'s examples,
    so a batch's `teacher_top_k` dict can be passed as `**teacher_top_k`.

    Args:
        indices: int32 token ids of the teacher's top k, `(batch, ..., k)`.
        values: The teacher's logits at `indices`, `(batch, ..., k)` (float16
            or float32; they may be shifted by a constant per position, as
            `write_top_k_cache` stores them, if `log_normalizer` is shifted
            by that constant over `cache_temperature`).
        log_normalizer: `logsumexp(teacher_logits / cache_temperature)` over
            the full vocabulary, `(batch, ...)`. Used by `tail="bin"` only.
        student_logits: The student's full logits, `(batch, ..., vocab)`.
        temperature: Softmax temperature, a positive float or scalar tensor.
        tail: `"bin"` or `"renormalize"`, see above.
        cache_temperature: The temperature of `log_normalizer` (the cache's
            `temperature`, 1.0 by default): a number, or the
            `cache_temperature` that `top_k_dataset` puts in every element
            (so `**element` passes it). `tail="bin"` refuses another
            `temperature`.
        precision: Dtype of the arithmetic, `"float32"` (default) or
            `"float64"`.
        vocab_size: Optional: the teacher's vocabulary size (the
            `vocab_size` of `top_k_dataset`'s elements), which must equal
            the student's number of logits.

    Returns:
        A tensor of shape `(batch, ...)` in `precision`: the loss of each
        position (mask padding positions yourself).

    Raises:
        ValueError: for an unknown `tail` or `precision`, or with
            `tail="bin"`, a `temperature` other than `cache_temperature`
            (inside a `tf.function`, with a symbolic temperature, an
            `InvalidArgumentError` when run).

    Example:

    >>> import numpy as np
    >>> teacher = np.array([[[3.0, 1.0, 0.0, -1.0]]])
    >>> indices, values, log_normalizer = top_k_logits(teacher, k=2)
    >>> kl = top_k_kl_divergence(indices, values, log_normalizer, teacher,
    ...                          temperature=1.0)
    >>> kl.shape, abs(float(kl[0, 0])) < 1e-6
    (TensorShape([1, 1]), True)
    """
    tail = validate_choice(tail, "tail", set(TAILS))
    precision = validate_choice(precision, "precision", {"float32", "float64"})
    if isinstance(cache_temperature, numbers.Real) or cache_temperature is None:
        cache_temperature = validate_temperature(cache_temperature, "cache_temperature")
    dependencies = []
    if tail == "bin":
        dependencies = _check_bin_temperature(temperature, cache_temperature)
    if vocab_size is not None:
        dependencies = dependencies + _check_vocabulary(vocab_size, student_logits)
    temperature = ops.cast(temperature, precision)
    if dependencies:
        with tf.control_dependencies(dependencies):
            temperature = tf.identity(temperature)
    indices = ops.cast(indices, "int32")
    values = ops.cast(tf.convert_to_tensor(values), precision)
    student_logits = ops.cast(tf.convert_to_tensor(student_logits), precision)
    if tail == "renormalize":
        teacher_log_p = ops.log_softmax(values / temperature, axis=-1)
        student_top = ops.take_along_axis(student_logits, indices, axis=-1)
        student_log_q = ops.log_softmax(student_top / temperature, axis=-1)
        kl = _sum_p_log_ratio(teacher_log_p, student_log_q)
    else:
        tiny = float(np.finfo(precision).eps)
        log_normalizer = ops.cast(log_normalizer, precision)
        teacher_log_p = values / temperature - log_normalizer[..., None]
        # Only k log-probabilities are needed: gather the scaled logits and
        # subtract the log-normaliser (no full-vocabulary log_softmax).
        student_scaled = student_logits / temperature
        student_log_q = ops.take_along_axis(student_scaled, indices, axis=-1) - ops.logsumexp(
            student_scaled, axis=-1, keepdims=True)
        # log of the top-k mass, clamped below 0: the tail is >= ~eps.
        teacher_top_mass = ops.logsumexp(teacher_log_p, axis=-1)
        student_top_mass = ops.logsumexp(student_log_q, axis=-1)
        teacher_log_tail = _log1mexp(ops.minimum(teacher_top_mass, -tiny))
        student_log_tail = _log1mexp(ops.minimum(student_top_mass, -tiny))
        # A teacher tail under the clamp (k = vocab; rounding) is 0 mass.
        teacher_tail = ops.where(
            teacher_top_mass >= -tiny, ops.zeros_like(teacher_log_tail),
            ops.exp(teacher_log_tail),
        )
        kl = _sum_p_log_ratio(teacher_log_p, student_log_q)
        kl = kl + teacher_tail * (teacher_log_tail - student_log_tail)
    # Rounding can leave -1e-9 where the exact value is 0.
    kl = ops.maximum(kl, 0.0)
    return kl * temperature**2


def _sum_p_log_ratio(log_p, log_q):
    """`sum(p * (log p - log q))` over the last axis, where a bin of zero
    teacher probability (an -inf or clipped value) contributes exactly 0
    (not `0 * inf`), in the value and in the gradient."""
    p = ops.exp(log_p)
    present = p > 0.0
    safe_log_p = ops.where(present, log_p, ops.zeros_like(log_p))
    terms = ops.where(present, p * (safe_log_p - log_q), ops.zeros_like(log_p))
    return ops.sum(terms, axis=-1)


def _check_vocabulary(vocab_size, student_logits):
    """Refuses a cache vocabulary other than the student's; returns deps."""
    classes = student_logits.shape[-1]
    static = _static_values(vocab_size)
    if static is not None and classes is not None:
        sizes = np.unique(static).astype(int).tolist()
        for size in sizes:
            if size != classes:
                raise ValueError(vocabulary_message(size, classes))
        return []
    # The Distiller checks eagerly at the first batch; XLA drops this.
    return [tf.debugging.assert_equal(
        tf.cast(vocab_size, tf.int32), tf.shape(student_logits, out_type=tf.int32)[-1],
        message=vocabulary_message("another", classes))]


def vocabulary_message(teacher_vocabulary, student_classes):
    """Why a top-k cache does not fit a student, and what to do."""
    return (
        f"The top-k cache holds a teacher with a vocabulary of {teacher_vocabulary} "
        f"ids, but the student outputs {student_classes} logits per position. The "
        "ids of a top-k cache index the student's logits, so both need one "
        "vocabulary: write the cache from a teacher with the student's "
        f"{student_classes} ids (for a padded teacher, a model returning "
        f"`logits[..., :{student_classes}]`), or build the student for "
        f"{teacher_vocabulary}."
    )


def check_cache_vocabulary(teacher_top_k, student_classes):
    """Checks, eagerly, that a batch's cache fits the student's vocabulary.

    The vocabulary the batches carry (`top_k_dataset`'s `vocab_size`) must
    equal the student's number of logits; batches without it (dicts made by
    hand) must hold ids below it.

    Raises:
        ValueError: naming both sizes.
    """
    if student_classes is None:
        return
    carried = teacher_top_k.get(VOCAB_SIZE_KEY)
    if carried is not None:
        sizes = np.unique(np.asarray(ops.convert_to_numpy(carried)))
        for size in sizes.tolist():
            if int(size) != int(student_classes):
                raise ValueError(vocabulary_message(int(size), student_classes))
        return
    indices = np.asarray(ops.convert_to_numpy(teacher_top_k["indices"]))
    if indices.size and int(indices.max()) >= student_classes:
        raise ValueError(vocabulary_message(f"at least {int(indices.max()) + 1}", student_classes))


def carried_cache_temperature(teacher_top_k):
    """The one cache temperature a batch carries (a float), or None.

    Raises:
        ValueError: if the batch mixes caches of several temperatures.
    """
    carried = teacher_top_k.get(CACHE_TEMPERATURE_KEY)
    if carried is None:
        return None
    values = np.unique(np.asarray(ops.convert_to_numpy(carried), np.float64))
    if values.size != 1:
        raise ValueError(
            "One batch of `teacher_top_k` holds examples of caches written at "
            f"several temperatures ({values.tolist()}); tail='bin' needs one. "
            "Zip the inputs with one cache."
        )
    return float(values[0])


def check_cache_temperature(loss_fn, teacher_top_k, temperature):
    """Checks, before training, a `tail="bin"` loss against the cache.

    The in-graph check of `top_k_kl_divergence` is dropped under XLA, so the
    Distiller calls this on the first batch of every `fit` and
    `train_on_batch` (eagerly), and keeps the result to refuse a later
    temperature change during that `fit`.

    Args:
        loss_fn: The distillation loss that reads the top-k batches.
        teacher_top_k: A batch's `teacher_top_k` dict (NumPy or eager).
        temperature: The temperature the loss will run at (a float).

    Returns:
        The cache temperature `temperature` must keep (a float), or `None`
        when nothing ties it (`tail="renormalize"`, or no temperature known).

    Raises:
        ValueError: if the batch's cache temperature differs from the loss's
            `cache_temperature` or (with `tail="bin"`) from `temperature`.
    """
    if getattr(loss_fn, "tail", None) != "bin":
        return None
    explicit = getattr(loss_fn, "cache_temperature", None)
    carried = carried_cache_temperature(teacher_top_k)
    if carried is not None:
        if explicit is not None and not math.isclose(explicit, carried, rel_tol=1e-6):
            raise ValueError(
                f"TopKKLDivergence(cache_temperature={explicit}) was given, but the "
                f"batches come from a cache written at temperature={carried}. "
                "Leave cache_temperature unset (the batches carry it)."
            )
    cache_temperature = carried if carried is not None else explicit
    if cache_temperature is None:
        return None
    if not math.isclose(float(temperature), cache_temperature, rel_tol=1e-6):
        raise ValueError(
            f"{bin_temperature_message(cache_temperature)} Received: "
            f"temperature={float(temperature)}."
        )
    return cache_temperature


@keras.saving.register_keras_serializable(package="keras_kd")
class TopKKLDivergence(DistillationLoss):
    """Token-level KD from a top-k teacher cache, as a distillation loss.

    A `Distiller` whose batches carry `keras_kd.targets(labels,
    teacher_top_k=...)` (from `top_k_dataset`) hands this loss the cached
    dict instead of dense logits; `top_k_kl_divergence` gives the value per
    position, reduced as the student loss is. A Distiller left with its
    default `distillation_loss_fn` uses `TopKKLDivergence()` for such
    batches.

    The cache's temperature travels with the batches (`top_k_dataset` puts
    it in every element), so it need not be given; with `tail="bin"` the
    Distiller's temperature must equal it. The Distiller checks on the
    first batch of every `fit` (a `tf.data.Dataset`'s as it passes, arrays
    before) and `train_on_batch`, and when its temperature is set during
    such a fit; those checks hold under XLA. Batches from a `PyDataset`, a
    generator, or a dataset with ragged or sparse parts are checked only in
    the step (an assert that XLA drops).

    Args:
        tail: `"bin"` (default) or `"renormalize"`; see
            `top_k_kl_divergence`.
        cache_temperature: `None` (default): the temperature the batches
            carry. A number: the cache's temperature for batches that do
            not carry it (dicts made by hand, e.g. from
            `TopKCache.chunks()`); batches that do must agree with it.
        temperature: Softmax temperature, or `None` for the Distiller's.
        precision: Dtype of the arithmetic, `"float32"` by default.
        reduction: `None` (as the student loss) or a Keras reduction.
        name: Name of the loss.
        dtype: Dtype of the returned loss.

    Raises:
        ValueError: for an unknown `tail`, a bad `cache_temperature`, or
            (when the loss runs) batches that carry no cache temperature
            while `cache_temperature` is `None`.

    Example:

    >>> import numpy as np
    >>> teacher = np.array([[[3.0, 1.0, 0.0, -1.0]]], "float32")
    >>> indices, values, log_normalizer = top_k_logits(teacher, k=4)
    >>> cached = {"indices": indices, "values": values,
    ...           "log_normalizer": log_normalizer, "cache_temperature": 1.0}
    >>> loss = TopKKLDivergence()
    >>> float(loss.compute_top_k(cached, teacher, 1.0)[0, 0]) < 1e-6
    True
    """

    takes_top_k = True

    def __init__(self, tail="bin", cache_temperature=None, temperature=None,
                 precision="float32", reduction=None, name="top_k_kl_divergence",
                 dtype="float32"):
        super().__init__(temperature=temperature, precision=precision,
                         reduction=reduction, name=name, dtype=dtype)
        self.tail = validate_choice(tail, "tail", set(TAILS))
        self.cache_temperature = (
            None if cache_temperature is None
            else validate_temperature(cache_temperature, "cache_temperature"))

    def batch_cache_temperature(self, teacher_top_k):
        """The cache temperature for this batch: the batch's, else the loss's.

        Raises:
            ValueError: if neither the batch nor the loss has one.
        """
        carried = teacher_top_k.get(CACHE_TEMPERATURE_KEY)
        if carried is not None:
            return carried
        if self.cache_temperature is None:
            raise ValueError(
                "The `teacher_top_k` batches carry no `cache_temperature` (they "
                "were not made by `top_k_dataset`), and TopKKLDivergence has "
                "none either. Pass TopKKLDivergence(cache_temperature=<the "
                "temperature the cache was written at>) or read the cache with "
                "top_k_dataset."
            )
        return self.cache_temperature

    def compute_top_k(self, teacher_top_k, student_logits, temperature):
        """The loss per position `(batch, ...)` from a cached top-k dict."""
        cache_temperature = self.batch_cache_temperature(teacher_top_k)
        dependencies = []
        carried = teacher_top_k.get(CACHE_TEMPERATURE_KEY)
        if carried is not None and self.cache_temperature is not None and self.tail == "bin":
            dependencies = self._check_given_cache_temperature(carried)
        with tf.control_dependencies(dependencies):
            values = top_k_kl_divergence(
                teacher_top_k["indices"], teacher_top_k["values"],
                teacher_top_k["log_normalizer"], student_logits, temperature,
                tail=self.tail, cache_temperature=cache_temperature,
                precision=self.precision, vocab_size=teacher_top_k.get(VOCAB_SIZE_KEY),
            )
        return ops.cast(values, self.dtype)

    def _check_given_cache_temperature(self, carried):
        """The batches' cache temperature must be the one this loss was given."""
        message = (
            f"TopKKLDivergence(cache_temperature={self.cache_temperature}) was "
            "given, but the batches come from a cache written at another "
            "temperature. Leave cache_temperature unset (the batches carry it)."
        )
        static = _static_values(carried)
        if static is not None:
            if static.size and not np.allclose(static, self.cache_temperature, rtol=1e-6):
                raise ValueError(f"{message} Received: {float(static.reshape(-1)[0])}.")
            return []
        return [tf.debugging.assert_near(
            tf.cast(carried, tf.float32),
            tf.fill(tf.shape(carried), tf.constant(self.cache_temperature, tf.float32)),
            rtol=1e-6, message=message)]

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        # Dense teacher logits: exact KD (top-k with k = vocab).
        return KLDivergenceWithTemperature.per_sample_loss(
            self, teacher_logits, student_logits, temperature)

    def get_config(self):
        return {**super().get_config(), "tail": self.tail,
                "cache_temperature": self.cache_temperature}


# --- Storage ----------------------------------------------------------------


def _iterate_batches(inputs, batch_size):
    """Yields batches of model inputs from a dataset, iterable or arrays."""
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be None or a positive integer. Received: "
            f"batch_size={batch_size!r}."
        )
    if isinstance(inputs, tuple) or (
        isinstance(inputs, tf.data.Dataset) and isinstance(inputs.element_spec, tuple)
    ):
        # What a preprocessor or a fit dataset gives: (x, y, sample_weight).
        raise ValueError(
            "`inputs` holds tuples, which read as Keras' (x, y, sample_weight): "
            "the teacher must see the model inputs only. Pass x (e.g. `x, y, "
            "sample_weight = preprocessor(texts)`, then `x`; for a dataset, "
            "`dataset.map(lambda x, *rest: x)`), or a list of input batches."
        )
    if isinstance(inputs, (np.ndarray, dict)) or tf.is_tensor(inputs):
        leaves = _flatten(inputs)
        arrays = [np.asarray(ops.convert_to_numpy(leaf)) for _, leaf in leaves]
        sizes = {len(array) for array in arrays}
        if len(sizes) != 1:
            raise ValueError(
                "All input arrays must hold the same number of examples. "
                f"Received: {dict((p, len(a)) for (p, _), a in zip(leaves, arrays))}."
            )
        size = sizes.pop()
        batch_size = batch_size or 32
        for start in range(0, size, batch_size):
            yield tf.nest.map_structure(
                lambda a: a[start : start + batch_size], inputs
            )
        return
    if isinstance(inputs, tf.data.Dataset):
        if batch_size is not None:
            inputs = inputs.unbatch().batch(batch_size)
        yield from inputs
        return
    if batch_size is not None:
        raise ValueError(
            "`batch_size` applies to arrays and `tf.data.Dataset`s; an "
            f"iterable of type {type(inputs).__name__} gives its own batches. "
            "Pass batch_size=None or a tf.data.Dataset."
        )
    try:
        iterator = iter(inputs)
    except TypeError:
        raise ValueError(
            "`inputs` must be a tf.data.Dataset, an iterable of batches, a "
            f"NumPy array or a dict of arrays. Received: {type(inputs).__name__}."
        ) from None
    yield from iterator


def fingerprint_inputs(inputs, batch_size=None):
    """Returns the sha256 fingerprint `write_top_k_cache` records of inputs.

    The same rows give the same fingerprint however they are batched.

    Args:
        inputs: As for `write_top_k_cache`.
        batch_size: As for `write_top_k_cache`.

    Returns:
        A 64-character hex string.

    Example:

    >>> import numpy as np
    >>> tokens = np.arange(12, dtype="int32").reshape(4, 3)
    >>> fingerprint_inputs(tokens, batch_size=1) == fingerprint_inputs(tokens)
    True
    """
    hasher = _InputsHasher()
    for batch in _iterate_batches(inputs, batch_size):
        hasher.update(batch)
    return hasher.hexdigest()


def _select_output(outputs, output):
    if output is None:
        if isinstance(outputs, (dict, list, tuple)):
            keys = list(outputs) if isinstance(outputs, dict) else list(range(len(outputs)))
            raise ValueError(
                "The teacher returns several outputs "
                f"({type(outputs).__name__} with keys {keys}); pass `output=` "
                "the key or index of its logits, e.g. output="
                f"{keys[0]!r}."
            )
        return outputs
    try:
        return outputs[output]
    except (KeyError, IndexError, TypeError):
        keys = list(outputs) if isinstance(outputs, dict) else (
            list(range(len(outputs))) if isinstance(outputs, (list, tuple)) else None
        )
        raise ValueError(
            f"`output={output!r}` does not select a teacher output. The teacher "
            f"returns {type(outputs).__name__}"
            + (f" with keys {keys}" if keys is not None else " (a single tensor: pass output=None)")
            + "."
        ) from None


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class _ShardWriter:
    """Buffers at most one shard (plus one batch) and writes `.npy` files."""

    def __init__(self, directory, shard_tokens, values_dtype):
        self.directory = directory
        self.shard_tokens = shard_tokens
        self.values_dtype = values_dtype
        self.buffer = []
        self.buffered = 0
        self.example_shape = None
        self.shards = []

    def add(self, indices, values, log_normalizer):
        example_shape = tuple(log_normalizer.shape[1:])
        if self.example_shape is not None and example_shape != self.example_shape:
            self.flush()  # A shard holds examples of one shape.
        self.example_shape = example_shape
        if self.values_dtype == "float16":
            # Beyond +-65504 float16 holds only infinities, and an -inf
            # value (an id of probability ~0, a padded row) would make the
            # loss NaN; clipped, its probability is still exactly 0.
            limit = float(np.finfo(np.float16).max)
            values = np.clip(values, -limit, limit)
        self.buffer.append((indices, values.astype(self.values_dtype), log_normalizer))
        self.buffered += len(indices)
        rows = max(1, self.shard_tokens // max(1, int(np.prod(example_shape))))
        while self.buffered >= rows:
            self._write(rows)

    def flush(self):
        if self.buffered:
            self._write(self.buffered)

    def _write(self, rows):
        arrays = [np.concatenate(parts) for parts in zip(*self.buffer)]
        shard, rest = [a[:rows] for a in arrays], [a[rows:] for a in arrays]
        self.buffer = [tuple(rest)] if len(rest[0]) else []
        self.buffered = len(rest[0])
        number = len(self.shards)
        files = {}
        for key, array in zip(TOP_K_KEYS, shard):
            name = f"shard-{number:05d}-{key}.npy"
            file_path = os.path.join(self.directory, name)
            np.save(file_path, np.ascontiguousarray(array), allow_pickle=False)
            files[key] = {
                "file": name,
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "sha256": _sha256_file(file_path),
            }
        self.shards.append({"examples": rows, "example_shape": list(self.example_shape), "files": files})


def write_top_k_cache(
    teacher,
    inputs,
    path,
    k,
    temperature=1.0,
    batch_size=None,
    shard_tokens=DEFAULT_SHARD_TOKENS,
    output=None,
    values_dtype="float16",
    center_values=True,
    rebuild=False,
    teacher_outputs=None,
):
    """Runs a teacher once over the inputs and writes its top-k logits.

    The teacher runs batch by batch (`training=False`); the top k are taken
    inside the compiled forward pass, so only `(batch, time, k)` arrays leave
    it, and a shard is written every `shard_tokens` tokens: memory holds one
    batch of logits and at most one shard, never the whole cache.

    Layout of the directory `path`:

    - `shard-00000-indices.npy`: int32 `(examples, time, k)`, token ids;
    - `shard-00000-values.npy`: `values_dtype` `(examples, time, k)`, the
      top-k logits in descending order;
    - `shard-00000-log_normalizer.npy`: float32 `(examples, time)`,
      `logsumexp(logits / temperature)` over the full vocabulary;
    - more shards `shard-00001-...` in the order of the inputs, and
    - `manifest.json`: format and version, the sha256 fingerprints of the
      teacher's weights and architecture
      (`keras_kd.distillation.fingerprints.fingerprint_model`) and of the
      inputs (`fingerprint_inputs`), `k`, `temperature`, the vocabulary
      size, dtypes, `center_values`, and per shard its number of examples,
      shapes and the sha256 of each file.

    With `center_values=True` (default) the stored values are the logits
    minus each position's largest logit (so the first is 0) and the stored
    log-normaliser is shifted by that logit over `temperature`. Both losses
    of `top_k_kl_divergence` are unchanged by this shift, and float16 is
    then most precise for the largest, most probable logits (a raw logit
    of 20 rounds by up to 0.008, i.e. 0.8% of its probability).

    The directory is written under a temporary name beside `path` and
    renamed when complete, so an interrupted run leaves no partial cache.

    Args:
        teacher: A Keras model returning logits `(batch, ..., vocab)`, e.g.
            a KerasHub `CausalLM` (`(batch, time, vocab)`).
        inputs: The teacher's inputs, unshuffled and un-augmented, in the
            order of training: a batched `tf.data.Dataset` or an iterable of
            batches (model inputs only, e.g. `{"token_ids": (b, t),
            "padding_mask": (b, t)}`: map `(x, y)` datasets to `x`), or a
            NumPy array / dict of arrays holding every example.
        path: The cache directory to write.
        k: Logits kept per token, `1 <= k <= vocab`.
        temperature: Temperature of the stored log-normaliser; the only
            temperature that `tail="bin"` accepts (default 1.0).
        batch_size: `None` (default): a dataset or iterable is used as
            batched; arrays are split into batches of 32. An integer rebatches
            a dataset or splits arrays into batches of that size.
        shard_tokens: Tokens (positions) per shard; a shard holds whole
            examples, at least one. Default 1 Mi (100 MiB at `k=16`).
        output: `None` if the teacher returns one tensor, else the key or
            index of its logits in the dict or list it returns.
        values_dtype: `"float16"` (default, 2 bytes per value) or
            `"float32"`.
        center_values: Store values relative to each position's top logit
            (default; see above). `False` stores the raw logits.
        rebuild: If `path` exists: `False` (default) keeps a cache of the
            same teacher, inputs and settings and refuses another one;
            `True` replaces it.
        teacher_outputs: `None` (default): `"probabilities"` for a teacher
            whose output comes from a softmax layer, else `"logits"`, as the
            `Distiller` decides. Probabilities are cached as their `log`
            (what the online Distiller distils from), so `k = vocab` gives
            the online loss; `"logits"` for a softmax teacher is refused.

    Returns:
        The cache, opened by `read_top_k_cache` (a `TopKCache`).

    Raises:
        ValueError: for invalid arguments, empty inputs or a teacher output
            that is not `(batch, ..., vocab)` logits.
        CacheError: if `path` holds another cache and `rebuild` is `False`.

    Example:

    ```python
    # A CausalLMPreprocessor gives (x, y, sample_weight); the teacher sees x.
    x, y, sample_weight = preprocessor(texts)
    write_top_k_cache(teacher_lm, x, "teacher_top_k", k=16, batch_size=8)
    train = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices((x, y, sample_weight)),
        top_k_dataset("teacher_top_k"),
    ).map(lambda xyw, top_k: (
        xyw[0], keras_kd.targets(xyw[1], teacher_top_k=top_k), xyw[2])
    ).batch(8)
    distiller.fit(train)  # the default distillation loss reads the cache
    ```
    """
    temperature = validate_temperature(temperature)
    k = _validate_k(k)
    values_dtype = validate_choice(
        str(np.dtype(values_dtype)) if _is_dtype(values_dtype) else values_dtype,
        "values_dtype",
        set(_VALUES_DTYPES),
    )
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, numbers.Integral) or shard_tokens < 1:
        raise ValueError(
            f"`shard_tokens` must be a positive integer. Received: "
            f"shard_tokens={shard_tokens!r}. Use e.g. {DEFAULT_SHARD_TOKENS}."
        )
    path = os.fspath(path)
    teacher_outputs = teacher_module.resolve_teacher_outputs(
        teacher_outputs, [teacher], output, where="write_top_k_cache")
    teacher_fingerprint = fingerprint_model(teacher)
    settings = {
        "teacher_outputs": teacher_outputs,
        "k": k,
        "temperature": temperature,
        "values_dtype": values_dtype,
        "center_values": bool(center_values),
        "output": output,
    }
    if os.path.exists(path) and not rebuild:
        existing = read_top_k_cache(path, teacher=teacher, verify="none")
        different = {
            key: (existing.manifest.get(key), value)
            for key, value in settings.items()
            if existing.manifest.get(key) != value
        }
        if different:
            raise CacheError(
                f"The top-k cache {path} was written with other settings "
                f"(cached, requested: {different}). Delete it, choose another "
                "path, or pass rebuild=True to recompute it."
            )
        fingerprint = fingerprint_inputs(inputs, batch_size)
        return read_top_k_cache(path, teacher=teacher, inputs_fingerprint=fingerprint)

    def forward_pass(batch):
        logits = _select_output(teacher(batch, training=False), output)
        logits = teacher_module.as_logits(logits, teacher_outputs)
        if len(logits.shape) < 2:
            raise ValueError(
                "The teacher's output must be logits of shape (batch, ..., "
                f"vocab). Received: shape {tuple(logits.shape)}."
            )
        return top_k_logits(logits, k, temperature), tf.shape(logits)[-1]

    forward = tf.function(forward_pass, reduce_retracing=True)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(path) + ".tmp-")
    try:
        hasher = _InputsHasher()
        writer = _ShardWriter(temporary, int(shard_tokens), values_dtype)
        vocab_size = None
        for batch in _iterate_batches(inputs, batch_size):
            hasher.update(batch)
            (indices, values, log_normalizer), vocab = forward(batch)
            indices, values, log_normalizer = (
                np.asarray(ops.convert_to_numpy(a))
                for a in (indices, values, log_normalizer)
            )
            vocab_size = int(vocab)
            if center_values:
                top = values[..., :1]
                values = values - top
                log_normalizer = log_normalizer - top[..., 0] / np.float32(temperature)
            writer.add(indices, values, log_normalizer.astype(np.float32))
        writer.flush()
        if not writer.shards:
            raise ValueError(
                "`inputs` holds no batches: there is nothing to cache. Pass at "
                "least one example."
            )
        manifest = {
            "format": TOP_K_FORMAT,
            "format_version": TOP_K_FORMAT_VERSION,
            "teacher_fingerprint": teacher_fingerprint,
            "inputs_fingerprint": hasher.hexdigest(),
            **settings,
            "vocab_size": vocab_size,
            "num_examples": hasher.num_examples,
            "num_tokens": int(sum(s["examples"] * int(np.prod(s["example_shape"])) for s in writer.shards)),
            "dtypes": {"indices": "int32", "values": values_dtype, "log_normalizer": "float32"},
            "shards": writer.shards,
        }
        with open(os.path.join(temporary, MANIFEST_NAME), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.exists(path):  # rebuild: swap the old cache out, then drop it.
            old = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(path) + ".old-")
            os.rmdir(old)
            os.rename(path, old)
            os.rename(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return read_top_k_cache(path, teacher=None, verify="none")


class TopKCache:
    """An opened top-k cache: its manifest and memory-mapped shards.

    Made by `read_top_k_cache`. Shards are opened with `np.load(mmap_mode=
    "r")` the first time they are used, so opening a cache reads only its
    manifest (and, with `verify="open"`, streams the files once through
    sha256).

    Attributes:
        path: The cache directory.
        manifest: The manifest dict (see `write_top_k_cache`).
        k, temperature, vocab_size, num_examples, center_values: From the
            manifest.
    """

    def __init__(self, path, manifest, verify):
        self.path = path
        self.manifest = manifest
        self.k = manifest["k"]
        self.temperature = manifest["temperature"]
        self.vocab_size = manifest["vocab_size"]
        self.num_examples = manifest["num_examples"]
        self.center_values = manifest["center_values"]
        self._verify = verify
        self._verified = set()
        self._open = {}

    def __len__(self):
        return self.num_examples

    @property
    def num_shards(self):
        return len(self.manifest["shards"])

    def _verify_file(self, entry):
        file_path = os.path.join(self.path, entry["file"])
        if entry["file"] in self._verified:
            return
        if not os.path.exists(file_path):
            raise CacheError(
                f"The top-k cache {self.path} is missing its shard file "
                f"{entry['file']}. Delete the directory and write it again."
            )
        if _sha256_file(file_path) != entry["sha256"]:
            raise CacheError(
                f"The top-k cache {self.path} is damaged: the checksum of "
                f"{entry['file']} does not match the manifest. Delete the "
                "directory and write it again (write_top_k_cache(..., "
                "rebuild=True))."
            )
        self._verified.add(entry["file"])

    def verify(self):
        """Checks every shard file against its sha256; raises `CacheError`."""
        for shard in self.manifest["shards"]:
            for entry in shard["files"].values():
                self._verify_file(entry)

    def shard(self, number):
        """Returns shard `number` as a dict of read-only memory-mapped arrays.

        Raises:
            CacheError: if a file is missing, does not match its shape or
                dtype, or (with `verify="lazy"`) its checksum.
        """
        if number in self._open:
            return self._open[number]
        arrays = {}
        for key, entry in self.manifest["shards"][number]["files"].items():
            if self._verify == "lazy":
                self._verify_file(entry)
            file_path = os.path.join(self.path, entry["file"])
            try:
                array = np.load(file_path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise self._unreadable(entry, error) from error
            if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
                raise self._mismatch(entry, array.shape, array.dtype)
            arrays[key] = array
        self._open[number] = arrays
        return arrays

    def chunks(self, size=_DATASET_CHUNK, drop_remainder=False):
        """Yields dicts of `size` consecutive examples (in-memory copies).

        Each holds the stored arrays and, as `top_k_dataset`'s elements, a
        `cache_temperature` per example.

        A chunk spans shards of the same example shape, so chunk `i` holds
        examples `i * size ...` as `inputs.batch(size)` would; where the
        example shape changes (batches of several lengths were cached), the
        chunk before it ends short.

        Args:
            size: Examples per chunk.
            drop_remainder: Whether to drop a last chunk shorter than `size`
                (as `tf.data.Dataset.batch(..., drop_remainder=True)`).
        """
        pieces, rows_pending, pending_shape = [], 0, None

        def joined():
            chunk = {key: np.concatenate([piece[key] for piece in pieces])
                     for key in TOP_K_KEYS}
            # As `top_k_dataset`'s elements: a complete `teacher_top_k`.
            chunk[CACHE_TEMPERATURE_KEY] = np.full(
                len(chunk["log_normalizer"]), self.temperature, np.float32)
            chunk[VOCAB_SIZE_KEY] = np.full(
                len(chunk["log_normalizer"]), self.vocab_size, np.int32)
            return chunk

        for number in range(self.num_shards):
            arrays = self.shard(number)
            rows = len(arrays["log_normalizer"])
            shape = arrays["log_normalizer"].shape[1:]
            if pieces and shape != pending_shape:
                if not drop_remainder:
                    yield joined()
                pieces, rows_pending = [], 0
            pending_shape = shape
            start = 0
            while start < rows:
                stop = min(rows, start + size - rows_pending)
                pieces.append({key: arrays[key][start:stop] for key in TOP_K_KEYS})
                rows_pending += stop - start
                start = stop
                if rows_pending == size:
                    yield joined()
                    pieces, rows_pending = [], 0
        if pieces and not drop_remainder:
            yield joined()

    def _unreadable(self, entry, error):
        return CacheError(
            f"The top-k cache {self.path} has an unreadable shard file "
            f"{entry['file']} ({type(error).__name__}: {error}). Delete the "
            "directory and write it again."
        )

    def _mismatch(self, entry, shape, dtype):
        return CacheError(
            f"The top-k cache {self.path} has a shard file {entry['file']} of "
            f"shape {tuple(shape)} and dtype {dtype}, but its manifest says "
            f"{tuple(entry['shape'])} {entry['dtype']}. Delete the directory "
            "and write it again."
        )

    def _file_layout(self, entry):
        """`(header bytes, dtype)` of a shard file, checked against the manifest."""
        file_path = os.path.join(self.path, entry["file"])
        try:
            with open(file_path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran_order, dtype = read_header(f)
                header_bytes = f.tell()
        except (OSError, ValueError) as error:
            raise self._unreadable(entry, error) from error
        if (list(shape) != entry["shape"] or str(dtype) != entry["dtype"]
                or fortran_order or dtype.byteorder == ">"):
            raise self._mismatch(entry, shape, dtype)
        expected_bytes = header_bytes + int(np.prod(shape)) * dtype.itemsize
        if os.path.getsize(file_path) != expected_bytes:
            raise CacheError(
                f"The top-k cache {self.path} has a truncated or padded shard "
                f"file {entry['file']}: {os.path.getsize(file_path)} bytes where "
                f"its header says {expected_bytes}. Delete the directory and "
                "write it again."
            )
        return header_bytes, dtype

    def _records(self, numbers, key, example_shape):
        """The raw examples of `key` in shards `numbers`: one string each."""
        entries = [self.manifest["shards"][n]["files"][key] for n in numbers]
        layouts = [self._file_layout(entry) for entry in entries]
        dtype = layouts[0][1]
        values_per_example = int(np.prod(example_shape)) * (1 if key == "log_normalizer" else self.k)
        files = tf.data.Dataset.from_tensor_slices((
            [os.path.join(self.path, entry["file"]) for entry in entries],
            np.array([header for header, _ in layouts], np.int64),
        ))
        if self._verify == "lazy":
            by_path = {os.path.join(self.path, e["file"]): e for e in entries}

            def verify(file_path):
                self._verify_file(by_path[file_path.numpy().decode()])
                return file_path

            files = files.map(lambda file_path, header: (
                tf.ensure_shape(tf.py_function(verify, [file_path], tf.string), []), header))
        return files.flat_map(lambda file_path, header: tf.data.FixedLengthRecordDataset(
            file_path, values_per_example * dtype.itemsize, header_bytes=header))

    def dataset(self, batch_size=None, drop_remainder=False):
        """Returns the cache as a `tf.data.Dataset`; see `top_k_dataset`.

        The shard files are read by tf.data itself (fixed-length records
        after each `.npy` header), so no Python runs per example or batch.
        """
        groups = []  # Runs of consecutive shards with one example shape.
        for number, shard in enumerate(self.manifest["shards"]):
            shape = tuple(shard["example_shape"])
            if groups and groups[-1][0] == shape:
                groups[-1][1].append(number)
            else:
                groups.append((shape, [number]))
        dtypes = {key: tf.as_dtype(self.manifest["dtypes"][key]) for key in TOP_K_KEYS}
        datasets, length = [], 0
        for example_shape, numbers in groups:
            records = tf.data.Dataset.zip(
                {key: self._records(numbers, key, example_shape) for key in TOP_K_KEYS})
            examples = sum(self.manifest["shards"][n]["examples"] for n in numbers)
            leading = []
            if batch_size is not None:
                records = records.batch(batch_size, drop_remainder=drop_remainder)
                leading = [batch_size if drop_remainder else -1]
                examples = (examples // batch_size if drop_remainder
                            else -(-examples // batch_size))
            length += examples

            def decode(record, example_shape=example_shape, leading=leading):
                shapes = {key: [*leading, *example_shape, self.k] for key in TOP_K_KEYS}
                shapes["log_normalizer"] = [*leading, *example_shape]
                element = {key: tf.reshape(tf.io.decode_raw(record[key], dtypes[key]),
                                           shapes[key]) for key in TOP_K_KEYS}
                leading_shape = tf.shape(element["log_normalizer"])[: len(leading)]
                element[CACHE_TEMPERATURE_KEY] = tf.fill(
                    leading_shape, tf.constant(self.temperature, tf.float32))
                element[VOCAB_SIZE_KEY] = tf.fill(
                    leading_shape, tf.constant(self.vocab_size, tf.int32))
                return element

            # deterministic=True: the order must match the inputs' even when
            # a pipeline's options allow tf.data to reorder.
            datasets.append(records.map(
                decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
        dataset = datasets[0]
        for more in datasets[1:]:
            dataset = dataset.concatenate(more)
        # A known length: Keras then knows the steps of an epoch of a zip.
        return dataset.apply(tf.data.experimental.assert_cardinality(length))


def read_top_k_cache(path, teacher=None, inputs_fingerprint=None, verify="open"):
    """Opens a top-k cache directory written by `write_top_k_cache`.

    Args:
        path: The cache directory.
        teacher: Optional teacher model: its weights' fingerprint must match
            the manifest's.
        inputs_fingerprint: Optional `fingerprint_inputs(...)` of the inputs
            you will zip the cache with: it must match the manifest's.
        verify: When shard checksums are checked: `"open"` (default) hashes
            every file now (streamed, one read of the cache); `"lazy"`
            hashes each shard's files the first time the shard is opened
            (e.g. while `top_k_dataset` iterates); `"none"` skips them
            (shapes and dtypes are still checked).

    Returns:
        A `TopKCache`.

    Raises:
        CacheError: if `path` is not a readable cache of this format and
            version, was made for another teacher or other inputs, or (by
            checksum) is damaged.

    Example:

    ```python
    cache = read_top_k_cache("teacher_top_k", teacher=teacher_lm)
    shard = cache.shard(0)  # {"indices": memmap, "values": ..., ...}
    ```
    """
    verify = validate_choice(verify, "verify", set(_VERIFY))
    path = os.fspath(path)
    manifest_path = os.path.join(path, MANIFEST_NAME)
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise CacheError(
            f"{path} is not a readable keras_kd top-k cache: its {MANIFEST_NAME} "
            f"cannot be read ({type(error).__name__}: {error}). Write it with "
            "write_top_k_cache, or delete it and write it again."
        ) from error
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != TOP_K_FORMAT
        or manifest.get("format_version") != TOP_K_FORMAT_VERSION
    ):
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise CacheError(
            f"The top-k cache {path} has format version {found!r}; this "
            f"keras_kd reads version {TOP_K_FORMAT_VERSION}. Delete it and "
            "write it again."
        )
    if teacher is not None and fingerprint_model(teacher) != manifest["teacher_fingerprint"]:
        raise CacheError(
            f"The top-k cache {path} was made for another teacher (the "
            "fingerprint of its weights and architecture differs). Delete it, choose another "
            "path, or pass rebuild=True to write_top_k_cache to recompute it."
        )
    if inputs_fingerprint is not None and inputs_fingerprint != manifest["inputs_fingerprint"]:
        raise CacheError(
            f"The top-k cache {path} was made for other inputs (their "
            f"fingerprint {manifest['inputs_fingerprint'][:12]}... differs "
            f"from {inputs_fingerprint[:12]}...). Delete it, choose another "
            "path, or pass rebuild=True to write_top_k_cache to recompute it."
        )
    cache = TopKCache(path, manifest, verify)
    if verify == "open":
        cache.verify()
    return cache


def top_k_dataset(path, teacher=None, inputs_fingerprint=None, verify="open",
                  batch_size=None, drop_remainder=False):
    """Returns a cache's examples as a `tf.data.Dataset`, in the order written.

    Each element is a dict `{"indices": int32 (time, k), "values": (time, k),
    "log_normalizer": float32 (time,), "cache_temperature": float32 (),
    "vocab_size": int32 ()}` for one example, or with `batch_size`, for `batch_size` consecutive examples
    (a leading batch axis on each). `cache_temperature` is the cache's
    `temperature` and `vocab_size` the teacher's vocabulary, carried so that
    `TopKKLDivergence` and the Distiller can check them against theirs. tf.data reads the shard files itself (fixed-length records after
    each `.npy` header), so no Python runs per example or batch and the
    dataset never holds the cache in memory; its length is known.

    Two ways to pair it with the inputs it was written from:

    - unbatched (default): `zip` it with the unbatched inputs (the same
      order), then shuffle and batch: any example-level pipeline;
    - `batch_size=B`: `zip` it with `inputs.batch(B)`: one element per
      batch, so tf.data does per batch what it would do per example (the
      faster of the two; shuffle whole batches if at all).

    Args:
        path: A cache directory, or a `TopKCache`.
        teacher: As for `read_top_k_cache`.
        inputs_fingerprint: As for `read_top_k_cache`.
        verify: As for `read_top_k_cache`.
        batch_size: `None` (default) for one element per example, or the
            examples per element: batch `i` holds examples `i * B` to
            `(i + 1) * B - 1`, as `inputs.batch(B)`, when every example has
            one shape. A cache of several lengths (batches of different
            lengths were written) is batched run by run: a batch never mixes
            lengths, so the run before a change of length ends short.
        drop_remainder: With `batch_size`, whether to drop short batches
            (then the batch axis is static, as with `Dataset.batch(B,
            drop_remainder=True)`); with several lengths, that is the short
            batch of each run.

    Returns:
        A `tf.data.Dataset` of dicts.

    Raises:
        CacheError: as `read_top_k_cache`, or for a shard file whose `.npy`
            header does not match the manifest. With `verify="lazy"`, a
            shard whose checksum fails raises while the dataset reaches it
            (a `tf.errors` error carrying the `CacheError`'s message).
        ValueError: for a `batch_size` that is not a positive integer.

    Example:

    ```python
    inputs = tf.data.Dataset.from_tensor_slices((x, y))
    train = tf.data.Dataset.zip(inputs, top_k_dataset("teacher_top_k")).map(
        lambda xy, top_k: (xy[0], {"labels": xy[1], "teacher_top_k": top_k})
    ).batch(8)
    # The same batches, paired per batch:
    train = tf.data.Dataset.zip(
        inputs.batch(8), top_k_dataset("teacher_top_k", batch_size=8)
    ).map(lambda xy, top_k: (xy[0], {"labels": xy[1], "teacher_top_k": top_k}))
    ```
    """
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
        or batch_size < 1
    ):
        raise ValueError(
            f"`batch_size` must be a positive integer (the batch size of the "
            f"inputs you zip the cache with) or None. Received: batch_size={batch_size!r}"
        )
    if isinstance(path, TopKCache):
        cache = path
        if teacher is not None or inputs_fingerprint is not None:
            cache = read_top_k_cache(cache.path, teacher, inputs_fingerprint, verify)
    else:
        cache = read_top_k_cache(path, teacher, inputs_fingerprint, verify)
    return cache.dataset(batch_size, drop_remainder)
