"""Several teachers: Hinton's ensemble of softened distributions (arithmetic
or geometric mean, weighted), online and cached, saved and loaded."""

import keras
import numpy as np
import pytest
from conftest import make_mlp
from conftest import numpy

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


# Ensembles of *different* members, for the losses that do not compare
# softmax mixtures (README, "Ensembles": "sigmoid losses the per-class
# Bernoulli mixture, logit-space losses the weighted mean of the members'
# logits").


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def bernoulli_kl(p, q):
    return p * (np.log(p) - np.log(q)) + (1 - p) * (np.log1p(-p) - np.log1p(-q))


def _different_members(num_classes, count=2):
    keras.utils.set_random_seed(31)
    members = [make_mlp([16], num_classes=num_classes, name=f"member_{i}") for i in range(count)]
    # Members that disagree (not near-identical initialisations).
    for scale, member in zip((1.0, -3.0, 2.0), members):
        member.layers[-1].bias.assign(scale * np.linspace(-1, 1, num_classes))
    return members


@pytest.mark.parametrize("ensemble", ["arithmetic", "geometric"])
def test_logit_space_loss_of_different_members_is_the_weighted_mean_of_logits(
    tiny_data, ensemble
):
    """For `DistillationMeanSquaredError(space="logits")` both rules give the
    teacher `sum_m w_m z_m`, whatever the temperature (it uses none)."""
    x, y = tiny_data
    members = _different_members(4)
    keras.utils.set_random_seed(9)
    distiller = keras_kd.Distiller(student=make_mlp([8], name="student"), teacher=members,
                                   teacher_weights=[1.0, 3.0], ensemble=ensemble)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0, temperature=5.0,
                      distillation_loss_fn=keras_kd.DistillationMeanSquaredError(space="logits"),
                      run_eagerly=True)
    z = [np.float64(numpy(m(x))) for m in members]
    assert np.abs(z[0] - z[1]).max() > 1.0  # The members differ.
    teacher = 0.25 * z[0] + 0.75 * z[1]
    student = np.float64(numpy(distiller.student(x)))
    expected = np.mean(np.mean((student - teacher) ** 2, axis=-1))
    # A mixture of softened probabilities (the softmax rule) would differ.
    assert not np.isclose(expected, np.mean(np.mean((student - np.log(
        0.25 * softmax(z[0]) + 0.75 * softmax(z[1]))) ** 2, -1)), rtol=1e-2)
    np.testing.assert_allclose(distillation_loss(distiller, x, y), expected, rtol=1e-5)


@pytest.mark.parametrize("ensemble", ["arithmetic", "geometric"])
def test_sigmoid_loss_of_different_members_is_the_bernoulli_mixture(ensemble):
    """Multi-label student (binary cross-entropy): per class, the arithmetic
    rule mixes the members' Bernoullis `sum_m w_m sigmoid(z_m / T)`; the
    geometric one gives the normalised product, `sigmoid(sum_m w_m z_m / T)`."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(24, 6)).astype("float32")
    y = (rng.uniform(size=(24, 4)) < 0.3).astype("float32")
    members = _different_members(4, count=3)
    weights = np.array([2.0, 1.0, 1.0]) / 4.0
    temperature = 2.0
    keras.utils.set_random_seed(9)
    distiller = keras_kd.Distiller(student=make_mlp([8], name="student"), teacher=members,
                                   teacher_weights=[2, 1, 1], ensemble=ensemble)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0, temperature=temperature,
                      student_loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
                      run_eagerly=True)
    z = np.stack([np.float64(numpy(m(x))) for m in members])  # (members, batch, classes)
    if ensemble == "arithmetic":
        p = np.einsum("m,mbc->bc", weights, sigmoid(z / temperature))
    else:
        p = sigmoid(np.einsum("m,mbc->bc", weights, z) / temperature)
    q = sigmoid(np.float64(numpy(distiller.student(x))) / temperature)
    expected = temperature**2 * np.mean(np.mean(bernoulli_kl(p, q), axis=-1))
    np.testing.assert_allclose(distillation_loss(distiller, x, y), expected, rtol=1e-5)
