"""The teacher side of a `Distiller`: one frozen model or an ensemble.

`TeachersMixin` checks and freezes the teachers and turns them into float32
logits: a teacher that ends in a softmax is read back through `log`, and an
ensemble's members are stacked as `(batch, members, classes)` and combined
at the distiller's temperature (`keras_kd.ensembles`).
"""

import keras
from keras import ops

from keras_kd import ensembles
from keras_kd import labels as labels_module
from keras_kd import validation
from keras_kd.validation import validate_choice


class TeachersMixin:
    """The teacher(s) of a `Distiller` and their logits.

    Expects `teacher_inputs` and the `_temperature` variable on the model it
    is mixed into.
    """

    def _set_up_teachers(self, student, teacher, teacher_outputs, teacher_weights, ensemble):
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if not teachers:
            raise ValueError("`teacher` must be a model or a non-empty list of models.")
        self.teacher_outputs = validate_choice(
            teacher_outputs, "teacher_outputs", {"logits", "probabilities"}
        )
        self.ensemble = validate_choice(ensemble, "ensemble", {"arithmetic", "geometric"})
        self.teacher_weights = ensembles.normalized_weights(teacher_weights, len(teachers))
        validation.check_models(student, teachers, self.teacher_outputs)
        for member in teachers:
            member.trainable = False
        self.teacher = teacher if isinstance(teacher, keras.Model) else teachers

    @property
    def teachers(self):
        """The teachers as a list (one model, or the ensemble's members)."""
        return [self.teacher] if isinstance(self.teacher, keras.Model) else list(self.teacher)

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
