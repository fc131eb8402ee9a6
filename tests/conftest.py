"""Shared fixtures. Two logical CPU devices are set up before TensorFlow runs
any op, so that MirroredStrategy tests can use two replicas on one CPU.

Op determinism is on for the session, as the CLI turns it on. Tests of the
library's default configuration (no op determinism) use the
`library_defaults` fixture, which turns it off for the test and back on
after it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_kd import compat  # noqa: E402

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
def library_defaults():
    """Runs a test as a user's process runs: without op determinism."""
    compat.disable_op_determinism()
    assert not compat.is_op_determinism_enabled()
    try:
        yield
    finally:
        tf.config.experimental.enable_op_determinism()


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
