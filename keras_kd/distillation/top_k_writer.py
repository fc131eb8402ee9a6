"""Writing a top-k cache: the teacher runs once, shards go to disk.

`write_top_k_cache` runs a teacher batch by batch and writes a directory of
`.npy` shards and a JSON manifest (the fingerprints of
`keras_kd.distillation.fingerprints`, settings, checksums), opened again by
`keras_kd.distillation.top_k_reader`.

With `chunk_size`, the teacher runs to its final hidden states only
(`keras_kd.distillation.chunked_models.model_head`) and the head's logits
exist `chunk_size` positions at a time (`chunked_top_k`): a batch's
`(batch, time, vocab)` logits are never built.
"""

import json
import numbers
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd.distillation import chunked_models
from keras_kd.distillation import outputs as outputs_module
from keras_kd.distillation import teacher as teacher_module
from keras_kd.distillation.cache import CacheError
from keras_kd.distillation.chunked import LinearHead
from keras_kd.distillation.chunked import _cap
from keras_kd.distillation.chunked import validate_chunk_size
from keras_kd.distillation.fingerprints import InputsHasher as _InputsHasher
from keras_kd.distillation.fingerprints import fingerprint_model
from keras_kd.distillation.fingerprints import flatten as _flatten
from keras_kd.distillation.top_k_loss import TOP_K_KEYS
from keras_kd.distillation.top_k_loss import _validate_k
from keras_kd.distillation.top_k_loss import top_k_logits
from keras_kd.distillation.top_k_reader import MANIFEST_NAME
from keras_kd.distillation.top_k_reader import TOP_K_FORMAT
from keras_kd.distillation.top_k_reader import TOP_K_FORMAT_VERSION
from keras_kd.distillation.top_k_reader import _sha256_file
from keras_kd.distillation.top_k_reader import read_top_k_cache
from keras_kd.distillation.validation import validate_choice
from keras_kd.distillation.validation import validate_temperature

_VALUES_DTYPES = ("float16", "float32")
# Tokens per shard by default: 1 Mi tokens, 100 MiB at k=16 in float16.
DEFAULT_SHARD_TOKENS = 1 << 20


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


def _teacher_logits(teacher, outputs, output, teacher_outputs):
    # As the Distiller's `teacher_output` selects: a key, an output name or
    # a position.
    selected = outputs_module.select_output(
        outputs, output, "teacher", teacher, keyword="output", function="write_top_k_cache")
    logits = teacher_module.as_logits(selected, teacher_outputs)
    if len(logits.shape) < 2:
        raise ValueError(
            "The teacher's output must be logits of shape (batch, ..., "
            f"vocab). Received: shape {tuple(logits.shape)}."
        )
    return logits


def _make_forward(teacher, output, teacher_outputs, k, temperature):
    """The compiled forward pass: a batch to its top k and the vocabulary.

    On TensorFlow a `tf.function`; on JAX a `jax.jit` of the teacher's
    `stateless_call`, so variables sharded by a `keras.distribution` layout
    stay where they are and the compiler partitions the pass around them;
    on PyTorch the eager pass under `torch.no_grad()`.
    """
    if keras.backend.backend() == "torch":
        return _torch_forward(teacher, output, teacher_outputs, k, temperature)
    if keras.backend.backend() != "jax":

        def forward_pass(batch):
            logits = _teacher_logits(teacher, teacher(batch, training=False), output, teacher_outputs)
            return top_k_logits(logits, k, temperature), tf.shape(logits)[-1]

        return tf.function(forward_pass, reduce_retracing=True)

    import jax

    kwargs = {"training": False} if getattr(teacher, "_call_has_training_arg", True) else {}

    def stateless_pass(trainable, non_trainable, batch):
        outputs, _ = teacher.stateless_call(trainable, non_trainable, batch, **kwargs)
        logits = _teacher_logits(teacher, outputs, output, teacher_outputs)
        traced["vocab"] = int(logits.shape[-1])  # Static, known at trace time.
        return top_k_logits(logits, k, temperature)

    traced = {}
    jitted = jax.jit(stateless_pass)

    def forward(batch):
        batch = keras.tree.map_structure(np.asarray, batch)
        batch = _distribute_batch(batch)
        if not teacher.built:
            # `stateless_call` needs the variables: a teacher built by its
            # first call (a Sequential without an Input) is built now, as
            # TensorFlow's first `tf.function` call builds it.
            teacher(batch, **kwargs)
        state = (
            [v.value for v in teacher.trainable_variables],
            [v.value for v in teacher.non_trainable_variables],
        )
        return jitted(*state, batch), traced["vocab"]

    return forward


def _top_k_in_keras_ops(logits, k, temperature):
    # `top_k_logits` holds TensorFlow ops; these are its keras.ops twins
    # (the same order: larger first, ties to the lower id).
    values, indices = ops.top_k(logits, _validate_k(k, logits.shape[-1]), sorted=True)
    log_normalizer = ops.logsumexp(logits / temperature, axis=-1)
    return ops.cast(indices, "int32"), values, log_normalizer


def chunked_top_k(hidden, head, k, temperature=1.0, chunk_size=1024):
    """The top k of a head's logits and their log-normaliser, by chunks.

    Equal to `top_k_logits(head logits of hidden, k, temperature)`, the
    logits being `cap(hidden @ kernel + bias)` as the head's layer computes
    them, but only `(chunk_size, vocab)` logits exist at once: the positions
    are taken `chunk_size` at a time in one loop (`keras.ops.fori_loop`),
    each chunk after the one before (TensorFlow would otherwise run up to
    10 iterations of a `while` at once), and each chunk keeps only its top
    `k` and `logsumexp(logits / temperature)`.

    Written in `keras.ops`; compile it with the backend (`tf.function`,
    `jax.jit`), as `write_top_k_cache` does.

    Args:
        hidden: `(..., hidden)` final hidden states, e.g. `(batch, time,
            hidden)` from a causal LM's backbone.
        head: The `keras_kd.distillation.chunked.LinearHead` of the model
            (`LinearHead.from_layer(layer)`).
        k: Logits kept per position, `1 <= k <= vocab`.
        temperature: Temperature of the log-normaliser (default 1.0).
        chunk_size: Positions whose logits are computed at once, a positive
            integer.

    Returns:
        `(indices, values, log_normalizer)` as `top_k_logits` returns them:
        int32 `(..., k)`, float32 `(..., k)` (descending) and float32
        `(...)`.

    Raises:
        ValueError: for a bad `k`, `temperature` or `chunk_size`, or states
            whose last axis is not the head's hidden size.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.normal(size=(2, 5, 4)).astype("float32")
    >>> kernel = rng.normal(size=(4, 11)).astype("float32")
    >>> indices, values, log_normalizer = chunked_top_k(
    ...     hidden, LinearHead(kernel), k=3, chunk_size=4)
    >>> dense = top_k_logits(hidden @ kernel, 3)
    >>> bool(np.all(np.asarray(indices) == np.asarray(dense[0])))
    True
    """
    temperature = validate_temperature(temperature)
    chunk_size = validate_chunk_size(chunk_size)
    k = _validate_k(k, head.vocabulary_size)
    hidden = ops.convert_to_tensor(hidden)
    width = hidden.shape[-1] if len(hidden.shape) else None
    if len(hidden.shape) < 2 or width != head.hidden_size:
        raise ValueError(
            f"The hidden states must be `(..., {head.hidden_size})` to match "
            f"the head. Received: shape {tuple(hidden.shape)}. Pass the "
            "states the head layer is called on."
        )
    kernel = ops.convert_to_tensor(head.kernel)
    bias = None if head.bias is None else ops.convert_to_tensor(head.bias)
    if "float" in str(hidden.dtype) and kernel.dtype != hidden.dtype:
        # As Keras' autocasting does in the head layer's call under a
        # mixed-precision policy: the matmul runs in the states' dtype.
        kernel = ops.cast(kernel, hidden.dtype)
        bias = None if bias is None else ops.cast(bias, hidden.dtype)
    leading = ops.shape(hidden)[:-1]
    rows = ops.reshape(hidden, (-1, width))
    n = rows.shape[0]
    if n is None:  # A traced batch of unknown size (TensorFlow).
        n = ops.shape(rows)[0]
        size = chunk_size
        padding = ops.mod(-n, size)
    else:
        size = max(min(chunk_size, n), 1)
        padding = -n % size
    num_chunks = (n + padding) // size
    rows = ops.pad(rows, [[0, padding], [0, 0]])
    column = ops.zeros_like(ops.cast(rows[:, 0], "float32"))
    block = column[:, None] + ops.zeros((k,), "float32")
    zero = ops.zeros((), "int32")

    def body(i, carry):
        indices, values, log_normalizer, gate = carry
        first = (ops.cast(i, "int32") + gate) * size
        chunk = ops.slice(rows, [first, zero], [size, width])
        logits = ops.cast(_cap(head.logits(chunk, kernel, bias), head.soft_cap), "float32")
        top_values, top_indices = ops.top_k(logits, k, sorted=True)
        chunk_normalizer = ops.logsumexp(logits / temperature, axis=-1)
        indices = ops.slice_update(indices, [first, zero], ops.cast(top_indices, "int32"))
        values = ops.slice_update(values, [first, zero], top_values)
        log_normalizer = ops.slice_update(log_normalizer, [first], chunk_normalizer)
        # Always 0, but known only once this chunk is done: the next chunk
        # waits for it, so one chunk of logits exists at a time.
        gate = ops.cast(ops.greater(chunk_normalizer[0], float("inf")), "int32")
        return indices, values, log_normalizer, gate

    init = (ops.cast(block, "int32"), block, column, zero)
    indices, values, log_normalizer, _ = ops.fori_loop(0, num_chunks, body, init)
    shape = tuple(leading)
    return (
        ops.reshape(indices[:n], shape + (k,)),
        ops.reshape(values[:n], shape + (k,)),
        ops.reshape(log_normalizer[:n], shape),
    )


def _teacher_hidden(head, batch):
    hidden = head.hidden(batch, False)
    if not hasattr(hidden, "shape") or isinstance(hidden, (dict, list, tuple)):
        raise ValueError(
            "The chunked writer needs the teacher's hidden states as one "
            f"tensor; its hidden-state function returned a {type(hidden).__name__}. "
            "Pass `teacher_head=` naming a head called on one tensor, or write "
            "without `chunk_size`."
        )
    return hidden


def _make_chunked_forward(teacher, head, k, temperature, chunk_size):
    """The compiled chunked pass: a batch to its top k, from hidden states.

    As `_make_forward`, per backend: a `tf.function`; a `jax.jit` of the
    pass under a `keras.StatelessScope` holding the teacher's variables as
    its arguments; the eager pass under `torch.no_grad()`. The head's
    weights are read at every call, so a changed teacher is seen.
    """
    vocab = LinearHead.from_layer(head.layer).vocabulary_size

    def top_k_of(batch):
        linear = LinearHead.from_layer(head.layer)
        hidden = _teacher_hidden(head, batch)
        return chunked_top_k(hidden, linear, k, temperature, chunk_size)

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        def eager(batch):
            batch = keras.tree.map_structure(np.asarray, batch)
            with torch.no_grad():
                return top_k_of(batch), vocab

        return eager
    if backend != "jax":
        compiled = tf.function(top_k_of, reduce_retracing=True)
        return lambda batch: (compiled(batch), vocab)

    import jax

    def stateless_pass(trainable, non_trainable, batch):
        mapping = list(zip(teacher.trainable_variables, trainable))
        mapping += list(zip(teacher.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping):
            return top_k_of(batch)

    jitted = jax.jit(stateless_pass)

    def forward(batch):
        batch = _distribute_batch(keras.tree.map_structure(np.asarray, batch))
        state = (
            [v.value for v in teacher.trainable_variables],
            [v.value for v in teacher.non_trainable_variables],
        )
        return jitted(*state, batch), vocab

    return forward


def _chunked_head(teacher, teacher_head, output, teacher_outputs, chunk_size):
    """The teacher's `ModelHead` for the chunked writer, or a clear error."""
    if output is not None:
        raise ValueError(
            "`chunk_size` reads the teacher's one output head, so `output` "
            f"must be None. Received: output={output!r}, chunk_size={chunk_size}. "
            "Write without `chunk_size` to select an output."
        )
    if teacher_outputs == "probabilities":
        raise ValueError(
            f"`chunk_size={chunk_size}` computes the teacher's logits from its "
            "head, but this teacher outputs probabilities (a softmax). Give it a "
            "`Dense(vocab)` head without activation, or write without `chunk_size`."
        )
    try:
        return chunked_models.model_head(teacher, teacher_head, "teacher_head")
    except ValueError as error:
        message = str(error).replace(
            "train without `chunk_size`", "write without `chunk_size` (the dense writer)")
        raise ValueError(f"write_top_k_cache(chunk_size={chunk_size}): {message}") from error


def _torch_forward(teacher, output, teacher_outputs, k, temperature):
    import torch

    kwargs = {"training": False} if getattr(teacher, "_call_has_training_arg", True) else {}

    def forward(batch):
        batch = keras.tree.map_structure(np.asarray, batch)
        with torch.no_grad():
            logits = _teacher_logits(teacher, teacher(batch, **kwargs), output, teacher_outputs)
            return _top_k_in_keras_ops(logits, k, temperature), int(logits.shape[-1])

    return forward


def _distribute_batch(batch):
    """Lays a batch out as the active `keras.distribution` would, if any.

    As Keras' JAX trainer does: the batch axis split over the mesh's batch
    dimension. A batch that does not divide evenly stays on one device
    (the result is the same; only the placement differs).
    """
    from keras.src.backend.jax import distribution_lib as jax_distribution_lib

    distribution = keras.distribution.distribution()
    if distribution is None:
        return batch
    mesh = distribution.device_mesh
    split = dict(zip(mesh.axis_names, mesh.shape)).get(distribution.batch_dim_name, 1)
    leaves = keras.tree.flatten(batch)
    if any(len(leaf) % split for leaf in leaves):
        return batch
    return keras.tree.map_structure(
        lambda x: jax_distribution_lib.distribute_data_input(
            x, distribution.get_data_layout(x.shape), distribution.batch_dim_name),
        batch,
    )


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
    chunk_size=None,
    teacher_head=None,
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

    With `chunk_size`, the teacher runs only to its final hidden states
    (as `Distiller.compile(chunk_size=...)` finds them:
    `keras_kd.distillation.chunked_models.model_head`, a KerasHub causal
    LM's tied or untied token embedding with its logit soft-cap, or a
    `Dense(vocab)` head), and its logits exist `chunk_size` positions at a
    time (`chunked_top_k`), never for a whole batch: at a 128k vocabulary a
    batch of 4,096 positions has 2 GiB of float32 logits. The cache is the
    same as without `chunk_size` (the same ids, values within float32
    rounding: the head's matmul is blocked otherwise), so `chunk_size` and
    `teacher_head` are not part of the manifest's settings: a cache written
    with either is reused by a call without them, and the other way round.

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
        output: `None` if the teacher returns one tensor, else which output
            holds its logits, as the `Distiller`'s `teacher_output`: a dict
            key, an output name or a position.
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
        chunk_size: `None` (default): the teacher's whole output. A positive
            integer: the positions whose logits are computed at once, from
            the teacher's hidden states (see above); `output` must then be
            `None` and the teacher output logits.
        teacher_head: With `chunk_size`, the name of the teacher's head
            layer, a `Dense(vocab)` computing its only output (default: a
            causal LM's token embedding, else the model's last layer), as
            `Distiller.compile(teacher_head=...)`.

    Returns:
        The cache, opened by `read_top_k_cache` (a `TopKCache`).

    Raises:
        ValueError: for invalid arguments, a list of teachers (an
            ensemble), empty inputs or a teacher output that is not
            `(batch, ..., vocab)` logits; with `chunk_size`, for a teacher
            whose head cannot be identified.
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
    # The same cache, 1,024 positions of logits at a time:
    write_top_k_cache(teacher_lm, x, "teacher_top_k", k=16, batch_size=8,
                      chunk_size=1024, rebuild=True)
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
    if isinstance(teacher, (list, tuple)):
        raise ValueError(
            "`teacher` must be one `keras.Model`: a top-k cache holds one "
            "teacher's top k, and an ensemble is mixed at the Distiller's "
            f"temperature from its members' full logits. Received: a list of "
            f"{len(teacher)} teachers. Distil the ensemble online, or cache it "
            "with `compute_teacher_logits(teachers, x)`."
        )
    teacher_outputs = teacher_module.resolve_teacher_outputs(
        teacher_outputs, [teacher], output, where="write_top_k_cache", keyword="output")
    head = None
    if chunk_size is not None:
        chunk_size = validate_chunk_size(chunk_size)
        head = _chunked_head(teacher, teacher_head, output, teacher_outputs, chunk_size)
        _validate_k(k, LinearHead.from_layer(head.layer).vocabulary_size)
    elif teacher_head is not None:
        raise ValueError(
            "`teacher_head` names the head the chunked writer reads, so it needs "
            f"`chunk_size`. Received: teacher_head={teacher_head!r}, chunk_size=None. "
            "Pass e.g. chunk_size=1024, or drop `teacher_head`."
        )
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

    if head is None:
        forward = _make_forward(teacher, output, teacher_outputs, k, temperature)
    else:
        forward = _make_chunked_forward(teacher, head, k, temperature, chunk_size)
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
            elif values_dtype == "float16" and values.size:
                # Uncentred, a clipped value is a probable id's logit changed
                # while the float32 normaliser keeps the true one: wrong mass.
                largest = float(np.max(np.abs(values)))
                if largest > float(np.finfo(np.float16).max):
                    raise ValueError(
                        "The teacher's top-k logits exceed the float16 range "
                        f"(largest magnitude {largest:g} > 65504) and "
                        "`center_values=False` stores them as they are. Pass "
                        "`center_values=True` (the default) or "
                        "`values_dtype=\"float32\"`."
                    )
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
