"""The same Distiller on each backend's own steps.

Runs on the backend the suite runs on: TensorFlow by default, JAX in CI's
JAX leg (`KERAS_BACKEND=jax JAX_ENABLE_X64=1`). Each check is against a
float64 NumPy reference or Keras' own student, never against the other
backend.
"""

import keras
import numpy as np
import pytest

from keras_kd import Distiller


def _pair(seed=0):
    keras.utils.set_random_seed(seed)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="teacher")
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)], name="student")
    return teacher, student


def _softmax64(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _data(n=8):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, n)


def test_one_sgd_step_is_the_float64_reference():
    """Loss and updated weights of one step: alpha * CE + (1 - alpha) * T^2 *
    KL(teacher_T || student_T), batch mean, by hand in float64."""
    teacher, student = _pair()
    x, y = _data()
    alpha, temperature, lr = 0.3, 2.0, 0.5
    w, b = (np.float64(v) for v in student.get_weights())
    w_t, b_t = (np.float64(v) for v in teacher.get_weights())
    x64, n = np.float64(x), len(x)
    z, z_t = x64 @ w + b, x64 @ w_t + b_t
    onehot = np.eye(3)[y]
    p, p_s, p_t = _softmax64(z), _softmax64(z / temperature), _softmax64(z_t / temperature)
    ce = -np.sum(onehot * np.log(p), axis=-1)
    kl = temperature**2 * np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)
    loss = np.mean(alpha * ce + (1 - alpha) * kl)
    dz = (alpha * (p - onehot) + (1 - alpha) * temperature * (p_s - p_t)) / n

    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(lr), alpha=alpha, temperature=temperature)
    history = distiller.fit(x, y, batch_size=n, epochs=1, shuffle=False, verbose=0).history
    assert float(history["loss"][0]) == pytest.approx(loss, rel=1e-5)
    new_w, new_b = student.get_weights()
    np.testing.assert_allclose(new_w, w - lr * x64.T @ dz, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_b, b - lr * dz.sum(axis=0), rtol=1e-5, atol=1e-6)
    # The teacher is frozen: its weights are those it came with.
    np.testing.assert_array_equal(teacher.get_weights()[0], np.float32(w_t))


def test_evaluate_is_the_students_own_and_survives_save_and_load(tmp_path):
    teacher, student = _pair(1)
    x, y = _data(16)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", metrics=["sparse_categorical_accuracy"], temperature=2.0)
    distiller.fit(x, y, batch_size=4, epochs=2, verbose=0)
    student.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["sparse_categorical_accuracy"])
    own = student.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    logs = distiller.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    assert float(logs["loss"]) == pytest.approx(float(own["loss"]), rel=1e-5)
    assert float(logs["sparse_categorical_accuracy"]) == pytest.approx(float(
        own["sparse_categorical_accuracy"]), rel=1e-6)

    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.student.predict(x, verbose=0),
                               student.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    again = loaded.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)
    assert float(again["loss"]) == pytest.approx(float(logs["loss"]), rel=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX refuses tf.distribute")
def test_a_tf_distribute_scope_is_refused_on_jax_with_keras_distribution_named():
    import tensorflow as tf

    teacher, student = _pair(2)
    x, y = _data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        with pytest.raises(RuntimeError, match=r"MirroredStrategy.*keras\.distribution"):
            Distiller(student=student, teacher=teacher)
    # Built and compiled outside, fitted or evaluated inside: refused too.
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd")
    with strategy.scope():
        with pytest.raises(RuntimeError, match="keras.distribution"):
            distiller.compile(optimizer="sgd")
        with pytest.raises(RuntimeError, match="keras.distribution"):
            distiller.fit(x, y, verbose=0)
        with pytest.raises(RuntimeError, match="keras.distribution"):
            distiller.evaluate(x, y, verbose=0)


class _NoXLA(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, inputs):
        return inputs


def test_the_automatic_xla_rule_follows_the_backend():
    """`jit_compile="auto"` (the teacher-logits cache's forward pass): on JAX
    XLA whenever every layer supports it, as Keras compiles there; on TF on
    a CPU-only machine, never."""
    import tensorflow as tf

    from keras_kd.distillation.xla import auto_jit_compile

    teacher, _ = _pair(3)
    unsupported = keras.Sequential([keras.Input((4,)), _NoXLA(), keras.layers.Dense(3)])
    assert auto_jit_compile(unsupported) is False
    if keras.backend.backend() == "jax":
        assert auto_jit_compile(teacher) is True
    elif all(d.device_type == "CPU" for d in tf.config.list_physical_devices()):
        assert auto_jit_compile(teacher) is False
