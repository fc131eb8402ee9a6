"""The `Distiller` model: trains a student on labels and a frozen teacher.

It composes small parts with explicit interfaces, each tested alone:
`keras_kd.batch` (what a batch means), `keras_kd.teacher` (one teacher or an
ensemble), `keras_kd.terms` (the hard and the distillation term, reduced as
Keras reduces), `keras_kd.hints` (feature hints) and
`keras_kd.class_weights` (class weights in the data of one call).
"""

import collections
import contextlib
import inspect
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import chunked_models
from keras_kd.distillation import class_weights as class_weights_module
from keras_kd.distillation import compat
from keras_kd.distillation.backend import SUPPORTED_BACKENDS
from keras_kd.distillation.backend import steps_for_backend
from keras_kd.distillation import labels as labels_module
from keras_kd.distillation import objective
from keras_kd.distillation import outputs as outputs_module
from keras_kd.distillation import teacher as teacher_module
from keras_kd.distillation import top_k_loss as top_k_module
from keras_kd.distillation import validation
from keras_kd.distillation.batch import UNLABELLED
from keras_kd.distillation.chunked import LinearHead
from keras_kd.distillation.chunked import validate_chunk_size
from keras_kd.distillation.ensembles import normalized_weights
from keras_kd.distillation.hints import FeatureHints
from keras_kd.distillation.losses import DEFAULT_TEMPERATURE
from keras_kd.distillation.losses import DistillationLoss
from keras_kd.distillation.losses import get_distillation_loss
from keras_kd.distillation.losses import resolve_temperature
from keras_kd.distillation.metrics import TeacherMetric
from keras_kd.distillation.reduction import REDUCTIONS
from keras_kd.distillation.terms import DistillationTerm
from keras_kd.distillation.terms import StudentTerm
from keras_kd.distillation.validation import validate_choice
from keras_kd.distillation.validation import validate_fraction
from keras_kd.distillation.validation import validate_temperature

__all__ = ["Distiller", "UNLABELLED"]


def _as_float(variable):
    # The shortest decimal that is this float32: 0.1, not 0.10000000149.
    return float(str(ops.convert_to_numpy(variable)))


def check_backend():
    """Raises unless Keras runs on a backend the Distiller has steps for."""
    backend = keras.backend.backend()
    if backend not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"keras_kd's Distiller runs on the TensorFlow, JAX and PyTorch backends, "
            f"but Keras runs on {backend!r}. Set `KERAS_BACKEND=tensorflow`, "
            "`KERAS_BACKEND=jax` or `KERAS_BACKEND=torch` before importing Keras (or "
            "in ~/.keras/keras.json)."
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(steps_for_backend(keras.backend.backend()), keras.Model):
    """Trains a student to match a frozen teacher and the true labels.

    The loss of each step is

        alpha * student_loss(y, s) + (1 - alpha) * distillation_loss(t, s)
        + sum(hint terms) + sum(student.losses)

    where `s` and `t` are the student's and teacher's logits. The teacher runs
    with `training=False` outside the gradient, and only when a term needs it
    (not at `alpha == 1` without hints or teacher metrics, not with cached
    outputs). Calling the distiller, `predict` and `evaluate` use the student
    alone; `evaluate`'s loss is `student.evaluate`'s, and so are its metrics
    except with `ignore_class` or `UNLABELLED` labels, where the Distiller's
    metrics count only the positions the loss counts (see `compile`).

    What a batch and an output mean is told, not guessed (README, "What the
    Distiller does"):

    - Logits `(batch, ..., classes)`: every leading position is one
      distribution, so a sequence model's `(batch, time, vocab)` is distilled
      token by token. Both terms are reduced as the student loss reduces
      (its `reduction`, sample weights per sample or per position, Keras
      masks, `ignore_class`).
    - Labels: integer class labels may hold `keras_kd.UNLABELLED` (-1) for a
      position without a label, which gets only the distillation term;
      dense labels are never dropped for their values; mark them missing
      with `keras_kd.targets(labels, label_mask=...)`. `fit(x)` without
      labels (a transfer set) needs `alpha=0`. Every compiled metric sees the
      labelled positions only: not `UNLABELLED`, `label_mask=False`, the
      student loss's `ignore_class` or Keras-masked positions. This is where
      the Distiller's metrics differ from `student.evaluate`'s: Keras leaves
      a loss's `ignore_class` out of the loss only, so its accuracy counts
      the ignored positions (padding, as wrong or right predictions), and
      it has no `UNLABELLED`. The losses agree.
    - Several outputs: `teacher_output=` and `student_output=` name the
      logits (a dict key, an output name or a position).
    - One logit or a binary student loss: the distillation term compares
      sigmoids (`BinaryKLDivergenceWithTemperature`).
    - Ensembles: a list of teachers, combined per loss (`keras_kd.ensembles`).

    Subclass hooks: `teacher_inputs(x)` / `student_inputs(x)` give each model
    its own view of a batch, `teacher_logits(x)` the teacher's outputs,
    `student_features` / `teacher_features` the features of hints,
    `compute_student_loss` and `compute_distillation_loss` the two terms.

    Args:
        student: The `keras.Model` to train. It must output logits.
        teacher: A trained `keras.Model`, or a list of them (an ensemble).
            Frozen (`trainable=False`).
        teacher_outputs: `None` (default): `"probabilities"` for a teacher
            whose selected output comes from a softmax layer, else
            `"logits"`. Pass `"probabilities"` for a subclassed teacher that
            ends in a softmax (the Distiller warns at the first batch when
            "logits" look like probabilities); they are read back with `log`.
        teacher_weights: For a list of teachers, their weights (positive,
            normalised to sum to 1); `None` weighs them equally.
        ensemble: `"arithmetic"` (default, Hinton et al.'s mixture) or
            `"geometric"`; see `keras_kd.ensembles`.
        hints: A list of `keras_kd.FeatureHint`.
        teacher_output: Which teacher output holds the logits, for a teacher
            with several outputs: a dict key, an output name or a position.
        student_output: The same for the student. The hard term and the
            metrics use that output too.
        align_vocabulary: `None` (default): teacher and student must output
            the same number of classes. `"prefix"`: the teacher may output
            more, as a language model whose embedding table is padded past
            the tokenizer's vocabulary (to a multiple of 64, say) does; its
            logits are cut to the student's first `classes` ids (a shared
            prefix of ids, the same tokenizer) before any loss, so the
            padded ids' mass is renormalised away. Different tokenizers are
            out of scope.
        name: Name of the model.
        **kwargs: Passed to `keras.Model`.

    Raises:
        TypeError: if `student` and `teacher` are passed by position.
        ValueError: for a non-model, a student that ends in a softmax, a
            teacher that ends in one with `teacher_outputs="logits"`, or
            models with different numbers of classes.
        RuntimeError: when Keras runs on another backend than TensorFlow
            or JAX.

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
        teacher_outputs=None,
        teacher_weights=None,
        ensemble="arithmetic",
        hints=None,
        teacher_output=None,
        student_output=None,
        align_vocabulary=None,
        name="distiller",
        **kwargs,
    ):
        check_backend()
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
        self._check_backend_setup()
        members = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if not members:
            raise ValueError("`teacher` must be a model or a non-empty list of models.")
        self.teacher_output = teacher_output
        self.student_output = student_output
        self.teacher_outputs = _resolve_teacher_outputs(teacher_outputs, members, teacher_output)
        self.ensemble = validate_choice(ensemble, "ensemble", {"arithmetic", "geometric"})
        self.teacher_weights = normalized_weights(teacher_weights, len(members))
        self.align_vocabulary = validate_choice(align_vocabulary, "align_vocabulary", {None, "prefix"})
        validation.check_models(student, members, self.teacher_outputs,
                                teacher_output=teacher_output, student_output=student_output,
                                align_vocabulary=self.align_vocabulary)
        if isinstance(teacher, keras.Model):
            side = teacher_module.Teacher(
                teacher, teacher_output, self.teacher_outputs, self.teacher_inputs)
        else:
            side = teacher_module.Ensemble(
                members, self.teacher_weights, self.ensemble, teacher_output,
                self.teacher_outputs, self.teacher_inputs)
        # The parts are plain objects (not tracked by Keras): the models they
        # use are tracked here, in the order and under the names saved files
        # have always used (teacher, student, hint models, connectors).
        self.teacher = teacher if isinstance(teacher, keras.Model) else members
        self.student = student
        feature_hints = FeatureHints(
            hints, student, self.teacher, student_output, teacher_output)
        object.__setattr__(self, "teacher_side", side)
        object.__setattr__(self, "feature_hints", feature_hints)
        if feature_hints:
            self._student_feature_model = feature_hints.student_model
            self._teacher_feature_model = feature_hints.teacher_model
        self.connectors = feature_hints.connectors
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
        self.hint_trackers = [keras.metrics.Mean(name=n) for n in feature_hints.names]
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
        object.__setattr__(self, "student_term", None)
        object.__setattr__(self, "distillation_term", None)
        object.__setattr__(self, "_teacher_metrics", ())
        self._checked_first_batch = False
        self._fitting_without_labels = False
        # The temperature a top-k cache (tail="bin") ties this fit to.
        self._top_k_cache_temperature = None
        self._input_check_error = None
        # Whether every batch of this call is checked eagerly (a top-k
        # cache's temperature and vocabulary): the JAX step then leaves out
        # the run-time checks that stop it on the host every step.
        self._step_checks_done_eagerly = False
        self._call_carries_top_k = False
        # Whether the user chose a temperature (compile or the setter); if
        # not, top-k batches (tail="bin") use the temperature they carry.
        self._temperature_given = False
        # Built once both models are (BackupAndRestore and load_weights need
        # a built model); a subclassed student builds on its first batch.
        self.built = bool(student.built and all(t.built for t in members))

    # Settings.

    @property
    def teachers(self):
        """The teachers as a list (one model, or the ensemble's members)."""
        return list(self.teacher_side.models)

    @property
    def hints(self):
        """The `FeatureHint`s of the distiller."""
        return self.feature_hints.hints

    @property
    def alpha(self):
        """Weight of the student (hard) loss, a float in `[0, 1]`.

        Settable at any time, also from a callback during `fit`.
        """
        return _as_float(self._alpha)

    @alpha.setter
    def alpha(self, value):
        value = validate_fraction(value, "alpha")
        if value > 0.0 and self._fitting_without_labels:
            raise ValueError(objective.no_labels_message(value))
        self._alpha.assign(value)

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
        cache_temperature = self._top_k_cache_temperature
        if cache_temperature is not None and not np.isclose(value, cache_temperature, rtol=1e-6):
            # During a fit on a top-k cache with tail="bin" (e.g. a scheduler).
            raise ValueError(
                f"{top_k_module.bin_temperature_message(cache_temperature)} "
                f"Received: temperature={value}."
            )
        self._temperature.assign(value)
        self._temperature_given = True
        if self.distillation_term is not None:
            # A step traced before may still follow the cache: with
            # tail="bin" only the cache's temperature passes the checks.
            self.distillation_term.follow_cache_temperature = False
        loss = self.distillation_loss_fn
        # A loss built with its own temperature follows the distiller's; one
        # built without (None) keeps meaning "the distiller's".
        if isinstance(loss, DistillationLoss) and loss.temperature is not None:
            loss.temperature = value

    @property
    def metrics(self):
        # Teacher metrics live outside Keras' attribute tracking, so that a
        # later `compile` without them drops them from the logs.
        metrics = list(super().metrics)
        return metrics + [m for m in self._teacher_metrics if m not in metrics]

    def compile(
        self,
        optimizer="adam",
        metrics=None,
        student_loss_fn=None,
        distillation_loss_fn=None,
        alpha=0.1,
        temperature=None,
        chunk_size=None,
        student_head=None,
        teacher_head=None,
        **kwargs,
    ):
        """Configures the distiller for training.

        Keyword-compatible with the keras.io "Knowledge Distillation" example.

        Args:
            optimizer: Optimizer instance or name for the student.
            metrics: Metrics on the student's logits and the labels, as in
                `keras.Model.compile`; `weighted_metrics=` also works. Both
                see only labelled positions (positions the student loss's
                `ignore_class` names are left out too, unlike in
                `student.evaluate`, whose metrics count them).
                `keras_kd.TeacherAgreement` /
                `TeacherKL` instances (in either argument; they are always
                weighted by the sample weights) are fed the teacher's
                logits instead (in `evaluate` they run the teacher).
            student_loss_fn: Loss on the true labels, applied to the
                student's logits. `None`: sparse categorical cross-entropy
                on logits (categorical for dense labels, binary for one
                logit). Strings resolve as in `keras.losses.get`, with
                `from_logits=True` where the loss has that option. A loss
                instance keeps its `reduction` and `ignore_class`.
            distillation_loss_fn: Loss between teacher and student. `None`
                gives `KLDivergenceWithTemperature` (Hinton, with `T**2`), or
                `BinaryKLDivergenceWithTemperature` for one logit or a
                binary `student_loss_fn`. A string names a keras_kd loss
                (`keras_kd.distillation.losses.get_distillation_loss`). Any other Keras
                loss or callable (e.g. `keras.losses.KLDivergence()`, as in
                keras.io) receives softened probabilities of both, unscaled.
                Reduction: a keras_kd loss reduces as the student loss does
                unless built with its own `reduction`; a Keras loss instance
                always has one (Keras' default `"sum_over_batch_size"`), and
                its own wins over the student loss's.
            alpha: Weight of the student (hard) loss, in `[0, 1]`; the
                distillation loss gets `1 - alpha`.
            temperature: Softmax temperature, a positive finite number.
                `None` takes the temperature of a keras_kd loss that was
                given one, else 3.0; top-k cache batches read with
                `tail="bin"` then use the temperature they carry (the
                cache's), which is the only one that loss can use. A value that contradicts
                the loss's own, or (with `tail="bin"`) a top-k cache's, is
                refused.
            chunk_size: `None` (default): the step builds both models'
                logits. A positive integer: the chunked path: the step
                takes both models' final hidden states and output heads
                (`keras_kd.distillation.chunked_models.model_head`) and
                computes every term `chunk_size` positions at a time
                (`chunked_objective`), so no `(batch, time, vocab)` logits
                exist in `fit` or `evaluate`; losses, logs and updates equal
                the dense path's. A top-k teacher cache
                (`targets(labels, teacher_top_k=...)`) is read chunk by
                chunk against the student's hidden states, at the
                temperature the dense path uses. `evaluate` runs the
                student up to its hidden states and reports the dense
                path's values (`student.evaluate`'s loss). `predict` (and
                calling the distiller) returns the student's whole logits,
                as Keras does. Needs a sparse cross-entropy student loss,
                one teacher (online or a top-k cache; no ensemble, dense
                logit cache, hints or `align_vocabulary`); of the compiled
                metrics only sparse accuracy, computed from the chunks'
                hits. Teacher metrics (`TeacherKL`, `TeacherAgreement`, a
                subclass's `per_sample`) are computed chunk by chunk from
                the teacher's hidden states, in `fit` and (running the
                teacher only for them) in `evaluate`; a top-k cache cannot
                feed them, as on the dense path.
            student_head: With `chunk_size`, the name of the student's head
                layer (default: a KerasHub CausalLM's token embedding, or
                the model's last layer).
            teacher_head: The same for the teacher.
            **kwargs: Passed to `keras.Model.compile` (`weighted_metrics`,
                `jit_compile`, `steps_per_execution`, `run_eagerly`, ...).

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
        self._check_backend_setup()
        alpha = validate_fraction(alpha, "alpha")
        # Teacher metrics are always weighted by the sample weights, so they
        # are taken out of `metrics` and `weighted_metrics` alike.
        teacher_metrics, listed = _split_teacher_metrics(metrics)
        more, weighted = _split_teacher_metrics(kwargs.get("weighted_metrics"))
        if "weighted_metrics" in kwargs:
            kwargs["weighted_metrics"] = weighted
        object.__setattr__(self, "_teacher_metrics", teacher_metrics + more)
        num_classes = outputs_module.static_num_classes(
            self.student, self.student_output, "student")
        self.student_loss_fn = labels_module.resolve_student_loss(student_loss_fn, num_classes)
        distillation_loss = get_distillation_loss(distillation_loss_fn)
        _check_reductions(distillation_loss)
        self.distillation_loss_fn = distillation_loss
        object.__setattr__(self, "student_term", StudentTerm(
            self.student_loss_fn, default=student_loss_fn is None))
        object.__setattr__(self, "distillation_term", DistillationTerm(
            distillation_loss, self._temperature, default=distillation_loss_fn is None))
        self.temperature = resolve_temperature(temperature, distillation_loss)
        self._temperature_given = temperature is not None or (
            isinstance(distillation_loss, DistillationLoss)
            and distillation_loss.temperature is not None)
        self.distillation_term.follow_cache_temperature = not self._temperature_given
        self.alpha = alpha
        self._user_loss_config = {
            "student_loss_fn": student_loss_fn,
            "distillation_loss_fn": distillation_loss_fn,
        }
        if chunk_size is None and (student_head is not None or teacher_head is not None):
            raise ValueError(
                "`student_head` / `teacher_head` name the heads the chunked path reads, so "
                f"they need `chunk_size`. Received: student_head={student_head!r}, "
                f"teacher_head={teacher_head!r}, chunk_size=None. Pass e.g. chunk_size=1024, "
                "or drop the head names.")
        self._chunk_config = {
            "chunk_size": chunk_size, "student_head": student_head, "teacher_head": teacher_head}
        object.__setattr__(self, "chunked", None if chunk_size is None else chunked_setup(
            self, chunk_size, student_head, teacher_head, listed,
            kwargs.get("weighted_metrics")))
        super().compile(optimizer=optimizer, metrics=listed, **kwargs)

    # Views and forward passes (subclass hooks).

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

    def call(self, inputs, training=None):
        return self.student(self.student_inputs(inputs), training=training)

    def student_logits(self, x, training=None):
        """The student's logits for a batch (its selected output)."""
        return outputs_module.select_output(
            self(x, training=training), self.student_output, "student", self.student)

    def teacher_logits(self, x):
        """Returns the teacher's float32 logits for a batch `x`.

        One teacher gives `(batch, ..., classes)`; an ensemble its members'
        logits `(members, batch, ..., classes)`, which the distillation term
        combines (`keras_kd.ensembles`). Override to use another source of
        teacher outputs. Runs with `training=False`.
        """
        return self.teacher_side(x)

    def student_features(self, x, training=None):
        """Returns `(logits, [feature per hint])` of one student forward pass.

        Override for a subclassed student, returning the features the hints
        name (in their order).
        """
        outputs = self.feature_hints.student_model(self.student_inputs(x), training=training)
        return outputs[0], list(outputs[1:])

    def teacher_features(self, x):
        """Returns `(logits, [feature per hint])` of one teacher forward pass.

        Override for a subclassed teacher, as `student_features`.
        """
        return self.teacher_side.features(x, self.feature_hints.teacher_model)

    # The terms (subclass hooks).

    def compute_student_loss(self, y, student_logits, sample_weight=None, label_mask=None):
        """Returns the hard loss on the labels.

        Positions with `UNLABELLED` (-1) integer labels, the loss's own
        `ignore_class`, `False` in `label_mask` or in the logits' Keras mask
        count for nothing; the rest is reduced as the loss's `reduction`
        says (`keras_kd.reduction`).

        Args:
            y: The labels, or `None` for an unlabelled batch.
            student_logits: The student's logits (with their Keras mask).
            sample_weight: Optional weights per sample or per position.
            label_mask: Optional explicit mask of labelled positions.

        Returns:
            A float32 scalar; 0 without labels.
        """
        return self.student_term(
            y, student_logits, sample_weight, compat.keras_mask(student_logits), label_mask)

    def compute_distillation_loss(self, teacher_logits, student_logits, sample_weight=None, y=None):
        """Returns the teacher-student term, reduced as the student loss.

        Positions with the student loss's `ignore_class` or outside the
        logits' Keras mask count for nothing (padding); `UNLABELLED`
        positions count.

        Args:
            teacher_logits: One teacher's logits (an ensemble's already
                combined for this loss).
            student_logits: The student's logits (with their Keras mask).
            sample_weight: Optional weights per sample or per position.
            y: The batch's labels, for the padding they mark and for losses
                that need the true classes (DKD, NKD); where a position has
                none, the teacher's top class stands in.

        Returns:
            A float32 scalar.
        """
        loss_fn = self._distillation_loss_for(student_logits, teacher_logits)
        keras_mask = compat.keras_mask(student_logits)
        labelled, present = None, keras_mask
        if y is not None:
            _, labelled, present = self.student_term.masks(y, student_logits, keras_mask)
        true_classes = None
        if getattr(loss_fn, "needs_labels", False):
            true_classes = labels_module.true_classes(y, labelled, teacher_logits, student_logits)
        return self.distillation_term(
            loss_fn, teacher_logits, student_logits, sample_weight, present,
            self.student_term.reduction(student_logits), true_classes,
        )

    def _distillation_loss_for(self, student_logits, teacher_logits=None):
        return self.distillation_term.resolve(
            student_logits, self.student_term.resolve(student_logits),
            top_k=isinstance(teacher_logits, dict))

    def get_metrics_result(self):
        # As Keras', but label metrics that a fit on unlabelled data left
        # unbuilt have nothing to report yet, rather than an error. An
        # evaluation has no training terms: the keys must be its steps' logs,
        # or Keras reports the last step's logs instead (under replicas the
        # mean of each replica's own metric results).
        results = objective.metric_results(self.metrics)
        if getattr(self, "_evaluating", False):
            for tracker in [self.distillation_loss_tracker] + self.hint_trackers:
                results.pop(tracker.name, None)
        return compat.python_logs(results)

    def _trained_variables(self):
        """The student's trainable weights and those of the hint connectors."""
        return list(self.student.trainable_weights) + self.feature_hints.trainable_weights()

    # Keras' loops, with what a distiller adds around them.

    def fit(self, x=None, y=None, *args, **kwargs):
        """Trains the student; arguments as `keras.Model.fit`.

        `y` may be omitted (a transfer set, with `alpha=0`), hold
        `UNLABELLED` (-1) in integer class labels, or be a
        `keras_kd.targets(...)` dict (cached teacher outputs, explicit label
        masks). `class_weight` becomes sample weights of this call's data,
        as in Keras; it works with cached teacher outputs.

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
                "`steps_per_epoch` (see `keras_kd.data.datasets.steps_per_epoch`)."
            )
        class_weight = kwargs.pop("class_weight", None)
        if class_weight is not None:
            x, y, sample_weight = class_weights_module.apply_class_weight(
                x, y, kwargs.pop("sample_weight", None), class_weight, self._has_class_axis)
            if sample_weight is not None:
                kwargs["sample_weight"] = sample_weight
        _replicate_sample_weights(y, kwargs)
        if len(args) <= 6 and validation.orders_itself(x):
            # Keras cannot shuffle these and warns that it ignores its own
            # default `shuffle=True`; say False, which is what happens.
            kwargs.setdefault("shuffle", False)
        without_labels = _has_no_labels(x, y)
        if without_labels and self.alpha > 0.0:
            raise ValueError(objective.no_labels_message(self.alpha))
        self._retrace_while_metrics_unbuilt()
        # Saved and restored: a callback may call fit again (nested).
        outer = (self._fitting_without_labels, self._top_k_cache_temperature,
                 self._input_check_error, self._step_checks_done_eagerly,
                 self._call_carries_top_k)
        self._fitting_without_labels = without_labels
        self._input_check_error = None
        try:
            sharding = contextlib.nullcontext()
            if isinstance(x, tf.data.Dataset):
                checked = x
                if self._first_batch_needs_checks(x, y):
                    shard = _this_process_shard(x)
                    checked = self._checked_dataset(shard)
                    if checked is shard:  # Ragged or sparse: not wrapped, Keras shards it.
                        checked = x
                    elif shard is not x:
                        sharding = _taken_as_sharded(checked)
                self._step_checks_done_eagerly = checked is not x
                self._call_carries_top_k = _may_carry_top_k(x, y)
                x = checked
            else:
                self._top_k_cache_temperature = self._check_first_batch(x, y)
                self._step_checks_done_eagerly = self._every_row_checked(x, y)
                self._call_carries_top_k = _may_carry_top_k(x, y)
            with sharding:
                return super().fit(x, y, *args, **kwargs)
        except tf.errors.OpError as error:
            if self._input_check_error is not None:
                raise self._input_check_error from error
            raise
        finally:
            (self._fitting_without_labels, self._top_k_cache_temperature,
             self._input_check_error, self._step_checks_done_eagerly,
             self._call_carries_top_k) = outer

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, **kwargs):
        """As `keras.Model.train_on_batch`; `class_weight` applies to this
        batch only."""
        if class_weight is not None:
            x, y, sample_weight = class_weights_module.apply_class_weight(
                x, y, sample_weight, class_weight, self._has_class_axis)
        if y is None and self.alpha > 0.0:
            raise ValueError(objective.no_labels_message(self.alpha))
        self._check_first_batch(x, y)
        self._retrace_while_metrics_unbuilt()
        outer = (self._step_checks_done_eagerly, self._call_carries_top_k)
        self._step_checks_done_eagerly = self._every_row_checked(x, y)
        self._call_carries_top_k = _may_carry_top_k(x, y)
        try:
            return super().train_on_batch(x, y, sample_weight=sample_weight, **kwargs)
        finally:
            self._step_checks_done_eagerly, self._call_carries_top_k = outer

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """The student's loss and metrics on labelled data, as
        `keras.Model.evaluate`; the teacher runs only for teacher metrics.

        The loss is `student.evaluate`'s. The metrics differ where the
        student loss has an `ignore_class` (or labels hold `UNLABELLED`):
        here they see the labelled positions only, while Keras' metrics
        also count the positions its loss ignores. On the chunked path
        (`compile(chunk_size=...)`) the same values come from the
        student's hidden states, `chunk_size` positions at a time.
        """
        self._check_x(x)
        self._retrace_while_metrics_unbuilt()
        _replicate_sample_weights(y, kwargs)
        evaluating = getattr(self, "_evaluating", False)  # (fit's validation nests here)
        object.__setattr__(self, "_evaluating", True)
        try:
            return super().evaluate(x, y, *args, **kwargs)
        finally:
            object.__setattr__(self, "_evaluating", evaluating)

    def _retrace_while_metrics_unbuilt(self):
        # Label metrics are built in the first traced step that has labels.
        # A step traced on unlabelled data left them unbuilt, and a retrace
        # of the same function may not create their variables: start anew.
        metrics = compat.compiled_metrics(self)
        if metrics is not None and not metrics.built:
            self.train_function = self.test_function = None

    def _has_class_axis(self, labels):
        """Whether labels carry a class axis (for class weights)."""
        logits_shape = _static_logits_shape(self.student, self.student_output)
        rank = labels_module.static_rank(labels) if hasattr(labels, "shape") else np.ndim(labels)
        if logits_shape is not None:
            if logits_shape[-1] == 1:
                return False
            return rank == len(logits_shape) and np.shape(labels)[-1] != 1
        # Unknown outputs: class indices are integers.
        dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
        integer = "int" in keras.backend.standardize_dtype(dtype)
        return not integer and rank >= 2 and np.shape(labels)[-1] != 1

    def _check_x(self, x):
        self._check_state_usable()
        # A subclass with its own `student_inputs` feeds the student
        # something else than `x`: nothing to compare.
        if type(self).student_inputs is Distiller.student_inputs:
            validation.check_inputs(self.student, x, "x")

    def _check_first_batch(self, x, y):
        """Checks the first batch of arrays (see `_first_batch_checks`).

        Returns the cache temperature this call is tied to, or None. A
        `tf.data.Dataset` is never iterated here: a second iterator would
        advance its shuffle's seed and change the order `fit` sees; see
        `_checked_dataset`.
        """
        if not self._first_batch_needs_checks(x, y):
            return None
        sample = _first_inputs_and_targets(x, y)
        if sample is None:
            return None
        return self._first_batch_checks(*sample)

    def _first_batch_needs_checks(self, x, y):
        if _may_carry_top_k(x, y):
            return True
        if self._checked_first_batch or self.teacher_outputs != "logits":
            return False
        # Without a teacher run there is nothing to misread yet.
        return self.alpha < 1.0 or bool(self.feature_hints) or bool(self._teacher_metrics)

    def _checked_dataset(self, dataset):
        """`dataset`, whose batches run the first-batch and top-k checks as they pass.

        The checks run eagerly in the input pipeline (a `tf.py_function`,
        outside any XLA step) on the batches `fit` itself reads: all of
        them on the first batch, a top-k part's (`_top_k_checks`) on every
        later one; their error, if any, is kept in
        `self._input_check_error` for `fit` to raise.
        """
        spec = dataset.element_spec
        leaves = tf.nest.flatten(spec)
        if not all(isinstance(leaf, tf.TensorSpec) for leaf in leaves):
            # Ragged or sparse parts cannot pass a py_function: the checks
            # are left to the step (the in-graph assert of a top-k loss).
            return dataset

        scope = self._input_pipeline_scope()
        top_k_spec = _top_k_part(spec)
        check_top_k = self._top_k_checks() if top_k_spec is not None else None
        # Once per call: every epoch's iterator starts at index 0 again, and
        # on JAX the values `scope` holds are gone after the first step
        # (Keras' JAX trainer donates them): a second epoch's check read
        # deleted arrays ("Array has been deleted").
        checked_once = []

        def check(*flat):
            element = tf.nest.pack_sequence_as(spec, list(flat))
            if checked_once:
                # A later epoch's first batch (its iterator starts at 0
                # again, maybe on other examples): its cache, as any later
                # batch's.
                if check_top_k is not None:
                    check_later(*tf.nest.flatten(_top_k_part(element)))
                return True
            inputs, targets, _ = keras.utils.unpack_x_y_sample_weight(element)
            try:
                with scope():
                    self._top_k_cache_temperature = self._first_batch_checks(inputs, targets)
            except Exception as error:  # Re-raised by `fit` as it is.
                self._input_check_error = error
                raise
            checked_once.append(True)
            return True

        def check_later(*flat):
            # Every later batch's cache: as the step's run-time checks would
            # (which the JAX step then leaves out), without the models.
            try:
                check_top_k(tf.nest.pack_sequence_as(top_k_spec, [np.asarray(t) for t in flat]))
            except Exception as error:  # Re-raised by `fit` as it is.
                self._input_check_error = error
                raise
            return True

        # enumerate() gives (index, element): the element arrives whole, as
        # a tuple, dict, namedtuple or tensor, and leaves as it came.
        def checked(index, element):
            later = lambda: tf.constant(True)  # noqa: E731
            if check_top_k is not None:
                later = lambda: tf.py_function(  # noqa: E731
                    check_later, tf.nest.flatten(_top_k_part(element)), Tout=tf.bool)
            ran = tf.cond(
                index == 0,
                lambda: tf.py_function(check, tf.nest.flatten(element), Tout=tf.bool),
                later,
            )
            with tf.control_dependencies([ran]):
                return tf.nest.map_structure(tf.identity, element)

        return dataset.enumerate().map(checked)

    def _first_batch_checks(self, inputs, targets):
        """What is checked, eagerly, on a call's first batch.

        Warns once per Distiller when the teacher's "logits" look like
        probabilities, and ties a top-k cache's temperature to this call
        (`top_k.check_cache_temperature`, which holds under XLA too).

        Returns:
            The cache temperature this call is tied to, or None.
        """
        parsed = batch_module.parse_batch((inputs, targets))
        if isinstance(parsed.teacher_outputs, dict):  # A top-k cache.
            return self._top_k_checks()(parsed.teacher_outputs)
        if self._checked_first_batch or self.teacher_outputs != "logits":
            return None
        self._checked_first_batch = True
        if parsed.teacher_outputs is not None:
            values, source = parsed.teacher_outputs, "The cached teacher logits"
        else:
            values, source = self.teacher_side(inputs), "The teacher's outputs"
            if self.teacher_side.is_ensemble:
                values = values[0]
        if bool(teacher_module.looks_like_probabilities(values)):
            warnings.warn(
                f"{source} look like probabilities (non-negative, summing to 1 "
                "over the class axis), but the Distiller reads them as logits. "
                "If the teacher ends in a softmax, pass "
                "`Distiller(teacher_outputs='probabilities')`.",
                stacklevel=3,
            )
        return None

    def _top_k_checks(self):
        """`check(teacher_top_k)`: a top-k batch's checks, eagerly (the
        cache's vocabulary against the student's; with `tail="bin"` its
        temperature against the loss's), with the settings read now (on
        JAX a running `fit` holds the variables' values). Returns the cache
        temperature the call is tied to, or None."""
        loss_fn = self.distillation_term.top_k_loss()
        classes = outputs_module.static_num_classes(self.student, self.student_output, "student")
        chosen = getattr(loss_fn, "temperature", None) or self.temperature
        follows = self.distillation_term.follows_cache(loss_fn)

        def check(teacher_top_k):
            top_k_module.check_cache_vocabulary(teacher_top_k, classes)
            temperature = chosen
            carried = top_k_module.carried_cache_temperature(teacher_top_k)
            if follows and carried is not None:
                # No temperature was chosen: the step uses the cache's, the
                # only one tail="bin" can use (write_top_k_cache's default
                # is 1, the Distiller's 3).
                temperature = carried
            return top_k_module.check_cache_temperature(loss_fn, teacher_top_k, temperature)

        return check

    def _every_row_checked(self, x, y):
        """Whether every row of `fit`'s arrays passes the top-k checks now
        (the JAX step then leaves its run-time checks out). False for
        datasets and generators, and for arrays of several caches (one
        temperature per batch: the step checks each)."""
        rows = _first_inputs_and_targets(x, y, size=None)
        if rows is None:
            return False
        teacher_top_k = batch_module.parse_batch(rows).teacher_outputs
        if not isinstance(teacher_top_k, dict):
            return True
        carried = teacher_top_k.get(top_k_module.CACHE_TEMPERATURE_KEY)
        if carried is not None and np.unique(np.asarray(carried)).size > 1:
            return False
        self._top_k_checks()(teacher_top_k)
        return True

    # Saving.

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
                "teacher_output": self.teacher_output,
                "student_output": self.student_output,
                "align_vocabulary": self.align_vocabulary,
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
                **getattr(self, "_chunk_config", {}),
                # None when not chosen: a reloaded distiller still takes a
                # top-k cache's temperature.
                "temperature": self.temperature if self._temperature_given else None,
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


ChunkedSetup = collections.namedtuple("ChunkedSetup", ["chunk_size", "student", "teacher"])


def _split_teacher_metrics(metrics):
    """`(teacher_metrics, the rest)` of a compile metrics argument: the
    `TeacherMetric`s of a list (the rest `None` when none is left), or
    `((), metrics)` for another structure (a dict per output)."""
    if not isinstance(metrics, (list, tuple)):
        return (), metrics
    rest = [m for m in metrics if not isinstance(m, TeacherMetric)]
    return tuple(m for m in metrics if isinstance(m, TeacherMetric)), rest or None


def chunked_setup(distiller, chunk_size, student_head, teacher_head, metrics, weighted_metrics):
    """The chunked path's `ChunkedSetup` (chunk size, both `ModelHead`s), or
    a `ValueError` for what the path does not take."""
    chunk_size = validate_chunk_size(chunk_size)
    refused = []
    if distiller.feature_hints:
        refused.append("feature hints (`hints=`)")
    if distiller.teacher_side.is_ensemble:
        refused.append("a teacher ensemble")
    if distiller.align_vocabulary is not None:
        refused.append(f"align_vocabulary={distiller.align_vocabulary!r}")
    given = [m for group in (metrics, weighted_metrics) if group is not None
             for m in (group if isinstance(group, (list, tuple)) else [group])]
    others = [m for m in given if not _is_accuracy(m)]
    if others:
        refused.append("compiled metrics other than accuracy (they need whole logits): "
                       + ", ".join(repr(m) for m in others))
    # Teacher metrics run chunk by chunk through `per_sample`; one that
    # overrides `update_state` may need the whole logits.
    whole = [m for m in distiller._teacher_metrics
             if type(m).update_state is not TeacherMetric.update_state]
    if whole:
        refused.append(
            "teacher metrics that override `update_state` (the chunked path calls "
            "`per_sample` on one chunk of positions at a time; implement that "
            "instead): " + ", ".join(repr(m) for m in whole))
    if distiller.teacher_outputs != "logits":
        refused.append(f"teacher_outputs={distiller.teacher_outputs!r}")
    if refused:
        raise ValueError(
            f"The chunked path (chunk_size={chunk_size}) does not take "
            + ", ".join(refused) + ". Drop them, or compile without `chunk_size`.")
    student = chunked_models.model_head(distiller.student, student_head, "student_head")
    teacher = chunked_models.model_head(distiller.teacher, teacher_head, "teacher_head")
    check_head_vocabularies(
        LinearHead.from_layer(student.layer), LinearHead.from_layer(teacher.layer),
        student.layer.name, teacher.layer.name)
    return ChunkedSetup(chunk_size, student, teacher)


def _is_accuracy(metric):
    """Whether the chunked path computes `metric`: sparse accuracy."""
    if isinstance(metric, str):
        return metric in ("accuracy", "acc", "sparse_categorical_accuracy")
    return isinstance(metric, keras.metrics.SparseCategoricalAccuracy)


def check_head_vocabularies(student, teacher, student_name, teacher_name):
    """Raises `ValueError` when two `LinearHead`s' vocabularies differ."""
    s_vocab, t_vocab = student.vocabulary_size, teacher.vocabulary_size
    if s_vocab != t_vocab:
        raise ValueError(
            f"The chunked path needs one vocabulary: the student's head "
            f"{student_name!r} has {s_vocab} ids, the teacher's {teacher_name!r} "
            f"{t_vocab}. Pass `student_head=` / `teacher_head=` naming heads of the "
            "same vocabulary, or compile without `chunk_size`.")


def _check_reductions(distillation_loss):
    """Refuses, at compile, a reduction the terms cannot use (`"none"`)."""
    own = (distillation_loss.own_reduction if isinstance(distillation_loss, DistillationLoss)
           else getattr(distillation_loss, "reduction", None))
    # (The student loss's is checked where it is resolved, in `labels`.)
    for argument, reduction in (("distillation_loss_fn", own),):
        if reduction is not None and reduction not in REDUCTIONS:
            raise ValueError(
                f"`{argument}` has reduction={reduction!r}, but the Distiller weighs "
                "two scalar terms with `alpha`, so each loss must reduce to one "
                f"value: use one of {list(REDUCTIONS)}. (`student.fit` sums the "
                "values of an unreduced loss: `reduction='sum'` gives its update.)"
            )


def _resolve_teacher_outputs(teacher_outputs, members, selector):
    if teacher_outputs is not None:
        return validate_choice(teacher_outputs, "teacher_outputs",
                               set(teacher_module.TEACHER_OUTPUTS))
    teacher_module.check_teacher_models(members)
    return teacher_module.outputs_from_softmax_flags(
        [outputs_module.ends_in_softmax(m, selector) for m in members])


def _static_logits_shape(model, selector):
    symbolic = outputs_module.symbolic_outputs(model)
    if symbolic is None:
        return None
    return tuple(outputs_module.select_output(symbolic, selector, "student", model).shape)



def _replicate_sample_weights(y, kwargs):
    """Sample weights of arrays beside a `targets(...)` dict `y`, and of a
    `validation_data` tuple, as Keras' array adapter takes them
    (`batch.replicate_sample_weight`): it read the dict as several outputs
    and refused per-position weights or made a dict of per-sample ones."""
    if "sample_weight" in kwargs:
        kwargs["sample_weight"] = batch_module.replicate_sample_weight(y, kwargs["sample_weight"])
    validation = kwargs.get("validation_data")
    if isinstance(validation, tuple) and len(validation) == 3:
        x_val, y_val, weight_val = validation
        kwargs["validation_data"] = (
            x_val, y_val, batch_module.replicate_sample_weight(y_val, weight_val))


def _has_no_labels(x, y):
    """True when `fit`'s data evidently carries no labels."""
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        return not isinstance(spec, tuple) or len(spec) < 2 or spec[1] is None
    if isinstance(x, keras.utils.PyDataset) or hasattr(x, "__next__"):
        return False  # Known at the first batch; the step checks it.
    return y is None


def _first_inputs_and_targets(x, y, size=64):
    """A few inputs (and targets) of `fit`'s arrays, without consuming them.

    Datasets, PyDatasets and generators give None: reading them here would
    consume or reorder what `fit` reads.
    """
    if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or hasattr(x, "__next__"):
        return None

    def head(a):
        a = np.asarray(a)
        return a[:size] if a.ndim else a  # A scalar (e.g. a cache_temperature) as is.

    try:
        inputs = keras.tree.map_structure(head, x)
        targets = None if y is None else keras.tree.map_structure(head, y)
    except (TypeError, ValueError, IndexError):
        return None
    return inputs, targets


def _this_process_shard(dataset):
    """Under Keras' multi-process distribution, this process's shard of
    `dataset`, taken as Keras takes it; else `dataset`. Taken before the
    checks' `map`, which would hide the batch size Keras shards by ("The
    batch size of the input dataset is unknown")."""
    distribution = keras.distribution.distribution()
    if not compat.shards_per_process(distribution):
        return dataset
    return distribution.distribute_dataset(dataset)


@contextlib.contextmanager
def _taken_as_sharded(dataset):
    """A context in which the distribution's `distribute_dataset` gives
    `dataset` (already this process's shard) back as it is; any other
    dataset (validation data, a callback's) it shards as before."""
    distribution = keras.distribution.distribution()
    own = vars(distribution).get("distribute_dataset")
    distribute = distribution.distribute_dataset
    distribution.distribute_dataset = lambda d: d if d is dataset else distribute(d)
    try:
        yield
    finally:
        if own is None:
            del distribution.distribute_dataset
        else:
            distribution.distribute_dataset = own


def _top_k_part(element):
    """The top-k dict of a dataset element (or its spec), or None; where
    `batch.parse_batch` finds it."""
    if not isinstance(element, tuple) or len(element) < 2 or not isinstance(element[1], dict):
        return None
    targets = element[1]
    part = targets.get(batch_module.TEACHER_LOGITS_KEY, targets.get(batch_module.TEACHER_TOP_K_KEY))
    return part if isinstance(part, dict) else None


def _may_carry_top_k(x, y):
    """Whether `fit`'s data has a top-k part (from its structure, where
    `batch.parse_batch` finds it)."""
    element = x.element_spec if isinstance(x, tf.data.Dataset) else (x, y)
    return _top_k_part(element) is not None


def _serialize_teacher(teacher):
    # Without its compile config: a frozen teacher's optimizer, rebuilt over
    # no trainable weights, could not take its saved state back, and Keras
    # would warn at every load that it skipped "optimizer" variables.
    config = keras.saving.serialize_keras_object(teacher)
    config.pop("compile_config", None)
    return config
