"""The Distiller's TensorFlow steps: the tape, and `tf.distribute` scaling."""

import contextlib

import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import compat
from keras_kd.distillation import objective
from keras_kd.distillation.backend.common import CommonSteps


# Run-time checks, for the losses (`top_k_loss`): a value known now, and
# asserts on values known only when the graph runs.


def static_value(value):
    """`value` as a float64 NumPy array if known without running a graph
    (eager, or constant-folded), else None."""
    if isinstance(value, np.ndarray) or tf.executing_eagerly():
        return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)
    static = tf.get_static_value(value)
    return None if static is None else np.asarray(static, dtype=np.float64)


def as_tensor(value):
    """A tensor of `value` (reads a `tf.Variable`, which `keras.ops` does not)."""
    return tf.convert_to_tensor(value)


def assert_near(x, y, rtol, message):
    """An in-graph `x ~= y` (XLA drops it); returns its op, a dependency."""
    x = tf.cast(x, tf.float32)
    return [tf.debugging.assert_near(
        x, tf.cast(y, tf.float32) + tf.zeros_like(x), rtol=rtol, message=message)]


def assert_equal(x, y, message):
    """An in-graph `x == y` on int32 values; returns its op."""
    return [tf.debugging.assert_equal(tf.cast(x, tf.int32), tf.cast(y, tf.int32), message=message)]


def after(dependencies, value):
    """`value`, computed after the `dependencies` (asserts) ran."""
    if not dependencies:
        return value
    with tf.control_dependencies(dependencies):
        return tf.identity(value)


class TensorFlowSteps(CommonSteps):
    """`train_step(data)` / `test_step(data)` as Keras' TF trainer calls them."""

    def _check_backend_setup(self):
        """Everything TensorFlow offers works here (`tf.distribute` too)."""

    def _input_pipeline_scope(self):
        """No scope: the variables hold their values throughout `fit`."""
        return contextlib.nullcontext

    def train_step(self, data):
        batch = batch_module.parse_batch(data)
        alpha = ops.cast(self._alpha, "float32")
        if batch.labels is None:
            # Runs in every step (also after `distiller.alpha = 0.5`); XLA
            # drops asserts, so `fit` also checks eagerly.
            tf.debugging.assert_less_equal(alpha, 0.0, message=objective.no_labels_message())
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            outputs = objective.forward(self, batch, alpha, training=True)
            terms = objective.training_terms(self, batch, outputs, alpha)
            # Gradients are summed over replicas: scaling each replica's
            # global-batch mean by 1 / N gives the mean over the global batch.
            scaled_loss = self.optimizer.scale_loss(terms.loss / num_replicas)
        variables = self._trained_variables()
        self.optimizer.apply_gradients(zip(tape.gradient(scaled_loss, variables), variables))
        return objective.update_metrics(self, batch, outputs, terms)

    def test_step(self, data):
        batch = batch_module.parse_batch(data)
        outputs = objective.evaluation_forward(self, batch)
        terms = objective.evaluation_terms(self, batch, outputs)
        return objective.update_metrics(self, batch, outputs, terms)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' hook (`compat.SYMBOLIC_BUILD`, pinned by the compat test);
        # its own fails under MultiWorkerMirroredStrategy: see compat.
        iterator, data_batch = compat.symbolic_build_arguments(self, iterator, data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
