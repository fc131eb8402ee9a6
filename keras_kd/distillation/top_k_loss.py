"""Top-k teacher logits and the loss that reads them.

`top_k_logits` keeps, per position, a teacher's `k` largest logits, their
ids and the full-vocabulary log-normaliser; `top_k_kl_divergence` compares
them with a student's full logits (`tail="bin"` or `"renormalize"`, see
`keras_kd.distillation.top_k`), and `TopKKLDivergence` is that loss for a
`Distiller`. The checks a batch of a cache gets (its temperature, its
vocabulary) live here too, beside the loss they protect.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_kd.distillation.backend import runtime
from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import KLDivergenceWithTemperature
from keras_kd.distillation.validation import validate_choice
from keras_kd.distillation.validation import validate_temperature

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
    values, indices = ops.top_k(logits, k=k, sorted=True)
    log_normalizer = ops.logsumexp(logits / temperature, axis=-1)
    return ops.cast(indices, "int32"), values, log_normalizer


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
    return runtime().static_value(value)


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


def _check_bin_temperature(temperature, cache_temperature):
    """Refuses a `bin` temperature other than the cache's; returns deps.

    Either may be a number or a tensor (the cache's may come per example
    from `top_k_dataset`). Known values are checked now; symbolic ones by
    an assert in the graph, which XLA drops: the Distiller also checks
    eagerly, the first batch and where it can every later one (a dataset's
    in its input pipeline, arrays' rows before the first step), and on JAX
    leaves the assert (a host callback) out of a step whose call it checks
    so.
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
    # A symbolic temperature (a Distiller's variable inside tf.function or
    # jax.jit).
    return runtime().assert_near(
        cache_temperature, temperature, rtol=1e-6,
        message=bin_temperature_message(
            float(static_cache.reshape(-1)[0])
            if static_cache is not None and static_cache.size else None),
    )


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
            (with a symbolic temperature, when run: inside a `tf.function`
            an `InvalidArgumentError`, under `jax.jit` a `JaxRuntimeError`
            carrying the same message).

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
    temperature = runtime().after(dependencies, ops.cast(temperature, precision))
    indices = ops.cast(indices, "int32")
    values = ops.cast(runtime().as_tensor(values), precision)
    student_logits = ops.cast(runtime().as_tensor(student_logits), precision)
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
    # The Distiller checks the batches eagerly where it can; XLA drops this.
    return runtime().assert_equal(
        vocab_size, ops.shape(student_logits)[-1],
        message=vocabulary_message("another", classes))


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
    Distiller's temperature must equal it. The Distiller checks every
    batch of every `fit` (a `tf.data.Dataset`'s as they pass, arrays'
    rows before) and `train_on_batch`, and its temperature when set during
    such a fit; those checks hold under XLA. Batches from a `PyDataset`, a
    generator, or a dataset with ragged or sparse parts (and arrays of
    several caches) are checked only in the step (an assert that XLA
    drops on TensorFlow; a host callback on JAX).

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
        values = top_k_kl_divergence(
            teacher_top_k["indices"], teacher_top_k["values"],
            teacher_top_k["log_normalizer"], student_logits, temperature,
            tail=self.tail, cache_temperature=cache_temperature,
            precision=self.precision, vocab_size=teacher_top_k.get(VOCAB_SIZE_KEY),
        )
        return ops.cast(runtime().after(dependencies, values), self.dtype)

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
        return runtime().assert_near(carried, self.cache_temperature, rtol=1e-6, message=message)

    def per_sample_loss(self, teacher_logits, student_logits, temperature):
        # Dense teacher logits: exact KD (top-k with k = vocab).
        return KLDivergenceWithTemperature.per_sample_loss(
            self, teacher_logits, student_logits, temperature)

    def get_config(self):
        return {**super().get_config(), "tail": self.tail,
                "cache_temperature": self.cache_temperature}
