"""`evaluate` on the Distiller's chunked path (`compile(chunk_size=...)`):
the student's hidden states in chunks, never its whole logits, reporting
what the dense Distiller's `evaluate` reports (loss, student_loss, accuracy,
weighted accuracy) and `student.evaluate`'s loss, with sample weights,
Keras masks, `ignore_class` and `UNLABELLED`. Backend-neutral (TF and JAX)."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller

VOCAB, TIME, SAMPLES, BATCH = 41, 8, 20, 8  # The last batch is partial.


def _model(width, seed, name, mask_zero=False, regularized=False):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((TIME,), dtype="int32")
    x = keras.layers.Embedding(
        VOCAB, width, mask_zero=mask_zero,
        embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0))(tokens)
    x = keras.layers.Dense(width, activation="tanh")(x)
    regularizer = keras.regularizers.L2(0.01) if regularized else None
    logits = keras.layers.Dense(VOCAB, name="lm_head", kernel_regularizer=regularizer)(x)
    return keras.Model(tokens, logits, name=name)


def _data(seed=0, ignore_class=None):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (SAMPLES, TIME)).astype("int32")
    tokens[:5, -3:] = 0  # Padding ids: masked where the embedding masks zeros.
    # Labels the student gets right sometimes: accuracy is not ~0.
    labels = np.where(rng.uniform(size=tokens.shape) < 0.3, tokens,
                      rng.integers(0, VOCAB, tokens.shape)).astype("int32")
    weights = rng.uniform(0.5, 2.0, (SAMPLES, TIME)).astype("float32")
    weights[3, -2:] = 0.0
    if ignore_class is not None:
        labels[6:9, :2] = ignore_class
    return tokens, labels, weights


def _compile_args(reduction, ignore_class):
    return dict(
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction=reduction, ignore_class=ignore_class),
        metrics=["accuracy"],
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="weighted_acc")],
    )


# The dense path (and `student.evaluate`) is the reference the chunked path
# is held to: it runs eagerly (no tf.function to trace, the bulk of an
# evaluate's time here). Its traced path has its own tests
# (test_distiller.py, test_metrics.py), and a bug of the traced step that
# both paths shared shows here as a difference from the eager reference.
# On TensorFlow only: on JAX a step run eagerly dispatches op by op and
# costs more than its jit compile.
EAGER_IS_CHEAP = keras.backend.backend() == "tensorflow"


def _distiller(chunk_size, reduction, ignore_class, mask_zero=False, regularized=False):
    student = _model(8, 1, "student", mask_zero, regularized)
    teacher = _model(12, 2, "teacher", mask_zero)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd", alpha=0.3, temperature=2.0, chunk_size=chunk_size,
                      # The dense reference: see above.
                      run_eagerly=EAGER_IS_CHEAP and chunk_size is None,
                      **_compile_args(reduction, ignore_class))
    return distiller


class _HeadCalls:
    """Counts the calls of `layer` (a head: the whole-logit products)
    inside the evaluation step's functions in `objective` (by default its
    forward pass, `evaluation_forward`). (Keras' symbolic build before the
    first step, a shape-only trace, is not counted.)"""

    def __init__(self, layer, monkeypatch, functions=("evaluation_forward",)):
        from keras_kd.distillation import objective

        self.count = 0
        self.active = 0
        original = layer.call

        def call(inputs, *args, **kwargs):
            self.count += self.active > 0
            return original(inputs, *args, **kwargs)

        def counted(function):
            def run(*args, **kwargs):
                self.active += 1
                try:
                    return function(*args, **kwargs)
                finally:
                    self.active -= 1

            return run

        layer.call = call
        for name in functions:
            monkeypatch.setattr(objective, name, counted(getattr(objective, name)))


@pytest.mark.parametrize("reduction,ignore_class,mask_zero,weighted,unlabelled", [
    ("sum_over_batch_size", None, False, True, False),
    ("sum", 3, False, True, True),
    ("mean_with_sample_weight", 5, True, True, False),
])
def test_evaluate_matches_dense_and_student(reduction, ignore_class, mask_zero, weighted,
                                            unlabelled, monkeypatch):
    tokens, labels, weights = _data(ignore_class=ignore_class)
    if unlabelled:
        labels[10, 3:] = -1  # keras_kd.UNLABELLED: no student term, no accuracy.
    sample_weight = weights if weighted else None
    results = {}
    for name, chunk_size in (("dense", None), ("chunked", 3)):
        distiller = _distiller(chunk_size, reduction, ignore_class, mask_zero)
        calls = _HeadCalls(distiller.student.get_layer("lm_head"), monkeypatch)
        results[name] = distiller.evaluate(tokens, labels, sample_weight=sample_weight,
                                           batch_size=BATCH, verbose=0, return_dict=True)
        results[name + "_head_calls"] = calls.count
    # The dense path multiplies by the head; the chunked path never does.
    assert results["dense_head_calls"] > 0 and results["chunked_head_calls"] == 0
    dense, chunked = results["dense"], results["chunked"]
    assert set(chunked) == set(dense) == {"loss", "student_loss", "accuracy", "weighted_acc"}
    assert 0.0 < dense["accuracy"] < 1.0
    for key in dense:
        np.testing.assert_allclose(chunked[key], dense[key], rtol=1e-5, atol=1e-6, err_msg=key)

    if unlabelled:
        return  # Keras has no UNLABELLED: the student alone cannot take these labels.
    student = _model(8, 1, "student", mask_zero)
    student.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=reduction, ignore_class=ignore_class),
        metrics=["accuracy"], run_eagerly=EAGER_IS_CHEAP)  # A reference: see `_distiller`.
    alone = student.evaluate(tokens, labels, sample_weight=sample_weight, batch_size=BATCH,
                             verbose=0, return_dict=True)
    np.testing.assert_allclose(chunked["loss"], alone["loss"], rtol=1e-5, atol=1e-6)
    if ignore_class is None:  # Keras' accuracy counts the ignored positions.
        np.testing.assert_allclose(chunked["accuracy"], alone["accuracy"], rtol=1e-5)


def test_evaluate_after_fit_and_with_regularization():
    """After training (the head's current weights are read) and with a
    regulariser (`student.losses`, in the loss as `student.evaluate` has
    it); the validation logs of `fit` agree too."""
    tokens, labels, weights = _data(seed=1)
    logs = {}
    for name, chunk_size in (("dense", None), ("chunked", 4)):
        distiller = _distiller(chunk_size, "sum_over_batch_size", None, regularized=True)
        history = distiller.fit(tokens, labels, sample_weight=weights, batch_size=BATCH,
                                epochs=2, shuffle=False, verbose=0,
                                validation_data=(tokens[:12], labels[:12], weights[:12]))
        logs[name] = history.history
        logs[name + "_evaluate"] = distiller.evaluate(
            tokens, labels, sample_weight=weights, batch_size=BATCH, verbose=0,
            return_dict=True)
    for key in logs["dense"]:
        np.testing.assert_allclose(logs["chunked"][key], logs["dense"][key], rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    assert "val_loss" in logs["dense"] and "val_distillation_loss" not in logs["dense"]
    for key, value in logs["dense_evaluate"].items():
        np.testing.assert_allclose(logs["chunked_evaluate"][key], value, rtol=1e-5, atol=1e-6,
                                   err_msg=key)
    assert logs["dense_evaluate"]["loss"] > logs["dense_evaluate"]["student_loss"]


def test_evaluate_without_labels():
    """`evaluate(x)`: no labels, the loss is 0 on both paths (as dense)."""
    tokens, _, _ = _data()
    results = []
    for chunk_size in (None, 4):
        distiller = _distiller(chunk_size, "sum_over_batch_size", None)
        results.append(distiller.evaluate(tokens, batch_size=BATCH, verbose=0, return_dict=True))
    assert set(results[0]) == set(results[1])
    for key in results[0]:
        np.testing.assert_allclose(results[1][key], results[0][key], atol=1e-7, err_msg=key)


def test_predict_still_gives_whole_logits():
    tokens, _, _ = _data()
    distiller = _distiller(4, "sum_over_batch_size", None)
    predicted = distiller.predict(tokens, batch_size=BATCH, verbose=0)
    assert predicted.shape == (SAMPLES, TIME, VOCAB)
    np.testing.assert_allclose(predicted, np.asarray(distiller.student(tokens)), rtol=1e-5,
                               atol=1e-6)


# The whole evaluation step: its forward pass, its terms and its metrics.
EVALUATION_STEP = ("evaluation_forward", "evaluation_terms", "update_metrics")


def _teacher_metric_references(distiller, tokens, labels, weights, ignore_class, mask_zero):
    """Float64 NumPy `TeacherKL` (T = 1) and `TeacherAgreement` over the
    whole set: the means of the per-position values weighted by the sample
    weights times the present positions (not padding, not `ignore_class`;
    unlabelled positions count), from both models' logits."""
    s = np.asarray(distiller.student(tokens), "float64")
    t = np.asarray(distiller.teacher(tokens), "float64")

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(t), log_softmax(s)
    kl = np.maximum(np.sum(np.exp(log_p) * (log_p - log_q), -1), 0.0)
    agreement = (t.argmax(-1) == s.argmax(-1)).astype("float64")
    w = np.ones(tokens.shape) if weights is None else np.asarray(weights, "float64")
    if mask_zero:
        w = w * (tokens != 0)
    if ignore_class is not None:
        w = w * (labels != ignore_class)
    return {"teacher_kl": np.sum(kl * w) / np.sum(w),
            "teacher_agreement": np.sum(agreement * w) / np.sum(w)}


def _near_teacher(mask_zero):
    """The student's architecture and weights with a scaled, perturbed head:
    the two agree at about half the positions (random pairs at none) and
    their KL is far from 0."""
    teacher = _model(8, 1, "teacher", mask_zero)
    head = teacher.get_layer("lm_head")
    noise = np.random.default_rng(9).normal(size=head.kernel.shape)
    head.kernel.assign(3.0 * np.asarray(head.kernel) + 0.3 * noise.astype("float32"))
    return teacher


@pytest.mark.parametrize("ignore_class,mask_zero,weighted", [
    (None, False, True),
    (5, True, True),
    (3, True, False),
])
def test_evaluate_teacher_metrics_match_dense_and_numpy(ignore_class, mask_zero, weighted,
                                                        monkeypatch):
    """`TeacherKL` and `TeacherAgreement` in a chunked `evaluate` (3
    batches, the last partial): the dense Distiller's values within 1e-5
    and a float64 NumPy reference's; no head is called in the whole step
    (neither model's logits exist), and the teacher runs only for the
    teacher metrics. Failed before: the chunked path refused teacher
    metrics at compile."""
    from keras_kd import TeacherAgreement
    from keras_kd import TeacherKL

    tokens, labels, weights = _data(ignore_class=ignore_class)
    labels[10, 3:] = -1  # keras_kd.UNLABELLED: no accuracy, but teacher metrics.
    sample_weight = weights if weighted else None
    results, calls = {}, {}
    for name, chunk_size in (("dense", None), ("chunked", 3), ("chunked_plain", 3)):
        student = _model(8, 1, "student", mask_zero)
        teacher = _near_teacher(mask_zero)
        distiller = Distiller(student=student, teacher=teacher)
        metrics = ["accuracy"]
        if name != "chunked_plain":
            metrics += [TeacherKL(), TeacherAgreement()]
        distiller.compile(optimizer="sgd", alpha=0.3, temperature=2.0, chunk_size=chunk_size,
                          student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True, ignore_class=ignore_class),
                          metrics=metrics,  # The dense reference: see `_distiller`.
                          run_eagerly=EAGER_IS_CHEAP and chunk_size is None)
        counters = [_HeadCalls(layer, monkeypatch, EVALUATION_STEP) for layer in (
            student.get_layer("lm_head"), teacher.get_layer("lm_head"), teacher.layers[2])]
        results[name] = distiller.evaluate(tokens, labels, sample_weight=sample_weight,
                                           batch_size=BATCH, verbose=0, return_dict=True)
        calls[name] = [c.count for c in counters]
        monkeypatch.undo()
        if name == "chunked":
            reference = _teacher_metric_references(distiller, tokens, labels, sample_weight,
                                                   ignore_class, mask_zero)
    # Dense: both heads and the teacher run. Chunked: no head; the teacher's
    # hidden layer only for the teacher metrics.
    assert min(calls["dense"]) > 0
    assert calls["chunked"][:2] == [0, 0] and calls["chunked"][2] > 0
    assert calls["chunked_plain"] == [0, 0, 0]
    dense, chunked = results["dense"], results["chunked"]
    assert set(chunked) == set(dense) == {
        "loss", "student_loss", "accuracy", "teacher_kl", "teacher_agreement"}
    assert 0.0 < dense["teacher_agreement"] < 1.0 and dense["teacher_kl"] > 0.1
    for key in dense:
        np.testing.assert_allclose(chunked[key], dense[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for key, value in reference.items():
        np.testing.assert_allclose(chunked[key], value, rtol=1e-5, err_msg=key)
    assert "teacher_kl" not in results["chunked_plain"]


def test_evaluate_teacher_metrics_in_float64_match_numpy():
    """Float64 models and arithmetic (`precision="float64"`, float64
    metrics): the chunked `evaluate`'s TeacherKL and TeacherAgreement are
    within 1e-12 of the float64 NumPy reference on TensorFlow, 1e-7 on JAX
    (see below); the dense path's within 1e-7 only: it rounds the
    teacher's logits to float32."""
    from keras_kd import GeneralizedJSD
    from keras_kd import TeacherAgreement
    from keras_kd import TeacherKL

    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        tokens, labels, weights = _data(ignore_class=5)
        results = {}
        for chunk_size in (None, 3):
            student = _model(8, 1, "student", mask_zero=True)
            distiller = Distiller(student=student, teacher=_near_teacher(True))
            distiller.compile(
                student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True, ignore_class=5),
                distillation_loss_fn=GeneralizedJSD(beta=0.5, precision="float64"),
                # See `_distiller`.
                chunk_size=chunk_size, run_eagerly=EAGER_IS_CHEAP and chunk_size is None,
                metrics=[TeacherKL(dtype="float64"), TeacherAgreement(dtype="float64")])
            assert student.get_layer("lm_head").kernel.dtype == "float64"
            results[chunk_size] = distiller.evaluate(
                tokens, labels, sample_weight=weights, batch_size=BATCH, verbose=0,
                return_dict=True)
        reference = _teacher_metric_references(distiller, tokens, labels, weights, 5, True)
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    assert 0.0 < reference["teacher_agreement"] < 1.0
    # Off TensorFlow, Keras promotes float64 to float32 (`result_type`, as
    # JAX's 32-bit default does): its `ops.mean` and `ops.tanh` compute float64
    # inputs in float32, so the models' tanh layer and Keras' `Mean` (which
    # averages each sample's positions) are float32-exact there.
    float64_rtol = 1e-12 if keras.backend.backend() == "tensorflow" else 1e-7
    for key, value in reference.items():
        np.testing.assert_allclose(results[3][key], value, rtol=float64_rtol, err_msg=key)
        np.testing.assert_allclose(results[None][key], value, rtol=1e-7, err_msg=key)


def test_teacher_metrics_in_weighted_metrics_are_teacher_metrics():
    """`TeacherKL` / `TeacherAgreement` given as `weighted_metrics=` are the
    teacher metrics `metrics=` gives (they are always weighted by the sample
    weights), dense and chunked. Failed before: the dense Distiller compiled
    them as Keras metrics on the labels (a shape error in the first step),
    and the chunked path refused them as "compiled metrics other than
    accuracy"."""
    from keras_kd import TeacherAgreement
    from keras_kd import TeacherKL

    tokens, labels, weights = _data()
    results = {}
    for chunk_size in (None, 3):
        for argument in ("metrics", "weighted_metrics"):
            distiller = Distiller(student=_model(8, 1, "student"), teacher=_near_teacher(False))
            # The dense path eagerly: it is the reference (see `_distiller`).
            distiller.compile(optimizer="sgd", chunk_size=chunk_size,
                              run_eagerly=EAGER_IS_CHEAP and chunk_size is None,
                              **{argument: [TeacherKL(), TeacherAgreement()]})
            results[chunk_size, argument] = distiller.evaluate(
                tokens, labels, sample_weight=weights, batch_size=BATCH, verbose=0,
                return_dict=True)
    reference = results[None, "metrics"]
    assert reference["teacher_kl"] > 0.1 and 0.0 < reference["teacher_agreement"] < 1.0
    for (chunk_size, argument), values in results.items():
        assert set(values) == set(reference), (chunk_size, argument)
        for key in reference:
            np.testing.assert_allclose(values[key], reference[key], rtol=1e-5, atol=1e-7,
                                       err_msg=f"{chunk_size} {argument} {key}")
