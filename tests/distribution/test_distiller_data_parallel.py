"""A Distiller under `keras.distribution.DataParallel` over 8 devices
trains the student to the weights one device gives."""

import contextlib

import keras
import numpy as np
import pytest

import keras_kd

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _mlp(seed, hidden, name):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(4)],
        name=name,
    )


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, size=(64,))
    weights = rng.uniform(0.5, 2.0, size=(64,)).astype("float32")
    return x, y, weights


def _run(distribution):
    """Fits a distiller for 8 steps; returns weights, fit and evaluate logs
    and the sharding of the student's first kernel."""
    x, y, sample_weight = _data()
    with distribution.scope() if distribution else contextlib.nullcontext():
        teacher = _mlp(1, 16, "teacher")
        student = _mlp(2, 8, "student")
        distiller = keras_kd.Distiller(student=student, teacher=teacher)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1),
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            alpha=0.3,
            temperature=2.0,
        )
        history = distiller.fit(x, y, sample_weight=sample_weight, batch_size=16,
                                epochs=2, shuffle=False, verbose=0)
        evaluation = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
        sharding = student.weights[0].value.sharding
    return [v.numpy() for v in student.weights], history.history, evaluation, sharding


@pytest.fixture(scope="module")
def runs():
    devices = keras.distribution.list_devices()
    return _run(None), _run(keras.distribution.DataParallel(devices=devices))


def test_data_parallel_trains_the_student_to_the_one_device_weights(runs):
    (single, single_history, _, _), (parallel, parallel_history, _, sharding) = runs
    # Replicated over all 8 devices, so every device holds the whole student.
    assert len(sharding.device_set) == 8
    assert sharding.is_fully_replicated
    for one, eight in zip(single, parallel):
        np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5)
    # The weights moved: equal weights are not the initial ones twice.
    assert np.abs(single[0] - _mlp(2, 8, "student").weights[0].numpy()).max() > 1e-3
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(parallel_history[key], single_history[key], rtol=1e-5)


def test_data_parallel_evaluate_gives_the_one_device_losses(runs):
    (_, _, single, _), (_, _, parallel, _) = runs
    assert set(parallel) == set(single)
    for key in single:
        np.testing.assert_allclose(parallel[key], single[key], rtol=1e-5, atol=1e-6)


def _one_step_update(distribution, reduction):
    x, y, sample_weight = _data()
    with distribution.scope() if distribution else contextlib.nullcontext():
        distiller = keras_kd.Distiller(student=_mlp(2, 8, "student"),
                                       teacher=_mlp(1, 16, "teacher"))
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.01), alpha=0.5, temperature=2.0,
            student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction=reduction))
        before = [v.numpy() for v in distiller.student.weights]
        distiller.fit(x[:16], y[:16], sample_weight=sample_weight[:16], batch_size=16,
                      epochs=1, shuffle=False, verbose=0)
    return [v.numpy() - b for v, b in zip(distiller.student.weights, before)]


def test_a_summed_student_loss_gives_the_one_device_update():
    """`reduction="sum"` is the global batch's sum on 8 devices: neither a
    device's share nor 8 of them (tf.distribute's replica rule)."""
    single = _one_step_update(None, "sum")
    parallel = _one_step_update(keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()), "sum")
    scale = max(np.abs(d).max() for d in single)
    assert scale > 1e-3
    for one, eight in zip(single, parallel):
        np.testing.assert_allclose(eight, one, rtol=1e-5, atol=1e-5 * scale)
