"""The `Distiller` model: trains a student on labels and a frozen teacher."""

import inspect

import keras
import tensorflow as tf
from keras import ops

from keras_kd import cache as cache_module
from keras_kd import fitting
from keras_kd import hints as hints_module
from keras_kd import labels as labels_module
from keras_kd import teachers as teachers_module
from keras_kd.losses import DistillationLoss
from keras_kd.losses import DEFAULT_TEMPERATURE
from keras_kd.losses import get_distillation_loss
from keras_kd.losses import resolve_temperature
from keras_kd.metrics import TeacherMetric
from keras_kd import validation
from keras_kd.validation import validate_fraction
from keras_kd.validation import validate_temperature

# -1: a sample without a label in a batch of integer labels. It gets only the
# distillation term (for one-hot labels, a row of zeros marks it).
UNLABELLED = cache_module.UNLABELLED


def _as_float(variable):
    # The shortest decimal that is this float32: 0.1, not 0.10000000149.
    return float(str(ops.convert_to_numpy(variable)))


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(
    teachers_module.TeachersMixin,
    fitting.FittingMixin,
    hints_module.FeatureHintsMixin,
    keras.Model,
):
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
        self._set_up_teachers(student, teacher, teacher_outputs, teacher_weights, ensemble)
        self.student = student
        self._set_up_hints(hints, self.teachers)
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
        self.built = bool(student.built and all(t.built for t in self.teachers))

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
        self.temperature = resolve_temperature(temperature, distillation_loss)
        self.alpha = alpha
        self._user_loss_config = {
            "student_loss_fn": student_loss_fn,
            "distillation_loss_fn": distillation_loss_fn,
        }
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def call(self, inputs, training=None):
        return self.student(self.student_inputs(inputs), training=training)

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
        return ops.sum(ops.stack([ops.cast(loss, "float32") for loss in losses]))

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
            validation.check_same_classes(
                teacher_logits.shape[-1], student_logits.shape[-1],
                "Check the models' last layers and any cached teacher logits.",
            )
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

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "teacher": _serialize_teacher(self.teacher)
                if isinstance(self.teacher, keras.Model)
                else [_serialize_teacher(t) for t in self.teachers],
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


def _serialize_teacher(teacher):
    # Without its compile config: a frozen teacher's optimizer, rebuilt over
    # no trainable weights, could not take its saved state back, and Keras
    # would warn at every load that it skipped "optimizer" variables.
    config = keras.saving.serialize_keras_object(teacher)
    config.pop("compile_config", None)
    return config


def _accepts_labels(method):
    """Whether a (user's) `compute_distillation_loss` takes `y`: overrides
    written before it did keep working."""
    parameters = inspect.signature(method).parameters
    return "y" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )
