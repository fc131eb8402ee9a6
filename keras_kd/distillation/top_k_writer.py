"""Writing a top-k cache: the teacher runs once, shards go to disk.

`write_top_k_cache` runs a teacher batch by batch and writes a directory of
`.npy` shards and a JSON manifest (the fingerprints of
`keras_kd.distillation.fingerprints`, settings, checksums), opened again by
`keras_kd.distillation.top_k_reader`.
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

from keras_kd.distillation import outputs as outputs_module
from keras_kd.distillation import teacher as teacher_module
from keras_kd.distillation.cache import CacheError
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


def _torch_forward(teacher, output, teacher_outputs, k, temperature):
    import torch

    kwargs = {"training": False} if getattr(teacher, "_call_has_training_arg", True) else {}

    def forward(batch):
        batch = keras.tree.map_structure(np.asarray, batch)
        with torch.no_grad():
            logits = _teacher_logits(teacher(batch, **kwargs), output, teacher_outputs)
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

    Returns:
        The cache, opened by `read_top_k_cache` (a `TopKCache`).

    Raises:
        ValueError: for invalid arguments, a list of teachers (an
            ensemble), empty inputs or a teacher output that is not
            `(batch, ..., vocab)` logits.
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

    forward = _make_forward(teacher, output, teacher_outputs, k, temperature)
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
