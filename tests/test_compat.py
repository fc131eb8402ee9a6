"""Each Keras/TensorFlow internal in keras_kd/compat.py, checked against the
installed versions: an upgrade that renames or changes one fails here, by
name, instead of deep inside a training run."""

import keras
import numpy as np
import tensorflow as tf
from conftest import make_mlp

from keras_kd import compat


def test_model_supports_jit_follows_layers_and_determinism(library_defaults):
    model = make_mlp([4])
    assert compat.model_supports_jit(model) is True
    tf.config.experimental.enable_op_determinism()
    assert compat.model_supports_jit(model) is False


def test_op_determinism_can_be_turned_off_and_on():
    assert compat.is_op_determinism_enabled()  # conftest turns it on.
    compat.disable_op_determinism()
    try:
        assert not compat.is_op_determinism_enabled()
    finally:
        tf.config.experimental.enable_op_determinism()
    assert compat.is_op_determinism_enabled()


def test_loss_tracker_is_the_mean_behind_logged_loss():
    model = make_mlp([4])
    model.compile("sgd", "mse")
    tracker = compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean)
    logs = model.train_on_batch(np.ones((2, 6)), np.ones((2, 4)), return_dict=True)
    np.testing.assert_allclose(float(tracker.result()), logs["loss"], rtol=1e-6)


def test_multi_worker_mode_is_false_for_local_strategies():
    assert compat.in_multi_worker_mode(tf.distribute.get_strategy()) is False
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert compat.in_multi_worker_mode(mirrored) is False


def test_built_input_shape_of_every_model_kind():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    subclassed = Subclassed()
    assert compat.built_input_shape(subclassed) is None  # Not built yet.
    subclassed(np.zeros((3, 5), "float32"))
    assert compat.built_input_shape(subclassed) == (None, 5)
    assert compat.built_input_shape(make_mlp([4])) == (None, 6)
