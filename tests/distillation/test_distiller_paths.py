"""The paths users walk: every model kind x every input kind Keras takes x
online/cached teacher x labelled/unlabelled/mixed batches, in the library's
default configuration (no op determinism, default compile settings).

Each case checks the first epoch's loss against a float64 NumPy reference
computed from the models' own outputs (at learning rate 0, so the weights
are those outputs' weights), then that a real epoch moves the student and
not the teacher, that `evaluate` is the student's own labelled loss, and
(in the model x input matrix) that `predict` is the student's.

The references' outputs come from calling the models eagerly, not from
their `predict`: each `predict` of a fresh model traces a function, and
the traced paths under test are the Distiller's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import outputs

from keras_kd import Distiller
from keras_kd import UNLABELLED

N, BATCH, CLASSES = 48, 16, 3
IMAGE = (4, 3, 1)
DEFAULT_ALPHA, DEFAULT_TEMPERATURE = 0.1, 3.0


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class SubclassedClassifier(keras.Model):
    """A subclassed model: no `inputs`, layers in attributes."""

    def __init__(self, units=8, num_classes=CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.num_classes = num_classes
        self.flatten = keras.layers.Flatten()
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.logits = keras.layers.Dense(num_classes)

    def call(self, inputs, training=None):
        return self.logits(self.hidden(self.flatten(inputs)))

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "num_classes": self.num_classes}


def sequential(units):
    return keras.Sequential([
        keras.Input(IMAGE), keras.layers.Flatten(),
        keras.layers.Dense(units, activation="relu"), keras.layers.Dense(CLASSES),
    ])


def functional_dict(units):
    image = keras.Input(IMAGE, name="image")
    extra = keras.Input((2,), name="extra")
    hidden = keras.layers.Concatenate()([keras.layers.Flatten()(image), extra])
    hidden = keras.layers.Dense(units, activation="relu")(hidden)
    return keras.Model(
        {"image": image, "extra": extra}, keras.layers.Dense(CLASSES)(hidden)
    )


def nested(units):
    inner = keras.Model(*_flatten_and_dense(units))
    return keras.Sequential([keras.Input(IMAGE), inner, SubclassedHead()])


def _flatten_and_dense(units):
    inputs = keras.Input(IMAGE)
    flat = keras.layers.Flatten()(inputs)
    return inputs, keras.layers.Dense(units, activation="relu")(flat)


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class SubclassedHead(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(CLASSES)

    def call(self, inputs):
        return self.dense(inputs)


MODEL_KINDS = {
    "sequential": sequential,
    "functional_dict": functional_dict,
    "subclassed": lambda units: SubclassedClassifier(units),
    "nested": nested,
}


def make_models(kind, seed=0):
    keras.utils.set_random_seed(seed)
    student, teacher = MODEL_KINDS[kind](4), MODEL_KINDS[kind](16)
    return student, teacher


def make_x(kind, seed=0):
    """Inputs without the channel axis, as `keras.datasets.mnist` gives:
    Keras adds the unit axis for `Input((4, 3, 1))`."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(N,) + IMAGE[:-1]).astype("float32")
    if kind == "functional_dict":
        return {"image": images, "extra": rng.normal(size=(N, 2)).astype("float32")}
    return images


def make_labels(labels, seed=0):
    y = np.random.default_rng(seed + 1).integers(0, CLASSES, size=N)
    if labels == "mixed":
        y[::3] = UNLABELLED
    return None if labels == "unlabelled" else y


def take(structure, start, stop):
    return tf.nest.map_structure(lambda a: a[start:stop], structure)


class Batches(keras.utils.PyDataset):
    def __init__(self, data):
        super().__init__()
        self.data = data

    def __len__(self):
        return N // BATCH

    def __getitem__(self, index):
        return take(self.data, index * BATCH, (index + 1) * BATCH)


def batches_forever(data):
    while True:
        for start in range(0, N, BATCH):
            yield take(data, start, start + BATCH)


def data_arguments(input_kind, x, targets, fit=True):
    """`fit`/`evaluate` arguments for the same data in each input kind."""
    data = (x,) if targets is None else (x, targets)
    if input_kind == "numpy":
        return {"x": x, "y": targets, "batch_size": BATCH,
                **({"shuffle": False} if fit else {})}
    if input_kind == "tf.data":
        return {"x": tf.data.Dataset.from_tensor_slices(data).batch(BATCH)}
    if input_kind == "PyDataset":
        return {"x": Batches(data if targets is not None else x)}
    if input_kind == "generator":
        steps = "steps_per_epoch" if fit else "steps"
        return {"x": batches_forever(data), steps: N // BATCH}
    raise ValueError(input_kind)


def log_softmax64(z):
    z = np.float64(z)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference_epoch_loss(student_logits, teacher_logits, y, alpha, temperature):
    """Keras logs the mean of the per-batch losses (equal batch sizes)."""
    losses = []
    for start in range(0, N, BATCH):
        s = student_logits[start : start + BATCH]
        t = teacher_logits[start : start + BATCH]
        log_t, log_s = log_softmax64(t / temperature), log_softmax64(s / temperature)
        soft = temperature**2 * np.sum(np.exp(log_t) * (log_t - log_s), axis=1)
        hard = 0.0
        if y is not None:
            labels = y[start : start + BATCH]
            labelled = labels != UNLABELLED
            if labelled.any():
                log_p = log_softmax64(s)[labelled]
                hard = -np.mean(log_p[np.arange(labelled.sum()), labels[labelled]])
        losses.append(alpha * hard + (1 - alpha) * soft.mean())
    return float(np.mean(losses))


def reference_labelled_loss(student_logits, y):
    losses = []
    for start in range(0, N, BATCH):
        labels = y[start : start + BATCH]
        labelled = labels != UNLABELLED
        log_p = log_softmax64(student_logits[start : start + BATCH])[labelled]
        losses.append(-np.mean(log_p[np.arange(labelled.sum()), labels[labelled]]))
    return float(np.mean(losses))


def check_path(model_kind, input_kind, teacher_source, labels, check_predict=True):
    student, teacher = make_models(model_kind)
    x, y = make_x(model_kind), make_labels(labels)
    distiller = Distiller(student=student, teacher=teacher)
    # The library's defaults, except alpha where there are no labels at all.
    alpha = 0.0 if labels == "unlabelled" else DEFAULT_ALPHA
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        metrics=["sparse_categorical_accuracy"],
        **({"alpha": alpha} if labels == "unlabelled" else {}),
    )
    # Called after the Distiller is made: it takes the subclassed models
    # unbuilt, as a user's script gives them.
    teacher_logits = outputs(teacher, x)
    targets = y
    if teacher_source == "cached":
        # Cached logits that differ from the teacher's: a step that ran the
        # teacher instead would not match the reference.
        teacher_logits = teacher_logits + np.random.default_rng(5).normal(
            size=teacher_logits.shape).astype("float32")
        targets = {"teacher_logits": teacher_logits}
        if y is not None:
            targets["labels"] = y

    student_logits = outputs(student, x)
    history = distiller.fit(**data_arguments(input_kind, x, targets), epochs=1, verbose=0)
    expected = reference_epoch_loss(
        student_logits, teacher_logits, y, alpha, DEFAULT_TEMPERATURE
    )
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    # The label metric: exactly the accuracy over the labelled samples.
    if y is not None:
        labelled = y != UNLABELLED
        accuracy = np.mean(np.argmax(student_logits, -1)[labelled] == y[labelled])
        epoch_accuracy = float(history.history["sparse_categorical_accuracy"][0])
        assert epoch_accuracy == pytest.approx(accuracy, abs=1e-6)
    else:
        assert "sparse_categorical_accuracy" not in history.history

    teacher_before = [w.numpy().copy() for w in teacher.weights]
    student_before = [w.numpy().copy() for w in student.weights]
    distiller.optimizer.learning_rate.assign(0.1)
    distiller.fit(**data_arguments(input_kind, x, targets), epochs=1, verbose=0)
    for before, after in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(before, after.numpy())
    assert any(
        not np.array_equal(before, after.numpy())
        for before, after in zip(student_before, student.weights)
    )

    trained_logits = outputs(student, x)
    if check_predict:
        # Traced batches against one eager call: float32 rounding apart.
        np.testing.assert_allclose(
            distiller.predict(x, verbose=0), trained_logits, rtol=1e-5, atol=1e-6
        )
    if y is not None:
        results = distiller.evaluate(
            **data_arguments(input_kind, x, targets, fit=False), verbose=0,
            return_dict=True,
        )
        expected = reference_labelled_loss(trained_logits, y)
        np.testing.assert_allclose(results["loss"], expected, rtol=1e-5)
        labelled = y != UNLABELLED
        accuracy = np.mean(np.argmax(trained_logits, -1)[labelled] == y[labelled])
        assert float(results["sparse_categorical_accuracy"]) == pytest.approx(accuracy, abs=1e-6)
        assert "distillation_loss" not in results


@pytest.mark.parametrize("input_kind", ["numpy", "tf.data", "PyDataset", "generator"])
@pytest.mark.parametrize("model_kind", sorted(MODEL_KINDS))
def test_every_model_kind_takes_every_input_kind(library_defaults, model_kind, input_kind):
    check_path(model_kind, input_kind, "online", "mixed")


# (online, mixed) on tf.data is the first matrix's tf.data case: left out
# here, so each remaining case adds a teacher source or a label kind.
# `predict` is checked in the first matrix only: it takes `x` alone (NumPy
# in every case), which neither the teacher source nor the labels reach.
@pytest.mark.parametrize("teacher_source, labels", [
    ("online", "labelled"), ("online", "unlabelled"),
    ("cached", "labelled"), ("cached", "unlabelled"), ("cached", "mixed"),
])
@pytest.mark.parametrize("model_kind", sorted(MODEL_KINDS))
def test_online_and_cached_with_and_without_labels(
    library_defaults, model_kind, teacher_source, labels
):
    check_path(model_kind, "tf.data", teacher_source, labels, check_predict=False)


@pytest.mark.parametrize("model_kind", sorted(MODEL_KINDS))
def test_save_and_load_every_model_kind(library_defaults, tmp_path, model_kind):
    student, teacher = make_models(model_kind, seed=3)
    x, y = make_x(model_kind), make_labels("mixed")
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01), temperature=5.0)
    distiller.fit(x, y, batch_size=BATCH, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert type(loaded.student) is type(student)
    assert loaded.temperature == 5.0
    # Eager calls (the same weights give the same outputs); the traced
    # `predict` is checked in test_every_model_kind_takes_every_input_kind.
    np.testing.assert_allclose(outputs(loaded, x), outputs(distiller, x), rtol=1e-6)
    # Training continues without a new compile, exactly as the original.
    for model in (distiller, loaded):
        model.fit(x, y, batch_size=BATCH, shuffle=False, verbose=0)
    for a, b in zip(loaded.student.weights, distiller.student.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


class ReshapingClassifier(SubclassedClassifier):
    """Takes inputs of any rank: reshapes instead of `Flatten`."""

    def call(self, inputs, training=None):
        flat = keras.ops.reshape(inputs, (-1, int(np.prod(IMAGE))))
        return self.logits(self.hidden(flat))


@pytest.mark.parametrize("model_kind", ["reshaping", "sequential"])
def test_dataset_of_unknown_rank_adds_no_error_of_ours(library_defaults, model_kind):
    """`from_generator` with `TensorSpec(None)`: a model that takes inputs of
    any rank trains; Keras' Sequential (`Flatten`) needs a known rank, and
    then the error is Keras' own from the model, not one from the Distiller.
    """
    if model_kind == "reshaping":
        keras.utils.set_random_seed(0)
        student, teacher = ReshapingClassifier(4), ReshapingClassifier(16)
    else:
        student, teacher = make_models(model_kind)
    x, y = make_x(model_kind), make_labels("mixed")
    student_logits = outputs(student, x)  # Builds the models, as
    teacher_logits = outputs(teacher, x)  # training them would.
    dataset = tf.data.Dataset.from_generator(
        lambda: ((x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N, BATCH)),
        output_signature=(tf.TensorSpec(None, tf.float32), tf.TensorSpec(None, tf.int64)),
    )
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    # Keras' JAX trainer feeds the step NumPy batches of known shape: there
    # the Sequential trains as the reshaping model does.
    if model_kind == "sequential" and keras.backend.backend() == "tensorflow":
        with pytest.raises(ValueError, match="unknown rank") as error:
            distiller.fit(dataset, verbose=0)
        assert "Sequential" in str(error.value)
        return
    history = distiller.fit(dataset, verbose=0)
    expected = reference_epoch_loss(
        student_logits, teacher_logits, y, DEFAULT_ALPHA, DEFAULT_TEMPERATURE
    )
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
