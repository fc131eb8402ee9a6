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
    x = keras.layers.Embedding(VOCAB, width, mask_zero=mask_zero,
                               embeddings_initializer=keras.initializers.RandomNormal(1.0))(tokens)
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


def _distiller(chunk_size, reduction, ignore_class, mask_zero=False, regularized=False):
    student = _model(8, 1, "student", mask_zero, regularized)
    teacher = _model(12, 2, "teacher", mask_zero)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="sgd", alpha=0.3, temperature=2.0, chunk_size=chunk_size,
                      **_compile_args(reduction, ignore_class))
    return distiller


class _HeadCalls:
    """Counts the head layer's calls inside the evaluation step's forward
    pass (`objective.evaluation_forward`): the whole-logit products of the
    student. (Keras' symbolic build before the first step, a shape-only
    trace, is not counted.)"""

    def __init__(self, layer, monkeypatch):
        from keras_kd.distillation import objective

        self.count = 0
        self.active = False
        original = layer.call
        forward = objective.evaluation_forward

        def call(inputs, *args, **kwargs):
            self.count += self.active
            return original(inputs, *args, **kwargs)

        def evaluation_forward(*args, **kwargs):
            self.active = True
            try:
                return forward(*args, **kwargs)
            finally:
                self.active = False

        layer.call = call
        monkeypatch.setattr(objective, "evaluation_forward", evaluation_forward)


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
        metrics=["accuracy"])
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
