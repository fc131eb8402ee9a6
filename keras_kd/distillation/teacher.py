"""The teacher side of a `Distiller`: one frozen model, or an ensemble.

`Teacher` and `Ensemble` share one interface, so the Distiller never asks
which it holds:

- `__call__(inputs)`: the teacher's float32 logits for a batch, run with
  `training=False`. One model gives `(batch, ..., classes)`; an ensemble
  gives its members' logits on a leading member axis `(members, batch,
  ..., classes)`, known from the list of teachers, never from a rank.
- `from_cache(cached)`: the same structure from cached outputs (an
  ensemble's cache holds `(batch, members, ..., classes)`).
- `combine(logits, temperature, kind)`: one teacher's logits for a loss of
  the given kind (`keras_kd.ensembles`); one model passes them through.
- `features(inputs, layer_names)`: logits and intermediate features of one
  forward pass, for feature hints (one model only).

A teacher that ends in a softmax is read back through `log` (softmax
inverts it exactly, up to a constant per position).
"""

import keras
from keras import ops

from keras_kd.distillation import ensembles
from keras_kd.distillation import outputs as outputs_module

TEACHER_OUTPUTS = ("logits", "probabilities")


def as_logits(values, teacher_outputs):
    """Float32 logits of a teacher's outputs."""
    values = ops.cast(values, "float32")
    if teacher_outputs == "probabilities":
        return ops.log(ops.maximum(values, 1e-30))
    return values


def looks_like_probabilities(logits, rows=64):
    """A boolean scalar: the first `rows` positions are non-negative and
    sum to 1 over the class axis, as probabilities do (logits rarely)."""
    classes = ops.shape(logits)[-1]
    sample = ops.cast(ops.reshape(logits, (-1, classes))[:rows], "float32")
    sums = ops.sum(sample, axis=-1)
    return ops.logical_and(
        ops.all(sample >= 0.0), ops.all(ops.abs(sums - 1.0) < 1e-3)
    )


class Teacher:
    """One frozen teacher model.

    Args:
        model: A trained `keras.Model`; frozen here (`trainable=False`).
        output: Which output holds the logits, for a model with several
            (see `keras_kd.outputs`).
        teacher_outputs: `"logits"` or `"probabilities"`.
        inputs_fn: Gives the teacher's view of a batch's inputs.
    """

    is_ensemble = False

    def __init__(self, model, output=None, teacher_outputs="logits", inputs_fn=None):
        self.models = [model]
        self.output = output
        self.teacher_outputs = teacher_outputs
        self.inputs_fn = inputs_fn or (lambda x: x)
        model.trainable = False

    def _member_logits(self, model, inputs):
        raw = model(self.inputs_fn(inputs), training=False)
        logits = outputs_module.select_output(raw, self.output, "teacher", model)
        return as_logits(logits, self.teacher_outputs)

    def __call__(self, inputs):
        return self._member_logits(self.models[0], inputs)

    def from_cache(self, cached):
        if isinstance(cached, dict):  # Top-k logits (`keras_kd.top_k`).
            return cached
        return ops.cast(cached, "float32")

    def combine(self, logits, temperature, kind="softmax"):
        return logits

    def features(self, inputs, feature_model):
        """Logits and features from `feature_model` (see `keras_kd.hints`)."""
        values = feature_model(self.inputs_fn(inputs), training=False)
        return as_logits(values[0], self.teacher_outputs), list(values[1:])


class Ensemble(Teacher):
    """Several frozen teachers, combined per loss (`keras_kd.ensembles`).

    Args:
        models: The members, a list of `keras.Model`.
        weights: Their weights, summing to 1.
        rule: `"arithmetic"` or `"geometric"`.
        output: As for `Teacher`, the same for every member.
        teacher_outputs: As for `Teacher`.
        inputs_fn: As for `Teacher`.
    """

    is_ensemble = True

    def __init__(self, models, weights, rule="arithmetic", output=None,
                 teacher_outputs="logits", inputs_fn=None):
        super().__init__(models[0], output, teacher_outputs, inputs_fn)
        self.models = list(models)
        for model in self.models:
            model.trainable = False
        self.weights = weights
        self.rule = rule

    def __call__(self, inputs):
        return ops.stack([self._member_logits(m, inputs) for m in self.models], axis=0)

    def from_cache(self, cached):
        if isinstance(cached, dict):
            return cached  # Top-k logits of one teacher: refused by the Distiller.
        cached = ops.cast(cached, "float32")
        if cached.shape[1] is not None and cached.shape[1] != len(self.models):
            raise ValueError(
                f"The cached logits hold {cached.shape[1]} members on axis 1 "
                f"(shape {tuple(cached.shape)}), but the ensemble has "
                f"{len(self.models)} teachers. Recompute the cache with "
                "`compute_teacher_logits(teachers, x)`."
            )
        return ops.moveaxis(cached, 1, 0)

    def combine(self, logits, temperature, kind="softmax"):
        return ensembles.combine(logits, temperature, self.weights, self.rule, kind)

    def features(self, inputs, feature_model):
        raise ValueError("Feature hints take one teacher, not an ensemble.")


def dummy_logits(student_logits, teacher):
    """Zeros in the teacher side's structure, for a step that skips it."""
    zeros = ops.zeros_like(ops.cast(student_logits, "float32"))
    if teacher.is_ensemble:
        return ops.stack([zeros] * len(teacher.models), axis=0)
    return zeros


def resolve_teacher_outputs(teacher_outputs, models, selector=None, where="the Distiller",
                            keyword=None):
    """What a teacher's selected output holds, as the Distiller reads it.

    Args:
        teacher_outputs: `None` (from the model: `"probabilities"` when the
            selected output comes from a softmax layer, else `"logits"`),
            `"logits"` or `"probabilities"`.
        models: The teacher models (an ensemble's members).
        selector: Which output holds the logits (see `keras_kd.outputs`).
        where: Who asks, for the messages.
        keyword: The argument of `where` that holds `selector` (`None`:
            the Distiller's `teacher_output`).

    Returns:
        `"logits"` or `"probabilities"`.

    Raises:
        ValueError: for another value, `"logits"` for a teacher that ends in
            a softmax, or an ensemble whose members disagree.
    """
    from keras_kd.distillation.validation import validate_choice

    check_teacher_models(models)
    naming = {} if keyword is None else {"keyword": keyword, "function": where}
    softmax = [outputs_module.ends_in_softmax(m, selector, "teacher", **naming) for m in models]
    if teacher_outputs is not None:
        teacher_outputs = validate_choice(teacher_outputs, "teacher_outputs", set(TEACHER_OUTPUTS))
        if teacher_outputs == "logits" and any(softmax):
            layer = outputs_module.selected_layer(
                models[softmax.index(True)], selector, "teacher", **naming)
            raise ValueError(
                f"The teacher's layer `{layer.name}` applies a softmax, but "
                f"teacher_outputs='logits': {where} would store or read its "
                "probabilities as logits. Pass `teacher_outputs='probabilities'` "
                "(or leave it unset), as the online Distiller reads such a teacher."
            )
        return teacher_outputs
    return outputs_from_softmax_flags(softmax)


def outputs_from_softmax_flags(softmax):
    """`"probabilities"` when every member ends in a softmax, `"logits"`
    when none does; a mixed ensemble is an error."""
    if all(softmax):
        return "probabilities"
    if any(softmax):
        raise ValueError(
            "Some teachers of the ensemble end in a softmax and others do not. "
            "Give them the same kind of outputs, and pass `teacher_outputs`."
        )
    return "logits"


def check_teacher_models(teachers):
    for model in teachers:
        if not isinstance(model, keras.Model):
            raise ValueError(
                "`teacher` must be a `keras.Model` or a list of them. "
                f"Received: {model!r} of type {type(model).__name__}."
            )
