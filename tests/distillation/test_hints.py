"""Feature hints: each method against a NumPy port of mdistiller's, FitNets
connectors that belong to the distiller, one student forward pass."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.distillation import hints


def normalize(x, eps=1e-12):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def at_reference(f_s, f_t):
    def at(f):
        return normalize((f**2).mean(-1).reshape(len(f), -1))

    def pool(f, size):  # adaptive_avg_pool2d for sizes that divide evenly.
        k = f.shape[1] // size
        return f.reshape(len(f), size, k, size, k, -1).mean((2, 4))

    h_s, h_t = f_s.shape[1], f_t.shape[1]
    if h_s > h_t:
        f_s = pool(f_s, h_t)
    elif h_s < h_t:
        f_t = pool(f_t, h_s)
    return np.mean((at(f_s) - at(f_t)) ** 2)


def sp_reference(f_s, f_t):
    def gram(f):
        f = f.reshape(len(f), -1)
        return normalize(f @ f.T)

    return np.sum((gram(f_t) - gram(f_s)) ** 2) / len(f_s) ** 2


def smooth_l1(a, b):
    d = np.abs(a - b)
    return np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5))


def rkd_reference(f_s, f_t, eps=1e-12):
    def pdist(e):
        sq = (e**2).sum(1)
        res = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * e @ e.T, eps))
        np.fill_diagonal(res, 0)
        return res / res[res > 0].mean()

    def angles(e):
        d = normalize(e[None, :, :] - e[:, None, :])
        return np.einsum("ijk,ilk->ijl", d, d).reshape(-1)

    s, t = f_s.reshape(len(f_s), -1), f_t.reshape(len(f_t), -1)
    return 25 * smooth_l1(pdist(s), pdist(t)) + 50 * smooth_l1(angles(s), angles(t))


def pkt_reference(f_s, f_t, eps=1e-7):
    def kernel(f):
        f = f.reshape(len(f), -1)
        f = f / (np.sqrt((f**2).sum(1, keepdims=True)) + eps)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    m, t = kernel(f_s), kernel(f_t)
    return np.mean(t * np.log((t + eps) / (m + eps)))


REFERENCES = {
    "attention": at_reference, "similarity": sp_reference, "rkd": rkd_reference,
    "pkt": pkt_reference, "fitnet": lambda s, t: np.mean((s - t) ** 2),
}


@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_each_method_equals_its_reference(method):
    rng = np.random.default_rng(0)
    f_s = rng.normal(size=(6, 4, 4, 3)).astype("float32")
    f_t = rng.normal(size=(6, 4, 4, 3) if method == "fitnet" else (6, 2, 2, 5)).astype("float32")
    hint = hints.FeatureHint("a", "b", method=method)
    value = float(hint.loss(f_s, f_t))
    np.testing.assert_allclose(value, REFERENCES[method](np.float64(f_s), np.float64(f_t)),
                               rtol=2e-4, atol=1e-7)
    assert hint.weight == hints.DEFAULT_WEIGHTS[method]


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class Counting(keras.layers.Layer):
    calls = 0

    def call(self, inputs):
        Counting.calls += 1
        return inputs


def models(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu",
                                 name="s_conv")(Counting()(inputs))
    student = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(hidden)))
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="t_conv1")(inputs)
    hidden = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu",
                                 name="t_conv2")(hidden)
    teacher = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(hidden)))
    return student, teacher


@pytest.fixture
def images():
    rng = np.random.default_rng(1)
    return rng.normal(size=(32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)


def test_fitnet_connector_belongs_to_the_distiller(tmp_path, images):
    x, y = images
    student, teacher = models()
    parameters = student.count_params()
    distiller = keras_kd.Distiller(student=student, teacher=teacher,
                                   hints=[keras_kd.FeatureHint("s_conv", "t_conv2")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.3, temperature=2.0,
                      run_eagerly=True)
    (connector,) = distiller.connectors
    conv = connector.layers[0]
    assert isinstance(conv, keras.layers.Conv2D) and conv.strides == (2, 2) and conv.filters == 8
    # The hint's value, with the connector in training mode (batch statistics).
    s_feat = keras.Model(student.input, student.get_layer("s_conv").output)(x)
    t_feat = keras.Model(teacher.input, teacher.get_layer("t_conv2").output)(x)
    expected = 100 * np.mean((connector(s_feat, training=True).numpy() - t_feat.numpy()) ** 2)
    calls = Counting.calls
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert Counting.calls == calls + 1  # One student forward pass for logits and features.
    np.testing.assert_allclose(logs["fitnet_loss"], expected, rtol=1e-4)
    np.testing.assert_allclose(
        logs["loss"], 0.3 * logs["student_loss"] + 0.7 * logs["distillation_loss"] + expected,
        rtol=1e-4)
    # Trained with the student; the student keeps exactly its own parameters.
    distiller.optimizer.learning_rate.assign(0.05)
    before = [w.numpy().copy() for w in connector.trainable_weights]
    teacher_before = [w.numpy().copy() for w in teacher.weights]
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(not np.allclose(a, b.numpy()) for a, b in zip(before, connector.trainable_weights))
    for a, b in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, b.numpy())
    assert distiller.student.count_params() == parameters
    connector_ids = {id(w) for w in connector.weights}
    assert not connector_ids & {id(w) for w in distiller.student.weights}
    exported = keras_kd.export_student(distiller.student, str(tmp_path / "export"), ["saved_model"])
    assert "saved_model" in exported
    # Saved and loaded with the distiller, connectors included.
    distiller.save(tmp_path / "hinted.keras")
    loaded = keras.models.load_model(tmp_path / "hinted.keras")
    assert [h.get_config() for h in loaded.hints] == [h.get_config() for h in distiller.hints]
    for a, b in zip(loaded.connectors[0].weights, connector.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0),
                               rtol=1e-6)
    assert "fitnet_loss" not in loaded.evaluate(x, y, verbose=0, return_dict=True)


def test_several_hints_each_logged(images):
    x, y = images
    student, teacher = models(2)
    methods = ["attention", "similarity", "rkd", "pkt"]
    distiller = keras_kd.Distiller(
        student=student, teacher=teacher,
        hints=[keras_kd.FeatureHint("s_conv", "t_conv1" if m == "attention" else "t_conv2",
                                    method=m) for m in methods],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    assert distiller.connectors == []  # Relational methods need none.
    logs = distiller.train_on_batch(x, y, return_dict=True)
    s_feat = keras.Model(student.input, student.get_layer("s_conv").output)(x).numpy()
    for method in methods:
        t_layer = "t_conv1" if method == "attention" else "t_conv2"
        t_feat = keras.Model(teacher.input, teacher.get_layer(t_layer).output)(x).numpy()
        expected = hints.DEFAULT_WEIGHTS[method] * REFERENCES[method](
            np.float64(s_feat), np.float64(t_feat))
        np.testing.assert_allclose(logs[f"{method}_loss"], expected, rtol=2e-3, atol=1e-6)
    history = distiller.fit(x, y, batch_size=16, verbose=0).history
    assert all(np.isfinite(history[f"{m}_loss"][0]) for m in methods)


def test_hint_errors(images):
    student, teacher = models()
    with pytest.raises(ValueError, match="no layer 'nope'"):
        keras_kd.Distiller(student=student, teacher=teacher,
                           hints=[keras_kd.FeatureHint("nope", "t_conv2")])
    with pytest.raises(ValueError, match="method="):
        keras_kd.FeatureHint("s_conv", "t_conv2", method="magic")
    with pytest.raises(ValueError, match="one teacher"):
        keras_kd.Distiller(student=student, teacher=[teacher, teacher],
                           hints=[keras_kd.FeatureHint("s_conv", "t_conv2", "pkt")])
    with pytest.raises(ValueError, match="No FitNets connector"):
        hints.build_connector((3, 3, 4), (8, 8, 2), "c")
