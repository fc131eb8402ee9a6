import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd.data import datasets
from keras_kd.studies import export
from keras_kd import models


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def trained_student():
    keras.utils.set_random_seed(0)
    x, y = datasets.select("mnist", "train", source="sample", limit=1024)
    x_test, y_test = datasets.select("mnist", "test", source="sample", limit=500)
    x = datasets.preprocess(x, "mnist").numpy()
    x_test = datasets.preprocess(x_test, "mnist").numpy()
    student = models.build_keras_io_student()
    student.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    student.fit(x, y, epochs=2, verbose=0)
    return student, x, x_test, y_test


def test_saved_model_and_tflite_match_the_keras_student(trained_student, tmp_path):
    student, x, x_test, y_test = trained_student
    paths = export.export_student(student, tmp_path, export.FORMATS, representative_data=x[:200])
    expected = student.predict(x_test, verbose=0)

    served = tf.saved_model.load(paths["saved_model"])
    np.testing.assert_allclose(served.serve(x_test).numpy(), expected, atol=1e-5)

    tflite = export.tflite_predict(paths["tflite"], x_test, batch_size=100, use_xnnpack=False)
    np.testing.assert_allclose(tflite, expected, atol=1e-5)

    int8 = export.tflite_predict(paths["tflite_int8"], x_test, batch_size=100)
    # Quantised: probabilities within 1e-2 on average, the same top-1 class
    # almost always, accuracy within a point.
    assert np.abs(softmax(int8) - softmax(expected)).mean() < 1e-2
    assert (int8.argmax(1) == expected.argmax(1)).mean() > 0.97
    accuracy = (expected.argmax(1) == y_test).mean()
    assert abs((int8.argmax(1) == y_test).mean() - accuracy) < 0.01


def test_export_argument_errors(trained_student, tmp_path):
    student = trained_student[0]
    with pytest.raises(ValueError, match="representative_data"):
        export.export_student(student, tmp_path, ["tflite_int8"])
    with pytest.raises(ValueError, match="Unknown export formats"):
        export.export_student(student, tmp_path, ["onnx"])
