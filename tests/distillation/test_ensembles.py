"""Several teachers: Hinton's ensemble of softened distributions (arithmetic
or geometric mean, weighted), online and cached, saved and loaded."""

import keras
import numpy as np
import pytest
from conftest import make_mlp

import keras_kd
from keras_kd.distillation import cache


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def teachers(count=3, seed=0):
    keras.utils.set_random_seed(seed)
    return [make_mlp([16], name=f"teacher_{i}") for i in range(count)]


def distillation_loss(distiller, x, y, **fit):
    return distiller.train_on_batch(x, y, return_dict=True, **fit)["distillation_loss"]


def make(teacher, weights=None, ensemble="arithmetic", temperature=2.0):
    keras.utils.set_random_seed(9)
    distiller = keras_kd.Distiller(student=make_mlp([8], name="student"), teacher=teacher,
                                   teacher_weights=weights, ensemble=ensemble)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), temperature=temperature, alpha=0.0)
    return distiller


@pytest.mark.parametrize("ensemble", ["arithmetic", "geometric"])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 5.0]])
def test_ensemble_loss_equals_numpy_mixture(tiny_data, ensemble, weights):
    x, y = tiny_data
    members = teachers()
    distiller = make(members, weights, ensemble)
    t = 2.0
    w = np.ones(3) / 3 if weights is None else np.array(weights) / sum(weights)
    p = np.stack([softmax(m.predict(x, verbose=0).astype("float64") / t) for m in members], 1)
    if ensemble == "arithmetic":
        mixture = np.einsum("m,bmc->bc", w, p)
    else:
        mixture = np.exp(np.einsum("m,bmc->bc", w, np.log(p)))
        mixture /= mixture.sum(-1, keepdims=True)
    q = softmax(distiller.student.predict(x, verbose=0).astype("float64") / t)
    expected = t**2 * np.mean(np.sum(mixture * (np.log(mixture) - np.log(q)), 1))
    np.testing.assert_allclose(distillation_loss(distiller, x, y), expected, rtol=1e-5)


@pytest.mark.parametrize("ensemble", ["arithmetic", "geometric"])
def test_an_ensemble_of_identical_teachers_is_one_teacher(tiny_data, ensemble):
    x, y = tiny_data
    (teacher,) = teachers(1)
    copies = [keras.models.clone_model(teacher) for _ in range(3)]
    for copy in copies:
        copy.set_weights(teacher.get_weights())
    single = distillation_loss(make(teacher), x, y)
    np.testing.assert_allclose(distillation_loss(make(copies, [1, 3, 2], ensemble), x, y),
                               single, rtol=1e-5)


def test_cached_ensemble_equals_online_and_follows_the_temperature(tiny_data):
    x, y = tiny_data
    members = teachers()
    logits = cache.compute_teacher_logits(members, x, batch_size=16)
    assert logits.shape == (64, 3, 4)
    for index, member in enumerate(members):
        np.testing.assert_allclose(logits[:, index], member.predict(x, verbose=0), rtol=1e-5)
    for temperature in (1.0, 5.0):  # The cache holds the members, not a mixture.
        online = make(members, [1, 2, 3], temperature=temperature)
        cached = make(members, [1, 2, 3], temperature=temperature)
        np.testing.assert_allclose(
            distillation_loss(cached, x, {"labels": y, "teacher_logits": logits}),
            distillation_loss(online, x, y), rtol=1e-5)


def test_ensemble_saves_and_loads(tmp_path, tiny_data):
    x, y = tiny_data
    distiller = make(teachers(2), [3.0, 1.0], "geometric")
    distiller.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras")
    assert len(loaded.teachers) == 2 and loaded.ensemble == "geometric"
    assert loaded.teacher_weights == pytest.approx([0.75, 0.25])
    np.testing.assert_allclose(distillation_loss(loaded, x, y), distillation_loss(distiller, x, y),
                               rtol=1e-6)
    for a, b in zip(loaded.teachers, distiller.teachers):
        np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))


@pytest.mark.parametrize("weights, match", [([1.0], "one positive weight per teacher"),
                                            ([1.0, -1.0], "teacher_weights=")])
def test_bad_teacher_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        keras_kd.Distiller(student=make_mlp([8]), teacher=teachers(2), teacher_weights=weights)
