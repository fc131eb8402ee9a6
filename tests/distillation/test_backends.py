"""The same Distiller on each backend's own steps.

Runs on the backend the suite runs on: TensorFlow by default, JAX in CI's
JAX leg (`KERAS_BACKEND=jax JAX_ENABLE_X64=1`), PyTorch with
`KERAS_BACKEND=torch`. Each check is against a
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


def _float64(model):
    return [np.float64(v) for v in model.get_weights()]


def _teacher_probabilities(teacher, x, temperature, weights=(1.0,)):
    """The (ensemble) teacher's softened distribution, float64: the
    arithmetic mixture of `softmax(z_m / T)` (`keras_kd.distillation.ensembles`)."""
    members = teacher if isinstance(teacher, list) else [teacher]
    mixture = 0.0
    for member, weight in zip(members, weights):
        w_t, b_t = _float64(member)
        mixture = mixture + weight * _softmax64((np.float64(x) @ w_t + b_t) / temperature)
    return mixture


def _kd_step(z, y, p_t, alpha, temperature):
    """Loss of alpha * CE + (1 - alpha) * T^2 * KL(p_t || student_T), batch
    mean, and its gradient with respect to the student's logits `z`."""
    onehot = np.eye(z.shape[-1])[y]
    p, p_s = _softmax64(z), _softmax64(z / temperature)
    ce = -np.sum(onehot * np.log(p), axis=-1)
    kl = temperature**2 * np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)
    loss = np.mean(alpha * ce + (1 - alpha) * kl)
    dz = (alpha * (p - onehot) + (1 - alpha) * temperature * (p_s - p_t)) / len(z)
    return loss, dz


def _sgd_reference(student, x, y, p_t, alpha, temperature, lr, weights=None):
    """(loss, new kernel, new bias) of one SGD step of a Dense student on the
    whole batch, in float64."""
    w, b = _float64(student) if weights is None else weights
    x64 = np.float64(x)
    loss, dz = _kd_step(x64 @ w + b, y, p_t, alpha, temperature)
    return loss, w - lr * x64.T @ dz, b - lr * dz.sum(axis=0)


def test_one_sgd_step_is_the_float64_reference():
    """Loss and updated weights of one step: alpha * CE + (1 - alpha) * T^2 *
    KL(teacher_T || student_T), batch mean, by hand in float64."""
    teacher, student = _pair()
    x, y = _data()
    alpha, temperature, lr = 0.3, 2.0, 0.5
    w_t = teacher.get_weights()[0]
    loss, new_w64, new_b64 = _sgd_reference(
        student, x, y, _teacher_probabilities(teacher, x, temperature), alpha, temperature, lr)

    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(lr), alpha=alpha, temperature=temperature)
    history = distiller.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    assert float(history["loss"][0]) == pytest.approx(loss, rel=1e-5)
    new_w, new_b = student.get_weights()
    np.testing.assert_allclose(new_w, new_w64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_b, new_b64, rtol=1e-5, atol=1e-6)
    # The teacher is frozen: its weights are those it came with.
    np.testing.assert_array_equal(teacher.get_weights()[0], w_t)


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


@pytest.mark.skipif(keras.backend.backend() == "tensorflow",
                    reason="JAX and PyTorch refuse tf.distribute")
def test_a_tf_distribute_scope_is_refused_with_the_alternative_named():
    """On JAX the message names `keras.distribution`; on PyTorch (where
    Keras 3.15 has no distribution backend) the TensorFlow backend."""
    import tensorflow as tf

    teacher, student = _pair(2)
    x, y = _data()
    alternative = {"jax": r"keras\.distribution"}.get(
        keras.backend.backend(), r"KERAS_BACKEND=tensorflow")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        with pytest.raises(RuntimeError, match=rf"MirroredStrategy.*{alternative}"):
            Distiller(student=student, teacher=teacher)
    # Built and compiled outside, fitted or evaluated inside: refused too.
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd")
    with strategy.scope():
        with pytest.raises(RuntimeError, match=alternative):
            distiller.compile(optimizer="sgd")
        with pytest.raises(RuntimeError, match=alternative):
            distiller.fit(x, y, verbose=0)
        with pytest.raises(RuntimeError, match=alternative):
            distiller.evaluate(x, y, verbose=0)


@pytest.mark.skipif(keras.backend.backend() != "jax",
                    reason="the refusal of on-policy batches is JAX's")
def test_on_policy_batches_are_refused_on_jax_with_the_alternatives_named():
    """On JAX, `fit` holds the weights in its compiled state and empties the
    variables, so `OnPolicyBatches` could not generate with the student
    during `fit` (before: "'NoneType' object is not callable" at the first
    on-policy batch). Refused at construction, naming the TensorFlow
    backend and the off-policy alternative."""
    from keras_kd.data.sequence_kd import OnPolicyBatches

    with pytest.raises(RuntimeError, match=r"JAX backend.*KERAS_BACKEND=tensorflow.*"
                                           r"teacher_transfer_set"):
        OnPolicyBatches([], student=None, lmbda=0.5, prompt_length=2)


class _NoXLA(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_jit = False

    def call(self, inputs):
        return inputs


def test_the_automatic_xla_rule_follows_the_backend():
    """`jit_compile="auto"` (the teacher-logits cache's forward pass): on JAX
    XLA whenever every layer supports it, as Keras compiles there; on TF on
    a CPU-only machine, never; on PyTorch never (Keras' torch "auto" is
    eager)."""
    import tensorflow as tf

    from keras_kd.distillation.xla import auto_jit_compile

    teacher, _ = _pair(3)
    unsupported = keras.Sequential([keras.Input((4,)), _NoXLA(), keras.layers.Dense(3)])
    assert auto_jit_compile(unsupported) is False
    if keras.backend.backend() == "jax":
        assert auto_jit_compile(teacher) is True
    elif keras.backend.backend() == "torch":
        assert auto_jit_compile(teacher) is False
    elif all(d.device_type == "CPU" for d in tf.config.list_physical_devices()):
        assert auto_jit_compile(teacher) is False


# Beyond the step: callbacks, class weights, ensembles, hints and compiled
# metrics, each checked by a value on the backend the suite runs on.


def test_schedulers_set_the_values_the_step_uses():
    """LearningRateScheduler, TemperatureScheduler and AlphaScheduler: each
    epoch's one step is the float64 step at that epoch's three values."""
    import keras_kd

    teacher, student = _pair(4)
    x, y = _data()
    rates, temperatures, alphas = [0.5, 0.2], [2.0, 4.0], [0.3, 0.8]
    weights, losses = _float64(student), []
    for lr, temperature, alpha in zip(rates, temperatures, alphas):
        p_t = _teacher_probabilities(teacher, x, temperature)
        loss, *weights = _sgd_reference(student, x, y, p_t, alpha, temperature, lr, weights)
        losses.append(loss)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), alpha=0.5, temperature=1.0)
    history = distiller.fit(x, y, batch_size=len(x), epochs=2, shuffle=False, verbose=0, callbacks=[
        keras.callbacks.LearningRateScheduler(lambda epoch: rates[epoch]),
        keras_kd.TemperatureScheduler(lambda epoch: temperatures[epoch]),
        keras_kd.AlphaScheduler(lambda epoch: alphas[epoch]),
    ]).history
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-5)
    np.testing.assert_allclose(history["temperature"], temperatures)
    np.testing.assert_allclose(history["alpha"], alphas)
    for new, reference in zip(student.get_weights(), weights):
        np.testing.assert_allclose(new, reference, rtol=1e-5, atol=1e-6)


def test_stop_on_non_finite_loss_stops_at_the_nan_batch():
    import keras_kd

    teacher, student = _pair(5)
    x, y = _data(8)
    x[4, 0] = np.nan  # In the third batch of two.
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd")
    with pytest.raises(keras_kd.NonFiniteLossError, match=r"epoch 1, batch 3\."):
        distiller.fit(x, y, batch_size=2, epochs=2, shuffle=False, verbose=0,
                      callbacks=[keras_kd.StopOnNonFiniteLoss()])


class _Interrupt(Exception):
    pass


class _InterruptAtEpoch(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise _Interrupt()


def test_a_resumed_run_gives_the_uninterrupted_weights(tmp_path):
    """BackupAndRestore with Adam and a temperature schedule: killed after
    epoch 1 of 2 and resumed by a new process's models, the run ends where
    the uninterrupted one does."""
    import keras_kd

    x, y = _data(16)
    backup = str(tmp_path / "backup")

    def run(*callbacks):
        teacher, student = _pair(6)
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.Adam(0.05), alpha=0.5, temperature=2.0)
        schedule = keras_kd.TemperatureScheduler(lambda epoch: 2.0 + epoch)
        try:
            distiller.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                          callbacks=[schedule, *callbacks])
        except _Interrupt:
            pass
        return student.get_weights()

    whole = run()
    cut = run(keras.callbacks.BackupAndRestore(backup), _InterruptAtEpoch(1))
    resumed = run(keras.callbacks.BackupAndRestore(backup))
    assert max(np.abs(a - b).max() for a, b in zip(cut, whole)) > 1e-3
    for one, other in zip(resumed, whole):
        np.testing.assert_allclose(other, one, rtol=1e-6, atol=1e-6)


def test_class_weight_is_the_same_sample_weight():
    x, y = _data(16)
    class_weight = {0: 1.0, 1: 3.0, 2: 0.25}
    runs = []
    for kwargs in ({"class_weight": class_weight},
                   {"sample_weight": np.float32([class_weight[c] for c in y])}, {}):
        teacher, student = _pair(7)
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.3), alpha=0.5, temperature=2.0)
        history = distiller.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                                **kwargs).history
        runs.append((student.get_weights(), history["loss"]))
    (weighted, loss), (sample_weighted, sample_loss), (unweighted, _) = runs
    np.testing.assert_allclose(loss, sample_loss, rtol=1e-6)
    for a, b in zip(weighted, sample_weighted):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert max(np.abs(a - b).max() for a, b in zip(weighted, unweighted)) > 1e-4


def test_an_ensemble_teacher_step_is_the_float64_reference():
    """Two weighted teachers: the KD target is the arithmetic mixture of
    their softened distributions."""
    (first, student), (second, _) = _pair(8), _pair(9)
    x, y = _data()
    alpha, temperature, lr, weights = 0.2, 3.0, 0.5, (0.25, 0.75)
    p_t = _teacher_probabilities([first, second], x, temperature, weights)
    loss, new_w, new_b = _sgd_reference(student, x, y, p_t, alpha, temperature, lr)
    distiller = Distiller(student=student, teacher=[first, second], teacher_weights=[1.0, 3.0])
    distiller.compile(optimizer=keras.optimizers.SGD(lr), alpha=alpha, temperature=temperature)
    history = distiller.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    assert float(history["loss"][0]) == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(student.get_weights()[0], new_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(student.get_weights()[1], new_b, rtol=1e-5, atol=1e-6)


def _hidden(seed, name):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, "relu", name=f"{name}_h"),
                             keras.layers.Dense(3)], name=name)


def test_a_fitnet_hint_step_is_the_float64_reference():
    """KD + 2 * mean((h_s - h_t)^2) over the hidden features (equal widths:
    no connector), one SGD step by hand through both layers."""
    import keras_kd

    teacher, student = _hidden(10, "teacher"), _hidden(11, "student")
    x, y = _data()
    alpha, temperature, lr, weight = 0.5, 2.0, 0.5, 2.0
    x64 = np.float64(x)
    w1_t, b1_t, w2_t, b2_t = _float64(teacher)
    h_t = np.maximum(x64 @ w1_t + b1_t, 0)
    p_t = _softmax64((h_t @ w2_t + b2_t) / temperature)
    w1, b1, w2, b2 = _float64(student)
    pre = x64 @ w1 + b1
    h = np.maximum(pre, 0)
    kd, dz = _kd_step(h @ w2 + b2, y, p_t, alpha, temperature)
    hint = weight * np.mean((h - h_t) ** 2)
    dpre = (dz @ w2.T + weight * 2 * (h - h_t) / h.size) * (pre > 0)
    reference = [w1 - lr * x64.T @ dpre, b1 - lr * dpre.sum(0), w2 - lr * h.T @ dz,
                 b2 - lr * dz.sum(0)]

    distiller = Distiller(student=student, teacher=teacher, hints=[
        keras_kd.FeatureHint("student_h", "teacher_h", method="fitnet", weight=weight)])
    distiller.compile(optimizer=keras.optimizers.SGD(lr), alpha=alpha, temperature=temperature)
    history = distiller.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
    assert float(history["fitnet_loss"][0]) == pytest.approx(hint, rel=1e-5)
    assert float(history["loss"][0]) == pytest.approx(kd + hint, rel=1e-5)
    for new, expected in zip(student.get_weights(), reference):
        np.testing.assert_allclose(new, expected, rtol=1e-5, atol=1e-6)


def test_compiled_and_teacher_metrics_built_by_the_first_step():
    """`metrics=["accuracy", TeacherAgreement()]`, unbuilt when the compiled
    step first runs: one full-batch step logs them on the student's logits
    before the update."""
    import keras_kd

    teacher, student = _pair(12)
    x, y = _data(16)
    z = student.predict(x, verbose=0)
    z_t = teacher.predict(x, verbose=0)
    accuracy = np.mean(np.argmax(z, -1) == y)
    agreement = np.mean(np.argmax(z, -1) == np.argmax(z_t, -1))
    assert 0 < accuracy < 1 and 0 < agreement < 1  # Not a value any bug gives.
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd", metrics=["accuracy", keras_kd.TeacherAgreement()])
    history = distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert float(history["accuracy"][0]) == pytest.approx(accuracy)
    assert float(history["teacher_agreement"][0]) == pytest.approx(agreement)
    # evaluate() as the first compiled step: the same values, before training.
    fresh = Distiller(student=_pair(12)[1], teacher=teacher)
    fresh.compile(optimizer="sgd", metrics=["accuracy", keras_kd.TeacherAgreement()])
    logs = fresh.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    assert float(logs["accuracy"]) == pytest.approx(accuracy)
    assert float(logs["teacher_agreement"]) == pytest.approx(agreement)
    np.testing.assert_allclose(fresh.predict(x, verbose=0), z, rtol=1e-6, atol=1e-6)


class _Softmax(keras.layers.Layer):
    """A softmax the Distiller cannot see as one (no Softmax layer)."""

    def call(self, inputs):
        return keras.ops.softmax(inputs)


def test_the_first_batch_of_a_dataset_runs_the_teacher_in_the_input_pipeline():
    """The check that warns of probability "logits" runs the teacher on the
    first batch of a tf.data fit (on JAX, where `fit` holds the weights in
    its state, on the weights it started with)."""
    import tensorflow as tf

    keras.utils.set_random_seed(13)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), _Softmax()])
    _, student = _pair(13)
    x, y = _data()
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd")
    with pytest.warns(UserWarning, match="teacher's outputs look like probabilities"):
        distiller.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)


def test_a_multi_output_students_metrics_are_built_on_its_selected_logits():
    """Keras builds unbuilt compiled metrics before the first step (on JAX
    always; on TF under a strategy) on the model's whole output: here the
    student's `{"aux", "logits"}` dict. They are built on the logits."""
    import contextlib

    import tensorflow as tf

    x, y = _data(16)
    scope = contextlib.nullcontext()
    if keras.backend.backend() == "tensorflow":
        scope = tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()).scope()
    with scope:
        keras.utils.set_random_seed(14)
        inputs = keras.Input((4,))
        logits = keras.layers.Dense(3, name="logits")(inputs)
        student = keras.Model(inputs, {"aux": keras.layers.Dense(2)(inputs), "logits": logits})
        teacher, _ = _pair(14)
        distiller = Distiller(student=student, teacher=teacher, student_output="logits")
        distiller.compile(metrics=["accuracy"])
    accuracy = np.mean(np.argmax(student.predict(x, verbose=0)["logits"], -1) == y)
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert 0 < accuracy < 1
    assert float(logs["accuracy"]) == pytest.approx(accuracy)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX step's cond")
def test_jax_teacher_runs_without_a_cond_while_alpha_is_below_one(monkeypatch):
    """A step traced at alpha < 1 runs the teacher without `jax.lax.cond`
    (whose branch XLA compiles apart: 64 against 58 ms a step for the E1
    pair); traced at alpha == 1 the cond skips it. Both give the same
    epochs: alpha 0.5 then 1.0 (AlphaScheduler) from a step traced at 0.5
    equals the same schedule from a step traced at 1.0."""
    import jax

    import keras_kd

    conds = []
    cond = jax.lax.cond
    monkeypatch.setattr(jax.lax, "cond", lambda *args, **kwargs: (conds.append(1),
                                                                  cond(*args, **kwargs))[1])
    x, y = _data(8)
    results = []
    for alpha_when_traced in (0.5, 1.0):
        teacher, student = _pair(7)
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=alpha_when_traced,
                          temperature=2.0)
        conds.clear()  # fit makes its step at the compiled alpha, before the scheduler sets it.
        history = distiller.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[
            keras_kd.AlphaScheduler(lambda epoch: [0.5, 1.0][epoch])]).history
        results.append((len(conds), history, student.get_weights()))
    (conds_below, below, weights_below), (conds_at, at, weights_at) = results
    assert conds_below == 0 and conds_at > 0
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(below[key], at[key], rtol=1e-6, err_msg=key)
    for got, want in zip(weights_below, weights_at):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX step's cond")
def test_jax_teacher_at_alpha_one_is_skipped_in_value_and_in_a_later_fit(monkeypatch):
    """A step traced at alpha 0.5 that runs at alpha 1.0 (AlphaScheduler)
    takes zeros for the teacher, as the cond does: a teacher whose outputs
    are NaN leaves the loss finite (0 * NaN was NaN, found by a read-only
    review). A later fit starting at alpha 1.0 traces the step again, with
    the cond."""
    import jax

    import keras_kd

    conds = []
    cond = jax.lax.cond
    monkeypatch.setattr(jax.lax, "cond", lambda *args, **kwargs: (conds.append(1),
                                                                  cond(*args, **kwargs))[1])
    teacher, student = _pair(8)
    nan_teacher = keras.Sequential([teacher, keras.layers.Lambda(lambda z: z * np.nan)])
    x, y = _data(8)
    distiller = Distiller(student=student, teacher=nan_teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.5, temperature=2.0)
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[
        keras_kd.AlphaScheduler(lambda epoch: 1.0)]).history
    assert conds == [] and np.isfinite(history["loss"][0])
    assert all(np.isfinite(w).all() for w in student.get_weights())
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)  # alpha 1.0 from the start.
    assert conds, "the step was not traced again with the cond"
