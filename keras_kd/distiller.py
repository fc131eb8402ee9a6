"""The `Distiller` model: trains a student on labels and a frozen teacher."""

import inspect

import keras
import tensorflow as tf
from keras import ops

from keras_kd import cache as cache_module
from keras_kd import compat
from keras_kd import ensembles
from keras_kd import hints as hints_module
from keras_kd import labels as labels_module
from keras_kd.losses import DistillationLoss
from keras_kd.losses import get_distillation_loss
from keras_kd.metrics import TeacherMetric
from keras_kd import validation
from keras_kd.validation import validate_choice
from keras_kd.validation import validate_fraction
from keras_kd.validation import validate_temperature

# -1: a sample without a label in a batch of integer labels. It gets only the
# distillation term (for one-hot labels, a row of zeros marks it).
UNLABELLED = cache_module.UNLABELLED
DEFAULT_TEMPERATURE = 3.0


def _as_float(variable):
    # The shortest decimal that is this float32: 0.1, not 0.10000000149.
    return float(str(ops.convert_to_numpy(variable)))


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(hints_module.FeatureHintsMixin, keras.Model):
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
        teacher: A trained `keras.Model`, or a list of them (an ensemble).
            Frozen (`trainable=False`).
        teacher_outputs: `"logits"` (default) or `"probabilities"` for a
            teacher that ends in a softmax; its outputs are then turned back
            into logits with `log`, which softmax inverts exactly.
        teacher_weights: For a list of teachers, their weights in the
            ensemble (any positive numbers, normalised to sum to 1); `None`
            weighs them equally.
        ensemble: How a list of teachers is combined at the distiller's
            temperature: `"arithmetic"` (default, Hinton et al.'s mean of
            the members' softened distributions) or `"geometric"`; see
            `combine_teacher_logits`.
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
        teacher_weights=None,
        ensemble="arithmetic",
        hints=None,
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
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if not teachers:
            raise ValueError("`teacher` must be a model or a non-empty list of models.")
        for argument, model in [("student", student)] + [("teacher", t) for t in teachers]:
            if not isinstance(model, keras.Model):
                raise ValueError(
                    f"`{argument}` must be a `keras.Model`. Received: "
                    f"{argument}={model!r} of type {type(model).__name__}."
                )
        self.teacher_outputs = validate_choice(
            teacher_outputs, "teacher_outputs", {"logits", "probabilities"}
        )
        self.ensemble = validate_choice(ensemble, "ensemble", {"arithmetic", "geometric"})
        self.teacher_weights = ensembles.normalized_weights(teacher_weights, len(teachers))
        if validation.ends_in_softmax(student):
            raise ValueError(
                "The student must output logits, but its last layer "
                f"`{student.layers[-1].name}` applies a softmax. Build the "
                "student's last layer with `activation=None`; apply "
                "`keras.ops.softmax` to its outputs after training if you "
                "need probabilities."
            )
        student_classes = validation.static_num_classes(student)
        for member in teachers:
            if self.teacher_outputs == "logits" and validation.ends_in_softmax(member):
                raise ValueError(
                    "The teacher's last layer "
                    f"`{member.layers[-1].name}` applies a softmax, but "
                    "teacher_outputs='logits'. Pass "
                    "`teacher_outputs='probabilities'` to distil from its "
                    "probabilities, or rebuild it with a linear last layer."
                )
            teacher_classes = validation.static_num_classes(member)
            if None not in (teacher_classes, student_classes) and (
                teacher_classes != student_classes
            ):
                raise ValueError(
                    "The teacher and the student must output the same number of "
                    f"classes. Received: teacher outputs {teacher_classes}, "
                    f"student outputs {student_classes}. Build both with the "
                    "same `num_classes`."
                )
            member.trainable = False
        self.student = student
        self.teacher = teacher if isinstance(teacher, keras.Model) else teachers
        self._set_up_hints(hints, teachers)
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
        self._teacher_metrics = []
        # Built once both models are (BackupAndRestore and load_weights need
        # a built model); a subclassed student builds on its first batch.
        self.built = bool(student.built and all(t.built for t in teachers))

    @property
    def teachers(self):
        """The teachers as a list (one model, or the ensemble's members)."""
        return [self.teacher] if isinstance(self.teacher, keras.Model) else list(self.teacher)

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
        distillation loss built with its own temperature is kept at the same
        value.
        """
        return _as_float(self._temperature)

    @temperature.setter
    def temperature(self, value):
        value = validate_temperature(value)
        self._temperature.assign(value)
        loss = self.distillation_loss_fn
        # A loss built with its own temperature follows the distiller's; one
        # built without (None) keeps meaning "the distiller's", so it can be
        # reused with another temperature.
        if isinstance(loss, DistillationLoss) and loss.temperature is not None:
            loss.temperature = value

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
            metrics: Metrics computed on the student's outputs and the labels;
                `keras_kd.TeacherAgreement` / `TeacherKL` instances are fed
                the teacher's logits instead (in `evaluate` they run the
                teacher).
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
        # Teacher metrics take the teacher's logits, not the labels: the
        # Distiller feeds them itself (see keras_kd.metrics).
        self._teacher_metrics = [
            m for m in (metrics if isinstance(metrics, (list, tuple)) else [])
            if isinstance(m, TeacherMetric)
        ]
        if self._teacher_metrics:
            metrics = [m for m in metrics if not isinstance(m, TeacherMetric)]
        self._default_student_loss = student_loss_fn is None
        self.student_loss_fn = labels_module.resolve_student_loss(student_loss_fn)
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
        inputs = self.teacher_inputs(x)
        members = []
        for member in self.teachers:
            outputs = ops.cast(member(inputs, training=False), "float32")
            if self.teacher_outputs == "probabilities":
                outputs = ops.log(ops.maximum(outputs, 1e-30))
            members.append(outputs)
        if isinstance(self.teacher, keras.Model):
            return members[0]
        return ops.stack(members, axis=1)

    def combine_teacher_logits(self, teacher_logits):
        """Turns an ensemble's stacked logits into one teacher's logits.

        See `keras_kd.ensembles.combine`: at the distiller's current
        temperature, with its `teacher_weights` and `ensemble` rule.
        Single-teacher logits `(batch, classes)` pass through unchanged.
        """
        if labels_module.static_rank(teacher_logits) != 3:
            return teacher_logits
        return ensembles.combine(
            teacher_logits, ops.cast(self._temperature, "float32"), self.teacher_weights,
            self.ensemble,
        )

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
        if self._default_student_loss and labels_module.is_one_hot(y, student_logits):
            loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True)
        labels, mask = labels_module.labelled_mask(y, labels_module.ignore_class_of(loss_fn))
        if isinstance(loss_fn, keras.losses.Loss):
            values = loss_fn.call(labels, student_logits)
        else:
            values = loss_fn(labels, student_logits)
        values = labels_module.per_sample(values, ops.shape(student_logits)[0])
        reduction = getattr(loss_fn, "reduction", "sum_over_batch_size")
        return labels_module.reduce_loss(values, sample_weight, mask, reduction)

    def compute_distillation_loss(
        self, teacher_logits, student_logits, sample_weight=None, y=None
    ):
        """Returns the teacher-student loss, averaged over the batch.

        Args:
            teacher_logits: The teacher's logits.
            student_logits: The student's logits.
            sample_weight: Optional per-sample weights.
            y: The batch's labels, for losses that need the true classes
                (DKD, NKD); where a sample has none, the teacher's top class
                stands in.

        Returns:
            A scalar: `sum(w * loss) / batch_size`.
        """
        teacher_logits = ops.cast(teacher_logits, "float32")
        student_logits = ops.cast(student_logits, "float32")
        temperature = ops.cast(self._temperature, "float32")
        loss_fn = self.distillation_loss_fn
        if isinstance(loss_fn, DistillationLoss):
            labels = None
            if loss_fn.needs_labels:
                labels = labels_module.true_classes(y, teacher_logits)
            values = loss_fn.compute_per_sample(
                teacher_logits, student_logits, temperature, labels
            )
        else:
            teacher_p = ops.softmax(teacher_logits / temperature, axis=-1)
            student_p = ops.softmax(student_logits / temperature, axis=-1)
            if isinstance(loss_fn, keras.losses.Loss):
                values = loss_fn.call(teacher_p, student_p)
            else:
                values = loss_fn(teacher_p, student_p)
        values = labels_module.per_sample(values, ops.shape(student_logits)[0])
        return labels_module.reduce_loss(values, sample_weight, None, "sum_over_batch_size")

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
        teacher_features = None
        if self.hints:
            online_logits, teacher_features = self.teacher_features(x)
            teacher_logits = online_logits if teacher_logits is None else teacher_logits
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(x)
        teacher_logits = self.combine_teacher_logits(
            ops.stop_gradient(ops.cast(teacher_logits, "float32"))
        )
        num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
        alpha = ops.cast(self._alpha, "float32")

        with tf.GradientTape() as tape:
            if self.hints:
                student_logits, student_features = self.student_features(x, training=True)
            else:
                student_logits = self(x, training=True)
            self._check_logits(teacher_logits, student_logits)
            student_loss = self.compute_student_loss(
                y, student_logits, sample_weight
            )
            distillation_loss = self.compute_distillation_loss(
                teacher_logits, student_logits, sample_weight,
                **({"y": y} if _accepts_labels(self.compute_distillation_loss) else {}),
            )
            loss = (
                alpha * student_loss
                + (1.0 - alpha) * distillation_loss
                + self._regularization_loss()
            )
            hint_losses = []
            if self.hints:
                hint_losses = self._hint_losses(student_features, teacher_features)
                loss = loss + ops.sum(ops.stack(hint_losses))
            # Gradients are summed over replicas: scaling each replica's mean
            # by 1 / N gives the mean over the global batch.
            scaled_loss = loss / num_replicas
            if self.optimizer is not None:
                scaled_loss = self.optimizer.scale_loss(scaled_loss)

        trainable_weights = self._trained_variables()
        gradients = tape.gradient(scaled_loss, trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, trainable_weights))

        self._update_loss_trackers(
            student_logits, loss, student_loss, distillation_loss
        )
        for metric in self._teacher_metrics:
            metric.update_state(teacher_logits, student_logits, sample_weight)
        for tracker, value in zip(self.hint_trackers, hint_losses):
            tracker.update_state(value, sample_weight=ops.shape(student_logits)[0])
        return self._metrics_logs(x, y, student_logits, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y, teacher_logits = cache_module.split_targets(y)
        student_logits = self(x, training=False)
        if self._teacher_metrics:  # Opt-in: only they make evaluate run the teacher.
            if teacher_logits is None:
                teacher_logits = self.teacher_logits(x)
            teacher_logits = self.combine_teacher_logits(ops.cast(teacher_logits, "float32"))
            for metric in self._teacher_metrics:
                metric.update_state(teacher_logits, student_logits, sample_weight)
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
        for tracker in [self.distillation_loss_tracker] + self.hint_trackers:
            logs.pop(tracker.name, None)  # Training terms: evaluate has none.
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
            labels, mask = labels_module.labelled_mask(y)
            weights = ops.cast(mask, "float32")
            if sample_weight is not None:
                weights = weights * ops.reshape(
                    ops.cast(sample_weight, "float32"), (-1,)
                )
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

    def _with_class_weight(self, y, sample_weight):
        """Multiplies in the class weights given to `fit`, if any."""
        if self._class_weight is None or y is None:
            return sample_weight
        return labels_module.class_weights(y, sample_weight, self._class_weight)

    def fit(self, x=None, y=None, *args, **kwargs):
        if type(self).student_inputs is Distiller.student_inputs:
            validation.check_inputs(self.student, x, "x")
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
        if len(args) < 6 and validation.orders_itself(x):
            # Keras cannot shuffle these and warns that it ignores its own
            # default `shuffle=True`; say False, which is what happens.
            kwargs.setdefault("shuffle", False)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        if type(self).student_inputs is Distiller.student_inputs:
            validation.check_inputs(self.student, x, "x")
        return super().evaluate(x, y, *args, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' own fails under MultiWorkerMirroredStrategy: see compat.
        if iterator is not None and self._distribute_strategy is not None:
            data_batch, iterator = compat.first_local_batch(self.distribute_strategy, iterator), None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": keras.saving.serialize_keras_object(self.teacher)
                if isinstance(self.teacher, keras.Model)
                else [keras.saving.serialize_keras_object(t) for t in self.teachers],
                "teacher_outputs": self.teacher_outputs,
                "teacher_weights": self.teacher_weights,
                "ensemble": self.ensemble,
                "hints": [hint.get_config() for hint in self.hints],
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        teacher = config["teacher"]
        config["teacher"] = (
            [keras.saving.deserialize_keras_object(t) for t in teacher]
            if isinstance(teacher, list) else keras.saving.deserialize_keras_object(teacher)
        )
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
        if self._teacher_metrics:
            config["metrics"] = list(config.get("metrics") or []) + [
                keras.saving.serialize_keras_object(m) for m in self._teacher_metrics
            ]
        return config

    def compile_from_config(self, config):
        """Re-compiles a loaded distiller and builds its optimizer.

        Building the optimizer here lets `keras.models.load_model` restore
        its state, so a reloaded distiller continues `fit` where it stopped.
        """
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None:
            self.optimizer.build(self._trained_variables())


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


def _accepts_labels(method):
    """Whether a (user's) `compute_distillation_loss` takes `y`: overrides
    written before it did keep working."""
    parameters = inspect.signature(method).parameters
    return "y" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
