"""Token-level distillation from hidden states, a chunk of positions at a time.

A language model's loss needs `(positions, vocab)` logits: at 8,192 positions
and a 128k vocabulary one float32 copy is 4 GiB, and token-level distillation
holds several (both models' logits, their log-softmaxes, the gradient).
`chunked_distillation_loss` never builds them: it multiplies the final hidden
states by each model's output head `chunk_size` positions at a time, computes
the student's cross-entropy and the divergence of that chunk, and, in the
same pass, the chunk's gradient with respect to the student's hidden states,
head kernel and bias (a fused linear loss, as Liger-Kernel's and Cut
Cross-Entropy's). Only one chunk of logits exists at any time, in the forward
and in the backward pass, which just scales the stored gradients.

Written in `keras.ops` only, it runs on TensorFlow and JAX. The values reuse
the per-position arithmetic of `keras_kd.losses` and `keras_kd.divergences`
on each chunk, so they are those of the dense losses; the gradients with
respect to the logits are their closed forms (see `_DIVERGENCES`).
"""

import collections
import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_kd.distillation.backend import runtime
from keras_kd.distillation.divergences import GeneralizedJSD
from keras_kd.distillation.divergences import ReverseKL
from keras_kd.distillation.divergences import SkewKL
from keras_kd.distillation.divergences import SkewReverseKL
from keras_kd.distillation.divergences import _generalized_jsd
from keras_kd.distillation.divergences import _kl
from keras_kd.distillation.divergences import _kl_to_mixture
from keras_kd.distillation.losses import KLDivergenceWithTemperature
from keras_kd.distillation.losses import SoftTargetCrossEntropy
from keras_kd.distillation.losses import _softened_log_probabilities
from keras_kd.distillation.losses import get_distillation_loss
from keras_kd.distillation.top_k_loss import CACHE_TEMPERATURE_KEY
from keras_kd.distillation.top_k_loss import VOCAB_SIZE_KEY
from keras_kd.distillation.top_k_loss import TopKKLDivergence
from keras_kd.distillation.top_k_loss import _log1mexp
from keras_kd.distillation.top_k_loss import _check_bin_temperature
from keras_kd.distillation.top_k_loss import _static_values
from keras_kd.distillation.top_k_loss import vocabulary_message
from keras_kd.distillation.top_k_loss import _sum_p_log_ratio

ChunkedTerms = collections.namedtuple(
    "ChunkedTerms",
    ["loss", "cross_entropy", "distillation", "correct", "teacher_cross_entropy",
     "teacher_metrics"],
)
ChunkedTerms.__doc__ = """What `chunked_distillation_loss` returns.

Attributes:
    loss: Scalar, `sum(weights * cross_entropy) + sum(distillation_weights *
        distillation)`; the only output with a gradient (to the student's
        hidden states, kernel and bias).
    cross_entropy: `(N,)` student cross-entropy on the labels at `T = 1`
        (0 where the label is outside `[0, vocab)`).
    distillation: `(N,)` the divergence of each position, as the dense loss's
        `compute_per_sample` gives it (`T**2` included).
    correct: `(N,)` 1.0 where the student's argmax is the label, else 0.0.
    teacher_cross_entropy: `(N,)` the teacher's cross-entropy on the labels.
    teacher_metrics: A tuple, for each of the `teacher_metrics` given, its
        `(N,)` per-position values (`TeacherMetric.position_values` of each
        chunk's logits at T = 1), in the metric's dtype; `()` without them.
"""


class LinearHead:
    """A model's output head: `logits = cap(hidden @ kernel + bias)`.

    A plain record of tensors, not a layer: `chunked_distillation_loss` reads
    it a chunk of positions at a time.

    Args:
        kernel: `(hidden, vocab)` kernel, or `(vocab, hidden)` with
            `transposed=True` (a tied embedding matrix, used without copying
            its transpose).
        bias: Optional `(vocab,)` bias.
        transposed: Whether `kernel` is `(vocab, hidden)`.
        soft_cap: Optional logit soft-capping, `cap * tanh(logits / cap)`
            (Gemma 2's `final_logit_soft_cap`), applied after the bias.

    Raises:
        ValueError: if `kernel` is not 2-D, `bias` is not `(vocab,)`, or
            `soft_cap` is not a positive number.
    """

    def __init__(self, kernel, bias=None, transposed=False, soft_cap=None):
        if len(kernel.shape) != 2:
            raise ValueError(
                "`kernel` must be 2-D, `(hidden, vocab)` (or `(vocab, hidden)` "
                f"with `transposed=True`). Received: kernel of shape "
                f"{tuple(kernel.shape)}."
            )
        self.kernel = kernel
        self.transposed = bool(transposed)
        if bias is not None and tuple(bias.shape) != (self.vocabulary_size,):
            raise ValueError(
                f"`bias` must have shape `(vocab,)` = ({self.vocabulary_size},)"
                f". Received: bias of shape {tuple(bias.shape)}."
            )
        self.bias = bias
        if soft_cap is not None and (
            isinstance(soft_cap, bool)
            or not isinstance(soft_cap, numbers.Real)
            or not math.isfinite(soft_cap)
            or soft_cap <= 0
        ):
            raise ValueError(
                "`soft_cap` must be None or a positive finite number. "
                f"Received: soft_cap={soft_cap!r}. Gemma 2 uses 30.0."
            )
        self.soft_cap = None if soft_cap is None else float(soft_cap)

    @property
    def vocabulary_size(self):
        return self.kernel.shape[0 if self.transposed else 1]

    @property
    def hidden_size(self):
        return self.kernel.shape[1 if self.transposed else 0]

    @classmethod
    def from_layer(cls, layer):
        """The head of a `keras.layers.Dense` or a (KerasHub)
        `ReversibleEmbedding`, as its `call(x)` / `call(x, reverse=True)`
        computes the logits.

        Raises:
            ValueError: for a Dense with an activation, a quantized or
                `reverse_dtype` embedding, or any other layer.
        """
        if isinstance(layer, keras.layers.ReversibleEmbedding):
            if getattr(layer, "quantization_mode", None) or layer.reverse_dtype:
                raise ValueError(
                    f"The chunked path reads a float head; {layer.name!r} is "
                    "quantized or has a `reverse_dtype`. Distil it on the "
                    "dense path (no `chunk_size`)."
                )
            if layer.tie_weights:
                return cls(layer.embeddings, transposed=True, soft_cap=layer.logit_soft_cap)
            return cls(layer.reverse_embeddings, soft_cap=layer.logit_soft_cap)
        if isinstance(layer, keras.layers.Dense):
            if layer.activation not in (None, keras.activations.linear):
                raise ValueError(
                    f"The head {layer.name!r} has an activation; the chunked "
                    "path needs logits, `Dense(vocab)` with no activation."
                )
            return cls(layer.kernel, bias=layer.bias)
        raise ValueError(
            "The chunked path needs the output head as a `Dense(vocab)` or a "
            f"`ReversibleEmbedding`. Received: {layer!r}. Pass a `LinearHead("
            "kernel, bias, transposed, soft_cap)` built from its weights."
        )

    def logits(self, hidden, kernel=None, bias=None):
        """`(n, vocab)` logits of `(n, hidden)` states (before soft-capping)."""
        kernel = self.kernel if kernel is None else kernel
        bias = self.bias if bias is None else bias
        if self.transposed:
            logits = ops.einsum("nh,vh->nv", hidden, kernel)
        else:
            logits = ops.matmul(hidden, kernel)
        return logits if bias is None else logits + bias


def validate_chunk_size(chunk_size):
    """Returns `chunk_size` as an `int`, or raises `ValueError`."""
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size <= 0
    ):
        raise ValueError(
            "`chunk_size` must be a positive integer: the number of positions "
            "whose logits are computed at once. Received: "
            f"chunk_size={chunk_size!r}. Use e.g. chunk_size=1024 (smaller "
            "uses less memory, larger fewer steps)."
        )
    return int(chunk_size)


# Closed-form gradients with respect to `z = logits / T` of each divergence,
# from `log p` (teacher) and `log q` (student) at temperature T: the
# derivative `g = dD/dq` pushed through the softmax, `q * (g - sum(q g))`.


def _logaddexp(a, b):
    # Not `ops.logaddexp`: on JAX it returns float32 for float64 inputs.
    top = ops.maximum(a, b)
    return top + ops.log1p(ops.exp(-ops.abs(a - b)))


def _forward_kl_grad(log_p, log_q):
    return ops.exp(log_q) - ops.exp(log_p)


def _reverse_kl_grad(log_p, log_q):
    q = ops.exp(log_q)
    a = log_q - log_p
    return q * (a - ops.sum(q * a, axis=-1, keepdims=True))


def _jsd_grad(log_p, log_q, beta):
    # d/dq [beta KL(p||M) + (1-beta) KL(q||M)] = (1 - beta) log(q / M).
    log_m = _logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
    q = ops.exp(log_q)
    u = log_q - log_m
    return (1.0 - beta) * q * (u - ops.sum(q * u, axis=-1, keepdims=True))


def _skew_kl_grad(log_p, log_q, skew):
    # KL(p || M), M = skew p + (1 - skew) q: dD/dq = -(1 - skew) p / M.
    log_m = _logaddexp(log_p + math.log(skew), log_q + math.log1p(-skew))
    q = ops.exp(log_q)
    p_ratio = ops.exp(log_p + log_q - log_m)  # p q / M, bounded by p / (1 - skew)
    return -(1.0 - skew) * (p_ratio - q * ops.sum(p_ratio, axis=-1, keepdims=True))


def _skew_reverse_kl_grad(log_p, log_q, skew):
    # KL(q || M), M = skew q + (1 - skew) p: dD/dq = log(q/M) + 1 - skew q/M.
    log_m = _logaddexp(log_q + math.log(skew), log_p + math.log1p(-skew))
    q = ops.exp(log_q)
    u = (log_q - log_m) - skew * ops.exp(log_q - log_m)
    return q * (u - ops.sum(q * u, axis=-1, keepdims=True))


def _zero_grad(log_p, log_q):
    return ops.zeros_like(log_q)


def _divergence(loss):
    """`(value(log_p, log_q), grad(log_p, log_q), scaled)` of a keras_kd loss.

    `value` is the per-position arithmetic the loss's own `per_sample_loss`
    runs (the same helpers), `grad` its derivative with respect to
    `logits / T`, `scaled` whether both are multiplied by `T**2`.
    """
    kind = type(loss)
    if kind is KLDivergenceWithTemperature:
        return _kl, _forward_kl_grad, loss.scale_by_temperature_squared
    if kind is SoftTargetCrossEntropy:

        def cross_entropy(log_p, log_q):
            return -ops.sum(ops.exp(log_p) * log_q, axis=-1)

        return cross_entropy, _forward_kl_grad, loss.scale_by_temperature_squared
    if kind is ReverseKL:
        return (lambda log_p, log_q: _kl(log_q, log_p)), _reverse_kl_grad, True
    if kind is GeneralizedJSD:
        beta = loss.beta
        if beta == 0.0:
            return _kl, _forward_kl_grad, True
        if beta == 1.0:
            return (lambda log_p, log_q: _kl(log_q, log_p)), _reverse_kl_grad, True
        return (
            lambda log_p, log_q: _generalized_jsd(log_p, log_q, beta),
            lambda log_p, log_q: _jsd_grad(log_p, log_q, beta),
            True,
        )
    if kind is SkewKL:
        skew = loss.skew
        grad = (
            _forward_kl_grad
            if skew == 0.0
            else _zero_grad
            if skew == 1.0
            else lambda log_p, log_q: _skew_kl_grad(log_p, log_q, skew)
        )
        return (lambda log_p, log_q: _kl_to_mixture(log_p, log_q, skew)), grad, True
    if kind is SkewReverseKL:
        skew = loss.skew
        grad = (
            _reverse_kl_grad
            if skew == 0.0
            else _zero_grad
            if skew == 1.0
            else lambda log_p, log_q: _skew_reverse_kl_grad(log_p, log_q, skew)
        )
        return (lambda log_p, log_q: _kl_to_mixture(log_q, log_p, skew)), grad, True
    raise ValueError(
        "The chunked path computes forward KL (`KLDivergenceWithTemperature`"
        ", `ForwardKL`), `SoftTargetCrossEntropy`, `ReverseKL`, "
        "`GeneralizedJSD`, `SkewKL` and `SkewReverseKL`. Received: "
        f"divergence={loss!r}. Use one of them, or the dense path (no "
        "`chunk_size`) for other losses."
    )


def _scatter_rows(indices, values, vocab):
    """`(n, vocab)` zeros with `values[r, j]` added at `[r, indices[r, j]]`."""
    n, k = indices.shape
    rows = ops.broadcast_to(ops.arange(n, dtype="int32")[:, None], (n, k))
    coordinates = ops.reshape(ops.stack([rows, ops.cast(indices, "int32")], axis=-1), (n * k, 2))
    return ops.scatter(coordinates, ops.reshape(values, (n * k,)), (n, vocab))


def _top_k_terms(indices, values, log_normalizer, student_logits, temperature, tail, precision,
                 with_gradients):
    """`top_k_kl_divergence`'s values of one chunk, and their gradient with
    respect to the student's logits (`T**2` included).

    The arithmetic of the value is `top_k_kl_divergence`'s. Gradients, with
    `q = softmax(s / T)`, `K` the cached ids, `z = s / T`:

    - `tail="bin"`: `dKL/dz_j = q_j - p_j` on `K` and `q_j (1 - p_tail /
      (1 - Q))` off it (`Q = q(K)`): the teacher's tail mass spread in
      proportion to the student's (0 where the student's tail is clamped).
    - `tail="renormalize"`: `q'_j - p_j` on `K` (`q'` renormalised on
      `K`), 0 elsewhere.
    """
    vocab = student_logits.shape[-1]
    values = ops.cast(values, precision)
    z = student_logits / temperature
    if tail == "renormalize":
        teacher_log_p = ops.log_softmax(values / temperature, axis=-1)
        student_log_q = ops.log_softmax(ops.take_along_axis(z, indices, axis=-1), axis=-1)
        kl = _sum_p_log_ratio(teacher_log_p, student_log_q)
        grad = None
        if with_gradients:
            p = ops.exp(teacher_log_p)
            mass = ops.sum(p, axis=-1, keepdims=True)
            grad = _scatter_rows(indices, mass * ops.exp(student_log_q) - p, vocab)
    else:
        tiny = float(np.finfo(precision).eps)
        log_normalizer = ops.cast(log_normalizer, precision)
        teacher_log_p = values / temperature - log_normalizer[:, None]
        log_z = ops.logsumexp(z, axis=-1, keepdims=True)
        student_log_q = ops.take_along_axis(z, indices, axis=-1) - log_z
        teacher_top_mass = ops.logsumexp(teacher_log_p, axis=-1)
        student_top_mass = ops.logsumexp(student_log_q, axis=-1)
        teacher_log_tail = _log1mexp(ops.minimum(teacher_top_mass, -tiny))
        student_log_tail = _log1mexp(ops.minimum(student_top_mass, -tiny))
        teacher_tail = ops.where(
            teacher_top_mass >= -tiny, ops.zeros_like(teacher_log_tail), ops.exp(teacher_log_tail)
        )
        kl = _sum_p_log_ratio(teacher_log_p, student_log_q)
        kl = kl + teacher_tail * (teacher_log_tail - student_log_tail)
        grad = None
        if with_gradients:
            p = ops.exp(teacher_log_p)
            p = ops.where(p > 0.0, p, ops.zeros_like(p))
            q = ops.exp(z - log_z)
            member = _scatter_rows(indices, ops.ones_like(p), vocab)
            # Through the tail bin, where its log is not clamped.
            spread = ops.where(
                student_top_mass < -tiny, teacher_tail * ops.exp(-student_log_tail), 0.0
            )[:, None]
            grad = (
                ops.sum(p, axis=-1, keepdims=True) * q
                - _scatter_rows(indices, p, vocab)
                + spread * q * (member - ops.exp(student_top_mass)[:, None])
            )
    kl = ops.maximum(kl, 0.0) * temperature**2
    if grad is not None:
        grad = grad * temperature  # d(T**2 KL)/ds = T dKL/dz
    return kl, grad


def _cap(logits, soft_cap):
    if soft_cap is None:
        return logits
    return _tanh(logits / soft_cap) * soft_cap


def _tanh(x):
    """`tanh`, in float64 for float64 `x`: Keras 3.15's JAX `ops.tanh`
    returns float32 for float64 inputs (7e-8 relative error in float64
    soft-capped logits); `tanh|x| = -expm1(-2|x|) / (2 + expm1(-2|x|))`
    keeps float64's precision."""
    if keras.backend.standardize_dtype(x.dtype) != "float64":
        return ops.tanh(x)
    m = ops.expm1(-2.0 * ops.abs(x))
    return ops.sign(x) * (-m / (2.0 + m))


def _row_layout(size):
    """The mesh axis along which the current `keras.distribution` splits a
    batch (its `get_data_layout`), to split the rows of each chunk along:
    `(mesh, axis)`, or `None` without a distribution, or when `size` rows
    do not split evenly over that axis."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return None
    layout = distribution.get_data_layout((size,))
    axis = layout.axes[0] if layout is not None and layout.axes else None
    mesh = getattr(layout, "device_mesh", None)
    if axis is None or mesh is None:
        return None
    shards = mesh.shape[list(mesh.axis_names).index(axis)]
    if shards <= 1 or size % shards:
        return None
    return mesh, axis


def _constrain(x, row_layout):
    """`x` with its first axis split along the data-parallel axis
    (`keras.distribution.distribute_tensor`: a sharding constraint in a
    jitted step), the other axes whole on each device."""
    if row_layout is None:
        return x
    mesh, axis = row_layout
    layout = keras.distribution.TensorLayout([axis] + [None] * (len(x.shape) - 1), mesh)
    return keras.distribution.distribute_tensor(x, layout)


def chunked_distillation_loss(
    student_hidden,
    student_head,
    teacher_hidden,
    teacher_head,
    labels,
    weights,
    distillation_weights=None,
    divergence=None,
    temperature=1.0,
    chunk_size=1024,
    training=True,
    teacher_top_k=None,
    teacher_metrics=(),
    with_divergence=True,
):
    """The student's cross-entropy and a divergence, from hidden states.

    Equal to computing both models' logits `cap(hidden @ kernel + bias)` for
    all positions and calling the dense losses on them, but it holds one
    chunk of `(chunk_size, vocab)` logits at a time, in the forward and the
    backward pass. Positions are rows: flatten `(batch, time, hidden)` to
    `(batch * time, hidden)` first.

    The differentiable output is the weighted sum
    `loss = sum(weights * cross_entropy) + sum(distillation_weights *
    distillation)`: the weights must be known in the forward pass, which
    computes the gradient with the values. To get a Keras reduction, fold
    its divisor into the weights. With `w` the per-position sample weight
    times the mask (0 for padding and `ignore_class`):

    - `"sum_over_batch_size"`: `weights = w / count`, `count` the number of
      unmasked positions (all positions without a mask);
    - `"mean_with_sample_weight"`: `weights = w / sum(w)`;
    - `"sum"`: `weights = w`;

    and multiply by the term's coefficient (`alpha`, `1 - alpha`). The
    per-position values come back unweighted (without gradient) for logs and
    metrics, to be reduced as `keras_kd.reduction.reduce_values` reduces.

    A top-k teacher cache (`teacher_top_k`) replaces the teacher's hidden
    states and head: the divergence is then `TopKKLDivergence`'s
    (`top_k_kl_divergence`), computed on one chunk of the student's logits
    at a time, with the checks of the cache's temperature and vocabulary
    that the dense path runs (`TopKKLDivergence.compute_top_k`). Without a teacher (`teacher_hidden`,
    `teacher_head` and `teacher_top_k` all `None`, as the Distiller's
    `evaluate` calls it) only the student's cross-entropy is computed; the
    divergence is then 0 and `divergence` is not read.

    Args:
        student_hidden: `(N, Hs)` student hidden states (the backbone's
            output).
        student_head: The student's `LinearHead`.
        teacher_hidden: `(N, Ht)` teacher hidden states; no gradient.
            `None` with `teacher_top_k`, or for the student's loss alone.
        teacher_head: The teacher's `LinearHead`, same vocabulary; no
            gradient. `None` with `teacher_top_k`, or for the student's
            loss alone.
        labels: `(N,)` integer labels. A label outside `[0, vocab)` (an
            `ignore_class` such as -100) gives cross-entropy 0 and is not
            counted correct; give it weight 0.
        weights: `(N,)` weights of the student's cross-entropy.
        distillation_weights: `(N,)` weights of the divergence; `None` for
            `weights`.
        divergence: A keras_kd loss or its name (`"forward_kl"`,
            `"reverse_kl"`, `"generalized_jsd"`, `"skew_kl"`,
            `"skew_reverse_kl"`, `"kl_divergence"`, `"cse"`); `None` for
            forward KL.
        temperature: Softmax temperature of the divergence, a positive float
            or scalar tensor. The cross-entropy is at `T = 1`.
        chunk_size: Positions whose logits are computed at once, a positive
            integer. Under `keras.distribution` these are positions of the
            global batch, split along its data-parallel axis (each device
            computes `chunk_size / shards` of them).
        training: Whether to compute the gradients (in the same pass as the
            values). `False` (evaluation, metrics) computes values only, and
            `loss` then has no gradient.
        teacher_top_k: Optional cached teacher, a dict with `indices` and
            `values` `(N, k)`, `log_normalizer` `(N,)` and, as
            `top_k_dataset` gives them, `cache_temperature` and
            `vocab_size`. The divergence must be a `TopKKLDivergence`
            (`None` for `TopKKLDivergence()`).
        teacher_metrics: `TeacherMetric`s (`keras_kd.TeacherKL`,
            `TeacherAgreement`, or a subclass's `per_sample`), computed on
            each chunk's `(chunk_size, vocab)` logits of both models at
            T = 1 (after soft-capping); their per-position values come back
            in `ChunkedTerms.teacher_metrics`, to be accumulated with
            `TeacherMetric.update_values`. Need `teacher_hidden` and
            `teacher_head` (a top-k cache holds only the teacher's top k).
        with_divergence: `False` reads the teacher for `teacher_metrics`
            (and `teacher_cross_entropy`) only: the divergence is not
            computed (0), as for the Distiller's `evaluate`.

    Returns:
        A `ChunkedTerms` (its `teacher_cross_entropy` is `None` with
        `teacher_top_k`, the cache does not hold the labels' logits, and
        without a teacher).

    Raises:
        ValueError: for a bad `chunk_size`, a divergence without a chunked
            form, heads or states whose sizes disagree, or
            `teacher_metrics` without a teacher's hidden states and head.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.normal(size=(5, 4)).astype("float32")
    >>> head = LinearHead(rng.normal(size=(4, 11)).astype("float32"))
    >>> terms = chunked_distillation_loss(
    ...     hidden, head, hidden, head, labels=np.arange(5),
    ...     weights=np.full(5, 0.2, "float32"), temperature=2.0, chunk_size=2)
    >>> float(np.max(np.abs(terms.distillation)))  # the same model: KL 0
    0.0
    """
    chunk_size = validate_chunk_size(chunk_size)
    top_k = teacher_top_k is not None
    # No teacher at all: the student's cross-entropy alone (evaluation).
    student_only = not top_k and teacher_hidden is None and teacher_head is None
    if not top_k and (teacher_hidden is None) != (teacher_head is None):
        raise ValueError(
            "Pass `teacher_hidden` and `teacher_head` together (or `teacher_top_k`, "
            "or neither for the student's loss alone). Received: "
            f"teacher_hidden={'None' if teacher_hidden is None else 'states'}, "
            f"teacher_head={teacher_head!r}.")
    teacher_metrics = tuple(teacher_metrics)
    if teacher_metrics and (top_k or student_only):
        raise ValueError(
            "`teacher_metrics` compare the teacher's whole distribution with the "
            "student's, so they need `teacher_hidden` and `teacher_head`; "
            + ("a top-k cache (`teacher_top_k`) holds only the teacher's top k logits"
               if top_k else "none was given")
            + f". Received: teacher_metrics={list(teacher_metrics)!r}. Pass the "
            "teacher's hidden states and head, or drop the teacher metrics.")
    if student_only:
        loss = None
        precision = "float32"
    elif top_k:
        loss = TopKKLDivergence() if divergence is None else get_distillation_loss(divergence)
        if not isinstance(loss, TopKKLDivergence):
            raise ValueError(
                "With `teacher_top_k`, `divergence` must be a "
                f"`TopKKLDivergence` (or None). Received: divergence={loss!r}. "
                "A cache holds the teacher's top k logits only."
            )
        value_fn = grad_fn = None
        scaled = True
    else:
        loss = get_distillation_loss(divergence)
        value_fn, grad_fn, scaled = _divergence(loss)
    if not student_only:
        precision = loss.precision
        _check_sizes(student_hidden, student_head, teacher_hidden, teacher_head, teacher_top_k)
    else:
        _check_student_size(student_hidden, student_head)

    student_hidden = ops.convert_to_tensor(student_hidden)
    kernel = ops.convert_to_tensor(student_head.kernel)
    bias = None if student_head.bias is None else ops.convert_to_tensor(student_head.bias)
    if top_k:
        temperature = _check_top_k_temperature(
            loss, teacher_top_k, temperature, student_head.vocabulary_size)
        teacher_tensors = tuple(
            ops.stop_gradient(ops.convert_to_tensor(teacher_top_k[key]))
            for key in ("indices", "values", "log_normalizer")
        )
        teacher_tensors = (ops.cast(teacher_tensors[0], "int32"),) + teacher_tensors[1:]
    elif not student_only:
        teacher_hidden = ops.stop_gradient(ops.convert_to_tensor(teacher_hidden))
        teacher_kernel = ops.stop_gradient(ops.convert_to_tensor(teacher_head.kernel))
        teacher_bias = (
            None
            if teacher_head.bias is None
            else ops.stop_gradient(ops.convert_to_tensor(teacher_head.bias))
        )
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")
    weights = ops.cast(ops.convert_to_tensor(weights), precision)
    distillation_weights = (
        weights
        if distillation_weights is None
        else ops.cast(ops.convert_to_tensor(distillation_weights), precision)
    )
    temperature = ops.stop_gradient(
        ops.cast(ops.convert_to_tensor(temperature), precision)
    )
    vocab = student_head.vocabulary_size

    # Rows are padded to whole chunks with weight 0: every chunk has one
    # static shape, so the loop runs as one `while` on both backends. The
    # padded rows are laid out `(size, num_chunks, ...)`: chunk `i` is the
    # rows `i, i + num_chunks, i + 2 num_chunks, ...` (`[:, i]`), so its
    # positions come from the whole batch. Under `keras.distribution` the
    # first axis is split along the data-parallel axis like the batch: each
    # device computes the logits of its own share of every chunk (slicing
    # consecutive rows of a batch-split array would make every device
    # compute every position, on states gathered from all of them).
    n = student_hidden.shape[0]
    if n is None:
        n = ops.shape(student_hidden)[0]
        size = chunk_size
        padding = ops.mod(-n, size)
        num_chunks = (n + padding) // size
    else:
        size = max(min(chunk_size, n), 1)
        padding = -n % size
        num_chunks = (n + padding) // size
    row_layout = _row_layout(size)

    def pad(x):
        widths = [[0, padding]] + [[0, 0]] * (len(x.shape) - 1)
        rows = ops.reshape(ops.pad(x, widths), (size, -1) + tuple(x.shape[1:]))
        return _constrain(rows, row_layout)

    def unpad(rows):
        return ops.reshape(rows, (-1,) + tuple(rows.shape[2:]))[:n]

    if top_k:
        teacher_rows = tuple(pad(t) for t in teacher_tensors)
    elif not student_only:
        teacher_rows = pad(teacher_hidden)
    label_rows = pad(labels)
    weight_rows = pad(weights)
    distillation_weight_rows = pad(distillation_weights)

    def start(i, rank):
        # One integer dtype for all: JAX with x64 refuses int32 and int64.
        zero = ops.zeros((), "int32")
        return [zero, ops.cast(i, "int32")] + [zero] * (rank - 2)

    def chunk(x, i):
        piece = ops.slice(x, start(i, len(x.shape)), [size, 1] + list(x.shape[2:]))
        return _constrain(ops.reshape(piece, (size,) + tuple(x.shape[2:])), row_layout)

    def chunk_terms(i, hidden_rows, kernel, bias, with_gradients):
        """Values of chunk `i`, and the loss's gradient w.r.t. its logits."""
        hidden = chunk(hidden_rows, i)
        raw = student_head.logits(hidden, kernel, bias)
        student_logits = ops.cast(_cap(raw, student_head.soft_cap), precision)
        chunk_labels = chunk(label_rows, i)
        valid = ops.logical_and(chunk_labels >= 0, chunk_labels < vocab)
        safe_labels = ops.where(valid, chunk_labels, 0)

        log_q1 = ops.log_softmax(student_logits, axis=-1)
        picked = ops.take_along_axis(log_q1, safe_labels[:, None], axis=-1)[:, 0]
        cross_entropy = ops.where(valid, -picked, 0.0)
        predicted = ops.cast(ops.argmax(student_logits, axis=-1), "int32")
        correct = ops.cast(ops.logical_and(valid, predicted == chunk_labels), precision)

        if student_only:
            distillation = ops.zeros_like(cross_entropy)
            d_distillation = None
            teacher_values = ()
        elif top_k:
            distillation, d_distillation = _top_k_terms(
                *(chunk(t, i) for t in teacher_rows), student_logits, temperature,
                loss.tail, precision, with_gradients,
            )
            teacher_values = ()
        else:
            teacher_logits = ops.cast(
                _cap(
                    teacher_head.logits(chunk(teacher_rows, i), teacher_kernel, teacher_bias),
                    teacher_head.soft_cap,
                ),
                precision,
            )
            teacher_picked = ops.take_along_axis(
                ops.log_softmax(teacher_logits, axis=-1), safe_labels[:, None], axis=-1
            )[:, 0]
            # The teacher metrics' values of the chunk, at T = 1.
            teacher_values = (ops.where(valid, -teacher_picked, 0.0),) + tuple(
                metric.position_values(teacher_logits, student_logits)
                for metric in teacher_metrics
            )
        if not (student_only or top_k or with_divergence):  # The teacher for metrics only.
            distillation, d_distillation = ops.zeros_like(cross_entropy), None
        elif not (student_only or top_k):
            log_p = _softened_log_probabilities(teacher_logits, temperature)
            log_q = _softened_log_probabilities(student_logits, temperature)
            distillation = value_fn(log_p, log_q)
            if scaled:
                distillation = distillation * (temperature**2)
            if with_gradients:
                # d(T**2 D)/d logits = T dD/dz; d D / d logits = dD/dz / T.
                factor = temperature if scaled else 1.0 / temperature
                d_distillation = factor * grad_fn(log_p, log_q)

        w = chunk(weight_rows, i)[:, None]
        w_kd = chunk(distillation_weight_rows, i)[:, None]
        total = ops.sum(w[:, 0] * cross_entropy) + ops.sum(w_kd[:, 0] * ops.cast(distillation, precision))
        values = (cross_entropy, ops.cast(distillation, precision), correct) + teacher_values
        if not with_gradients:
            return hidden, None, total, values
        one_hot = ops.one_hot(safe_labels, vocab, dtype=precision) * ops.cast(valid, precision)[:, None]
        d_logits = w * (ops.exp(log_q1) - one_hot)
        if d_distillation is not None:
            d_logits = d_logits + w_kd * d_distillation
        if student_head.soft_cap is not None:
            d_logits = d_logits * (1.0 - ops.square(student_logits / student_head.soft_cap))
        d_logits = ops.cast(d_logits, raw.dtype)
        return hidden, d_logits, total, values

    def write(buffers, i, values):
        return tuple(
            # (Under mixed precision a chunk's values come in the compute
            # dtype; the buffers keep theirs.)
            ops.slice_update(b, start(i, len(b.shape)), ops.cast(ops.expand_dims(v, 1), b.dtype))
            for b, v in zip(buffers, values)
        )

    def run(hidden, kernel, bias_, with_gradients):
        """One loop over the chunks: loss, per-position values, gradients."""
        hidden_rows = pad(hidden)
        zeros = _constrain(ops.zeros_like(ops.cast(hidden_rows[..., 0], precision)), row_layout)
        # Loop state as a flat tuple: `None` is not a loop variable on every
        # backend, so the absent gradients are simply not carried.
        # `gate` is 0, computed from the previous chunk's last result: TF's
        # `while` runs up to 10 iterations at once when they do not depend
        # on each other, which would hold 10 chunks of logits.
        buffers = (zeros,) * (3 if top_k or student_only else 4) + tuple(
            # Each teacher metric's values in its own dtype.
            _constrain(ops.cast(zeros, metric.dtype), row_layout) for metric in teacher_metrics
        )
        init = [ops.zeros((), precision), buffers, ops.zeros((), "int32")]
        if with_gradients:
            init += [_constrain(ops.zeros_like(hidden_rows), row_layout), ops.zeros_like(kernel)]
            if bias_ is not None:
                init.append(ops.zeros_like(bias_))

        def body(i, carry):
            total, value_rows, gate = carry[0], carry[1], carry[2]
            i = ops.cast(i, "int32") + gate
            chunk_hidden, d_logits, chunk_total, values = chunk_terms(
                i, hidden_rows, kernel, bias_, with_gradients
            )
            total = total + chunk_total
            carry_out = [total, write(value_rows, i, values), None]
            last = total
            if with_gradients:
                grad_rows, grad_kernel = carry[3], carry[4]
                if student_head.transposed:
                    grad_hidden = ops.matmul(d_logits, kernel)
                    grad_kernel = grad_kernel + ops.cast(
                        ops.einsum("nv,nh->vh", d_logits, chunk_hidden), grad_kernel.dtype)
                else:
                    grad_hidden = ops.einsum("nv,hv->nh", d_logits, kernel)
                    grad_kernel = grad_kernel + ops.cast(
                        ops.einsum("nh,nv->hv", chunk_hidden, d_logits), grad_kernel.dtype)
                (grad_rows,) = write((grad_rows,), i, (grad_hidden,))
                carry_out += [grad_rows, grad_kernel]
                last = grad_kernel[0, 0]
                if bias_ is not None:
                    carry_out.append(carry[5] + ops.cast(ops.sum(d_logits, axis=0), carry[5].dtype))
            # Never true (not even for NaN), but not known before `last` is.
            carry_out[2] = ops.cast(ops.greater(last, float("inf")), "int32")
            return tuple(carry_out)

        result = ops.fori_loop(0, num_chunks, body, tuple(init))
        values = tuple(ops.stop_gradient(unpad(v)) for v in result[1])
        gradients = () if not with_gradients else (unpad(result[3]),) + tuple(result[4:])
        return (result[0],) + values, gradients

    def forward_and_gradients(hidden, kernel, *maybe_bias):
        bias_ = maybe_bias[0] if maybe_bias else None
        outputs, gradients = run(hidden, kernel, bias_, with_gradients=True)

        def grad(*upstream, **kwargs):
            # TF passes one upstream per output, JAX one tuple of them, torch
            # `upstream=`; only `loss` has a gradient.
            if "upstream" in kwargs:
                upstream = kwargs["upstream"]
            while isinstance(upstream, (tuple, list)):
                upstream = upstream[0]
            input_gradients = tuple(g * ops.cast(upstream, g.dtype) for g in gradients)
            # Eager TF passes the variables the forward read (a scheduled
            # temperature or alpha) and wants their gradients too: none.
            variables = kwargs.get("variables")
            if variables is not None:
                return input_gradients, [None] * len(variables)
            return input_gradients

        return outputs, grad

    if not training:
        outputs, _ = run(student_hidden, kernel, bias, with_gradients=False)
    else:
        arguments = (student_hidden, kernel) + (() if bias is None else (bias,))
        outputs = ops.custom_gradient(forward_and_gradients)(*arguments)
    outputs = tuple(outputs)
    teacher_cross_entropy = None if top_k or student_only else outputs[4]
    return ChunkedTerms(*outputs[:4], teacher_cross_entropy,
                        outputs[len(outputs) - len(teacher_metrics):])


def _check_top_k_temperature(loss, teacher_top_k, temperature, vocab):
    """`temperature`, after the checks `TopKKLDivergence.compute_top_k` runs
    on the dense path: the batch (or the loss) must carry a cache
    temperature; with `tail="bin"` it must be `temperature`, and a loss
    given a `cache_temperature` must agree with the batch's; the cache's
    `vocab_size` must be the head's. Values known now are checked now,
    symbolic ones by in-graph asserts (which XLA drops: the Distiller also
    checks every batch it can eagerly: see `_check_bin_temperature`)."""
    cache_temperature = loss.batch_cache_temperature(teacher_top_k)
    dependencies = []
    if loss.tail == "bin":
        dependencies = _check_bin_temperature(temperature, cache_temperature)
        carried = teacher_top_k.get(CACHE_TEMPERATURE_KEY)
        if carried is not None and loss.cache_temperature is not None:
            dependencies = dependencies + loss._check_given_cache_temperature(carried)
    vocab_size = teacher_top_k.get(VOCAB_SIZE_KEY)
    if vocab_size is not None and _static_values(vocab_size) is None:
        dependencies = dependencies + runtime().assert_equal(
            vocab_size, vocab, message=vocabulary_message("another", vocab))
    return runtime().after(dependencies, ops.convert_to_tensor(temperature))


def _check_sizes(student_hidden, student_head, teacher_hidden, teacher_head, teacher_top_k=None):
    if teacher_top_k is not None:
        _check_top_k_sizes(student_hidden, student_head, teacher_top_k)
        return
    for name, hidden, head in (
        ("student", student_hidden, student_head),
        ("teacher", teacher_hidden, teacher_head),
    ):
        if not isinstance(head, LinearHead):
            raise ValueError(
                f"`{name}_head` must be a `LinearHead`. Received: "
                f"{name}_head={head!r}. Build one with `LinearHead(kernel, "
                "bias)` or `LinearHead.from_layer(layer)`."
            )
        if len(hidden.shape) != 2 or hidden.shape[1] != head.hidden_size:
            raise ValueError(
                f"`{name}_hidden` must be `(positions, {head.hidden_size})` to "
                f"match its head. Received: shape {tuple(hidden.shape)}. "
                "Flatten `(batch, time, hidden)` states to `(batch * time, "
                "hidden)`."
            )
    if student_head.vocabulary_size != teacher_head.vocabulary_size:
        raise ValueError(
            "The student's and the teacher's heads must share a vocabulary. "
            f"Received: student vocab {student_head.vocabulary_size}, teacher "
            f"vocab {teacher_head.vocabulary_size}. Distil between models "
            "with the same tokenizer."
        )


def _check_student_size(student_hidden, student_head):
    if not isinstance(student_head, LinearHead):
        raise ValueError(
            "`student_head` must be a `LinearHead`. Received: "
            f"student_head={student_head!r}. Build one with `LinearHead(kernel, "
            "bias)` or `LinearHead.from_layer(layer)`."
        )
    if len(student_hidden.shape) != 2 or student_hidden.shape[1] != student_head.hidden_size:
        raise ValueError(
            f"`student_hidden` must be `(positions, {student_head.hidden_size})` "
            f"to match its head. Received: shape {tuple(student_hidden.shape)}."
        )


def _check_top_k_sizes(student_hidden, student_head, teacher_top_k):
    _check_student_size(student_hidden, student_head)
    missing = [key for key in ("indices", "values", "log_normalizer") if key not in teacher_top_k]
    if missing:
        raise ValueError(
            f"`teacher_top_k` must hold `indices`, `values` and `log_normalizer` "
            f"(as `top_k_dataset` gives them). Missing: {missing}."
        )
    indices = teacher_top_k["indices"]
    if len(indices.shape) != 2 or tuple(teacher_top_k["values"].shape) != tuple(indices.shape):
        raise ValueError(
            "`teacher_top_k['indices']` and `['values']` must be `(positions, k)`"
            f". Received: {tuple(indices.shape)} and "
            f"{tuple(teacher_top_k['values'].shape)}. Flatten `(batch, time, k)`."
        )
    vocab = teacher_top_k.get("vocab_size")
    if vocab is not None and not hasattr(vocab, "_keras_history"):
        try:
            sizes = np.unique(np.asarray(ops.convert_to_numpy(vocab))).astype(int).tolist()
        except Exception:  # A traced value: the Distiller checks eagerly.
            sizes = []
        for size in sizes:
            if size != student_head.vocabulary_size:
                raise ValueError(vocabulary_message(size, student_head.vocabulary_size))
