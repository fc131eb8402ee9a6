import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from conftest import numpy
from conftest import outputs
from conftest import tensorflow_only

import keras_kd
from keras_kd import Distiller


# JAX refuses a tf.distribute strategy (tests/distillation/test_backends.py);
# its keras.distribution counterparts are tests/distribution.
mirrored_strategy_only = tensorflow_only("a tf.distribute strategy")


def softmax64(z):
    z = np.float64(z) - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def linear_student(num_inputs=6, num_classes=4):
    return keras.Sequential(
        [keras.Input((num_inputs,)), keras.layers.Dense(num_classes)]
    )


def make_distiller(seed=0, student=None, teacher=None, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    distiller = Distiller(
        student=student or make_mlp([8], name="student"),
        teacher=teacher or make_mlp([16], name="teacher"),
    )
    compile_kwargs.setdefault("optimizer", keras.optimizers.SGD(0.1))
    distiller.compile(**compile_kwargs)
    return distiller


def test_teacher_is_frozen_and_unchanged_by_fit(tiny_data):
    x, y = tiny_data
    distiller = make_distiller(metrics=["sparse_categorical_accuracy"])
    before = [w.numpy().copy() for w in distiller.teacher.weights]
    student_before = [w.numpy().copy() for w in distiller.student.weights]
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert distiller.teacher.trainable is False
    assert {id(w) for w in distiller.trainable_weights} == {
        id(w) for w in distiller.student.trainable_weights
    }
    for old, new in zip(before, distiller.teacher.weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert any(
        not np.array_equal(old, new.numpy())
        for old, new in zip(student_before, distiller.student.weights)
    )


def test_predict_and_call_give_student_outputs(tiny_data):
    x, _ = tiny_data
    distiller = make_distiller()
    # Traced batches against one eager call: float32 rounding apart.
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0), outputs(distiller.student, x),
        rtol=1e-5, atol=1e-6,
    )
    np.testing.assert_allclose(
        numpy(distiller(x)), numpy(distiller.student(x)), rtol=1e-6
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_sgd_step_matches_float64_reference(alpha, temperature, weighted):
    """One SGD step on a linear student, against the analytic gradient."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, size=16)
    sample_weight = (
        rng.uniform(0, 2, size=16).astype("float32") if weighted else None
    )
    learning_rate = 0.5
    distiller = make_distiller(
        student=linear_student(),
        optimizer=keras.optimizers.SGD(learning_rate),
        alpha=alpha,
        temperature=temperature,
        # One case traces the step; the others check values eagerly.
        run_eagerly=not (alpha == 0.3 and temperature == 4.0 and weighted),
    )
    kernel, bias = (w.numpy().astype("float64") for w in distiller.student.weights)
    teacher_logits = outputs(distiller.teacher, x)
    student_logits = x.astype("float64") @ kernel + bias
    w = np.ones(16) if sample_weight is None else np.float64(sample_weight)

    one_hot = np.eye(4)[y]
    p_student = softmax64(student_logits)
    p_soft_student = softmax64(student_logits / temperature)
    p_soft_teacher = softmax64(teacher_logits / temperature)
    hard = -np.sum(one_hot * np.log(p_student), axis=1)
    soft = temperature**2 * np.sum(
        p_soft_teacher * (np.log(p_soft_teacher) - np.log(p_soft_student)), 1
    )
    expected_loss = np.sum(w * (alpha * hard + (1 - alpha) * soft)) / 16
    grad_logits = (
        alpha * (p_student - one_hot)
        + (1 - alpha) * temperature * (p_soft_student - p_soft_teacher)
    ) * w[:, None] / 16

    logs = distiller.train_on_batch(
        x, y, sample_weight=sample_weight, return_dict=True
    )
    np.testing.assert_allclose(logs["loss"], expected_loss, rtol=1e-5)
    np.testing.assert_allclose(
        logs["student_loss"], np.sum(w * hard) / 16, rtol=1e-5
    )
    # At alpha == 1 the teacher does not run: the term is not computed.
    expected_soft = 0.0 if alpha == 1.0 else np.sum(w * soft) / 16
    np.testing.assert_allclose(
        logs["distillation_loss"], expected_soft, rtol=1e-5, atol=1e-7
    )
    new_kernel, new_bias = (w.numpy() for w in distiller.student.weights)
    np.testing.assert_allclose(
        new_kernel, kernel - learning_rate * x.T.astype("float64") @ grad_logits,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        new_bias, bias - learning_rate * grad_logits.sum(0), atol=1e-6
    )


def _weights_after_one_step(x, y, sample_weight):
    # Eager: the traced weighted step is test_sgd_step_matches_float64_reference's
    # traced case.
    distiller = make_distiller(seed=3, run_eagerly=True)
    distiller.train_on_batch(x, y, sample_weight=sample_weight)
    return [w.numpy() for w in distiller.student.weights]


def test_zero_sample_weight_removes_a_samples_influence(tiny_data):
    x, y = tiny_data
    x_changed, y_changed = x.copy(), y.copy()
    x_changed[0] += 10.0
    y_changed[0] = (y[0] + 1) % 4
    weights = np.ones(len(x), dtype="float32")
    weights[0] = 0.0
    for a, b in zip(
        _weights_after_one_step(x, y, weights),
        _weights_after_one_step(x_changed, y_changed, weights),
    ):
        np.testing.assert_allclose(a, b, atol=1e-7)
    # Control: with weight 1 the changed sample does change the update.
    unweighted = _weights_after_one_step(x, y, None)
    changed = _weights_after_one_step(x_changed, y_changed, None)
    assert any(not np.allclose(a, b) for a, b in zip(unweighted, changed))


def test_class_weight_equals_matching_sample_weight(tiny_data):
    x, y = tiny_data
    class_weight = {0: 0.0, 1: 2.0, 2: 1.0, 3: 0.5}
    results = []
    for kwargs in (
        {"class_weight": class_weight},
        {"sample_weight": np.array([class_weight[c] for c in y], "float32")},
        {},
    ):
        # Eager: class weights become sample weights before Keras' loop; the
        # traced path is test_class_weight_works_with_cached_teacher_logits.
        distiller = make_distiller(seed=4, run_eagerly=True)
        distiller.fit(x, y, batch_size=16, shuffle=False, verbose=0, **kwargs)
        results.append([w.numpy() for w in distiller.student.weights])
    for a, b in zip(results[0], results[1]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(results[0], results[2]))


def test_student_regularisation_counts(tiny_data):
    x, y = tiny_data
    student = make_mlp(
        [8], kernel_regularizer=keras.regularizers.L2(0.1), name="student"
    )
    distiller = make_distiller(student=student, alpha=0.4)
    regularisation = float(sum(student.losses))
    assert regularisation > 0
    logs = distiller.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(
        logs["loss"],
        0.4 * logs["student_loss"]
        + 0.6 * logs["distillation_loss"]
        + regularisation,
        rtol=1e-5,
    )


def test_evaluate_is_the_students_own_and_skips_the_teacher(tiny_data):
    x, y = tiny_data

    class CountingTeacher(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)
            self.calls = 0

        def call(self, inputs, training=None):
            self.calls += 1
            return self.dense(inputs)

    teacher = CountingTeacher()
    teacher(x[:1])
    distiller = make_distiller(
        teacher=teacher, metrics=["sparse_categorical_accuracy"], run_eagerly=True
    )
    calls_before = teacher.calls
    results = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    assert teacher.calls == calls_before
    assert "distillation_loss" not in results
    distiller.student.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    student_results = distiller.student.evaluate(
        x, y, batch_size=16, return_dict=True, verbose=0
    )
    np.testing.assert_allclose(results["loss"], student_results["loss"], rtol=1e-6)
    np.testing.assert_allclose(results["student_loss"], student_results["loss"], rtol=1e-6)
    assert float(results["sparse_categorical_accuracy"]) == pytest.approx(
        float(student_results["sparse_categorical_accuracy"])
    )


def test_reported_losses_are_epoch_means(tiny_data):
    x, y = tiny_data
    distiller = make_distiller(optimizer=keras.optimizers.SGD(0.0))
    history = distiller.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    # With a zero learning rate each batch's loss is fixed: the epoch value
    # must be the mean of the per-batch values (equal batches), here from a
    # float64 reference of each batch's cross-entropy.
    log_p = np.log(softmax64(outputs(distiller.student, x)))
    per_batch = [-np.mean(log_p[np.arange(i, i + 16), y[i : i + 16]])
                 for i in range(0, 64, 16)]
    np.testing.assert_allclose(
        history.history["student_loss"][0], np.mean(per_batch), rtol=1e-5
    )


@mirrored_strategy_only
@pytest.mark.parametrize("cached", [False, True])
def test_mirrored_strategy_matches_one_device(cached):
    """Two replicas give the same update as one device at the same global
    batch, and report the same (unhalved) per-term losses; also when the
    teacher's logits come from the cache."""
    from keras_kd.distillation import cache
    from keras_kd.data import datasets

    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, size=64)
    sample_weight = rng.uniform(0.2, 2.0, size=64).astype("float32")

    def run(strategy, run_eagerly=False):
        with strategy.scope():
            keras.utils.set_random_seed(5)
            distiller = Distiller(
                student=make_mlp([8], name="student"),
                teacher=make_mlp([16], name="teacher"),
            )
            distiller.compile(
                optimizer=keras.optimizers.SGD(0.2), alpha=0.3, temperature=2.0,
                run_eagerly=run_eagerly,
            )
        if cached:
            logits = cache.compute_teacher_logits(distiller.teacher, x)
            train = datasets.make_dataset(
                x, y, name=None, scaling=None, batch_size=32, num_classes=4,
                sample_weight=sample_weight, teacher_logits=logits,
            )
            history = distiller.fit(train, epochs=2, verbose=0)
        else:
            history = distiller.fit(
                x, y, sample_weight=sample_weight, batch_size=32, epochs=2,
                shuffle=False, verbose=0,
            )
        return [w.numpy() for w in distiller.student.weights], history.history

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    # The one-device reference runs eagerly (its traced path is this file's
    # other fit tests); the replicas run traced.
    single_weights, single_history = run(tf.distribute.get_strategy(), run_eagerly=True)
    mirrored_weights, mirrored_history = run(mirrored)
    for a, b in zip(single_weights, mirrored_weights):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(
            single_history[key], mirrored_history[key], rtol=1e-5
        )


class LogitPenaltyDistiller(Distiller):
    """A user subclass: adds an L2 penalty on the student's logits."""

    def __init__(self, penalty=0.01, **kwargs):
        super().__init__(**kwargs)
        self.penalty = penalty

    def compute_distillation_loss(self, teacher_logits, student_logits, sample_weight=None):
        base = super().compute_distillation_loss(
            teacher_logits, student_logits, sample_weight
        )
        return base + self.penalty * keras.ops.mean(keras.ops.square(student_logits))

    def get_config(self):
        return {**super().get_config(), "penalty": self.penalty}


def test_subclass_with_custom_loss_trains(tiny_data):
    x, y = tiny_data
    keras.utils.set_random_seed(6)
    student, teacher = make_mlp([8]), make_mlp([16])
    distiller = LogitPenaltyDistiller(penalty=0.5, student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    logits = outputs(student, x[:16])
    plain = Distiller(student=student, teacher=teacher)
    plain.compile(optimizer=keras.optimizers.SGD(0.0))
    base = float(
        plain.compute_distillation_loss(outputs(teacher, x[:16]), logits)
    )
    logs = distiller.train_on_batch(x[:16], y[:16], return_dict=True)
    np.testing.assert_allclose(
        logs["distillation_loss"], base + 0.5 * np.mean(logits**2), rtol=1e-5
    )
    history = distiller.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_teacher_logits_is_the_seam_for_teacher_outputs(tiny_data):
    x, y = tiny_data

    class UniformTeacherDistiller(Distiller):
        def teacher_logits(self, x):
            return keras.ops.zeros((keras.ops.shape(x)[0], 4))

    keras.utils.set_random_seed(7)
    distiller = UniformTeacherDistiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), temperature=1.0)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    p = softmax64(outputs(distiller.student, x))
    expected = np.mean(np.sum(0.25 * (np.log(0.25) - np.log(p)), axis=1))
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


def test_keras_io_compile_arguments_use_softened_probabilities(tiny_data):
    x, y = tiny_data
    distiller = make_distiller(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss_fn=keras.losses.KLDivergence(),
        alpha=0.1,
        temperature=10,
    )
    teacher_p = softmax64(outputs(distiller.teacher, x) / 10)
    student_p = softmax64(outputs(distiller.student, x) / 10)
    expected = float(keras.losses.KLDivergence()(teacher_p, student_p))
    logs = distiller.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4)


def test_one_hot_labels_are_accepted(tiny_data):
    x, y = tiny_data
    # Eager: the traced step reads sparse labels in most tests here, dense
    # ones in test_unlabelled_samples_get_only_the_distillation_term[True].
    sparse = make_distiller(seed=8, run_eagerly=True).train_on_batch(
        x, y, return_dict=True)
    one_hot = make_distiller(seed=8, run_eagerly=True).train_on_batch(
        x, np.eye(4, dtype="float32")[y], return_dict=True
    )
    np.testing.assert_allclose(one_hot["student_loss"], sparse["student_loss"], rtol=1e-6)


def test_teacher_with_softmax_is_read_as_probabilities(tiny_data):
    """Where the model shows its softmax, the Distiller reads probabilities
    by itself; saying "logits" for it is refused; a subclassed teacher that
    hides its softmax is read as logits, with a warning at the first batch."""
    x, y = tiny_data
    keras.utils.set_random_seed(9)
    teacher = make_mlp([16])
    probability_teacher = keras.Sequential(
        [teacher, keras.layers.Softmax()]
    )
    with pytest.raises(ValueError, match="teacher_outputs='probabilities'"):
        Distiller(student=make_mlp([8]), teacher=probability_teacher, teacher_outputs="logits")
    student = make_mlp([8])
    detected = Distiller(student=student, teacher=probability_teacher)
    assert detected.teacher_outputs == "probabilities"
    from_logits = Distiller(student=student, teacher=teacher)

    class Hidden(keras.Model):
        def call(self, inputs):
            return keras.ops.softmax(teacher(inputs))

    hidden = Distiller(student=student, teacher=Hidden())
    explicit = Distiller(student=student, teacher=Hidden(), teacher_outputs="probabilities")
    # `explicit` runs eagerly (`detected` traces the same probabilities
    # path), `hidden` too (read as logits: `from_logits`' traced path); the
    # warning comes from the first-batch checks, outside the step.
    for distiller in (detected, from_logits, hidden, explicit):
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), temperature=4.0,
                          run_eagerly=distiller in (hidden, explicit))
    expected = from_logits.train_on_batch(x, y, return_dict=True)["distillation_loss"]
    for distiller in (detected, explicit):
        value = distiller.train_on_batch(x, y, return_dict=True)["distillation_loss"]
        np.testing.assert_allclose(value, expected, rtol=1e-4)
    with pytest.warns(UserWarning, match="look like probabilities"):
        misread = hidden.train_on_batch(x, y, return_dict=True)["distillation_loss"]
    assert abs(misread - expected) > 0.1 * expected  # Read as logits: wrong.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Once per distiller, never for logits.
        hidden.train_on_batch(x, y)
        from_logits.fit(x, y, epochs=1, verbose=0)


def test_student_with_softmax_is_refused():
    student = make_mlp([8])
    student.add(keras.layers.Activation("softmax"))
    with pytest.raises(ValueError, match="student must output logits"):
        Distiller(student=student, teacher=make_mlp([16]))
    dense_softmax = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4, activation="softmax")]
    )
    with pytest.raises(ValueError, match="activation=None"):
        Distiller(student=dense_softmax, teacher=make_mlp([16]))


def test_output_sizes_must_match():
    with pytest.raises(ValueError, match="teacher outputs 4, student outputs 3"):
        Distiller(student=make_mlp([8], num_classes=3), teacher=make_mlp([16]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0}, "temperature=0"),
        ({"temperature": -2.0}, "temperature=-2.0"),
        ({"temperature": float("nan")}, "temperature=nan"),
        ({"temperature": "hot"}, "temperature='hot'"),
        ({"alpha": -0.1}, "alpha=-0.1"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"loss": "mse"}, "student_loss_fn"),
        ({"distillation_loss_fn": "nope"}, "distillation_loss_fn='nope'"),
        ({"student_loss_fn": 3}, "student_loss_fn=3"),
    ],
)
def test_bad_compile_arguments(kwargs, match):
    distiller = Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    with pytest.raises(ValueError, match=match):
        distiller.compile(**kwargs)


def test_non_model_arguments_are_refused():
    with pytest.raises(ValueError, match="`teacher` must be a `keras.Model`"):
        Distiller(student=make_mlp([8]), teacher="resnet")


def test_fit_before_compile_says_so(tiny_data):
    x, y = tiny_data
    distiller = Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    with pytest.raises(ValueError, match="compile"):
        distiller.fit(x, y, verbose=0)


@pytest.mark.parametrize("subclass", [False, True])
def test_save_and_load_round_trip_continues_training(tmp_path, tiny_data, subclass):
    x, y = tiny_data
    keras.utils.set_random_seed(10)
    kwargs = {"student": make_mlp([8]), "teacher": make_mlp([16])}
    distiller = (
        LogitPenaltyDistiller(penalty=0.2, **kwargs) if subclass else Distiller(**kwargs)
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(0.01),
        metrics=["sparse_categorical_accuracy"],
        distillation_loss_fn=keras_kd.SoftTargetCrossEntropy(),
        alpha=0.25,
        temperature=6.0,
    )
    distiller.fit(x, y, batch_size=16, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    custom = {"LogitPenaltyDistiller": LogitPenaltyDistiller}
    loaded = keras.models.load_model(path, custom_objects=custom)
    assert type(loaded) is type(distiller)
    # Eager calls: the same weights give the same outputs
    # (test_predict_and_call_give_student_outputs checks the traced `predict`).
    np.testing.assert_array_equal(outputs(loaded, x), outputs(distiller, x))
    assert loaded.alpha == 0.25 and loaded.temperature == 6.0
    assert isinstance(loaded.distillation_loss_fn, keras_kd.SoftTargetCrossEntropy)
    assert int(loaded.optimizer.iterations) == int(distiller.optimizer.iterations)
    for a, b in zip(loaded.optimizer.variables, distiller.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    if subclass:
        assert loaded.penalty == 0.2
    # Without a new compile: evaluate works and fit continues exactly as the
    # original does.
    assert loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"] > 0
    distiller.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(loaded.student.weights, distiller.student.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_student_saves_alone_for_deployment(tmp_path, tiny_data):
    x, y = tiny_data
    distiller = make_distiller()
    distiller.fit(x, y, verbose=0)
    distiller.student.save(tmp_path / "student.keras")
    student = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_array_equal(outputs(student, x), outputs(distiller, x))


def test_tf_data_input_with_cached_teacher_logits(tiny_data):
    """Batches whose target carries teacher logits skip the teacher."""
    x, y = tiny_data
    online = make_distiller(seed=11)
    cached = make_distiller(seed=11)
    teacher_logits = outputs(cached.teacher, x)
    dataset = tf.data.Dataset.from_tensor_slices(
        (x, {"labels": y, "teacher_logits": teacher_logits})
    ).batch(16)
    cached.teacher = None  # Any use of the teacher would now fail.
    cached.fit(dataset, verbose=0)
    online.fit(x, y, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(cached.student.weights, online.student.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16"])
def test_mixed_precision_loss_matches_float32(tiny_data, policy):
    """At T=20 a float16 softmax loses the soft targets: the losses must be
    computed in float32 (or wider) whatever the layers' policy."""
    x, y = tiny_data
    keras.utils.set_random_seed(12)
    # The float32 reference runs eagerly (the other train_on_batch tests
    # here trace the float32 step); the mixed-precision step runs traced.
    reference = make_distiller(seed=12, temperature=20.0, alpha=0.2, run_eagerly=True)
    weights = [m.get_weights() for m in (reference.student, reference.teacher)]
    expected_train = reference.train_on_batch(x, y, return_dict=True)
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = make_distiller(seed=12, temperature=20.0, alpha=0.2)
        assert mixed.student.layers[0].compute_dtype != "float32"
        for model, values in zip((mixed.student, mixed.teacher), weights):
            model.set_weights(values)
        logs = mixed.train_on_batch(x, y, return_dict=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert expected_train["student_loss"] > 0
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(logs[key], expected_train[key], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_loss_on_low_precision_logits_is_computed_in_float32(dtype):
    rng = np.random.default_rng(13)
    teacher = keras.ops.cast(rng.normal(size=(32, 10)) * 5, dtype)
    student = keras.ops.cast(rng.normal(size=(32, 10)) * 5, dtype)
    distiller = make_distiller(temperature=20.0)
    value = float(distiller.compute_distillation_loss(teacher, student))
    t64 = numpy(keras.ops.cast(teacher, "float64"))
    s64 = numpy(keras.ops.cast(student, "float64"))
    log_t = np.log(softmax64(t64 / 20))
    log_s = np.log(softmax64(s64 / 20))
    expected = 400 * np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=1))
    np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize(
    "make_x, message",
    [
        (lambda: np.zeros((8, 5), "float32"), r"shape \(5,\).*\(6,\)"),
        (lambda: np.zeros((8, 6, 2), "float32"), r"shape \(6, 2\)"),
        (lambda: np.array([["a"] * 6] * 8), "numeric"),
        (
            lambda: tf.data.Dataset.from_tensor_slices(
                (np.zeros((8, 3), "float32"), np.zeros(8, "int64"))
            ).batch(4),
            r"shape \(3,\)",
        ),
    ],
)
def test_inputs_of_the_wrong_shape_or_dtype_are_named(make_x, message):
    keras.utils.set_random_seed(8)
    distiller = Distiller(student=make_mlp([4]), teacher=make_mlp([4]))
    distiller.compile(optimizer="sgd")
    x = make_x()
    y = None if isinstance(x, tf.data.Dataset) else np.zeros(8, "int64")
    with pytest.raises(ValueError, match=message):
        distiller.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=message):
        distiller.evaluate(x, y, verbose=0)


def _trained_with_steps_per_execution(x, y, cached, steps_per_execution):
    distiller = make_distiller(seed=14, steps_per_execution=steps_per_execution)
    logits = outputs(distiller.teacher, x) if cached else None
    dataset = keras_kd.data.datasets.make_dataset(
        x, y, name=None, scaling=None, batch_size=16, shuffle=True, seed=3,
        teacher_logits=logits,
    )
    history = distiller.fit(dataset, epochs=2, verbose=0)
    return [w.numpy() for w in distiller.student.weights], history.history


@pytest.fixture(scope="module")
def one_step_per_call():
    """The `steps_per_execution=1` run for a teacher source, made once: both
    tested values compare with the same one."""
    runs = {}

    def trained(x, y, cached):
        if cached not in runs:
            runs[cached] = _trained_with_steps_per_execution(x, y, cached, 1)
        return runs[cached]

    return trained


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("steps_per_execution", [3, 16])
def test_steps_per_execution_gives_the_same_weights(
    tiny_data, one_step_per_call, cached, steps_per_execution
):
    """Several steps per compiled call (3 does not divide the 4 batches of an
    epoch, 16 exceeds them) train exactly as one step per call."""
    x, y = tiny_data
    reference, reference_history = one_step_per_call(x, y, cached)
    weights, history = _trained_with_steps_per_execution(x, y, cached, steps_per_execution)
    for expected, actual in zip(reference, weights):
        np.testing.assert_array_equal(actual, expected)
    assert history == reference_history


@tensorflow_only("tf.function's jit_compile rule, under op determinism and a MirroredStrategy "
                 "(on JAX every step is jax.jit-compiled)")
def test_xla_follows_keras_rule_and_trains_like_plain_tf():
    """`jit_compile="auto"` is Keras' rule (off on CPU-only machines, as for
    the student alone); `jit_compile=True` turns XLA on and trains to the
    same weights. Run in a fresh process: this test session has op
    determinism on, under which Keras refuses XLA."""
    import json
    import os
    import subprocess
    import sys

    job = os.path.join(os.path.dirname(__file__), "xla_job.py")
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    output = subprocess.run(
        [sys.executable, job], check=True, capture_output=True, text=True,
        env=environment, timeout=300,
    ).stdout
    report = json.loads(output.strip().splitlines()[-1])
    assert report["auto"] is False  # CPU-only machine: Keras' rule.
    assert report["student_alone_auto"] is False
    assert report["on_when_asked"] is True
    assert report["off_when_asked"] is False
    assert report["under_mirrored_strategy"] is False
    assert report["under_op_determinism"] is False  # Keras refuses XLA then.
    assert report["max_weight_difference"] < 1e-5
    assert report["max_weight_change"] > 1e-3  # Training did move the weights.
    # The cache pass follows the same rule, with the same logits under XLA.
    assert report["cache_auto_xla"] is False
    assert report["cache_max_difference"] < 1e-5


def test_positional_models_are_refused_with_the_keyword_form():
    student, teacher = make_mlp([8]), make_mlp([16])
    with pytest.raises(TypeError, match=r"Distiller\(student=student, teacher=teacher\)"):
        Distiller(student, teacher)
    with pytest.raises(TypeError, match="teacher=None"):
        Distiller(student=student)


def test_unlabelled_fit_needs_alpha_zero(tiny_data):
    x, _ = tiny_data
    distiller = make_distiller(alpha=0.3)
    with pytest.raises(ValueError, match=r"no labels.*alpha=0.3.*alpha=0"):
        distiller.fit(x, epochs=1, verbose=0)
    distiller.alpha = 0.0
    history = distiller.fit(x, epochs=1, verbose=0)
    assert history.history["student_loss"] == [0.0]
    assert history.history["loss"] == history.history["distillation_loss"]


@pytest.mark.parametrize("one_hot", [False, True])
def test_unlabelled_samples_get_only_the_distillation_term(tiny_data, one_hot):
    """A marked sample's label and input do not enter the hard term: its
    label can be anything; the hard term is the mean over the others.
    Integer labels mark it with UNLABELLED, dense labels with an explicit
    label mask (their values are never read as "missing")."""
    x, y = tiny_data
    x, y = x[:16], y[:16].copy()
    marked = np.arange(16) % 4 == 0
    y[marked] = keras_kd.UNLABELLED
    if one_hot:
        labels = keras_kd.targets(
            labels=np.eye(4, dtype="float32")[np.maximum(y, 0)], label_mask=~marked)
    else:
        labels = y
    distiller = make_distiller(alpha=0.5, temperature=2.0)
    logits = outputs(distiller.student, x)
    teacher_logits = outputs(distiller.teacher, x)
    logs = distiller.train_on_batch(x, labels, return_dict=True)
    log_p = np.log(softmax64(logits))
    hard = -np.mean(log_p[~marked, y[~marked]])
    p_t, p_s = softmax64(teacher_logits / 2), softmax64(logits / 2)
    soft = 4 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.5 * hard + 0.5 * soft, rtol=1e-5)


@mirrored_strategy_only
def test_mixed_labels_under_mirrored_strategy_match_one_device():
    """Replicas see different numbers of labelled samples; the hard term is
    still the mean over the global batch's labelled samples."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, size=64)
    y[:24] = keras_kd.UNLABELLED  # Mostly in the first replica's half.

    def run(strategy, run_eagerly=False):
        with strategy.scope():
            distiller = make_distiller(
                seed=21, alpha=0.6, temperature=2.0, run_eagerly=run_eagerly)
        history = distiller.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return [w.numpy() for w in distiller.student.weights], history.history

    # The one-device reference runs eagerly (its traced path is this file's
    # other fit tests); the replicas run traced.
    single = run(tf.distribute.get_strategy(), run_eagerly=True)
    mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    for a, b in zip(single[0], mirrored[0]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for key in ("loss", "student_loss", "distillation_loss"):
        np.testing.assert_allclose(single[1][key], mirrored[1][key], rtol=1e-5)


def test_alpha_and_temperature_are_read_at_every_step(tiny_data):
    """Set between fits, the new values change the loss of the traced step."""
    x, y = tiny_data
    distiller = make_distiller(optimizer=keras.optimizers.SGD(0.0))
    first = distiller.fit(x, y, batch_size=64, verbose=0).history
    distiller.temperature = 10.0
    distiller.alpha = 0.7
    second = distiller.fit(x, y, batch_size=64, verbose=0).history
    teacher_logits = outputs(distiller.teacher, x)
    student_logits = outputs(distiller.student, x)
    p_t, p_s = softmax64(teacher_logits / 10), softmax64(student_logits / 10)
    soft = 100 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    np.testing.assert_allclose(second["distillation_loss"][0], soft, rtol=1e-5)
    np.testing.assert_allclose(
        second["loss"][0],
        0.7 * second["student_loss"][0] + 0.3 * soft, rtol=1e-5,
    )
    assert first["distillation_loss"][0] != pytest.approx(soft, rel=1e-2)
    assert distiller.temperature == 10.0 and distiller.alpha == 0.7
    with pytest.raises(ValueError, match="temperature=0"):
        distiller.temperature = 0
    with pytest.raises(ValueError, match="alpha=2"):
        distiller.alpha = 2


def test_a_loss_with_its_own_temperature_is_the_one_source():
    loss = keras_kd.KLDivergenceWithTemperature(temperature=8.0)
    distiller = make_distiller(distillation_loss_fn=loss)
    assert distiller.temperature == 8.0
    with pytest.raises(ValueError, match=r"temperature=8.0.*temperature=3.0"):
        make_distiller(distillation_loss_fn=loss, temperature=3.0)
    make_distiller(distillation_loss_fn=loss, temperature=8.0)  # Agrees: fine.
    # Changing the distiller's temperature keeps the loss in step.
    distiller.temperature = 5.0
    assert loss.temperature == 5.0
    shared = keras_kd.KLDivergenceWithTemperature()
    plain = make_distiller(distillation_loss_fn=shared)
    assert plain.temperature == 3.0  # The default, the loss has none.
    assert shared.temperature is None  # Still "the distiller's": reusable.
    assert make_distiller(distillation_loss_fn=shared, temperature=5.0).temperature == 5.0


@pytest.mark.parametrize(
    "identifier", ["SparseCategoricalCrossentropy", "sparse_categorical_crossentropy",
                   {"class_name": "SparseCategoricalCrossentropy", "config": {}}],
)
def test_student_loss_strings_resolve_on_logits(tiny_data, identifier):
    """Against a float64 cross-entropy on the logits (a loss resolved on
    probabilities would not match). The names are resolved at compile: the
    class (by name or config) is the default loss, whose step the other
    tests here trace, so those run eagerly; the function traces its own."""
    x, y = tiny_data
    by_name = make_distiller(
        seed=22, student_loss_fn=identifier, alpha=1.0,
        run_eagerly=identifier != "sparse_categorical_crossentropy")
    log_p = np.log(softmax64(outputs(by_name.student, x)))
    logs = by_name.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(
        logs["student_loss"], -np.mean(log_p[np.arange(64), y]), rtol=1e-5)


def test_student_loss_reduction_and_ignore_class_are_honoured(tiny_data):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    weights = np.linspace(0.5, 2.0, 16).astype("float32")
    distiller = make_distiller()
    logits = outputs(distiller.student, x)
    per_sample = -np.log(softmax64(logits))[np.arange(16), y]

    def student_loss(**kwargs):
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, **kwargs)
        distiller.compile(student_loss_fn=loss)
        return float(distiller.compute_student_loss(y, logits, weights))

    np.testing.assert_allclose(student_loss(reduction="sum"), np.sum(weights * per_sample), rtol=1e-5)
    np.testing.assert_allclose(
        student_loss(reduction="mean_with_sample_weight"),
        np.sum(weights * per_sample) / weights.sum(), rtol=1e-5,
    )
    ignored = y == y[0]
    np.testing.assert_allclose(
        student_loss(ignore_class=int(y[0])),
        np.sum((weights * per_sample)[~ignored]) / np.sum(~ignored), rtol=1e-5,
    )
    # Keras' own reduction of the same loss agrees.
    keras_value = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=int(y[0]))(y, logits, sample_weight=weights)
    np.testing.assert_allclose(student_loss(ignore_class=int(y[0])), float(keras_value), rtol=1e-5)


@pytest.mark.parametrize(
    "loss, match",
    [
        (keras.losses.SparseCategoricalCrossentropy(), "from_logits=True"),
        (keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none"),
         "reduction='none'"),
    ],
)
def test_student_losses_that_cannot_work_are_refused(loss, match):
    with pytest.raises(ValueError, match=match):
        make_distiller(student_loss_fn=loss)


def test_class_weight_works_with_cached_teacher_logits(tiny_data):
    x, y = tiny_data
    class_weight = {0: 0.0, 1: 2.0, 2: 1.0, 3: 0.5}
    logits = outputs(make_distiller(seed=23).teacher, x)

    def trained(run_eagerly=False, **kwargs):
        distiller = make_distiller(seed=23, run_eagerly=run_eagerly)
        dataset = keras_kd.data.datasets.make_dataset(
            x, y, name=None, scaling=None, batch_size=16, teacher_logits=logits,
            num_classes=4, sample_weight=kwargs.pop("sample_weight", None),
        )
        distiller.fit(dataset, epochs=2, verbose=0, **kwargs)
        return [w.numpy() for w in distiller.student.weights]

    with_class_weight = trained(class_weight=class_weight)
    with_sample_weight = trained(
        sample_weight=np.array([class_weight[c] for c in y], "float32"))
    for a, b in zip(with_class_weight, with_sample_weight):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The control (no weights) only has to differ: it runs eagerly.
    control = trained(run_eagerly=True)
    assert any(not np.allclose(a, b) for a, b in zip(with_class_weight, control))
    with pytest.raises(ValueError, match="class_weight.*sample_weight"):
        make_distiller().fit(x, y, class_weight=class_weight,
                             sample_weight=np.ones(64), verbose=0)


def test_teacher_inputs_hook_gives_the_teacher_its_own_view(tiny_data):
    """The teacher takes twice as many features as the student; the hook
    builds its view from the batch."""
    x, y = tiny_data

    class WideTeacherDistiller(Distiller):
        def teacher_inputs(self, x):
            return keras.ops.concatenate([x, keras.ops.square(x)], axis=-1)

    keras.utils.set_random_seed(24)
    teacher = make_mlp([16], num_inputs=12)
    distiller = WideTeacherDistiller(student=make_mlp([8]), teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), temperature=2.0, alpha=0.0)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    p_t = softmax64(outputs(teacher, np.concatenate([x, x**2], 1)) / 2)
    p_s = softmax64(outputs(distiller.student, x) / 2)
    expected = 4 * np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1))
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


@pytest.mark.parametrize("cached", [False, True])
def test_fit_reads_a_reshuffling_dataset_in_the_order_a_fresh_iteration_gives(cached):
    # The first-batch checks once peeked with a second iterator, which
    # advanced the shuffle's seed: fit then saw another order than
    # student.fit would on the same dataset.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype("float32")
    y = rng.integers(0, 4, 40).astype("int32")
    teacher = make_mlp([8])
    seen = []

    def make(record):
        targets = (keras_kd.targets(y, teacher_logits=outputs(teacher, x))
                   if cached else y)
        dataset = tf.data.Dataset.from_tensor_slices((x, targets)).shuffle(
            40, seed=7, reshuffle_each_iteration=True).batch(8)
        if record:
            def note(features):
                seen.append(float(features.numpy().sum()))
                return features

            dataset = dataset.map(lambda f, t: (
                tf.ensure_shape(tf.py_function(note, [f], tf.float32), f.shape), t))
        return dataset

    expected = [float(f.numpy().sum()) for f, _ in make(record=False)]
    distiller = Distiller(student=make_mlp([8]), teacher=teacher)
    distiller.compile(optimizer="sgd", alpha=0.5)
    distiller.fit(make(record=True), epochs=1, verbose=0)
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
