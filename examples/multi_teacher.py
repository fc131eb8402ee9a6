"""Distil an ensemble of teachers into one student (Hinton et al. 2015).

Several teachers trained from different initial weights disagree on hard
digits; their averaged soft targets carry that disagreement. The Distiller
takes a list of teachers: at its temperature it averages their softened
distributions (arithmetically, or geometrically with ensemble="geometric"),
weighted by `teacher_weights`. With the teacher-logits cache the members'
logits are stored side by side and combined in each step, so a temperature
schedule still applies.

    python examples/multi_teacher.py
    python examples/multi_teacher.py --teachers 2 --labels 100 --steps 50
"""

import argparse

import keras
import numpy as np

import keras_kd
from keras_kd.data import datasets
from keras_kd.studies import few_labels
from keras_kd import models

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--teachers", type=int, default=3)
parser.add_argument("--teacher-epochs", type=int, default=3)
parser.add_argument("--labels", type=int, default=240, help="labelled digits of the student")
parser.add_argument("--steps", type=int, default=600, help="optimizer steps of the student")
parser.add_argument("--limit", type=int, default=None,
                    help="use the first N training digits, for the teachers and the labelled subset "
                         "(default: all 8,000 of the bundled sample)")
parser.add_argument("--ensemble", choices=("arithmetic", "geometric"), default="arithmetic")
args = parser.parse_args()

# 1. The bundled digits, scaled to [0, 1].
(x_train, y_train), (x_test, y_test) = datasets.load_preprocessed(limit=args.limit)

# 2. Teachers from different seeds, each on all labels.
teachers = []
for seed in range(args.teachers):
    teacher = few_labels.train_teacher(x_train, y_train, epochs=args.teacher_epochs, seed=seed,
                                       name=f"teacher_{seed}")
    teachers.append(teacher)
    print(f"teacher {seed}: {100 * few_labels.top1_accuracy(teacher, x_test, y_test):.2f}%")
mean_probabilities = np.mean(
    [keras.ops.convert_to_numpy(keras.ops.softmax(t.predict(x_test, verbose=0)))
     for t in teachers], axis=0)
print(f"ensemble (mean of probabilities): "
      f"{100 * np.mean(mean_probabilities.argmax(1) == y_test):.2f}%")

# 3. Their logits once, side by side: (digits, teachers, classes).
logits = keras_kd.distillation.cache.compute_teacher_logits(teachers, x_train)
labelled = few_labels.balanced_subset(y_train, args.labels, seed=0)


def distil(teacher_list, teacher_logits):
    keras.utils.set_random_seed(0)
    student = models.build_keras_io_student()
    distiller = keras_kd.Distiller(student=student, teacher=teacher_list, ensemble=args.ensemble)
    distiller.compile(optimizer="adam", alpha=0.1, temperature=4.0)
    data = datasets.make_dataset(
        x_train[labelled], y_train[labelled], name=None, scaling=None, batch_size=32,
        shuffle=True, seed=0, teacher_logits=teacher_logits[labelled], start_epoch=0,
    )
    distiller.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
    return few_labels.top1_accuracy(student, x_test, y_test)


# 4. The same student, from the same weights and batches, taught by one
# teacher and by the ensemble.
single = distil(teachers[0], logits[:, 0])
ensemble = distil(teachers, logits)
print(f"student from {args.labels} labels + teacher 0: {100 * single:.2f}%")
print(f"student from {args.labels} labels + {args.teachers}-teacher {args.ensemble} ensemble: "
      f"{100 * ensemble:.2f}%")
