"""FitNets and other feature hints: teach the student's hidden layers too.

Besides the teacher's logits, a student can match the teacher's
intermediate features. `keras_kd.FeatureHint` names a student layer and a
teacher layer; with `method="fitnet"` (Romero et al. 2015) a trainable
connector (here a 1x1 convolution + BatchNorm + ReLU, since the student's
map has 32 channels and the teacher's 128) maps the student's feature onto
the teacher's, and their mean squared error joins the loss. The connector
belongs to the distiller: it trains with the student and is saved with the
distiller, but `distiller.student` (what you deploy) has only its own
layers. Logits and features come from one student forward pass.

    python examples/fitnets_hints.py
    python examples/fitnets_hints.py --labels 100 --steps 50
"""

import argparse

import keras_kd
from keras_kd.data import datasets
from keras_kd.studies import few_labels
from keras_kd import models

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--teacher-epochs", type=int, default=4)
parser.add_argument("--labels", type=int, default=240, help="labelled digits of the student")
parser.add_argument("--steps", type=int, default=600, help="optimizer steps of the student")
parser.add_argument("--limit", type=int, default=None,
                    help="use the first N training digits, for the teacher and the labelled subset "
                         "(default: all 8,000 of the bundled sample)")
parser.add_argument("--method", default="fitnet",
                    choices=("fitnet", "attention", "similarity", "rkd", "pkt"))
parser.add_argument("--output", default="fitnets_student.keras")
args = parser.parse_args()

(x_train, y_train), (x_test, y_test) = datasets.load_preprocessed(limit=args.limit)

# 1. A teacher on all labels.
teacher = few_labels.train_teacher(x_train, y_train, epochs=args.teacher_epochs, seed=0)
print(f"teacher: {100 * few_labels.top1_accuracy(teacher, x_test, y_test):.2f}%")

# 2. The student and the hint: the second convolution of each (7x7 maps).
student = models.build_keras_io_student()
student_layer, teacher_layer = student.layers[3].name, teacher.layers[3].name
print(f"hint: student {student_layer} {student.layers[3].output.shape[1:]} -> "
      f"teacher {teacher_layer} {teacher.layers[3].output.shape[1:]}, method {args.method}")
distiller = keras_kd.Distiller(
    student=student, teacher=teacher,
    hints=[keras_kd.FeatureHint(student_layer, teacher_layer, method=args.method)],
)
# alpha=1: labels + the hint alone, as the FitNets reference code trains.
distiller.compile(optimizer="adam", alpha=1.0, metrics=["sparse_categorical_accuracy"])
for connector in distiller.connectors:
    print(f"connector: {' -> '.join(type(layer).__name__ for layer in connector.layers)}, "
          f"{connector.count_params():,} parameters (the distiller's, not the student's)")

# 3. Few labels: where the teacher matters on this data.
labelled = few_labels.balanced_subset(y_train, args.labels, seed=0)
data = datasets.make_dataset(x_train[labelled], y_train[labelled], name=None, scaling=None,
                             batch_size=32, shuffle=True, seed=0, start_epoch=0)
history = distiller.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0).history
print(f"{args.method}_loss at the end: {history[f'{args.method}_loss'][-1]:.4f}")
print(f"student with {args.labels} labels + {args.method} hint: "
      f"{100 * few_labels.top1_accuracy(student, x_test, y_test):.2f}% "
      f"({student.count_params():,} parameters)")

# 4. Deploy the student alone: no connector inside.
distiller.student.save(args.output)
print(f"Wrote {args.output}")
