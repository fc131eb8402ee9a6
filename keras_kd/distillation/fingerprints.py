"""What identifies a teacher and its inputs, for every teacher-output cache.

The dense cache (`keras_kd.distillation.cache`) and the top-k cache
(`keras_kd.distillation.top_k`) both key their files by these fingerprints,
so a teacher that one refuses the other refuses too:

- `fingerprint_model`: the weights (paths, dtypes, shapes, bytes) *and* the
  architecture (the model's config and every layer's, as JSON), so that a
  changed weightless layer (a `Rescaling`, an activation) is another
  teacher. Freezing (`trainable`) is not part of it: the Distiller freezes
  its teachers, which changes no output; nor are the weights' paths, which
  a reloaded model may spell differently. Code in a subclassed model's
  `call` that no config records cannot be seen; rebuild such a cache
  yourself after changing it.
- `fingerprint_array`: one array's dtype, shape and bytes (the dense cache's
  inputs). Text (NumPy `str`, `bytes` or the object arrays of bytes that a
  `tf.string` tensor converts to) is hashed by its UTF-8 contents: an
  object array's own bytes are pointers, another value each run.
- `InputsHasher`: a nest of input batches, the same for any batching of the
  same rows (the top-k cache's inputs).
"""

import hashlib
import json

import keras
import numpy as np
from keras import ops

# Part of a key: caches written before the architecture was fingerprinted
# have another teacher fingerprint and are refused as another teacher.
FINGERPRINT_VERSION = 3

# Config entries that change no output of a frozen teacher.
_IGNORED_KEYS = ("trainable", "compile_config")


def _stable(value):
    """A JSON-ready form of a config value: no object ids, sorted keys."""
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in value.items() if k not in _IGNORED_KEYS}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return np.asarray(value).tolist()
    get_config = getattr(value, "get_config", None)
    if callable(get_config):
        try:
            return {"class": _class_name(value), "config": _stable(get_config())}
        except Exception:  # noqa: BLE001 - an object without a usable config.
            pass
    # A function (an activation) by its name; any other object by its type.
    return getattr(value, "__qualname__", None) or _class_name(value)


def _class_name(value):
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _layers(model):
    """Every layer below `model`, depth first (sublayers of nested models)."""
    found = []
    for layer in getattr(model, "layers", None) or []:
        found.append(layer)
        if layer is not model:
            found.extend(_layers(layer))
    return found


def _config_or_none(layer):
    try:
        return layer.get_config()
    except Exception:  # noqa: BLE001 - subclassed models may not have one.
        return None


def architecture(model):
    """The JSON text of a model's architecture: its config and its layers'.

    Every layer's class and config is listed as well as the model's own
    config, so a subclassed model (whose `get_config` may say little or
    raise) is still described by the layers it holds.
    """
    layers = _layers(model)
    description = {
        "class": _class_name(model),
        "config": _config_or_none(model),
        "layers": [
            {"class": _class_name(layer), "config": _config_or_none(layer)}
            for layer in layers
        ],
    }
    # Keras names layers by creation order ("dense_9" once other models were
    # built first): the same teacher rebuilt later must keep its key, so
    # every name (models, layers, input layers, which configs also use to
    # wire layers) becomes the order in which it first appears.
    stable = _stable(description)
    names = {}
    _collect_names(stable, names)
    return json.dumps(_canonical_names(stable, names), sort_keys=True)


def _collect_names(value, names):
    if isinstance(value, dict):
        for key in sorted(value):
            if key == "name" and isinstance(value[key], str):
                names.setdefault(value[key], f"#{len(names)}")
            _collect_names(value[key], names)
    elif isinstance(value, list):
        for item in value:
            _collect_names(item, names)


def _canonical_names(value, names):
    if isinstance(value, dict):
        return {k: _canonical_names(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_names(v, names) for v in value]
    if isinstance(value, str):
        return names.get(value, value)
    return value


def fingerprint_model(model):
    """Returns a sha256 hex digest of a model's weights and architecture.

    Args:
        model: A Keras model.

    Returns:
        A 64-character hex string; any changed weight or layer setting
        (e.g. a `Rescaling`'s scale, an activation) changes it.
    """
    digest = hashlib.sha256(f"keras_kd.fingerprint:{FINGERPRINT_VERSION};".encode())
    digest.update(architecture(model).encode())
    # By position, not `weight.path`: a reloaded model's paths may lose the
    # model's name ("teacher/dense/kernel" becomes "dense/kernel"), and the
    # architecture already names every layer.
    for number, weight in enumerate(model.weights):
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{number}:{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def fingerprint_teachers(teacher):
    """`fingerprint_model` of one teacher, or the list of an ensemble's."""
    if isinstance(teacher, (list, tuple)):
        return [fingerprint_model(member) for member in teacher]
    return fingerprint_model(teacher)


def _is_text(array):
    return array.dtype.kind in "USO"


def _text_bytes(array, where):
    """The UTF-8 contents of a text array, each string after its length."""
    parts = []
    for value in array.reshape(-1).tolist():
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, bytes):
            raise ValueError(
                f"Inputs to fingerprint must be numeric or text. Received: an "
                f"array of dtype {array.dtype} holding {type(value).__name__} "
                f"at {where}. Convert it to a numeric or string array."
            )
        parts.append(len(value).to_bytes(8, "little") + value)
    return b"".join(parts)


def _dtype_and_bytes(array, where="x"):
    """`(dtype name, bytes)` that identify an array's values.

    Text of every NumPy kind (`str`, `bytes`, object arrays of either, as a
    `tf.string` tensor converts) is `"string"` and its UTF-8 contents, so
    the same text gives the same bytes whatever its width or kind.
    """
    if _is_text(array):
        return "string", _text_bytes(array, where)
    return str(array.dtype), np.ascontiguousarray(array).tobytes()


def fingerprint_array(array):
    """Returns a sha256 hex digest of an array's dtype, shape and contents.

    Args:
        array: A NumPy array (or anything `np.asarray` takes). Text arrays
            are hashed by their UTF-8 contents (see `_dtype_and_bytes`).

    Returns:
        A 64-character hex string.

    Example:

    >>> import numpy as np
    >>> text = np.array(["a cat", "a dog"])
    >>> fingerprint_array(text) == fingerprint_array(text.astype(object))
    True
    """
    array = np.asarray(array)
    dtype, contents = _dtype_and_bytes(array)
    digest = hashlib.sha256(f"{dtype}:{array.shape};".encode())
    digest.update(contents)
    return digest.hexdigest()


def flatten(structure, prefix=""):
    """Returns `[(path, leaf)]` of a nest of dicts/lists/tuples, sorted keys."""
    if isinstance(structure, dict):
        items = []
        for key in sorted(structure, key=str):
            items += flatten(structure[key], f"{prefix}/{key}")
        return items
    if isinstance(structure, (list, tuple)):
        items = []
        for index, item in enumerate(structure):
            items += flatten(item, f"{prefix}/{index}")
        return items
    return [(prefix or "/", structure)]


class InputsHasher:
    """A sha256 of the inputs, the same for any batching of the same rows.

    Each leaf array (e.g. `token_ids`, `padding_mask`) has its own digest,
    fed the dtype and per-example shape whenever they change and then the
    bytes of each batch's rows (text: its UTF-8 contents, as
    `fingerprint_array`); the fingerprint hashes those digests and the
    number of examples.
    """

    def __init__(self):
        self.digests = {}
        self.layouts = {}
        self.num_examples = 0

    def update(self, batch):
        leaves = flatten(batch)
        sizes = set()
        for path, leaf in leaves:
            array = np.ascontiguousarray(ops.convert_to_numpy(leaf))
            if array.ndim == 0:
                raise ValueError(
                    f"Every input of a batch must have a batch axis. Received: "
                    f"a scalar at {path!r}. Pass batches, e.g. dataset.batch(32)."
                )
            sizes.add(len(array))
            dtype, contents = _dtype_and_bytes(array, repr(path))
            layout = f"{dtype}:{array.shape[1:]};"
            if path not in self.digests:
                self.digests[path] = hashlib.sha256(f"{path};".encode())
            if self.layouts.get(path) != layout:
                self.digests[path].update(layout.encode())
                self.layouts[path] = layout
            self.digests[path].update(contents)
        if len(sizes) != 1:
            raise ValueError(
                "The inputs of one batch must have the same batch size. "
                f"Received: sizes {dict((p, len(ops.convert_to_numpy(a))) for p, a in leaves)}."
            )
        self.num_examples += sizes.pop()

    def hexdigest(self):
        summary = {
            "num_examples": self.num_examples,
            "leaves": {path: d.hexdigest() for path, d in sorted(self.digests.items())},
        }
        return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()
