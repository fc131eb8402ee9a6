"""The Distiller's TensorFlow steps: the tape, and `tf.distribute` scaling."""

import contextlib

import tensorflow as tf
from keras import ops

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import compat
from keras_kd.distillation import objective
from keras_kd.distillation.backend.common import CommonSteps


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
