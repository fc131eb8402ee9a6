import keras
import numpy as np
import pytest
from conftest import make_mlp

import keras_kd
from keras_kd import AlphaScheduler
from keras_kd import Distiller
from keras_kd import TemperatureScheduler


def softmax64(z):
    z = np.float64(z) - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def make_distiller(seed=0, learning_rate=0.0, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    distiller = Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate), **compile_kwargs)
    return distiller


def kd(distiller, x, temperature):
    p_t = softmax64(distiller.teacher.predict(x, verbose=0) / temperature)
    p_s = softmax64(distiller.student.predict(x, verbose=0) / temperature)
    return temperature**2 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), 1))


def test_temperature_scheduler_sets_each_epoch_and_logs_it(tiny_data):
    x, y = tiny_data
    distiller = make_distiller()
    schedule = [8.0, 4.0, 2.0]
    history = distiller.fit(
        x, y, batch_size=64, epochs=3, verbose=0,
        callbacks=[TemperatureScheduler(lambda epoch: schedule[epoch])],
    ).history
    assert history["temperature"] == schedule
    for epoch, temperature in enumerate(schedule):
        np.testing.assert_allclose(
            history["distillation_loss"][epoch], kd(distiller, x, temperature), rtol=1e-5
        )


def test_alpha_scheduler_takes_the_current_value(tiny_data):
    x, y = tiny_data
    distiller = make_distiller(alpha=1.0)
    history = distiller.fit(
        x, y, batch_size=64, epochs=3, verbose=0,
        callbacks=[AlphaScheduler(lambda epoch, alpha: alpha / 2)],
    ).history
    assert history["alpha"] == [0.5, 0.25, 0.125]
    for epoch, alpha in enumerate(history["alpha"]):
        np.testing.assert_allclose(
            history["loss"][epoch],
            alpha * history["student_loss"][epoch]
            + (1 - alpha) * history["distillation_loss"][epoch],
            rtol=1e-5,
        )


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            raise KeyboardInterrupt


def test_a_resumed_run_continues_the_schedule(tmp_path, tiny_data):
    """The temperature is a variable of the distiller: BackupAndRestore saves
    it, so a schedule of the current value resumes where it was."""
    x, y = tiny_data

    def run(backup, interrupt):
        distiller = make_distiller(seed=3, learning_rate=0.1)
        callbacks = [
            keras.callbacks.BackupAndRestore(str(backup)),
            TemperatureScheduler(lambda epoch, t: t * 0.5 if epoch else 16.0),
        ] + ([Interrupt()] if interrupt else [])
        distiller.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                      callbacks=callbacks)
        return distiller

    uninterrupted = run(tmp_path / "a", interrupt=False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", interrupt=True)
    resumed = run(tmp_path / "b", interrupt=False)
    assert uninterrupted.temperature == resumed.temperature == 2.0
    for a, b in zip(uninterrupted.student.weights, resumed.student.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_schedules_are_checked(tiny_data):
    x, y = tiny_data
    with pytest.raises(ValueError, match="temperature=-1.0"):
        make_distiller().fit(x, y, verbose=0,
                             callbacks=[TemperatureScheduler(lambda epoch: -1.0)])
    with pytest.raises(ValueError, match="schedule"):
        AlphaScheduler(0.5)
    model = make_mlp([4])
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match="keras_kd.Distiller"):
        model.fit(x, np.zeros((64, 4)), verbose=0,
                  callbacks=[keras_kd.TemperatureScheduler(lambda epoch: 2.0)])
