"""What the `Distiller` adds to Keras' `fit` and `evaluate`.

Keras' own `fit` is kept; around it the Distiller checks the inputs against
the student (a clear error instead of one from inside the model), applies
`class_weight` inside the step (where cached teacher logits ride along with
the labels), accepts data without labels, and logs label metrics over the
labelled samples only. `FittingMixin` holds these pieces; `Distiller` is
the only class that uses it.
"""

import tensorflow as tf
from keras import ops

from keras_kd import cache as cache_module
from keras_kd import compat
from keras_kd import labels as labels_module
from keras_kd import validation


class FittingMixin:
    """The views of a batch, input checks, class weights and logs of `fit`.

    Expects `student`, `alpha`, `student_loss_tracker` and
    `distillation_loss_tracker` on the model it is mixed into.
    """

    def student_inputs(self, x):
        """Returns the student's view of a batch `x` (default: `x` itself).

        Override together with `teacher_inputs` when the two models take
        different inputs, e.g. `x = {"student": ..., "teacher": ...}`.
        """
        return x

    def teacher_inputs(self, x):
        """Returns the teacher's view of a batch `x` (default: `x` itself).

        Override when the teacher takes other inputs than the student
        (another resolution, another tokenizer); see
        `examples/teacher_with_other_inputs.py`.
        """
        return x

    def fit(self, x=None, y=None, *args, **kwargs):
        """Trains the student; arguments as `keras.Model.fit`.

        `y` may be omitted (a transfer set, with `alpha=0`) or hold
        `UNLABELLED` (-1) for samples without a label. `class_weight` is
        applied inside the step, so it works with cached teacher logits.

        Raises:
            ValueError: for inputs the student cannot take, an endless
                dataset without `steps_per_epoch`, `class_weight` together
                with `sample_weight`, or data without labels while
                `alpha > 0`.
        """
        self._check_x(x)
        if (
            isinstance(x, tf.data.Dataset)
            and int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY)
            and kwargs.get("steps_per_epoch") is None
            and len(args) <= 10  # Not given by position either.
        ):
            raise ValueError(
                "`x` is an endless dataset (e.g. `make_dataset(..., "
                "start_epoch=k)`), so an epoch would never end. Pass "
                "`steps_per_epoch` (see `keras_kd.datasets.steps_per_epoch`)."
            )
        class_weight = kwargs.pop("class_weight", None)
        if class_weight is not None and kwargs.get("sample_weight") is not None:
            raise ValueError(
                "You cannot pass `class_weight` and `sample_weight` at the "
                "same time. Multiply the class weights into the sample "
                "weights instead."
            )
        table = labels_module.class_weight_table(class_weight)
        if table != self._class_weight:
            # The weights are constants of the traced step: trace it again.
            self._class_weight = table
            self.train_function = None
        # Read once, eagerly: a traced step cannot read a variable's value.
        self._alpha_at_fit_start = self.alpha
        if len(args) <= 6 and validation.orders_itself(x):
            # Keras cannot shuffle these and warns that it ignores its own
            # default `shuffle=True`; say False, which is what happens.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """The student's loss and metrics on labelled data, as
        `keras.Model.evaluate`; the teacher runs only for teacher metrics."""
        self._check_x(x)
        return super().evaluate(x, y, *args, **kwargs)

    def _check_x(self, x):
        # A subclass with its own `student_inputs` feeds the student
        # something else than `x`: nothing to compare.
        if type(self).student_inputs is FittingMixin.student_inputs:
            validation.check_inputs(self.student, x, "x")

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' own fails under MultiWorkerMirroredStrategy: see compat.
        if iterator is not None and self._distribute_strategy is not None:
            data_batch = compat.first_local_batch(self.distribute_strategy, iterator)
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _check_labels_present(self, y):
        if y is None and (self._alpha_at_fit_start or 0.0) > 0.0:
            raise ValueError(
                "The data has no labels, so the student loss cannot be "
                f"computed, but alpha={self._alpha_at_fit_start} gives it "
                "weight. To train on the distillation term alone (a transfer "
                "set), compile with `alpha=0`; or pass labels, with "
                f"{cache_module.UNLABELLED} marking the samples that have none."
            )

    def _with_class_weight(self, y, sample_weight):
        """Multiplies in the class weights given to `fit`, if any."""
        if self._class_weight is None or y is None:
            return sample_weight
        return labels_module.class_weights(y, sample_weight, self._class_weight)

    def _update_loss_trackers(self, student_logits, loss, student_loss, distillation_loss=None):
        batch_size = ops.shape(student_logits)[0]
        compat.loss_tracker(self).update_state(loss, sample_weight=batch_size)
        self.student_loss_tracker.update_state(student_loss, sample_weight=batch_size)
        if distillation_loss is not None:
            self.distillation_loss_tracker.update_state(distillation_loss, sample_weight=batch_size)

    def _metrics_logs(self, x, y, student_logits, sample_weight):
        if y is None:
            # No labels: only the loss trackers have anything to report.
            trackers = ("loss", self.student_loss_tracker.name, self.distillation_loss_tracker.name)
            logs = {m.name: m.result() for m in self.metrics if m.name in trackers}
        else:
            labels, mask = labels_module.labelled_mask(y)
            weights = ops.cast(mask, "float32")
            if sample_weight is not None:
                weights = weights * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            logs = self.compute_metrics(x, labels, student_logits, weights)
        return compat.reducible_logs(logs)

    def get_metrics_result(self):
        # As Keras', but a fit on unlabelled data leaves the label metrics
        # unbuilt: they have nothing to report yet, rather than an error.
        results = {}
        for metric in self.metrics:
            if getattr(metric, "built", True) is False:
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results
