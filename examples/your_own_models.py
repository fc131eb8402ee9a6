"""Distil any two Keras models on your own arrays.

Anything that maps your inputs to logits works as teacher or student:
Sequential, functional or subclassed models, of any shape, for any number
of classes. This script makes a toy tabular problem (or reads yours from an
`.npz` file with arrays `x_train`, `y_train`, `x_test`, `y_test`), trains a
wide teacher, and distils it into a narrow student.

    python examples/your_own_models.py
    python examples/your_own_models.py --data my_data.npz --classes 5
"""

import argparse

import keras
import numpy as np

import keras_kd

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data", default=None, help=".npz with x_train, y_train, x_test, y_test")
parser.add_argument("--classes", type=int, default=3)
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--output", default="student.keras")
args = parser.parse_args()
keras.utils.set_random_seed(0)

# 1. Your arrays: features (n, d) and integer labels (n,).
if args.data:
    with np.load(args.data) as f:
        x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train", "x_test", "y_test"))
else:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=2.0, size=(args.classes, 8))
    y_all = rng.integers(0, args.classes, 3000)
    x_all = (centres[y_all] + rng.normal(scale=1.5, size=(3000, 8))).astype("float32")
    x_train, y_train, x_test, y_test = x_all[:2500], y_all[:2500], x_all[2500:], y_all[2500:]
num_features = x_train.shape[1]

# 2. Your teacher (functional) and student (Sequential). Both end in a
# linear layer: the Distiller wants logits, not probabilities.
inputs = keras.Input((num_features,))
hidden = keras.layers.Dense(256, activation="relu")(inputs)
hidden = keras.layers.Dropout(0.3)(hidden)
hidden = keras.layers.Dense(256, activation="relu")(hidden)
teacher = keras.Model(inputs, keras.layers.Dense(args.classes)(hidden), name="teacher")
student = keras.Sequential(
    [keras.Input((num_features,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(args.classes)],
    name="student",
)

# 3. Train the teacher as usual.
teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
teacher.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)

# 4. Distil: fit takes your arrays directly (sample_weight works too).
distiller = keras_kd.Distiller(student=student, teacher=teacher)
distiller.compile(optimizer="adam", metrics=["accuracy"], alpha=0.3, temperature=4.0)
distiller.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)

for name, model in (("teacher", teacher), ("distilled student", distiller)):
    accuracy = float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])
    print(f"{name}: {model.count_params() if name == 'teacher' else student.count_params():,} parameters, "
          f"test accuracy {100 * accuracy:.2f}%")

# 5. Keep the student: a plain Keras model, no keras_kd needed to use it.
student.save(args.output)
print(f"Wrote {args.output}")
