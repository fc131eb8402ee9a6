import keras
import numpy as np
import pytest

from keras_kd.studies import calibration


def overconfident_logits(temperature, n=4000, seed=0):
    """Labels drawn from softmax(z); logits z * temperature: the calibrated
    temperature of these logits is `temperature`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, 5))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return z * temperature, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_fit_temperature_recovers_the_scale(temperature):
    logits, labels = overconfident_logits(temperature)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(temperature, rel=0.1)
    # A minimum: the NLL is higher on both sides.
    nll = calibration.temperature_nll(logits, labels, fitted)
    assert nll < calibration.temperature_nll(logits, labels, fitted * 1.2)
    assert nll < calibration.temperature_nll(logits, labels, fitted / 1.2)


def test_temperature_nll_matches_a_direct_computation():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = np.array([0, 1])
    t = 2.0
    p = np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True)
    expected = -np.mean(np.log(p[[0, 1], labels]))
    assert calibration.temperature_nll(logits, labels, t) == pytest.approx(expected, rel=1e-12)


def test_calibrate_temperature_on_a_model_and_a_dataset():
    import tensorflow as tf

    logits, labels = overconfident_logits(2.0, n=1000)
    # An identity "teacher" that outputs its inputs as logits.
    teacher = keras.Sequential([keras.Input((5,)), keras.layers.Identity()])
    from_arrays = calibration.calibrate_temperature(teacher, (logits.astype("float32"), labels))
    dataset = tf.data.Dataset.from_tensor_slices((logits.astype("float32"), labels)).batch(64)
    from_dataset = calibration.calibrate_temperature(teacher, dataset)
    assert from_arrays == pytest.approx(from_dataset, rel=1e-4)
    assert from_arrays == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize(
    "logits, labels, message",
    [
        (np.zeros((0, 3)), np.zeros(0, int), "n > 0"),
        (np.full((2, 3), np.nan), np.zeros(2, int), "NaN"),
        (np.zeros((2, 3)), np.array([0, 3]), "labels"),
    ],
)
def test_bad_inputs(logits, labels, message):
    with pytest.raises(ValueError, match=message):
        calibration.fit_temperature(logits, labels)
