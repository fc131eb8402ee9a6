"""Distil a teacher that takes other inputs than its student.

A teacher often wants another view of the data than the small student: a
higher resolution (pretrained backbones expect 224x224), another layout,
another tokenizer. The Distiller's `teacher_inputs(x)` hook turns the
student's batch into the teacher's view inside the training step, so the
data pipeline yields only the student's inputs.

Here the teacher is a CNN on digits upsampled to 56x56 pixels and the
student an MLP on flat 784-pixel vectors.

    python examples/teacher_with_other_inputs.py
    python examples/teacher_with_other_inputs.py --limit 1000 --epochs 1
"""

import argparse

import keras

import keras_kd
from keras_kd.data import datasets

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--limit", type=int, default=8000, help="training digits to use")
parser.add_argument("--teacher-epochs", type=int, default=3)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--output", default="student.keras")
args = parser.parse_args()
keras.utils.set_random_seed(0)

# 1. The student's view: flat vectors in [0, 1], as an MLP takes them.
(x_train, y_train), (x_test, y_test) = datasets.load_arrays("mnist", source="sample")
x_train, y_train = x_train[: args.limit], y_train[: args.limit]
x_train = x_train.reshape(len(x_train), 784).astype("float32") / 255
x_test = x_test.reshape(len(x_test), 784).astype("float32") / 255

# 2. The teacher's view of the same batch: back to an image, twice the size.
teacher_view = keras.Sequential(
    [keras.layers.Reshape((28, 28, 1)), keras.layers.Resizing(56, 56)],
    name="teacher_view",
)

# 3. A teacher trained on its own view.
teacher = keras.Sequential(
    [
        keras.Input((56, 56, 1)),
        keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ],
    name="teacher",
)
teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
teacher.fit(teacher_view(x_train), y_train, epochs=args.teacher_epochs, batch_size=64,
            verbose=0)


# 4. The hook: the Distiller shows the teacher its view of every batch.
# (Without a subclass, `keras.Sequential([teacher_view, teacher])` as the
# teacher does the same; the hook also serves views that a layer cannot
# make, e.g. another key of a dict of inputs.)
@keras.saving.register_keras_serializable(package="examples")
class ViewDistiller(keras_kd.Distiller):
    def teacher_inputs(self, x):
        return teacher_view(x)


student = keras.Sequential(
    [keras.Input((784,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)],
    name="student",
)
distiller = ViewDistiller(student=student, teacher=teacher)
distiller.compile(optimizer="adam", metrics=["accuracy"], alpha=0.1, temperature=4.0)
distiller.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)

teacher_accuracy = float(teacher.evaluate(teacher_view(x_test), y_test, verbose=0)[1])
student_accuracy = float(distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])
print(f"teacher (56x56 images, {teacher.count_params():,} parameters): "
      f"{100 * teacher_accuracy:.2f}%")
print(f"distilled student (784 vectors, {student.count_params():,} parameters): "
      f"{100 * student_accuracy:.2f}%")

# 5. The student alone is a plain Keras model on its own inputs.
student.save(args.output)
print(f"Wrote {args.output}")
