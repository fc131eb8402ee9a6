import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_kd.distillation import losses

TEMPERATURES = [0.5, 1.0, 4.0, 20.0]
SCALES = [1.0, 10.0, 1e3]


def log_softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(name, teacher, student, temperature):
    """Float64 NumPy references, one value per sample."""
    log_t = log_softmax64(np.float64(teacher) / temperature)
    log_s = log_softmax64(np.float64(student) / temperature)
    if name == "kl":
        return temperature**2 * np.sum(np.exp(log_t) * (log_t - log_s), -1)
    if name == "cse":
        return -(temperature**2) * np.sum(np.exp(log_t) * log_s, -1)
    if name == "mse_probabilities":
        return np.mean((np.exp(log_s) - np.exp(log_t)) ** 2, -1)
    if name == "mse_logits":
        return np.mean((np.float64(student) - np.float64(teacher)) ** 2, -1)
    raise ValueError(name)


LOSSES = {
    "kl": losses.KLDivergenceWithTemperature,
    "cse": losses.SoftTargetCrossEntropy,
    "mse_probabilities": lambda temperature: (
        losses.DistillationMeanSquaredError(temperature, space="probabilities")
    ),
    "mse_logits": lambda temperature: (
        losses.DistillationMeanSquaredError(temperature, space="logits")
    ),
}


def random_logits(scale, seed, shape=(32, 10)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale).astype("float32")


def float32_tolerance(temperature, scale):
    # float32 log-softmax differences: about 1e-7 of the log-probabilities'
    # size (up to scale / T), times T**2.
    return 1e-6 * temperature**2 * (1.0 + scale / temperature)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_matches_float64_reference(name, temperature, scale, precision):
    teacher = random_logits(scale, 1)
    student = random_logits(scale, 2)
    loss = LOSSES[name](temperature=temperature)
    loss.precision = precision
    per_sample = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )
    expected = reference(name, teacher, student, temperature)
    if precision == "float64":
        np.testing.assert_allclose(per_sample, expected, rtol=1e-5, atol=1e-30)
    else:  # The default: exact to float32 rounding of the log-probabilities.
        np.testing.assert_allclose(
            per_sample, expected, rtol=1e-4, atol=float32_tolerance(temperature, scale))
    # Called as a Keras loss: the batch mean.
    reduced = float(loss(teacher, student))
    np.testing.assert_allclose(reduced, expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_kl_gradient_is_analytic(temperature, scale):
    teacher = tf.constant(random_logits(scale, 3))
    student = tf.Variable(random_logits(scale, 4))
    loss = losses.KLDivergenceWithTemperature()
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(
            loss.compute_per_sample(teacher, student, temperature)
        )
    gradient = tape.gradient(total, student).numpy()
    expected = temperature * (
        np.exp(log_softmax64(student.numpy() / temperature))
        - np.exp(log_softmax64(teacher.numpy() / temperature))
    )
    np.testing.assert_allclose(gradient, expected, atol=1e-5 * temperature)


def test_kl_of_identical_logits_is_exactly_zero_at_large_scale():
    logits = random_logits(1e3, 5)
    loss = losses.KLDivergenceWithTemperature()
    values = keras.ops.convert_to_numpy(
        loss.compute_per_sample(logits, logits, 1.0)
    )
    assert np.all(values == 0.0)


def test_keras_kl_divergence_clips_where_ours_is_exact():
    """The motivating defect: Keras' probability-space KL clips at 1e-7."""
    teacher = random_logits(50.0, 6)
    student = random_logits(50.0, 7)
    expected = reference("kl", teacher, student, 1.0).mean()
    ours = float(losses.KLDivergenceWithTemperature(1.0)(teacher, student))
    keras_kl = float(
        keras.losses.KLDivergence()(
            keras.ops.softmax(teacher), keras.ops.softmax(student)
        )
    )
    assert abs(ours - expected) / expected < 1e-5
    assert abs(keras_kl - expected) / expected > 0.1


logit_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=12),
    elements=st.floats(-1e3, 1e3, width=32),
)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    temperature=st.sampled_from(TEMPERATURES),
)
def test_kl_properties(data, temperature):
    teacher = data.draw(logit_arrays)
    student = data.draw(
        hnp.arrays(
            np.float32, teacher.shape, elements=st.floats(-1e3, 1e3, width=32)
        )
    )
    loss = losses.KLDivergenceWithTemperature(precision="float64")
    values = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )
    assert np.all(np.isfinite(values))
    assert np.all(values >= 0.0)
    same = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, teacher, temperature)
    )
    assert np.all(same == 0.0)
    expected = reference("kl", teacher, student, temperature)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(shift=st.floats(-100, 100), temperature=st.sampled_from(TEMPERATURES))
def test_losses_ignore_a_constant_shift_of_logits(shift, temperature):
    teacher = random_logits(3.0, 8)
    student = random_logits(3.0, 9)
    for name in ("kl", "cse", "mse_probabilities"):
        loss = LOSSES[name](temperature=temperature)
        base = keras.ops.convert_to_numpy(
            loss.compute_per_sample(teacher, student, temperature)
        )
        shifted = keras.ops.convert_to_numpy(
            loss.compute_per_sample(teacher + shift, student - shift, temperature)
        )
        np.testing.assert_allclose(shifted, base, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_config_round_trip(name):
    loss = LOSSES[name](temperature=7.0)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    teacher, student = random_logits(2.0, 10), random_logits(2.0, 11)
    assert float(restored(teacher, student)) == float(loss(teacher, student))


def test_sample_weight_reduction():
    teacher, student = random_logits(2.0, 12, (4, 5)), random_logits(2.0, 13, (4, 5))
    weights = np.array([0.0, 1.0, 2.0, 0.5], dtype="float32")
    loss = losses.KLDivergenceWithTemperature(temperature=2.0)
    expected = np.sum(reference("kl", teacher, student, 2.0) * weights) / 4
    np.testing.assert_allclose(
        float(loss(teacher, student, sample_weight=weights)), expected, rtol=1e-5
    )


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        losses.KLDivergenceWithTemperature(temperature=temperature)


def test_temperature_none_is_one_when_called_alone():
    teacher, student = random_logits(3.0, 20, (4, 5)), random_logits(3.0, 21, (4, 5))
    alone = losses.KLDivergenceWithTemperature()
    assert alone.temperature is None
    np.testing.assert_allclose(
        float(alone(teacher, student)),
        float(losses.KLDivergenceWithTemperature(temperature=1.0)(teacher, student)),
        rtol=1e-7,
    )


def test_get_distillation_loss():
    assert isinstance(
        losses.get_distillation_loss("kl_divergence"),
        losses.KLDivergenceWithTemperature,
    )
    assert isinstance(
        losses.get_distillation_loss("cse"), losses.SoftTargetCrossEntropy
    )
    with pytest.raises(ValueError, match="distillation_loss_fn='nope'"):
        losses.get_distillation_loss("nope")
    with pytest.raises(ValueError, match="space"):
        losses.DistillationMeanSquaredError(space="probs")


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_float32_precision_for_tpus(temperature):
    teacher, student = random_logits(10.0, 14), random_logits(10.0, 15)
    loss = losses.KLDivergenceWithTemperature(precision="float32")
    values = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )
    assert values.dtype == np.float32
    np.testing.assert_allclose(
        values, reference("kl", teacher, student, temperature), rtol=1e-3
    )
