"""Why does distillation trail the scratch student in E1 on the sample?

One E1 teacher (5 epochs), then students from the same initial weights on
the same seeded batches (cached teacher logits, so a distillation epoch costs
a student epoch), for several epoch budgets, alphas and temperatures.

    python benchmarks/e1_epochs.py --seed 0
"""

import argparse
import os
import time

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--epochs", type=int, nargs="+", default=[3, 12])
args = parser.parse_args()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import cache, datasets, models  # noqa: E402

(x_train, y_train), (x_test, y_test) = datasets.load_arrays("mnist", source="sample")
x_train = datasets.preprocess(x_train, "mnist").numpy()
x_test = datasets.preprocess(x_test, "mnist").numpy()
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
metric = "sparse_categorical_accuracy"
keras.utils.set_random_seed(args.seed)
teacher = models.build_keras_io_teacher()
teacher.compile(optimizer="adam", loss=loss, metrics=[metric])
teacher.fit(x_train, y_train, batch_size=64, epochs=5, verbose=0)
teacher_accuracy = float(teacher.evaluate(x_test, y_test, verbose=0, return_dict=True)[metric])
logits = cache.compute_teacher_logits(teacher, x_train)
template = models.build_keras_io_student()


def accuracy_after(epochs, alpha=None, temperature=None):
    keras.utils.set_random_seed(args.seed + 1)
    student = models.copy_model(template)
    if alpha is None:
        model = student
        model.compile(optimizer="adam", loss=loss, metrics=[metric])
    else:
        model = keras_kd.Distiller(student=student, teacher=teacher)
        model.compile(optimizer="adam", metrics=[metric], alpha=alpha, temperature=temperature)
    train = datasets.make_dataset(
        x_train, y_train, name=None, scaling=None, batch_size=64, shuffle=True,
        seed=args.seed, teacher_logits=None if alpha is None else logits,
    )
    model.fit(train, epochs=epochs, verbose=0)
    return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)[metric])


print(f"E1 on the sample, seed {args.seed}, {time.strftime('%Y-%m-%d')}; teacher {100 * teacher_accuracy:.2f}%")
print("| student | " + " | ".join(f"{e} epochs" for e in args.epochs) + " |")
print("|---|" + "---|" * len(args.epochs))
settings = [("scratch", None, None), ("KD alpha 0.1, T 3", 0.1, 3.0), ("KD alpha 0.5, T 3", 0.5, 3.0),
            ("KD alpha 0.1, T 10", 0.1, 10.0), ("KD alpha 0.5, T 1", 0.5, 1.0)]
for name, alpha, temperature in settings:
    cells = [f"{100 * accuracy_after(e, alpha, temperature):.2f}%" for e in args.epochs]
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
