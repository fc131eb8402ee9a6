"""The `Distiller` model: trains a student on labels and a frozen teacher."""

import functools
import inspect

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import cache as cache_module
from keras_kd import compat
from keras_kd.losses import DistillationLoss
from keras_kd.losses import get_distillation_loss
from keras_kd.validation import validate_choice
from keras_kd.validation import validate_fraction
from keras_kd.validation import validate_temperature

# -1: a sample without a label in a batch of integer labels. It gets only the
# distillation term (for one-hot labels, a row of zeros marks it).
UNLABELLED = cache_module.UNLABELLED

DEFAULT_TEMPERATURE = 3.0

# Reductions a student loss may carry, and what they divide the weighted sum
# of the labelled samples' losses by.
_REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")


def ends_in_softmax(model):
    """True if the model's last layer applies a softmax.

    Args:
        model: A Keras model. Subclassed models, whose layers are not an
            ordered graph, are taken not to.

    Returns:
        `True` for a last `Softmax` layer, a softmax `Activation` or a layer
        built with `activation="softmax"`.
    """
    if not isinstance(model, keras.Sequential) and not hasattr(model, "inputs"):
        return False  # Subclassed: `layers` is not the order of `call`.
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or (
        isinstance(last, keras.layers.Activation)
        and getattr(last.activation, "__name__", "") == "softmax"
    )


def _static_num_classes(model):
    try:
        return model.outputs[0].shape[-1]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _as_float(variable):
    # The shortest decimal that is this float32: 0.1, not 0.10000000149.
    return float(str(ops.convert_to_numpy(variable)))


def _rank(tensor):
    """The static rank of a tensor, or `None` when unknown."""
    shape = tensor.shape
    return shape.rank if hasattr(shape, "rank") else len(shape)


def _per_sample(values, batch_size):
    """Reduces a loss output to one value per sample, shape `(batch,)`."""
    values = ops.cast(ops.convert_to_tensor(values), "float32")
    if len(values.shape) == 0:
        return ops.broadcast_to(values, (batch_size,))
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


def _global_sum(value):
    """Sums `value` over the replicas of a `tf.distribute` strategy.

    Returns the sum divided by the number of replicas, so that each replica's
    `local_sum / _global_sum(count)` adds up, over the replicas' gradients
    scaled by `1 / N`, to the global `sum / count`.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce("sum", value) / context.num_replicas_in_sync


def _reduce(per_sample_values, sample_weight, mask, reduction):
    """Reduces per-sample losses as Keras' `reduction` would, over `mask`.

    Masked-out samples count for nothing, as with Keras' `ignore_class`: a
    mean is over the samples that are not masked.
    """
    values = ops.cast(per_sample_values, "float32")
    weights = ops.ones_like(values)
    if sample_weight is not None:
        weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    if mask is not None:
        mask = ops.cast(mask, "float32")
        # `where`, not a product: a masked sample's loss may be NaN.
        values = ops.where(mask > 0, values, 0.0)
        weights = weights * mask
    total = ops.sum(values * weights)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight":
        return ops.divide_no_nan(total, _global_sum(ops.sum(weights)))
    if mask is None:
        count = ops.cast(ops.shape(values)[0], "float32")
    else:
        count = _global_sum(ops.sum(mask))
    return ops.divide_no_nan(total, count)


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains a student to match a frozen teacher and the true labels.

    The loss of each step is

        alpha * student_loss(y, s) + (1 - alpha) * distillation_loss(t, s)
        + sum(student.losses)

    where `s` and `t` are the student's and teacher's logits. The teacher runs
    with `training=False` outside the gradient tape and its weights never
    change; only the student is trained. Calling the distiller, `predict` and
    `evaluate` use the student alone, so `evaluate` does not run the teacher.

    Any Keras model can be student or teacher: Sequential, Functional (also
    with several or dict inputs) or subclassed. `fit` and `evaluate` take
    whatever `student.fit` takes: arrays, dicts of arrays, `tf.data`
    datasets, `keras.utils.PyDataset` and generators.

    Labels may be missing: `fit(x)` without labels (a *transfer set*) trains
    on the distillation term alone (`alpha` must then be 0), and in a batch of
    integer labels the value `keras_kd.UNLABELLED` (-1) marks samples that
    get only the distillation term. The student loss is then the mean over
    the labelled samples, as with Keras' `ignore_class`.

    `alpha` and `temperature` are variables read at every step: set
    `distiller.temperature = 8.0` between fits, or use
    `keras_kd.TemperatureScheduler` / `keras_kd.AlphaScheduler`. They are
    saved with the distiller and restored by `BackupAndRestore`.

    Sample weights and class weights apply to both loss terms (class weights
    also with cached teacher logits; unlabelled samples get weight 1). Under
    `tf.distribute` the loss is averaged over the global batch, so N replicas
    give the same update as one device with the same global batch.

    Subclass hooks: `teacher_inputs(x)` / `student_inputs(x)` give each model
    its own view of a batch (another resolution, another tokenizer),
    `teacher_logits(x)` gives the teacher's outputs (a cache or an ensemble
    can replace it), `compute_student_loss` and `compute_distillation_loss`
    give the two loss terms.

    Args:
        student: The `keras.Model` to train. It must output logits.
        teacher: A trained `keras.Model`. It is frozen (`trainable=False`).
        teacher_outputs: `"logits"` (default) or `"probabilities"` for a
            teacher that ends in a softmax; its outputs are then turned back
            into logits with `log`, which softmax inverts exactly.
        name: Name of the model.
        **kwargs: Passed to `keras.Model`.

    Raises:
        TypeError: if `student` and `teacher` are passed by position.
        ValueError: for a non-model, a student that ends in a softmax, or
            models with different numbers of classes.

    Example:

    ```python
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer="adam",
        metrics=["sparse_categorical_accuracy"],
        alpha=0.1,
        temperature=10.0,
    )
    distiller.fit(x_train, y_train, epochs=3)
    distiller.student.save("student.keras")
    ```
    """

    def __init__(
        self,
        *args,
        student=None,
        teacher=None,
        teacher_outputs="logits",
        name="distiller",
        **kwargs,
    ):
        if args or student is None or teacher is None:
            received = f"{len(args)} positional argument(s)" if args else (
                "student=None" if student is None else "teacher=None"
            )
            raise TypeError(
                "`Distiller` takes its models by keyword only, so that their "
                "roles never depend on argument order. Use "
                "`Distiller(student=student, teacher=teacher)`. Received: "
                f"{received}."
            )
        super().__init__(name=name, **kwargs)
        for argument, model in (("student", student), ("teacher", teacher)):
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"`{argument}` must be a `keras.Model`. Received: "
                    f"{argument}={model!r} of type {type(model).__name__}."
                )
        self.teacher_outputs = validate_choice(
            teacher_outputs, "teacher_outputs", {"logits", "probabilities"}
        )
        if ends_in_softmax(student):
            raise ValueError(
                "The student must output logits, but its last layer "
                f"`{student.layers[-1].name}` applies a softmax. Build the "
                "student's last layer with `activation=None`; apply "
                "`keras.ops.softmax` to its outputs after training if you "
                "need probabilities."
            )
        if self.teacher_outputs == "logits" and ends_in_softmax(teacher):
            raise ValueError(
                "The teacher's last layer "
                f"`{teacher.layers[-1].name}` applies a softmax, but "
                "teacher_outputs='logits'. Pass "
                "`teacher_outputs='probabilities'` to distil from its "
                "probabilities, or rebuild it with a linear last layer."
            )
        teacher_classes = _static_num_classes(teacher)
        student_classes = _static_num_classes(student)
        if None not in (teacher_classes, student_classes) and (
            teacher_classes != student_classes
        ):
            raise ValueError(
                "The teacher and the student must output the same number of "
                f"classes. Received: teacher outputs {teacher_classes}, "
                f"student outputs {student_classes}. Build both with the "
                "same `num_classes`."
            )
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(
            name="distillation_loss"
        )
        # Variables, not Python floats: a traced step reads their current
        # value, so changing them between epochs changes the loss.
        self._alpha = self.add_weight(
            name="alpha", shape=(), dtype="float32", trainable=False,
            initializer=keras.initializers.Constant(0.1),
        )
        self._temperature = self.add_weight(
            name="temperature", shape=(), dtype="float32", trainable=False,
            initializer=keras.initializers.Constant(DEFAULT_TEMPERATURE),
        )
        self.student_loss_fn = None
        self.distillation_loss_fn = None
        self._default_student_loss = True
        self._class_weight = None
        self._alpha_at_fit_start = None
        # Built once both models are (BackupAndRestore and load_weights need
        # a built model); a subclassed student builds on its first batch.
        self.built = bool(student.built and teacher.built)

    @property
    def alpha(self):
        """Weight of the student (hard) loss, a float in `[0, 1]`.

        Settable at any time, also from a callback during `fit`.
        """
        return _as_float(self._alpha)

    @alpha.setter
    def alpha(self, value):
        self._alpha.assign(validate_fraction(value, "alpha"))

    @property
    def temperature(self):
        """Softmax temperature of the distillation loss, a positive float.

        Settable at any time, also from a callback during `fit`. A keras_kd
        distillation loss is kept at the same temperature.
        """
        return _as_float(self._temperature)

    @temperature.setter
    def temperature(self, value):
        value = validate_temperature(value)
        self._temperature.assign(value)
        if isinstance(self.distillation_loss_fn, DistillationLoss):
            self.distillation_loss_fn.temperature = value

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        temperature=None,
        **kwargs,
    ):
        """Configures the distiller for training.

        Keyword-compatible with the keras.io "Knowledge Distillation" example.

        Args:
            optimizer: Optimizer instance or name for the student.
            metrics: Metrics computed on the student's outputs and the labels.
            student_loss_fn: Loss on the true labels, applied to the
                student's logits. Defaults to
                `SparseCategoricalCrossentropy(from_logits=True)`; one-hot
                labels then switch to categorical cross-entropy. Strings
                resolve as in `keras.losses.get` (function or class names),
                but with `from_logits=True` where the loss has that option.
                A loss instance keeps its `reduction` and `ignore_class`;
                one built with `from_logits=False` is refused, since the
                student outputs logits.
            distillation_loss_fn: Loss between teacher and student. `None`
                gives `KLDivergenceWithTemperature` (Hinton, with `T**2`). A
                keras_kd `DistillationLoss` receives logits and the
                temperature and works in log space. Any other Keras loss or
                callable (e.g. `keras.losses.KLDivergence()`, as in keras.io)
                receives softened probabilities `softmax(logits / T)` of
                teacher and student, unscaled, as in keras.io.
            alpha: Weight of the student (hard) loss, in `[0, 1]`; the
                distillation loss gets `1 - alpha`.
            temperature: Softmax temperature, a positive finite number.
                `None` takes the temperature of a keras_kd loss that was
                given one, else 3.0. A value that contradicts the loss's own
                is refused.
            **kwargs: Passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...). As in Keras,
                `jit_compile="auto"` uses XLA only on GPU/TPU machines;
                `jit_compile=True` turns it on anywhere (see the README's
                "Fast paths").

        Raises:
            ValueError: for an invalid `alpha`, `temperature` or loss, a
                temperature that disagrees with the loss's own, or a `loss=`
                argument (use `student_loss_fn`).
        """
        for unsupported in ("loss", "loss_weights"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(
                    f"`Distiller.compile` does not take `{unsupported}`. "
                    f"Received: {unsupported}={kwargs[unsupported]!r}. Pass "
                    "`student_loss_fn`, `distillation_loss_fn` and `alpha`."
                )
            kwargs.pop(unsupported, None)
        alpha = validate_fraction(alpha, "alpha")
        self._default_student_loss = student_loss_fn is None
        self.student_loss_fn = resolve_student_loss(student_loss_fn)
        distillation_loss = get_distillation_loss(distillation_loss_fn)
        self.distillation_loss_fn = distillation_loss
        self.temperature = _resolve_temperature(temperature, distillation_loss)
        self.alpha = alpha
        self._user_loss_config = {
            "student_loss_fn": student_loss_fn,
            "distillation_loss_fn": distillation_loss_fn,
        }
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self.student(self.student_inputs(inputs), training=training)

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

    def teacher_logits(self, x):
        """Returns the teacher's logits for a batch `x`.

        Override to use another source of teacher outputs (an ensemble,
        a different input view). Runs with `training=False`.

        Args:
            x: A batch of inputs, as given to `fit`.

        Returns:
            Float32 logits of shape `(batch, num_classes)`.
        """
        outputs = self.teacher(self.teacher_inputs(x), training=False)
        outputs = ops.cast(outputs, "float32")
        if self.teacher_outputs == "probabilities":
            outputs = ops.log(ops.maximum(outputs, 1e-30))
        return outputs

    def compute_student_loss(self, y, student_logits, sample_weight=None):
        """Returns the hard loss on the labels.

        Samples labelled `UNLABELLED` (-1), or with the loss's own
        `ignore_class`, count for nothing; the mean is over the others.

        Args:
            y: The labels, or `None` for an unlabelled batch.
            student_logits: The student's logits.
            sample_weight: Optional per-sample weights.

        Returns:
            A scalar, reduced as the loss's `reduction` says (by default
            `sum(w * loss) / number of labelled samples`); 0 without labels.
        """
        if y is None:
            return ops.zeros((), "float32")
        student_logits = ops.cast(student_logits, "float32")
        loss_fn = self.student_loss_fn
        if self._default_student_loss and _is_one_hot(y, student_logits):
            loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
        labels, mask = labelled_mask(y, student_logits, _ignore_class(loss_fn))
        if isinstance(loss_fn, keras.losses.Loss):
            values = loss_fn.call(labels, student_logits)
        else:
            values = loss_fn(labels, student_logits)
        values = _per_sample(values, ops.shape(student_logits)[0])
        reduction = getattr(loss_fn, "reduction", "sum_over_batch_size")
        return _reduce(values, sample_weight, mask, reduction)

    def compute_distillation_loss(
        self, teacher_logits, student_logits, sample_weight=None
    ):
        """Returns the teacher-student loss, averaged over the batch.

        Args:
            teacher_logits: The teacher's logits.
            student_logits: The student's logits.
            sample_weight: Optional per-sample weights.

        Returns:
            A scalar: `sum(w * loss) / batch_size`.
        """
        teacher_logits = ops.cast(teacher_logits, "float32")
        student_logits = ops.cast(student_logits, "float32")
        temperature = ops.cast(self._temperature, "float32")
        loss_fn = self.distillation_loss_fn
        if isinstance(loss_fn, DistillationLoss):
            values = loss_fn.compute_per_sample(
                teacher_logits, student_logits, temperature
            )
        else:
            teacher_p = ops.softmax(teacher_logits / temperature, axis=-1)
            student_p = ops.softmax(student_logits / temperature, axis=-1)
            if isinstance(loss_fn, keras.losses.Loss):
                values = loss_fn.call(teacher_p, student_p)
            else:
                values = loss_fn(teacher_p, student_p)
        values = _per_sample(values, ops.shape(student_logits)[0])
        return _reduce(values, sample_weight, None, "sum_over_batch_size")

    def _regularization_loss(self):
        losses = self.student.losses
        if not losses:
            return 0.0
        return ops.sum(ops.stack([ops.cast(l, "float32") for l in losses]))

    def _check_logits(self, teacher_logits, student_logits):
        teacher_classes = teacher_logits.shape[-1]
        student_classes = student_logits.shape[-1]
        if None not in (teacher_classes, student_classes) and (
            teacher_classes != student_classes
        ):
            raise ValueError(
                "The teacher and the student must output the same number of "
                f"classes. Received: teacher logits of shape "
                f"{tuple(teacher_logits.shape)}, student logits of shape "
                f"{tuple(student_logits.shape)}."
            )

    def _check_labels_present(self, y):
        if y is None and (self._alpha_at_fit_start or 0.0) > 0.0:
            raise ValueError(
                "The data has no labels, so the student loss cannot be "
                f"computed, but alpha={self._alpha_at_fit_start} gives it "
                "weight. To train on the distillation term alone (a transfer "
                "set), compile with `alpha=0`; or pass labels, with "
                f"{UNLABELLED} marking the samples that have none."
            )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, teacher_logits = cache_module.split_targets(y)
        self._check_labels_present(y)
        sample_weight = self._with_class_weight(y, sample_weight)
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(x)
        teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        alpha = ops.cast(self._alpha, "float32")

        with tf.GradientTape() as tape:
            student_logits = self(x, training=True)
            self._check_logits(teacher_logits, student_logits)
            student_loss = self.compute_student_loss(
                y, student_logits, sample_weight
            )
            distillation_loss = self.compute_distillation_loss(
                teacher_logits, student_logits, sample_weight
            )
            loss = (
                alpha * student_loss
                + (1.0 - alpha) * distillation_loss
                + self._regularization_loss()
            )
            # Gradients are summed over replicas: scaling each replica's mean
            # by 1 / N gives the mean over the global batch.
            scaled_loss = loss / num_replicas
            if self.optimizer is not None:
                scaled_loss = self.optimizer.scale_loss(scaled_loss)

        trainable_weights = self.student.trainable_weights
        gradients = tape.gradient(scaled_loss, trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, trainable_weights))

        self._update_loss_trackers(
            student_logits, loss, student_loss, distillation_loss
        )
        return self._metrics_logs(x, y, student_logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, _ = cache_module.split_targets(y)
        student_logits = self(x, training=False)
        student_loss = self.compute_student_loss(
            y, student_logits, sample_weight
        )
        # `loss` is what `student.evaluate` would report: the hard loss plus
        # regularisation, so `val_loss` can drive checkpoints and stopping.
        self._update_loss_trackers(
            student_logits, student_loss + self._regularization_loss(),
            student_loss,
        )
        logs = self._metrics_logs(x, y, student_logits, sample_weight)
        logs.pop(self.distillation_loss_tracker.name, None)
        return logs

    def _update_loss_trackers(
        self, student_logits, loss, student_loss, distillation_loss=None
    ):
        batch_size = ops.shape(student_logits)[0]
        compat.loss_tracker(self).update_state(loss, sample_weight=batch_size)
        self.student_loss_tracker.update_state(
            student_loss, sample_weight=batch_size
        )
        if distillation_loss is not None:
            self.distillation_loss_tracker.update_state(
                distillation_loss, sample_weight=batch_size
            )

    def _metrics_logs(self, x, y, student_logits, sample_weight):
        if y is None:
            # No labels: only the loss trackers have anything to report.
            logs = {
                metric.name: metric.result()
                for metric in self.metrics
                if metric.name in (
                    "loss",
                    self.student_loss_tracker.name,
                    self.distillation_loss_tracker.name,
                )
            }
        else:
            labels, mask = labelled_mask(y, student_logits)
            weights = ops.cast(mask, "float32")
            if sample_weight is not None:
                weights = weights * ops.reshape(
                    ops.cast(sample_weight, "float32"), (-1,)
                )
            logs = self.compute_metrics(x, labels, student_logits, weights)
        return self._for_multi_worker_reduction(logs)

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

    def _with_class_weight(self, y, sample_weight):
        """Multiplies in the class weights given to `fit`, if any."""
        if self._class_weight is None or y is None:
            return sample_weight
        labels, mask = labelled_mask(y, None)
        if _rank(labels) not in (None, 1) and labels.shape[-1] != 1:
            # One-hot: the class is the arg max.
            labels = ops.argmax(labels, axis=-1)
        labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
        table = ops.convert_to_tensor(self._class_weight, "float32")
        size = len(self._class_weight)
        # Classes beyond the table, and unlabelled samples, get weight 1.
        known = ops.logical_and(mask, labels < size)
        weights = ops.where(
            known, ops.take(table, ops.clip(labels, 0, size - 1)), 1.0
        )
        if sample_weight is not None:
            weights = weights * ops.reshape(
                ops.cast(sample_weight, "float32"), (-1,)
            )
        return weights

    def _for_multi_worker_reduction(self, logs):
        # Across workers, Keras averages the step's logs with
        # `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars
        # (keras-team/keras#20585). One-element vectors average to the same
        # scalar.
        if not compat.in_multi_worker_mode(tf.distribute.get_strategy()):
            return logs
        return {
            name: ops.reshape(value, (1,)) if len(ops.shape(value)) == 0 else value
            for name, value in logs.items()
        }

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_inputs(x, "x")
        class_weight = kwargs.pop("class_weight", None)
        if class_weight is not None and kwargs.get("sample_weight") is not None:
            raise ValueError(
                "You cannot pass `class_weight` and `sample_weight` at the "
                "same time. Multiply the class weights into the sample "
                "weights instead."
            )
        table = _class_weight_table(class_weight)
        if table != self._class_weight:
            # The weights are constants of the traced step: trace it again.
            self._class_weight = table
            self.train_function = None
        # Read once, eagerly: a traced step cannot read a variable's value.
        self._alpha_at_fit_start = self.alpha
        if len(args) < 6 and _orders_itself(x):
            # Keras cannot shuffle these and warns that it ignores its own
            # default `shuffle=True`; say False, which is what happens.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_inputs(x, "x")
        return super().evaluate(x, y, *args, **kwargs)

    def _check_inputs(self, x, argument):
        """Clear errors for inputs the student cannot take, where Keras would
        fail too but with a message from deep inside the model."""
        if type(self).student_inputs is not Distiller.student_inputs:
            return  # The hook decides what the student sees.
        inputs = getattr(self.student, "inputs", None)
        if not inputs or len(inputs) != 1:
            return  # Subclassed or several inputs: left to Keras.
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
                return
            shape, dtype = tuple(spec.shape), spec.dtype.name
            numeric = spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool
        elif isinstance(x, np.ndarray):
            shape, dtype = (None,) + x.shape[1:], str(x.dtype)
            numeric = x.dtype.kind in "biuf"
        else:
            return
        if not numeric:
            raise ValueError(
                f"`{argument}` has dtype {dtype}; the student needs numeric "
                f"inputs. Convert them, e.g. `{argument}.astype('float32')`."
            )
        expected = tuple(inputs[0].shape)
        if not _shapes_compatible(shape, expected):
            raise ValueError(
                f"`{argument}` has examples of shape {shape[1:]}, but the "
                f"student takes inputs of shape {expected[1:]}. Reshape the "
                "inputs (e.g. flatten images for an MLP, or add the channel "
                "axis for a CNN) or build the student for this shape."
            )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TF trainer averages a first batch across replicas with
        # `strategy.reduce` only to learn its structure. Under
        # MultiWorkerMirroredStrategy that collective fails on PerReplica
        # inputs (keras-team/keras#20585). The first local replica's batch
        # has the same structure and needs no communication.
        if iterator is not None and self._distribute_strategy is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    self._first_local_value, next(batches)
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _first_local_value(self, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return self.distribute_strategy.experimental_local_results(value)[0]
        return value

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "teacher_outputs": self.teacher_outputs,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("student", "teacher"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def get_compile_config(self):
        config = super().get_compile_config()
        if not config:
            return config
        for key in ("loss", "loss_weights"):
            config.pop(key, None)
        config.update(
            {
                "alpha": self.alpha,
                "temperature": self.temperature,
                "student_loss_fn": keras.saving.serialize_keras_object(
                    self._user_loss_config["student_loss_fn"]
                ),
                "distillation_loss_fn": keras.saving.serialize_keras_object(
                    self._user_loss_config["distillation_loss_fn"]
                ),
            }
        )
        return config

    def compile_from_config(self, config):
        """Re-compiles a loaded distiller and builds its optimizer.

        Building the optimizer here lets `keras.models.load_model` restore
        its state, so a reloaded distiller continues `fit` where it stopped.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None:
            self.optimizer.build(self.student.trainable_variables)


def resolve_student_loss(identifier):
    """Resolves `student_loss_fn` to a loss that takes logits.

    Args:
        identifier: `None`, a string (function or class name, as
            `keras.losses.get` takes), a config dict, a loss instance or a
            callable `(y_true, logits) -> loss`.

    Returns:
        A `keras.losses.Loss` or a callable.

    Raises:
        ValueError: for a non-callable, a reduction of `"none"`, or a loss
            instance built with `from_logits=False`.
    """
    if identifier is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if isinstance(identifier, (str, dict)):
        loss = keras.losses.get(identifier)
        if isinstance(loss, keras.losses.Loss):
            config = loss.get_config()
            if "from_logits" in config:
                loss = type(loss).from_config({**config, "from_logits": True})
        elif "from_logits" in inspect.signature(loss).parameters:
            loss = functools.partial(loss, from_logits=True)
        return _checked_student_loss(loss)
    if not callable(identifier):
        raise ValueError(
            "`student_loss_fn` must be a loss or a callable. Received: "
            f"student_loss_fn={identifier!r}."
        )
    return _checked_student_loss(identifier)


def _checked_student_loss(loss):
    if not isinstance(loss, keras.losses.Loss):
        return loss
    config = loss.get_config()
    if config.get("from_logits") is False:
        raise ValueError(
            f"`student_loss_fn` is {type(loss).__name__} with "
            "from_logits=False, but the student outputs logits. Build it "
            f"with `{type(loss).__name__}(from_logits=True)` or name it by "
            "string, which resolves on logits."
        )
    if loss.reduction not in _REDUCTIONS:
        raise ValueError(
            "`student_loss_fn` must reduce to one value per batch. Received "
            f"reduction={loss.reduction!r}. Use one of {list(_REDUCTIONS)}; "
            "to change how samples count, pass `sample_weight`."
        )
    return loss


def _ignore_class(loss_fn):
    if isinstance(loss_fn, keras.losses.Loss):
        return loss_fn.get_config().get("ignore_class")
    return None


def labelled_mask(y, logits, ignore_class=None):
    """Splits labels into loss-safe labels and a mask of labelled samples.

    Args:
        y: Integer labels `(batch,)` / `(batch, 1)`, where `UNLABELLED`
            marks a sample without a label, or one-hot labels
            `(batch, classes)`, where a row of zeros does.
        logits: The logits (for their shape), or `None`.
        ignore_class: A further integer label to mask, as Keras' losses'
            `ignore_class`.

    Returns:
        `(labels, mask)`: the labels with masked integer labels replaced by
        0 (any loss can take them) and a boolean mask `(batch,)`.
    """
    y = ops.convert_to_tensor(y)
    rank = _rank(y)
    # Labels of unknown rank (e.g. `from_generator` with `TensorSpec(None)`)
    # are taken as integer labels, as Keras' sparse losses would.
    sparse = rank in (None, 1) or (rank == 2 and y.shape[-1] == 1)
    if not sparse:
        return y, ops.sum(ops.abs(ops.cast(y, "float32")), axis=-1) > 0
    flat = ops.reshape(y, (-1,))
    mask = ops.not_equal(flat, ops.cast(UNLABELLED, flat.dtype))
    if ignore_class is not None:
        mask = ops.logical_and(
            mask, ops.not_equal(flat, ops.cast(ignore_class, flat.dtype))
        )
    safe = ops.where(mask, flat, ops.zeros_like(flat))
    if rank is None:
        return safe, mask
    return ops.reshape(safe, ops.shape(y)), mask


def _resolve_temperature(temperature, loss):
    own = getattr(loss, "temperature", None) if isinstance(
        loss, DistillationLoss
    ) else None
    if temperature is None:
        return DEFAULT_TEMPERATURE if own is None else own
    temperature = validate_temperature(temperature)
    if own is not None and own != temperature:
        raise ValueError(
            f"`distillation_loss_fn` carries temperature={own}, but compile "
            f"got temperature={temperature}. Give the temperature once: "
            f"either `compile(temperature={temperature})` with a loss built "
            f"without one, or the loss's own and no `temperature`."
        )
    return temperature


def _class_weight_table(class_weight):
    """Turns `{class: weight}` into a list indexed by class, as Keras does."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, dict) or not class_weight:
        raise ValueError(
            "`class_weight` must be a non-empty dict {class index: weight}. "
            f"Received: class_weight={class_weight!r}."
        )
    if any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
           for k in class_weight):
        raise ValueError(
            "`class_weight` keys must be class indices (integers >= 0). "
            f"Received keys: {sorted(class_weight, key=str)}."
        )
    return [
        float(class_weight.get(c, 1.0)) for c in range(max(class_weight) + 1)
    ]


def _orders_itself(x):
    """True for inputs that fix their own order: datasets, PyDatasets,
    generators (Keras ignores `shuffle` for them)."""
    return isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or inspect.isgenerator(x)


def _shapes_compatible(shape, expected):
    """Keras' rule for a Functional input: equal ranks, or one more or one
    fewer trailing axis of size 1 (`(n, 28, 28)` for `Input((28, 28, 1))`)."""
    if len(shape) == len(expected) + 1 and shape[-1] == 1:
        shape = shape[:-1]
    elif len(shape) == len(expected) - 1 and expected[-1] == 1:
        expected = expected[:-1]
    return len(shape) == len(expected) and all(
        e is None or g is None or e == g for e, g in zip(expected[1:], shape[1:])
    )


def _is_one_hot(y, logits):
    """True if `y` holds one-hot (or soft) labels shaped like `logits`."""
    if isinstance(y, dict) or y is None:
        return False
    y_shape = getattr(y, "shape", None)
    if y_shape is None or _rank(y) is None or _rank(y) != _rank(logits):
        return False
    return y_shape[-1] is not None and y_shape[-1] == logits.shape[-1] and (
        y_shape[-1] > 1
    )
