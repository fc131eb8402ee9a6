"""What both backends' steps share: Keras' hooks the steps do not use but
Keras' trainers call around them."""

import keras
from keras import ops

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import compat
from keras_kd.distillation import outputs as outputs_module


class CommonSteps:
    """Hooks shared by `TensorFlowSteps`, `JAXSteps` and `TorchSteps`."""

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Builds the compiled metrics on what the step gives them.

        Keras builds unbuilt metrics symbolically before the first step
        (always on JAX, whose compiled step cannot create variables; under a
        `tf.distribute` strategy on TensorFlow) through this method, on the
        model's whole output. The step updates them (`objective.
        update_metrics`) on the labels and the student's selected logits:
        a student with several outputs would otherwise have its metrics
        built for a dict. Nothing else calls this method.

        Returns:
            An empty dict (Keras' symbolic build ignores the result).
        """
        batch = batch_module.parse_batch(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))
        metrics = compat.compiled_metrics(self)
        if metrics is not None and not metrics.built and batch.labels is not None:
            logits = outputs_module.select_output(
                y_pred, self.student_output, "student", self.student)
            metrics.build(batch.labels, logits)
        return {}

    def _check_state_usable(self):
        """Called before `fit` / `evaluate` / `predict` read the variables;
        the JAX steps refuse variables a failed step consumed."""

    def _run_if(self, predicate, fn, skipped):
        """`fn()` where `predicate` holds, else `skipped` (zeros that stand
        in for its result). `fn` may write the models' variables (a
        teacher's counters or statistics): TensorFlow's graph keeps the
        writes of the branch taken."""
        return ops.cond(predicate, fn, lambda: skipped)
