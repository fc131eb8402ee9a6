import keras
import numpy as np
import pytest
from conftest import make_mlp

import keras_kd
from keras_kd.distillation import metrics


def softmax(z):
    z = np.float64(z) - np.max(z, -1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def ece_reference(labels, logits, bins, weights=None):
    p = softmax(logits)
    confidence, predicted = p.max(1), p.argmax(1)
    weights = np.ones(len(labels)) if weights is None else weights
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if weights[inside].sum() > 0:
            total += abs(np.sum(weights[inside] * (predicted[inside] == labels[inside]))
                         - np.sum(weights[inside] * confidence[inside]))
    return total / weights.sum()


@pytest.mark.parametrize("bins", [1, 10, 15])
def test_ece_matches_numpy(bins):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 5)) * 3
    labels = rng.integers(0, 5, 200)
    weights = rng.uniform(0, 2, 200)
    metric = metrics.ExpectedCalibrationError(num_bins=bins)
    metric.update_state(labels[:120], logits[:120], weights[:120])
    metric.update_state(labels[120:], logits[120:], weights[120:])  # Accumulates.
    np.testing.assert_allclose(float(metric.result()),
                               ece_reference(labels, logits, bins, weights), rtol=1e-5)
    metric.reset_state()
    metric.update_state(np.eye(5)[labels], logits)  # One-hot labels too.
    np.testing.assert_allclose(float(metric.result()), ece_reference(labels, logits, bins),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="num_bins=0"):
        metrics.ExpectedCalibrationError(num_bins=0)


def test_teacher_metrics_in_fit_and_opt_in_evaluate(tiny_data):
    x, y = tiny_data
    keras.utils.set_random_seed(4)
    distiller = keras_kd.Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0),
        metrics=["sparse_categorical_accuracy", metrics.ExpectedCalibrationError(),
                 metrics.TeacherAgreement(), metrics.TeacherKL()],
    )
    z_t = distiller.teacher.predict(x, verbose=0)
    z_s = distiller.student.predict(x, verbose=0)
    agreement = np.mean(z_t.argmax(1) == z_s.argmax(1))
    p_t, p_s = softmax(z_t), softmax(z_s)
    kl = np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), 1))
    for logs in (distiller.fit(x, y, batch_size=64, verbose=0).history,
                 distiller.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)):
        logs = {k: v[-1] if isinstance(v, list) else v for k, v in logs.items()}
        np.testing.assert_allclose(logs["teacher_agreement"], agreement, rtol=1e-6)
        np.testing.assert_allclose(logs["teacher_kl"], kl, rtol=1e-4)
        np.testing.assert_allclose(logs["expected_calibration_error"],
                                   ece_reference(y, z_s, 15), rtol=1e-4)


def test_teacher_metrics_survive_saving(tmp_path, tiny_data):
    x, y = tiny_data
    distiller = keras_kd.Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(metrics=[metrics.TeacherAgreement()])
    distiller.fit(x, y, verbose=0)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert "teacher_agreement" in loaded.evaluate(x, y, verbose=0, return_dict=True)
