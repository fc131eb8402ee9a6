"""Add your own loss: subclass `keras_kd.Distiller`.

`Distiller` computes its two loss terms in two methods,
`compute_student_loss` (labels) and `compute_distillation_loss` (teacher),
and takes the teacher's outputs from `teacher_logits`. Override any of
them. Here the distillation term gets an extra penalty that pulls the
student's raw logits towards the teacher's (Ba & Caruana's logit matching),
weighted by `logit_weight`. The subclass is registered, so the distiller
saves and loads like any Keras model, with its setting.

    python examples/custom_loss.py --epochs 3
"""

import argparse
import os
import tempfile

import keras
from keras import ops

import keras_kd
from keras_kd.data import datasets
from keras_kd import models
from keras_kd.distillation.cache import compute_teacher_logits


@keras.saving.register_keras_serializable(package="my_project")
class LogitMatchingDistiller(keras_kd.Distiller):
    """KD loss plus `logit_weight` * mean squared difference of the logits."""

    def __init__(self, student, teacher, logit_weight=0.1, **kwargs):
        super().__init__(student=student, teacher=teacher, **kwargs)
        self.logit_weight = logit_weight

    def compute_distillation_loss(self, teacher_logits, student_logits, sample_weight=None):
        kd = super().compute_distillation_loss(teacher_logits, student_logits, sample_weight)
        squared = ops.mean(ops.square(ops.cast(student_logits, "float32") - teacher_logits), axis=-1)
        if sample_weight is not None:
            squared = squared * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        # Averaged over the batch like the other terms (sum / batch size).
        return kd + self.logit_weight * ops.sum(squared) / ops.cast(ops.shape(squared)[0], "float32")

    def get_config(self):
        return {**super().get_config(), "logit_weight": self.logit_weight}


parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--teacher-epochs", type=int, default=3)
parser.add_argument("--logit-weight", type=float, default=0.1)
parser.add_argument("--limit", type=int, default=None)
args = parser.parse_args()
keras.utils.set_random_seed(0)

# 1. Data and a teacher (the keras.io pair, on the bundled sample).
x_train, y_train = datasets.select("mnist", "train", source="sample", limit=args.limit)
x_test, y_test = datasets.select("mnist", "test", source="sample")
x_train = datasets.preprocess(x_train, "mnist").numpy()
x_test = datasets.preprocess(x_test, "mnist").numpy()
teacher = models.build_keras_io_teacher()
teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
teacher.fit(x_train, y_train, batch_size=64, epochs=args.teacher_epochs, verbose=2)

# 2. Distil with the subclass: compile and fit as usual.
distiller = LogitMatchingDistiller(
    student=models.build_keras_io_student(), teacher=teacher, logit_weight=args.logit_weight
)
distiller.compile(optimizer="adam", metrics=["sparse_categorical_accuracy"], alpha=0.1, temperature=3.0)
train = datasets.make_dataset(x_train, y_train, name=None, scaling=None, batch_size=64, shuffle=True,
                              teacher_logits=compute_teacher_logits(teacher, x_train))
distiller.fit(train, epochs=args.epochs, verbose=2)
accuracy = float(distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["sparse_categorical_accuracy"])
print(f"distilled student with logit matching: test accuracy {100 * accuracy:.2f}%")

# 3. Save and load: the subclass and its setting come back, ready to fit.
path = os.path.join(tempfile.mkdtemp(), "distiller.keras")
distiller.save(path)
loaded = keras.models.load_model(path)
print(f"reloaded {type(loaded).__name__} with logit_weight={loaded.logit_weight}")
