"""Reading a top-k cache: its manifest, checks and `tf.data` stream.

`read_top_k_cache` opens a directory written by `write_top_k_cache`
(`keras_kd.distillation.top_k_writer`), checks its format, fingerprints and
checksums, and memory-maps its shards; `top_k_dataset` streams it as a
`tf.data.Dataset` read by tf.data itself.
"""

import hashlib
import json
import numbers
import os

import numpy as np
import tensorflow as tf

from keras_kd.distillation.cache import CacheError
from keras_kd.distillation.fingerprints import fingerprint_model
from keras_kd.distillation.top_k_loss import CACHE_TEMPERATURE_KEY
from keras_kd.distillation.top_k_loss import TOP_K_KEYS
from keras_kd.distillation.top_k_loss import VOCAB_SIZE_KEY
from keras_kd.distillation.validation import validate_choice

TOP_K_FORMAT = "keras_kd.top_k"
TOP_K_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
_VERIFY = ("open", "lazy", "none")
# Examples per chunk of `TopKCache.chunks` (in-memory copies).
_DATASET_CHUNK = 256
_HASH_BLOCK = 1 << 20


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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
