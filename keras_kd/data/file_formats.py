"""The files MNIST and CIFAR-10 come in, read into NumPy arrays.

MNIST: `.npz` in the `keras.datasets` layout and the four IDX files (plain
or `.gz`). CIFAR-10: the official `cifar-10-batches-py` (read with a
restricted unpickler, so a tampered file cannot run code) and
`cifar-10-batches-bin`. Every reader names the file and the fix when a file
is truncated or of another format. Where the files are looked for is
`keras_kd.loaders`.
"""

import gzip
import os
import pickle
import zipfile

import numpy as np

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_RECORD_BYTES = 1 + 32 * 32 * 3


def _load_npz(file, description):
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in keys if k in data}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Cannot read {description} as an .npz file: {error}. Replace it "
            "with an intact copy."
        ) from error
    missing = set(keys) - set(arrays)
    if missing:
        raise ValueError(
            f"{description} lacks the arrays {sorted(missing)}. "
            "Expected the layout of keras.datasets' mnist.npz: "
            "x_train, y_train, x_test, y_test."
        )
    return (arrays["x_train"], arrays["y_train"]), (
        arrays["x_test"],
        arrays["y_test"],
    )


def _open_maybe_gzip(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if path.endswith(".gz"):
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError) as error:
            raise ValueError(
                f"{path} is not a valid gzip file ({error}). Download it again."
            ) from error
    return content


def read_idx(path):
    """Reads one MNIST IDX file (plain or `.gz`) into a uint8 array.

    Args:
        path: Path of an `idx1` (labels) or `idx3` (images) file.

    Returns:
        A uint8 array of shape `(n,)` or `(n, rows, cols)`.

    Raises:
        ValueError: for a wrong magic number or a truncated file.
    """
    content = _open_maybe_gzip(path)
    if len(content) < 8:
        raise ValueError(f"{path} is truncated: {len(content)} bytes.")
    magic = int.from_bytes(content[:4], "big")
    if magic not in (2049, 2051):
        raise ValueError(
            f"{path} is not an MNIST IDX file: magic number {magic:#010x}, "
            "expected 0x00000801 (labels) or 0x00000803 (images)."
        )
    num_dims = magic & 0xFF
    header = 4 + 4 * num_dims
    if len(content) < header:
        raise ValueError(f"{path} is truncated: {len(content)} bytes.")
    shape = tuple(
        int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big")
        for i in range(num_dims)
    )
    expected = header + int(np.prod(shape))
    if len(content) != expected:
        raise ValueError(
            f"{path} is truncated or has trailing bytes: {len(content)} "
            f"bytes, expected {expected} for shape {shape}. Download it again."
        )
    return np.frombuffer(content, np.uint8, offset=header).reshape(shape)


def _find_idx(directory):
    paths = {}
    for key, stem in _IDX_FILES.items():
        for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            if os.path.isfile(os.path.join(directory, candidate)):
                paths[key] = os.path.join(directory, candidate)
                break
    return paths if len(paths) == len(_IDX_FILES) else None


def _load_idx_dir(paths):
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(images) != len(labels):
            raise ValueError(
                f"{paths['x_' + split]} holds {len(images)} images but "
                f"{paths['y_' + split]} holds {len(labels)} labels. Use "
                "matching files."
            )
    return (arrays["x_train"], arrays["y_train"]), (
        arrays["x_test"],
        arrays["y_test"],
    )


class _CifarUnpickler(pickle.Unpickler):
    """Accepts only what the CIFAR-10 python batches contain."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is forbidden"
            )
        return super().find_class(module, name)


def read_cifar_python_batch(path):
    """Reads one `cifar-10-batches-py` file with a restricted unpickler.

    Only NumPy arrays, dtypes and builtin containers are accepted, so a
    tampered data directory cannot run code.

    Args:
        path: Path of a batch file such as `data_batch_1` or `test_batch`.

    Returns:
        `(images, labels)`: uint8 `(n, 32, 32, 3)` and int64 `(n,)`.

    Raises:
        ValueError: for a file that is not a CIFAR-10 python batch.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path} is not a CIFAR-10 python batch: {error}. Only NumPy "
                "arrays and builtin types are accepted; use the official "
                "cifar-10-batches-py files."
            ) from error
        except (EOFError, ValueError, TypeError, AttributeError) as error:
            raise ValueError(
                f"{path} is truncated or corrupt ({error}). Download it again."
            ) from error
    if not isinstance(batch, dict):
        raise ValueError(f"{path} does not hold a CIFAR-10 batch dictionary.")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(
            f"{path} lacks the 'data' or 'labels' entry of a CIFAR-10 batch."
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: 'data' must be uint8 of shape (n, 3072). Received "
            f"{data.dtype} {data.shape}."
        )
    if len(data) != len(labels):
        raise ValueError(
            f"{path} holds {len(data)} images but {len(labels)} labels."
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar_binary_batch(path):
    """Reads one `cifar-10-batches-bin` file of 3073-byte records.

    Args:
        path: Path of a file such as `data_batch_1.bin`.

    Returns:
        `(images, labels)`: uint8 `(n, 32, 32, 3)` and int64 `(n,)`.

    Raises:
        ValueError: if the size is not a multiple of 3073 bytes.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        content = f.read()
    if not content or len(content) % _CIFAR_RECORD_BYTES:
        raise ValueError(
            f"{path} has {len(content)} bytes, not a whole number of "
            f"{_CIFAR_RECORD_BYTES}-byte CIFAR-10 records: it is truncated or "
            "not a cifar-10-batches-bin file. Download it again."
        )
    records = np.frombuffer(content, np.uint8).reshape(-1, _CIFAR_RECORD_BYTES)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


def _load_cifar_dir(directory, reader, suffix):
    parts = []
    for names in (_CIFAR_TRAIN_BATCHES, ["test_batch"]):
        batches = [reader(os.path.join(directory, n + suffix)) for n in names]
        parts.append(
            (
                np.concatenate([b[0] for b in batches]),
                np.concatenate([b[1] for b in batches]),
            )
        )
    return tuple(parts)


def _find_in_directory(name, directory):
    """Returns a loader for `name` found in `directory`, or None."""
    if name == "mnist":
        for candidate in ("mnist.npz", "mnist-10k.npz"):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                return lambda path=path: _load_npz(path, path)
        idx = _find_idx(directory)
        if idx is None:
            idx = _find_idx(os.path.join(directory, "mnist"))
        if idx is not None:
            return lambda: _load_idx_dir(idx)
        return None
    for base in (directory, os.path.join(directory, "cifar10")):
        python_dir = os.path.join(base, "cifar-10-batches-py")
        if os.path.isfile(os.path.join(python_dir, "test_batch")):
            return lambda d=python_dir: _load_cifar_dir(
                d, read_cifar_python_batch, ""
            )
        binary_dir = os.path.join(base, "cifar-10-batches-bin")
        if os.path.isfile(os.path.join(binary_dir, "test_batch.bin")):
            return lambda d=binary_dir: _load_cifar_dir(
                d, read_cifar_binary_batch, ".bin"
            )
        path = os.path.join(base, "cifar10.npz")
        if os.path.isfile(path):
            return lambda path=path: _load_npz(path, path)
    return None
