"""Fingerprints of inputs (`keras_kd.distillation.fingerprints`): text is
hashed by its contents.

Before this round text inputs were hashed by their NumPy bytes: an object
array (what a `tf.string` tensor converts to) holds pointers, so the same
text gave another fingerprint each time (a dense cache refused its own
file, a top-k cache its own inputs), and `<U3` vs `<U5` widths of the same
text differed too. These tests failed then.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_kd.distillation import fingerprints
from keras_kd.distillation.top_k_writer import fingerprint_inputs

TEXT = ["a cat", "sat", "on the mat"]


def _fresh_bytes():
    # New bytes objects of the same contents (new pointers in an object array).
    return np.array([bytes(bytearray(s.encode())) for s in TEXT], dtype=object)


def test_the_same_text_has_one_fingerprint_in_every_kind_of_array():
    kinds = [np.array(TEXT), np.array(TEXT, dtype="<U20"), np.array(TEXT, dtype=object),
             _fresh_bytes(), _fresh_bytes(), tf.constant(TEXT).numpy(),
             np.array([s.encode() for s in TEXT])]
    digests = {fingerprints.fingerprint_array(a) for a in kinds}
    assert len(digests) == 1


@pytest.mark.parametrize("other", [["a cat", "sat", "on the hat"], ["a ca", "tsat", "on the mat"],
                                   ["a cat", "sat"]])
def test_other_text_has_another_fingerprint(other):
    """Contents, not only lengths: a moved boundary between strings differs."""
    assert (fingerprints.fingerprint_array(np.array(other))
            != fingerprints.fingerprint_array(np.array(TEXT)))


def test_text_inputs_of_a_top_k_cache_keep_their_fingerprint_however_batched():
    x = {"text": tf.constant([[s] for s in TEXT]), "ids": tf.constant([[1], [2], [3]])}
    first = fingerprint_inputs(tf.data.Dataset.from_tensor_slices(x).batch(2))
    assert first == fingerprint_inputs(tf.data.Dataset.from_tensor_slices(x).batch(1))
    assert first == fingerprint_inputs({"text": np.array([[s] for s in TEXT]),
                                        "ids": np.array([[1], [2], [3]], "int32")})
    changed = dict(x, text=tf.constant([["a dog"], ["sat"], ["on the mat"]]))
    assert first != fingerprint_inputs(tf.data.Dataset.from_tensor_slices(changed).batch(2))


def test_numeric_fingerprints_are_unchanged():
    """Caches of numeric inputs written before keep their key: the dtype name
    and raw bytes, as before."""
    import hashlib

    x = np.arange(6, dtype="float32").reshape(2, 3)
    expected = hashlib.sha256(b"float32:(2, 3);" + x.tobytes()).hexdigest()
    assert fingerprints.fingerprint_array(x) == expected


def test_an_object_array_of_other_objects_is_refused_by_name():
    with pytest.raises(ValueError, match=r"numeric or text.*holding dict"):
        fingerprints.fingerprint_array(np.array([{"a": 1}], dtype=object))
