"""Teacher-output caching: compute a frozen teacher's logits once.

A cached batch carries the teacher's logits beside the labels, as the target
`keras_kd.targets(labels=y, teacher_logits=t)` (`keras_kd.batch`). The
Distiller's training step then skips the teacher's forward pass; `test_step`
and `predict` ignore the logits.

`compute_teacher_logits` computes the logits once per (teacher weights,
inputs) and keeps them in memory or in a checked `.npz` file, so that epochs
and the cells of a temperature/alpha sweep skip the teacher altogether.
"""

import hashlib
import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import outputs as outputs_module
from keras_kd.distillation import teacher as teacher_module
from keras_kd.distillation.fingerprints import fingerprint_array  # noqa: F401 - public here too.
from keras_kd.distillation.fingerprints import fingerprint_model  # noqa: F401 - public here too.
from keras_kd.distillation.fingerprints import fingerprint_teachers
from keras_kd.distillation.fingerprints import flatten
from keras_kd.distillation.xla import auto_jit_compile

# A cached batch's target: `keras_kd.targets(labels, teacher_logits=...)`.
LABELS_KEY = batch_module.LABELS_KEY
TEACHER_LOGITS_KEY = batch_module.TEACHER_LOGITS_KEY
UNLABELLED = batch_module.UNLABELLED


CACHE_FORMAT_VERSION = 1


class CacheError(ValueError):
    """A teacher-logits cache file does not match or is damaged."""


def _logits_checksum(logits):
    return hashlib.sha256(np.ascontiguousarray(logits).tobytes()).hexdigest()


def compute_teacher_logits(
    teacher,
    x,
    batch_size=64,
    path=None,
    rebuild=False,
    teacher_outputs=None,
    jit_compile="auto",
    output=None,
):
    """Computes a frozen teacher's logits once, optionally cached on disk.

    The cache is keyed by a fingerprint of the teacher's weights and
    architecture (`keras_kd.distillation.fingerprints`) and of the
    exact inputs the teacher sees (so preprocessing is part of the key). A
    file whose key does not match is refused, or recomputed with
    `rebuild=True`; a truncated or altered file is detected by its checksum.
    Files are NumPy `.npz` without pickles, written atomically.

    The inputs must be the ones the student trains on, un-augmented: with
    random augmentation the teacher must see each augmented batch, so let the
    `Distiller` run it online instead.

    Args:
        teacher: The trained teacher `keras.Model`, or a list of teachers
            (an ensemble): their logits are stacked as `(n, members,
            classes)`, and the `Distiller` combines them at its current
            temperature in each step.
        x: The inputs (already preprocessed): a NumPy array or tensor, text
            too (a `tf.string` tensor or an array of `str`), or a dict or
            list of arrays with one batch axis, e.g. a KerasHub
            `{"token_ids": ..., "padding_mask": ...}`.
        batch_size: Batch size of the teacher's forward pass.
        path: Optional `.npz` file to read from or write to.
        rebuild: Recompute and overwrite when the key of `path` differs.
        teacher_outputs: `None` (default): `"probabilities"` for a teacher
            whose output comes from a softmax layer, else `"logits"`, as the
            `Distiller` decides. `"probabilities"` are stored as their
            `log`, which is what the Distiller distils from; `"logits"` for
            a teacher that ends in a softmax is refused.
        jit_compile: Run the forward pass with XLA. `"auto"` follows
            Keras' rule, as the `Distiller` does: XLA on GPU/TPU machines
            when every layer supports it; `True` turns it on anywhere.
        output: `None` if the teacher has one output, else which output
            holds the logits (a dict key, an output name or a position), as
            the `Distiller`'s `teacher_output`; the same for every member.

    Returns:
        A float32 array of the teacher's output shape, `(samples,
        num_classes)` or for a sequence teacher `(samples, time,
        num_classes)`; for a list of teachers the members are axis 1:
        `(samples, members, ..., num_classes)`.

    Raises:
        CacheError: if `path` holds logits of another teacher or other
            data (without `rebuild`), or is damaged.

    Example:

    ```python
    logits = compute_teacher_logits(teacher, x_train, path="teacher.npz")
    train = datasets.make_dataset(x_train, y_train, scaling=None,
                                  teacher_logits=logits, shuffle=True)
    distiller.fit(train, epochs=10)
    ```
    """
    x, num_samples = _as_arrays(x)
    members = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    teacher_outputs = teacher_module.resolve_teacher_outputs(
        teacher_outputs, members, output, where="compute_teacher_logits", keyword="output")
    key = json.dumps(
        {
            "format": CACHE_FORMAT_VERSION,
            "teacher": fingerprint_teachers(teacher),
            "inputs": _fingerprint_inputs(x),
            "teacher_outputs": teacher_outputs,
            # Absent for one output: files written before keep their key.
            **({} if output is None else {"output": output}),
        },
        sort_keys=True,
    )
    ensemble = None if members[0] is teacher else len(members)
    if path is not None and os.path.exists(path):
        cached = _read_cache(path, num_samples, ensemble)
        if cached[0] == key:
            return cached[1]
        if not rebuild:
            raise CacheError(
                f"The teacher-logits cache {path} was made for another "
                "teacher or other inputs (its fingerprint differs). Delete "
                "it, choose another path, or pass rebuild=True (--rebuild-"
                "cache) to recompute it."
            )
    outputs = []
    for member in members:
        member_jit = auto_jit_compile(member) if jit_compile == "auto" else bool(jit_compile)
        outputs.append(_forward_pass(member, x, batch_size, member_jit, output))
    logits = outputs[0] if len(outputs) == 1 and members[0] is teacher else np.stack(outputs, 1)
    if teacher_outputs == "probabilities":
        # As the Distiller reads such a teacher online (`teacher.as_logits`).
        logits = np.log(np.maximum(logits, np.float32(1e-30))).astype(np.float32)
    if path is not None:
        _write_cache(path, key, logits)
    return logits


def _is_nest(x):
    """A dict of inputs, or a list/tuple of input arrays (not a nested list
    of numbers, which is one array)."""
    if isinstance(x, dict):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(
        isinstance(item, (dict, np.ndarray)) or tf.is_tensor(item) for item in x)


def _as_arrays(x):
    """`(x as NumPy arrays, number of samples)`: one array or a dict/list of
    them (e.g. KerasHub's `token_ids` and `padding_mask`)."""

    def to_numpy(leaf):
        return np.asarray(keras.ops.convert_to_numpy(leaf) if tf.is_tensor(leaf) else leaf)

    nested = _is_nest(x)
    x = keras.tree.map_structure(to_numpy, x) if nested else to_numpy(x)
    leaves = flatten(x) if nested else [("x", x)]
    if not leaves or any(a.ndim == 0 or len(a) == 0 for _, a in leaves):
        shapes = {path: a.shape for path, a in leaves}
        raise ValueError(
            "`x` must hold at least one input for the teacher, with a batch "
            f"axis. Received: x of shape(s) {shapes}."
        )
    sizes = {path: len(a) for path, a in leaves}
    if len(set(sizes.values())) != 1:
        raise ValueError(
            "All inputs in `x` must hold the same number of samples. "
            f"Received: {sizes}."
        )
    return x, len(leaves[0][1])


def _fingerprint_inputs(x):
    """One array's `fingerprint_array`; a nest's, path by path."""
    if isinstance(x, np.ndarray):
        return fingerprint_array(x)
    return {path: fingerprint_array(leaf) for path, leaf in flatten(x)}


def _forward_pass(teacher, x, batch_size, jit_compile, output=None):
    # One compiled function over equal-sized batches: at batch 64 this takes
    # 0.86x (0.80x with XLA) the time of `teacher.predict` at batch 256 for
    # the E1 teacher on CPU (benchmarks/cache_pass.py).
    forward = _compiled_forward(teacher, jit_compile, output)
    num_samples = len(flatten(x)[0][1]) if not isinstance(x, np.ndarray) else len(x)
    outputs = []
    for start in range(0, num_samples, batch_size):
        size = min(batch_size, num_samples - start)

        def rows(array, start=start, size=size):
            batch = array[start : start + size]
            if size < batch_size:
                # Pad the last batch (one shape, one compilation) with copies
                # of its last row: valid input of any dtype (text too), and
                # the padded rows' outputs are dropped.
                batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - size, 0)])
            return batch

        batch = rows(x) if isinstance(x, np.ndarray) else keras.tree.map_structure(rows, x)
        logits = keras.ops.convert_to_numpy(forward(batch))
        outputs.append(logits[:size].astype(np.float32))
    return np.concatenate(outputs)


def _compiled_forward(teacher, jit_compile, output=None):
    """`batch -> teacher(batch, training=False)`'s selected output (as the
    Distiller's `teacher_output` selects it), compiled for the backend."""

    def select(outputs):
        return outputs_module.select_output(
            outputs, output, "teacher", teacher, keyword="output",
            function="compute_teacher_logits")

    if keras.backend.backend() == "torch":
        import torch

        def eager(batch):
            with torch.no_grad():
                return select(teacher(batch, training=False))

        # `jit_compile=True` is `torch.compile`, as in Keras' torch trainer.
        return torch.compile(eager) if jit_compile else eager
    if keras.backend.backend() != "jax":
        return tf.function(lambda batch: select(teacher(batch, training=False)),
                           jit_compile=jit_compile)
    import jax

    def forward(trainable, non_trainable, batch):
        outputs, _ = teacher.stateless_call(trainable, non_trainable, batch, training=False)
        return select(outputs)

    forward = jax.jit(forward) if jit_compile else forward
    trainable = [v.value for v in teacher.trainable_variables]
    non_trainable = [v.value for v in teacher.non_trainable_variables]
    return lambda batch: forward(trainable, non_trainable, batch)


def _write_cache(path, key, logits):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(
                f,
                logits=logits,
                key=np.array(key),
                checksum=np.array(_logits_checksum(logits)),
            )
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _read_cache(path, num_samples, members=None):
    try:
        with np.load(path, allow_pickle=False) as data:
            logits = data["logits"]
            key = str(data["key"])
            checksum = str(data["checksum"])
    except Exception as error:  # zipfile, OSError, KeyError, ValueError...
        raise CacheError(
            f"The teacher-logits cache {path} is truncated or not a keras_kd "
            f"cache ({type(error).__name__}: {error}). Delete it and run "
            "again to recompute it."
        ) from error
    if _logits_checksum(logits) != checksum:
        raise CacheError(
            f"The teacher-logits cache {path} is damaged: its checksum does "
            "not match its contents. Delete it and run again."
        )
    # (samples, ..., classes); an ensemble's (samples, members, ..., classes):
    # a sequence teacher adds a time axis to either.
    minimum = 2 if members is None else 3
    if (logits.ndim < minimum or len(logits) != num_samples
            or (members is not None and logits.shape[1] != members)):
        expected = (f"({num_samples}, ..., classes)" if members is None
                    else f"({num_samples}, {members} members, ..., classes)")
        raise CacheError(
            f"The teacher-logits cache {path} holds logits of shape "
            f"{logits.shape}, not {expected}. Delete it or pass rebuild=True."
        )
    return key, logits
