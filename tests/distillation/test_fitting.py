"""`Distiller.fit` / `evaluate` around Keras' own: the parts in
`keras_kd.fitting` that the path matrix (test_distiller_paths.py) does not
already walk."""

import warnings

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.data import datasets


def _distiller():
    def cnn(width):
        return keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(width, 3, strides=2, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(10),
            ]
        )

    distiller = keras_kd.Distiller(student=cnn(4), teacher=cnn(8))
    distiller.compile(optimizer="sgd")
    return distiller


@pytest.fixture
def digits():
    return datasets.select("mnist", "train", source="sample", limit=96)


def test_endless_stream_needs_steps_per_epoch(digits):
    x, y = digits
    stream = datasets.make_dataset(x, y, batch_size=32, shuffle=True, start_epoch=2)
    distiller = _distiller()

    class FailInsteadOfHanging(keras.callbacks.Callback):
        # Without the check the epoch never ends: fail the test instead.
        def on_train_batch_end(self, batch, logs=None):
            if batch >= 20:
                raise AssertionError("fit ran an endless epoch")

    # Keras would start an epoch that never ends; say what to pass instead.
    with pytest.raises(ValueError, match="endless.*steps_per_epoch"):
        distiller.fit(stream, epochs=1, verbose=0, callbacks=[FailInsteadOfHanging()])
    history = distiller.fit(
        stream, epochs=4, initial_epoch=2, steps_per_epoch=datasets.steps_per_epoch(96, 32),
        verbose=0,
    )
    assert len(history.history["loss"]) == 2


def test_fit_on_a_keras_kd_dataset_warns_nothing(digits, library_defaults):
    """The default path a user walks: no Keras warnings about shuffling or
    running out of data, and one epoch is one pass over the data."""
    x, y = digits
    dataset = datasets.make_dataset(x, y, batch_size=32, shuffle=True)
    distiller = _distiller()
    seen = []

    class CountBatches(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distiller.fit(dataset, epochs=2, verbose=0, callbacks=[CountBatches()])
        distiller.evaluate(dataset, verbose=0)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "ran out of data" in m or "shuffle" in m], messages
    assert seen == [0, 1, 2] * 2
    assert np.isfinite(distiller.evaluate(dataset, verbose=0, return_dict=True)["loss"])
