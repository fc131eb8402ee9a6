"""The `Distiller` model: trains a student on labels and a frozen teacher."""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import cache as cache_module
from keras_kd.losses import DistillationLoss
from keras_kd.losses import get_distillation_loss
from keras_kd.validation import validate_choice
from keras_kd.validation import validate_fraction
from keras_kd.validation import validate_temperature
from keras_kd.xla import auto_jit_compile

# Student losses named by string are resolved on logits: Keras' own strings
# resolve to functions that expect probabilities.
_STUDENT_LOSS_ALIASES = {
    "sparse_categorical_crossentropy": lambda: (
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    ),
    "categorical_crossentropy": lambda: (
        keras.losses.CategoricalCrossentropy(from_logits=True)
    ),
}


def _ends_in_softmax(model):
    """True if the model's last layer applies a softmax."""
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


def _per_sample(values, batch_size):
    """Reduces a loss output to one value per sample, shape `(batch,)`."""
    values = ops.convert_to_tensor(values)
    if len(values.shape) == 0:
        return ops.broadcast_to(values, (batch_size,))
    if len(values.shape) > 1:
        values = ops.mean(values, axis=tuple(range(1, len(values.shape))))
    return values


def _weighted_mean(per_sample_values, sample_weight):
    """Keras' `sum_over_batch_size`: `sum(w * l) / batch_size`."""
    per_sample_values = ops.cast(per_sample_values, "float32")
    if sample_weight is None:
        return ops.mean(per_sample_values)
    sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return ops.sum(per_sample_values * sample_weight) / ops.cast(
        ops.shape(per_sample_values)[0], "float32"
    )


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

    Sample weights and class weights apply to both loss terms. Under
    `tf.distribute` the loss is averaged over the global batch, so N replicas
    give the same update as one device with the same global batch.

    Subclass hooks: `teacher_logits(x)` gives the teacher's outputs (a cache
    or an ensemble can replace it), `compute_student_loss` and
    `compute_distillation_loss` give the two loss terms.

    Args:
        student: The `keras.Model` to train. It must output logits.
        teacher: A trained `keras.Model`. It is frozen (`trainable=False`).
        teacher_outputs: `"logits"` (default) or `"probabilities"` for a
            teacher that ends in a softmax; its outputs are then turned back
            into logits with `log`, which softmax inverts exactly.
        name: Name of the model.
        **kwargs: Passed to `keras.Model`.

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
        student,
        teacher,
        teacher_outputs="logits",
        name="distiller",
        **kwargs,
    ):
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
        if _ends_in_softmax(student):
            raise ValueError(
                "The student must output logits, but its last layer "
                f"`{student.layers[-1].name}` applies a softmax. Build the "
                "student's last layer with `activation=None`; apply "
                "`keras.ops.softmax` to its outputs after training if you "
                "need probabilities."
            )
        if self.teacher_outputs == "logits" and _ends_in_softmax(teacher):
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
        self.alpha = None
        self.temperature = None
        self.student_loss_fn = None
        self.distillation_loss_fn = None
        self._default_student_loss = True
        # The distiller owns no weights of its own: it is built once both
        # models are (BackupAndRestore and load_weights need a built model).
        self.built = bool(student.built and teacher.built)

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        temperature=3.0,
        **kwargs,
    ):
        """Configures the distiller for training.

        Keyword-compatible with the keras.io "Knowledge Distillation" example.

        Args:
            optimizer: Optimizer instance or name for the student.
            metrics: Metrics computed on the student's outputs and the labels.
            student_loss_fn: Loss on the true labels. Defaults to
                `SparseCategoricalCrossentropy(from_logits=True)`; one-hot
                labels then switch to categorical cross-entropy. The strings
                `"sparse_categorical_crossentropy"` and
                `"categorical_crossentropy"` resolve to their `from_logits=True`
                forms.
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
            **kwargs: Passed to `keras.Model.compile` (`jit_compile`,
                `steps_per_execution`, `run_eagerly`, ...). Unlike Keras,
                `jit_compile="auto"` (the default) turns XLA on also on
                CPU-only machines, when every layer supports it, op
                determinism is off and no `tf.distribute` strategy is in
                use; `jit_compile=False` turns it off.

        Raises:
            ValueError: for an invalid `alpha`, `temperature` or loss, or a
                `loss=` argument (use `student_loss_fn`).
        """
        for unsupported in ("loss", "loss_weights"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(
                    f"`Distiller.compile` does not take `{unsupported}`. "
                    f"Received: {unsupported}={kwargs[unsupported]!r}. Pass "
                    "`student_loss_fn`, `distillation_loss_fn` and `alpha`."
                )
            kwargs.pop(unsupported, None)
        self.alpha = validate_fraction(alpha, "alpha")
        self.temperature = validate_temperature(temperature)
        self._default_student_loss = student_loss_fn is None
        self.student_loss_fn = self._resolve_student_loss(student_loss_fn)
        self.distillation_loss_fn = get_distillation_loss(distillation_loss_fn)
        self._user_loss_config = {
            "student_loss_fn": student_loss_fn,
            "distillation_loss_fn": distillation_loss_fn,
        }
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def _resolve_auto_jit_compile(self):
        # XLA also on CPU-only machines, unlike Keras: see keras_kd/xla.py.
        return auto_jit_compile(self, self._distribute_strategy)

    @staticmethod
    def _resolve_student_loss(identifier):
        if identifier is None:
            return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if isinstance(identifier, str) and identifier in _STUDENT_LOSS_ALIASES:
            return _STUDENT_LOSS_ALIASES[identifier]()
        if isinstance(identifier, (str, dict)):
            return keras.losses.get(identifier)
        if not callable(identifier):
            raise ValueError(
                "`student_loss_fn` must be a loss or a callable. Received: "
                f"student_loss_fn={identifier!r}."
            )
        return identifier

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def teacher_logits(self, x):
        """Returns the teacher's logits for inputs `x`.

        Override to use another source of teacher outputs (an ensemble,
        a different input view). Runs with `training=False`.

        Args:
            x: A batch of inputs.

        Returns:
            Float32 logits of shape `(batch, num_classes)`.
        """
        outputs = ops.cast(self.teacher(x, training=False), "float32")
        if self.teacher_outputs == "probabilities":
            outputs = ops.log(ops.maximum(outputs, 1e-30))
        return outputs

    def compute_student_loss(self, y, student_logits, sample_weight=None):
        """Returns the hard loss on the labels, averaged over the batch.

        Args:
            y: The labels.
            student_logits: The student's logits.
            sample_weight: Optional per-sample weights.

        Returns:
            A scalar: `sum(w * loss) / batch_size`.
        """
        student_logits = ops.cast(student_logits, "float32")
        loss_fn = self.student_loss_fn
        if self._default_student_loss and _is_one_hot(y, student_logits):
            loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
        if isinstance(loss_fn, keras.losses.Loss):
            values = loss_fn.call(y, student_logits)
        else:
            values = loss_fn(y, student_logits)
        values = _per_sample(values, ops.shape(student_logits)[0])
        return _weighted_mean(values, sample_weight)

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
        loss_fn = self.distillation_loss_fn
        if isinstance(loss_fn, DistillationLoss):
            values = loss_fn.compute_per_sample(
                teacher_logits, student_logits, self.temperature
            )
        else:
            teacher_p = ops.softmax(teacher_logits / self.temperature, axis=-1)
            student_p = ops.softmax(student_logits / self.temperature, axis=-1)
            if isinstance(loss_fn, keras.losses.Loss):
                values = loss_fn.call(teacher_p, student_p)
            else:
                values = loss_fn(teacher_p, student_p)
        values = _per_sample(values, ops.shape(student_logits)[0])
        return _weighted_mean(values, sample_weight)

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

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, teacher_logits = cache_module.split_targets(y)
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(x)
        teacher_logits = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync

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
                self.alpha * student_loss
                + (1.0 - self.alpha) * distillation_loss
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

        batch_size = ops.shape(student_logits)[0]
        self._loss_tracker.update_state(loss, sample_weight=batch_size)
        self.student_loss_tracker.update_state(
            student_loss, sample_weight=batch_size
        )
        self.distillation_loss_tracker.update_state(
            distillation_loss, sample_weight=batch_size
        )
        logs = self.compute_metrics(x, y, student_logits, sample_weight)
        return self._for_multi_worker_reduction(logs)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, _ = cache_module.split_targets(y)
        student_logits = self(x, training=False)
        student_loss = self.compute_student_loss(
            y, student_logits, sample_weight
        )
        batch_size = ops.shape(student_logits)[0]
        # `loss` is what `student.evaluate` would report: the hard loss plus
        # regularisation, so `val_loss` can drive checkpoints and stopping.
        self._loss_tracker.update_state(
            student_loss + self._regularization_loss(),
            sample_weight=batch_size,
        )
        self.student_loss_tracker.update_state(
            student_loss, sample_weight=batch_size
        )
        logs = self.compute_metrics(x, y, student_logits, sample_weight)
        logs.pop(self.distillation_loss_tracker.name, None)
        return self._for_multi_worker_reduction(logs)

    def _for_multi_worker_reduction(self, logs):
        # Across workers, Keras averages the step's logs with
        # `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars
        # (keras-team/keras#20585). One-element vectors average to the same
        # scalar.
        strategy = tf.distribute.get_strategy()
        in_multi_worker_mode = getattr(
            strategy.extended, "_in_multi_worker_mode", lambda: False
        )
        if not in_multi_worker_mode():
            return logs
        return {
            name: ops.reshape(value, (1,)) if len(ops.shape(value)) == 0 else value
            for name, value in logs.items()
        }

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_inputs(x, "x")
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_inputs(x, "x")
        return super().evaluate(x, y, *args, **kwargs)

    def _check_inputs(self, x, argument):
        """Clear errors for inputs the student cannot take, before Keras'."""
        if len(self.student.inputs or []) != 1:
            return  # Several inputs: left to Keras.
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            if not isinstance(spec, tf.TensorSpec):
                return
            shape, dtype = tuple(spec.shape), spec.dtype.name
            numeric = spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool
        elif hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, tf.Tensor):
            x = np.asarray(x)
            shape, dtype = (None,) + x.shape[1:], str(x.dtype)
            numeric = x.dtype.kind in "biuf"
        else:
            return
        if not numeric:
            raise ValueError(
                f"`{argument}` has dtype {dtype}; the student needs numeric "
                f"inputs. Convert them, e.g. `{argument}.astype('float32')`."
            )
        expected = tuple(self.student.inputs[0].shape)
        if len(shape) != len(expected) or any(
            e is not None and g is not None and e != g
            for e, g in zip(expected[1:], shape[1:])
        ):
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


def _is_one_hot(y, logits):
    """True if `y` holds one-hot (or soft) labels shaped like `logits`."""
    if isinstance(y, dict) or y is None:
        return False
    y_shape = getattr(y, "shape", None)
    if y_shape is None or len(y_shape) != len(logits.shape):
        return False
    return y_shape[-1] is not None and y_shape[-1] == logits.shape[-1] and (
        y_shape[-1] > 1
    )
