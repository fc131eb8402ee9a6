"""The Distiller's contract: what a batch and an output mean.

One test per row of the round-3 table of silent errors (each failed on the
round-2 code): labelled-only metrics, class weights and live checks that do
not outlive a call, dense labels never dropped, logs of unlabelled fits,
re-compiled metrics, ensembles of one member for every built-in loss, sigmoid
outputs, a term's own reduction, several outputs, sequence outputs with
sample weights, masks and `ignore_class` (against float64 references and
`student.evaluate`), and the backend.
"""

import keras
import numpy as np
import pytest
from conftest import make_mlp
from conftest import outputs

import keras_kd
from keras_kd import Distiller
from keras_kd.distillation import divergences
from keras_kd.distillation import logit_methods
from keras_kd.distillation import losses


def softmax64(z):
    z = np.float64(z) - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def outputs64(model, x):
    """A model's outputs as float64 NumPy (conftest.outputs)."""
    return np.float64(outputs(model, x))


def kl64(teacher_logits, student_logits, temperature):
    p_t = softmax64(np.float64(teacher_logits) / temperature)
    p_s = softmax64(np.float64(student_logits) / temperature)
    return temperature**2 * np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1)


@pytest.fixture
def pair(tiny_data):
    keras.utils.set_random_seed(5)
    return make_mlp([16], name="teacher"), make_mlp([8], name="student")


# Labels and metrics.

@pytest.mark.parametrize("argument", ["metrics", "weighted_metrics"])
def test_every_compiled_metric_sees_only_labelled_samples(tiny_data, pair, argument):
    x, _ = tiny_data
    teacher, student = pair
    predicted = np.argmax(outputs64(student, x), axis=-1)
    # Right on every labelled sample; unlabelled ones would count as class 0.
    y = np.where(np.arange(len(x)) % 3 == 0, keras_kd.UNLABELLED, predicted)
    assert np.any(predicted[y == keras_kd.UNLABELLED] != 0)
    distiller = Distiller(student=student, teacher=teacher)
    # `weighted_metrics` eagerly: the `metrics` case traces the same filter.
    distiller.compile(**{argument: ["sparse_categorical_accuracy"]},
                      run_eagerly=argument == "weighted_metrics")
    logs = distiller.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["sparse_categorical_accuracy"] == 1.0


def test_class_weight_does_not_outlive_its_call(tiny_data, pair):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    teacher, student = pair
    initial = student.get_weights()

    def fresh(**compile_kwargs):
        student.set_weights(initial)
        distiller = Distiller(student=student, teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), **compile_kwargs)
        return distiller

    # The references, from one eager Distiller that never sees class weights
    # (the Distiller under test below traces the step). `reset_metrics`
    # between calls: Keras < 3.13 accumulates *_on_batch logs.
    reference = fresh(run_eagerly=True)
    plain = reference.train_on_batch(x, y, return_dict=True)["loss"]
    reference.reset_metrics()
    weights = np.where(y == 0, 10.0, 1.0).astype("float32")
    weighted = reference.train_on_batch(x, y, sample_weight=weights, return_dict=True)["loss"]
    # Fresh, so that its first trace is `fit`'s with class weights.
    distiller = fresh()
    distiller.fit(x, y, class_weight={0: 10.0}, epochs=1, verbose=0, batch_size=16)
    distiller.reset_metrics()
    # 1e-5: traced against eager float32; class weights move the loss 2x.
    assert float(distiller.train_on_batch(x, y, return_dict=True)["loss"]) == pytest.approx(
        float(plain), rel=1e-5)
    distiller.reset_metrics()
    once = distiller.train_on_batch(x, y, class_weight={0: 10.0}, return_dict=True)["loss"]
    assert float(once) == pytest.approx(float(weighted), rel=1e-5)
    assert weighted > 2 * plain  # The class weights did change the loss.


def test_alpha_is_checked_on_every_call_without_labels(tiny_data, pair):
    x, _ = tiny_data
    teacher, student = pair
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(alpha=0.0)
    distiller.fit(x, epochs=1, verbose=0)
    distiller.alpha = 0.5
    with pytest.raises(ValueError, match=r"no labels.*alpha=0.5"):
        distiller.fit(x, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"no labels"):
        distiller.train_on_batch(x)
    distiller.alpha = 0.0
    # A schedule that gives the hard term weight during an unlabelled fit.
    schedule = keras_kd.AlphaScheduler(lambda epoch: 0.0 if epoch == 0 else 0.3)
    with pytest.raises(ValueError, match=r"no labels.*alpha=0.3"):
        distiller.fit(x, epochs=2, verbose=0, callbacks=[schedule])


def test_dense_multi_label_rows_without_a_positive_are_kept():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (rng.uniform(size=(32, 5)) < 0.2).astype("float32")
    y[:8] = 0.0  # Rows with no positive class: valid targets.
    keras.utils.set_random_seed(1)
    teacher, student = make_mlp([16], num_classes=5), make_mlp([8], num_classes=5)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    student.compile(loss=loss, run_eagerly=True)  # Keras' own reference.
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(student_loss_fn=loss)
    expected = student.evaluate(x, y, verbose=0, batch_size=32)
    logs = distiller.evaluate(x, y, verbose=0, batch_size=32, return_dict=True)
    # 1e-5: Keras' eager float32 against the traced step.
    assert float(logs["loss"]) == pytest.approx(float(expected), rel=1e-5)
    # Multi-label student loss: the distillation term compares sigmoids.
    assert isinstance(distiller._distillation_loss_for(student(x)),
                      losses.BinaryKLDivergenceWithTemperature)


def test_unlabelled_fit_logs_every_term_and_teacher_metric(tiny_data):
    x, _ = tiny_data
    keras.utils.set_random_seed(3)
    teacher, student = make_mlp([16]), make_mlp([8])
    hint = keras_kd.FeatureHint(student.layers[0].name, teacher.layers[0].name, method="rkd")
    distiller = Distiller(student=student, teacher=teacher, hints=[hint])
    distiller.compile(alpha=0.0, metrics=[keras_kd.TeacherAgreement()])
    logs = {k: v[0] for k, v in distiller.fit(x, epochs=1, verbose=0, batch_size=64).history.items()}
    assert set(logs) == {"loss", "student_loss", "distillation_loss", "rkd_loss",
                         "teacher_agreement"}
    assert float(logs["loss"]) == pytest.approx(
        float(logs["distillation_loss"] + logs["rkd_loss"]), rel=1e-5)
    assert 0.0 < logs["teacher_agreement"] < 1.0


def test_recompile_drops_teacher_metrics(tiny_data, pair):
    x, y = tiny_data
    teacher, student = pair
    distiller = Distiller(student=student, teacher=teacher)
    # The first compile eagerly (test_unlabelled_fit_logs_every_term_and_
    # teacher_metric traces TeacherAgreement in `fit`); the second traces.
    distiller.compile(metrics=[keras_kd.TeacherAgreement()], run_eagerly=True)
    assert "teacher_agreement" in distiller.fit(x, y, epochs=1, verbose=0).history
    distiller.compile(metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=1, verbose=0).history
    assert "teacher_agreement" not in history and "accuracy" in history


# Ensembles.

SOFTMAX_LOSSES = {
    "kl": lambda: losses.KLDivergenceWithTemperature(),
    "cse": lambda: losses.SoftTargetCrossEntropy(),
    "mse_probabilities": lambda: losses.DistillationMeanSquaredError(),
    "mse_logits": lambda: losses.DistillationMeanSquaredError(space="logits"),
    "dkd": lambda: logit_methods.DecoupledKD(),
    "dist": lambda: logit_methods.DIST(),
    "ls_kd": lambda: logit_methods.LogitStandardizedKD(),
    "nkd": lambda: logit_methods.NormalizedKD(),
    "reverse_kl": lambda: divergences.ReverseKL(),
    "jsd": lambda: divergences.GeneralizedJSD(),
    "skew_kl": lambda: divergences.SkewKL(),
    "skew_reverse_kl": lambda: divergences.SkewReverseKL(),
    "keras_kl": lambda: keras.losses.KLDivergence(),
}


@pytest.mark.parametrize("loss", sorted(SOFTMAX_LOSSES))
def test_one_and_two_identical_members_equal_one_teacher(tiny_data, loss):
    x, y = tiny_data
    keras.utils.set_random_seed(4)
    teacher, student = make_mlp([16]), make_mlp([8])

    def distillation_loss(teachers, ensemble):
        distiller = Distiller(student=student, teacher=teachers, ensemble=ensemble)
        # Eager: a value check per loss (test_ensembles traces the step).
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0,
                          distillation_loss_fn=SOFTMAX_LOSSES[loss](), temperature=3.0,
                          run_eagerly=True)
        return distiller.train_on_batch(x, y, return_dict=True)["distillation_loss"]

    # One teacher is no ensemble: one reference for both rules.
    one_teacher = distillation_loss(teacher, "arithmetic")
    for ensemble in ("arithmetic", "geometric"):
        values = [distillation_loss(teachers, ensemble) for teachers in ([teacher],
                                                                         [teacher, teacher])]
        np.testing.assert_allclose(values, [one_teacher] * 2, rtol=2e-5, atol=1e-7,
                                   err_msg=ensemble)


def test_sigmoid_ensemble_of_identical_members_is_one_teacher():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 2, size=(16, 1)).astype("float32")
    keras.utils.set_random_seed(4)
    teacher, student = make_mlp([16], num_classes=1), make_mlp([8], num_classes=1)

    def distillation_loss(teachers, ensemble, run_eagerly):
        distiller = Distiller(student=student, teacher=teachers, ensemble=ensemble)
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0, temperature=2.0,
                          run_eagerly=run_eagerly)
        return distiller.train_on_batch(x, y, return_dict=True)["distillation_loss"]

    # One teacher is no ensemble: one eager reference for both rules. The
    # two-member ensembles trace the step under each rule (the geometric
    # one's weighted-logit combination has no other traced test); the
    # one-member ones run eagerly (2e-5 holds for float32 traced or eager).
    one_teacher = distillation_loss(teacher, "arithmetic", run_eagerly=True)
    for ensemble in ("arithmetic", "geometric"):
        values = [distillation_loss(teachers, ensemble, run_eagerly=len(teachers) == 1)
                  for teachers in ([teacher], [teacher, teacher])]
        np.testing.assert_allclose(values, [one_teacher] * 2, rtol=2e-5, err_msg=ensemble)


# Sigmoid outputs.

def test_one_logit_binary_classifier_distils_bernoulli_kl():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 2, size=(16,)).astype("float32")
    keras.utils.set_random_seed(2)
    teacher, student = make_mlp([16], num_classes=1), make_mlp([8], num_classes=1)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=2.0)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    t = outputs64(teacher, x) / 2
    s = outputs64(student, x) / 2
    p, q = 1 / (1 + np.exp(-t)), 1 / (1 + np.exp(-s))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    np.testing.assert_allclose(logs["distillation_loss"], 4 * kl.mean(), rtol=1e-5)
    assert logs["distillation_loss"] > 0.0
    bce = np.mean(-(y[:, None] * np.log(1 / (1 + np.exp(-2 * s)))
                    + (1 - y[:, None]) * np.log(1 - 1 / (1 + np.exp(-2 * s)))))
    np.testing.assert_allclose(logs["student_loss"], bce, rtol=1e-5)
    softmax_kd = Distiller(student=student, teacher=teacher)
    softmax_kd.compile(distillation_loss_fn=losses.KLDivergenceWithTemperature())
    with pytest.raises(ValueError, match="one logit"):
        softmax_kd.train_on_batch(x, y)


# Reductions.

@pytest.mark.parametrize("reduction", ["sum", "mean_with_sample_weight", "sum_over_batch_size"])
def test_a_terms_own_reduction_is_honoured(tiny_data, pair, reduction):
    x, y = tiny_data
    x, y = x[:16], y[:16]
    weights = np.linspace(0.5, 2.0, 16).astype("float32")
    teacher, student = pair
    distiller = Distiller(student=student, teacher=teacher)
    # "sum" traces the step; the other reductions are checked eagerly (the
    # reduction is chosen in Python, the same in both).
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), temperature=2.0,
        distillation_loss_fn=losses.KLDivergenceWithTemperature(reduction=reduction),
        run_eagerly=reduction != "sum")
    logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    values = weights * kl64(outputs64(teacher, x), outputs64(student, x), 2.0)
    divisor = {"sum": 1.0, "mean_with_sample_weight": weights.sum(), "sum_over_batch_size": 16}
    np.testing.assert_allclose(logs["distillation_loss"], values.sum() / divisor[reduction],
                               rtol=1e-5)


# Several outputs.

def _two_output_teacher(as_dict):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    aux = keras.layers.Dense(2, name="aux")(hidden)
    logits = keras.layers.Dense(4, name="logits")(hidden)
    outputs = {"aux": aux, "logits": logits} if as_dict else [aux, logits]
    return keras.Model(inputs, outputs), keras.Model(inputs, logits)


@pytest.mark.parametrize("as_dict", [True, False])
def test_several_outputs_are_named_not_guessed(tiny_data, as_dict):
    x, y = tiny_data
    keras.utils.set_random_seed(6)
    teacher, logits_only = _two_output_teacher(as_dict)
    student = make_mlp([8])
    with pytest.raises(ValueError, match=r"several outputs.*aux.*logits.*teacher_output"):
        Distiller(student=student, teacher=teacher)
    with pytest.raises(ValueError, match=r"`teacher_output='nope'` is not one"):
        Distiller(student=student, teacher=teacher, teacher_output="nope")
    values = []
    position = [] if as_dict else [(teacher, 1)]
    for model, selector in [(teacher, "logits")] + position + [(logits_only, None)]:
        distiller = Distiller(student=student, teacher=model, teacher_output=selector)
        # The dict case traces its selection's step; the list case (the same
        # selection, in Python) and the one-output reference are eager.
        distiller.compile(optimizer=keras.optimizers.SGD(0.0),
                          run_eagerly=not as_dict or model is logits_only)
        values.append(distiller.train_on_batch(x, y, return_dict=True)["distillation_loss"])
    # 1e-5: traced against eager float32; the other output is another model.
    np.testing.assert_allclose(values, [values[-1]] * len(values), rtol=1e-5)


def test_student_with_several_outputs_trains_the_named_one(tiny_data):
    x, y = tiny_data
    keras.utils.set_random_seed(7)
    student, logits_only = _two_output_teacher(as_dict=True)
    teacher = make_mlp([16])
    distiller = Distiller(student=student, teacher=teacher, student_output="logits")
    # `evaluate` eagerly (test_backends' test of `student_output` traces it
    # under replicas); `fit` below traces.
    distiller.compile(metrics=["sparse_categorical_accuracy"], run_eagerly=True)
    logs = distiller.evaluate(x, y, return_dict=True, verbose=0)
    # Keras' own reference, eagerly.
    logits_only.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                        metrics=["sparse_categorical_accuracy"], run_eagerly=True)
    expected = logits_only.evaluate(x, y, return_dict=True, verbose=0)
    assert float(logs["loss"]) == pytest.approx(float(expected["loss"]), rel=1e-6)
    assert logs["sparse_categorical_accuracy"] == expected["sparse_categorical_accuracy"]
    distiller.compile(metrics=["sparse_categorical_accuracy"])
    distiller.fit(x, y, epochs=1, verbose=0)


# Sequence outputs.

VOCAB, TIME = 7, 5


def sequence_model(units, mask_zero, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((TIME,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, units, mask_zero=mask_zero)(inputs)
    return keras.Model(inputs, keras.layers.Dense(VOCAB)(hidden))


def sequence_batch(seed=0, batch=8):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, VOCAB, size=(batch, TIME))
    lengths = rng.integers(2, TIME + 1, size=batch)
    padding = np.arange(TIME)[None, :] >= lengths[:, None]
    x[padding] = 0
    y = rng.integers(1, VOCAB, size=(batch, TIME))
    y[padding] = 0
    return x, y, ~padding


@pytest.mark.parametrize("mask_zero", [False, True])
@pytest.mark.parametrize("marking", ["sample_weight", "ignore_class", "keras_mask"])
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_sequence_terms_match_float64_and_student_evaluate(mask_zero, marking, reduction):
    if marking == "keras_mask" and not mask_zero:
        pytest.skip("no Keras mask without mask_zero")
    x, y, real = sequence_batch()
    teacher, student = sequence_model(12, mask_zero, 1), sequence_model(6, mask_zero, 2)
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=reduction,
        ignore_class=0 if marking == "ignore_class" else None)
    weights = real.astype("float32") if marking == "sample_weight" else None
    distiller = Distiller(student=student, teacher=teacher)
    # One case traces the step; the others check values eagerly.
    traced = mask_zero and marking == "keras_mask" and reduction == "mean_with_sample_weight"
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), student_loss_fn=loss,
                      alpha=0.5, temperature=2.0, run_eagerly=not traced)
    logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)

    counted = real if marking != "sample_weight" or mask_zero else np.ones_like(real)
    if mask_zero:
        counted = counted & real
    w = np.ones(real.shape) if weights is None else np.float64(weights)
    s, t = outputs64(student, x), outputs64(teacher, x)
    ce = -np.log(np.take_along_axis(softmax64(s), y[..., None], -1))[..., 0]
    kl = kl64(t, s, 2.0)
    if reduction == "sum_over_batch_size":
        divisor = counted.sum()
    else:
        divisor = (w * counted).sum()
    hard = (w * ce * counted).sum() / divisor
    soft = (w * kl * counted).sum() / divisor
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    # float32 log-softmax differences: 1e-4 relative on these small values,
    # and T**2 times the rounding of log-probabilities near -2 (float32 eps
    # 1.2e-7 each) absolute: PyTorch's initial weights give a KL of 8e-4,
    # off by 1.0e-7 (1.3e-4 relative). A wrong mask moves it by 10% or more.
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-4, atol=1e-6)
    student.compile(loss=loss, run_eagerly=not traced)  # Eager or traced, as the Distiller.
    np.testing.assert_allclose(
        distiller.evaluate(x, y, sample_weight=weights, verbose=0, return_dict=True)["loss"],
        student.evaluate(x, y, sample_weight=weights, verbose=0), rtol=1e-6)


def test_padded_positions_are_inert():
    """What a padded position holds changes nothing: inputs, labels or
    teacher outputs there."""
    x, y, real = sequence_batch(seed=3)
    teacher, student = sequence_model(12, True, 1), sequence_model(6, True, 2)
    distiller = Distiller(student=student, teacher=teacher)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), student_loss_fn=loss, alpha=0.5)
    cached = np.float32(outputs64(teacher, x))
    first = distiller.train_on_batch(
        x, keras_kd.targets(labels=y, teacher_logits=cached), return_dict=True)
    noise = np.random.default_rng(9).normal(size=cached.shape).astype("float32") * 50
    garbage = np.where(real[..., None], cached, noise)
    second = distiller.train_on_batch(
        x, keras_kd.targets(labels=y, teacher_logits=garbage), return_dict=True)
    assert {k: float(v) for k, v in first.items()} == pytest.approx(
        {k: float(v) for k, v in second.items()}, rel=1e-6)


def test_unlabelled_positions_get_only_the_distillation_term():
    x, y, real = sequence_batch(seed=4)
    teacher, student = sequence_model(12, False, 1), sequence_model(6, False, 2)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=1.0)
    marked = y.copy()
    marked[:, :2] = keras_kd.UNLABELLED
    logs = distiller.train_on_batch(x, marked, return_dict=True)
    s, t = outputs64(student, x), outputs64(teacher, x)
    ce = -np.log(np.take_along_axis(softmax64(s), y[..., None], -1))[..., 0]
    np.testing.assert_allclose(logs["student_loss"], ce[:, 2:].mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kl64(t, s, 1.0).mean(), rtol=1e-4)


# Backend and precision.

@pytest.mark.parametrize("backend", ["openvino", "numpy"])
def test_another_backend_gets_a_clear_error(monkeypatch, backend):
    # Keras reports its backend by `keras.backend.backend()`, which is what
    # the Distiller reads; TensorFlow, JAX and PyTorch have steps
    # (tests/distillation/test_backends.py). OpenVINO and NumPy cannot train.
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    with pytest.raises(
            RuntimeError,
            match=rf"TensorFlow, JAX and PyTorch.*runs on '{backend}'.*KERAS_BACKEND=torch"):
        Distiller(student=make_mlp([4]), teacher=make_mlp([4]))


@pytest.mark.parametrize("make_loss", [losses.KLDivergenceWithTemperature,
                                       logit_methods.DecoupledKD, divergences.ReverseKL])
def test_default_losses_are_float32_and_close_to_float64(make_loss):
    loss = make_loss()
    assert loss.precision == "float32"
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(64, 100)) * 5, rng.normal(size=(64, 100)) * 5
    labels = rng.integers(0, 100, size=64)
    kwargs = {"labels": labels} if loss.needs_labels else {}
    fast = np.asarray(loss.compute_per_sample(t, s, 4.0, **kwargs))
    exact = np.asarray(make_loss(precision="float64").compute_per_sample(t, s, 4.0, **kwargs))
    assert fast.dtype == np.float32
    np.testing.assert_allclose(fast, exact, rtol=1e-4)


# When the teacher runs.

class CountingTeacher(keras.Model):
    """Counts its forward passes in a variable (graph executions count)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.body = make_mlp([16])
        self.calls = keras.Variable(0.0, trainable=False, name="calls")

    def call(self, inputs):
        self.calls.assign_add(1.0)
        return self.body(inputs)


@pytest.mark.parametrize(
    "metrics, runs_at_alpha",
    # Without teacher metrics one Distiller takes both alphas: the step reads
    # alpha from a variable (TensorFlow traces once, at 0.5; JAX traces
    # again for a fit that starts at 1).
    [([], {0.5: True, 1.0: False}), (["teacher_agreement"], {1.0: True})],
    ids=["alpha_0.5_then_1", "teacher_metric_at_alpha_1"],
)
def test_the_teacher_runs_only_when_a_term_needs_it(tiny_data, metrics, runs_at_alpha):
    x, y = tiny_data
    teacher = CountingTeacher()
    teacher(x[:1])
    distiller = Distiller(student=make_mlp([8]), teacher=teacher)
    distiller.compile(alpha=next(iter(runs_at_alpha)),
                      metrics=[keras_kd.TeacherAgreement()] if metrics else None)
    for alpha, runs in runs_at_alpha.items():
        distiller.alpha = alpha
        # The first fit at an alpha is not counted: its check of the
        # teacher's outputs runs the teacher (once per Distiller), and JAX
        # may trace there.
        distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
        teacher.calls.assign(0.0)
        history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
        assert float(teacher.calls.numpy()) == (4.0 if runs else 0.0), alpha
        if not runs:  # Not computed, so not reported as a value.
            assert history["distillation_loss"] == [0.0]


# Vocabulary sizes.

def test_a_padded_teacher_vocabulary_is_cut_to_the_shared_prefix():
    x, y, _ = sequence_batch(seed=5)
    keras.utils.set_random_seed(8)
    inputs = keras.Input((TIME,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, 12)(inputs)
    padded = keras.Model(inputs, keras.layers.Dense(VOCAB + 3)(hidden))  # 3 padding ids.
    cut = keras.Model(inputs, padded(inputs)[..., :VOCAB])
    student = sequence_model(6, False, 2)
    with pytest.raises(ValueError, match="align_vocabulary='prefix'"):
        Distiller(student=student, teacher=padded)
    values = []
    for teacher, align in ((padded, "prefix"), (cut, None)):
        distiller = Distiller(student=student, teacher=teacher, align_vocabulary=align)
        # The cut teacher, a reference, eagerly; the padded one traces.
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.0,
                          run_eagerly=align is None)
        values.append(distiller.train_on_batch(x, y, return_dict=True)["distillation_loss"])
    # 1e-5: traced against eager float32; the 3 padding ids move it far more.
    assert float(values[0]) == pytest.approx(float(values[1]), rel=1e-5)
    with pytest.raises(ValueError, match="at least the student's"):
        Distiller(student=padded, teacher=student, align_vocabulary="prefix")
