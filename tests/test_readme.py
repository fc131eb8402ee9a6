"""The error texts the README quotes, matched against the errors raised.

The README's "Reliability" table quotes some messages in double quotes.
Each quoted text is parsed from README.md, its error triggered, and the
text looked for in the message (ignoring only the case of letters, since a
quote may start mid-sentence). A new quote without a trigger here fails
`test_every_quoted_error_has_a_trigger`.
"""

import os
import re

import keras
import numpy as np
import pytest
from conftest import make_mlp

import keras_kd
from keras_kd.distillation.cache import CacheError

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def quoted_errors():
    """`{quote: row}` for the double-quoted texts of the Reliability table."""
    with open(README) as f:
        text = f.read()
    section = text.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    quotes = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| input") or line.startswith("|---"):
            continue
        row, happens = line.strip("| ").split(" | ", 1)
        # A quote after `=` is code (`teacher_outputs="probabilities"`), not
        # a message; a message may hold code ("... `rebuild=True`").
        for quote in re.findall(r'(?<![=\w])"([^"]{8,})"', happens):
            quotes[quote] = row
    return quotes


def _temperature():
    distiller = keras_kd.Distiller(student=make_mlp([4]), teacher=make_mlp([4]))
    distiller.compile(temperature=0)


def _classes():
    keras_kd.Distiller(student=make_mlp([4], num_classes=3), teacher=make_mlp([4]))


def _empty():
    from keras_kd.data import datasets

    datasets.make_dataset(np.zeros((0, 6), "float32"), np.zeros(0, "int64"), name=None,
                          scaling=None, batch_size=4)


def _foreign_cache(tmp_path):
    from keras_kd.distillation import cache

    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    path = str(tmp_path / "logits.npz")
    keras.utils.set_random_seed(1)
    cache.compute_teacher_logits(make_mlp([4]), x, path=path)
    cache.compute_teacher_logits(make_mlp([4]), x, path=path)  # Another teacher.


def _damaged_cache(tmp_path):
    from keras_kd.distillation import cache

    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    path = tmp_path / "logits.npz"
    keras.utils.set_random_seed(1)
    teacher = make_mlp([4])
    cache.compute_teacher_logits(teacher, x, path=str(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # One flipped byte in the stored arrays.
    path.write_bytes(bytes(data))
    cache.compute_teacher_logits(teacher, x, path=str(path))


def _foreign_keras_file(tmp_path):
    from keras_kd.cli import commands

    path = tmp_path / "model.keras"
    path.write_bytes(b"not a zip file")
    commands._load_keras_model(str(path), "MODEL")


TRIGGERS = {
    "must be a positive finite number": (_temperature, ValueError),
    "build both with the same `num_classes`": (_classes, ValueError),
    "nothing to train or evaluate on": (_empty, ValueError),
    "Delete it, choose another path, or pass rebuild=True": (_foreign_cache, CacheError),
    "Delete it and run again": (_damaged_cache, CacheError),
    "could not be loaded as a Keras model": (_foreign_keras_file, ValueError),
}

# Quotes that the raised message does not contain today (see the reason).
DIFFERS = {}


def test_every_quoted_error_has_a_trigger():
    quotes = quoted_errors()
    assert len(quotes) >= 5, quotes  # The parse found the table.
    assert set(quotes) == set(TRIGGERS)


@pytest.mark.parametrize("quote", [
    pytest.param(q, marks=pytest.mark.xfail(strict=True, reason=DIFFERS[q])) if q in DIFFERS
    else q for q in sorted(TRIGGERS)])
def test_the_quoted_error_text_is_the_message(quote, tmp_path):
    trigger, error_type = TRIGGERS[quote]
    with pytest.raises(error_type) as error:
        trigger(tmp_path) if trigger.__code__.co_argcount else trigger()
    assert quote.lower() in str(error.value).lower(), str(error.value)
