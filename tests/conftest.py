"""Shared fixtures. Two logical CPU devices are set up before TensorFlow runs
any op, so that MirroredStrategy tests can use two replicas on one CPU.

Op determinism is on for the whole session: the CLI turns it on (it cannot
be turned off in a process), so every test runs under it, whatever the
order of the tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)
tf.config.experimental.enable_op_determinism()
# Under op determinism, random ops need a global seed (e.g. the shuffle of
# `fit(x, y)` on arrays).
keras.utils.set_random_seed(0)


def make_mlp(hidden_units, num_inputs=6, num_classes=4, name=None, **dense):
    """A tiny MLP that outputs logits."""
    model = keras.Sequential([keras.Input((num_inputs,))], name=name)
    for units in hidden_units:
        model.add(keras.layers.Dense(units, activation="relu", **dense))
    model.add(keras.layers.Dense(num_classes, **dense))
    return model


@pytest.fixture
def seeded():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, size=(64,))
    return x, y
