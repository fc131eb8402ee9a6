import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_kd.distillation import losses

from conftest import numpy
from conftest import runtime_check_error
from conftest import value_and_gradients

TEMPERATURES = [0.5, 1.0, 4.0, 20.0]
SCALES = [1.0, 10.0, 1e3]


def log_softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(name, teacher, student, temperature):
    """Float64 NumPy references, one value per sample."""
    log_t = log_softmax64(np.float64(teacher) / temperature)
    log_s = log_softmax64(np.float64(student) / temperature)
    if name == "kl":
        return temperature**2 * np.sum(np.exp(log_t) * (log_t - log_s), -1)
    if name == "cse":
        return -(temperature**2) * np.sum(np.exp(log_t) * log_s, -1)
    if name == "mse_probabilities":
        return np.mean((np.exp(log_s) - np.exp(log_t)) ** 2, -1)
    if name == "mse_logits":
        return np.mean((np.float64(student) - np.float64(teacher)) ** 2, -1)
    raise ValueError(name)


LOSSES = {
    "kl": losses.KLDivergenceWithTemperature,
    "cse": losses.SoftTargetCrossEntropy,
    "mse_probabilities": lambda temperature: (
        losses.DistillationMeanSquaredError(temperature, space="probabilities")
    ),
    "mse_logits": lambda temperature: (
        losses.DistillationMeanSquaredError(temperature, space="logits")
    ),
}


def random_logits(scale, seed, shape=(32, 10)):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale).astype("float32")


def float32_tolerance(temperature, scale):
    # float32 log-softmax differences: about 1e-7 of the log-probabilities'
    # size (up to scale / T), times T**2.
    return 1e-6 * temperature**2 * (1.0 + scale / temperature)


@pytest.mark.parametrize("precision", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_matches_float64_reference(name, temperature, scale, precision):
    teacher = random_logits(scale, 1)
    student = random_logits(scale, 2)
    loss = LOSSES[name](temperature=temperature)
    loss.precision = precision
    per_sample = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )
    expected = reference(name, teacher, student, temperature)
    if precision == "float64":
        np.testing.assert_allclose(per_sample, expected, rtol=1e-5, atol=1e-30)
    else:  # The default: exact to float32 rounding of the log-probabilities.
        np.testing.assert_allclose(
            per_sample, expected, rtol=1e-4, atol=float32_tolerance(temperature, scale))
    # Called as a Keras loss: the batch mean.
    reduced = float(loss(teacher, student))
    np.testing.assert_allclose(reduced, expected.mean(), rtol=1e-5)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_kl_gradient_is_analytic(temperature, scale):
    teacher = random_logits(scale, 3)
    student = random_logits(scale, 4)
    loss = losses.KLDivergenceWithTemperature()
    _, (gradient,), _ = value_and_gradients(
        lambda s: (keras.ops.sum(loss.compute_per_sample(teacher, s, temperature)), None),
        [student])
    expected = temperature * (
        np.exp(log_softmax64(student / temperature))
        - np.exp(log_softmax64(teacher / temperature))
    )
    np.testing.assert_allclose(gradient, expected, atol=1e-5 * temperature)


def test_kl_of_identical_logits_is_exactly_zero_at_large_scale():
    logits = random_logits(1e3, 5)
    loss = losses.KLDivergenceWithTemperature()
    values = keras.ops.convert_to_numpy(
        loss.compute_per_sample(logits, logits, 1.0)
    )
    assert np.all(values == 0.0)


def test_keras_kl_divergence_clips_where_ours_is_exact():
    """The motivating defect: Keras' probability-space KL clips at 1e-7."""
    teacher = random_logits(50.0, 6)
    student = random_logits(50.0, 7)
    expected = reference("kl", teacher, student, 1.0).mean()
    ours = float(losses.KLDivergenceWithTemperature(1.0)(teacher, student))
    keras_kl = float(
        keras.losses.KLDivergence()(
            keras.ops.softmax(teacher), keras.ops.softmax(student)
        )
    )
    assert abs(ours - expected) / expected < 1e-5
    assert abs(keras_kl - expected) / expected > 0.1


logit_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=2, max_side=12),
    elements=st.floats(-1e3, 1e3, width=32),
)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    temperature=st.sampled_from(TEMPERATURES),
)
def test_kl_properties(data, temperature):
    teacher = data.draw(logit_arrays)
    student = data.draw(
        hnp.arrays(
            np.float32, teacher.shape, elements=st.floats(-1e3, 1e3, width=32)
        )
    )
    loss = losses.KLDivergenceWithTemperature(precision="float64")
    values = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )
    assert np.all(np.isfinite(values))
    assert np.all(values >= 0.0)
    same = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, teacher, temperature)
    )
    assert np.all(same == 0.0)
    expected = reference("kl", teacher, student, temperature)
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(shift=st.floats(-100, 100), temperature=st.sampled_from(TEMPERATURES))
def test_losses_ignore_a_constant_shift_of_logits(shift, temperature):
    teacher = random_logits(3.0, 8)
    student = random_logits(3.0, 9)
    for name in ("kl", "cse", "mse_probabilities"):
        loss = LOSSES[name](temperature=temperature)
        base = keras.ops.convert_to_numpy(
            loss.compute_per_sample(teacher, student, temperature)
        )
        shifted = keras.ops.convert_to_numpy(
            loss.compute_per_sample(teacher + shift, student - shift, temperature)
        )
        np.testing.assert_allclose(shifted, base, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_config_round_trip(name):
    loss = LOSSES[name](temperature=7.0)
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(loss)
    )
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    teacher, student = random_logits(2.0, 10), random_logits(2.0, 11)
    assert float(restored(teacher, student)) == float(loss(teacher, student))


def test_sample_weight_reduction():
    teacher, student = random_logits(2.0, 12, (4, 5)), random_logits(2.0, 13, (4, 5))
    weights = np.array([0.0, 1.0, 2.0, 0.5], dtype="float32")
    loss = losses.KLDivergenceWithTemperature(temperature=2.0)
    expected = np.sum(reference("kl", teacher, student, 2.0) * weights) / 4
    np.testing.assert_allclose(
        float(loss(teacher, student, sample_weight=weights)), expected, rtol=1e-5
    )


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "2", True])
def test_bad_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        losses.KLDivergenceWithTemperature(temperature=temperature)


def test_temperature_none_is_one_when_called_alone():
    teacher, student = random_logits(3.0, 20, (4, 5)), random_logits(3.0, 21, (4, 5))
    alone = losses.KLDivergenceWithTemperature()
    assert alone.temperature is None
    np.testing.assert_allclose(
        float(alone(teacher, student)),
        float(losses.KLDivergenceWithTemperature(temperature=1.0)(teacher, student)),
        rtol=1e-7,
    )


def test_get_distillation_loss():
    assert isinstance(
        losses.get_distillation_loss("kl_divergence"),
        losses.KLDivergenceWithTemperature,
    )
    assert isinstance(
        losses.get_distillation_loss("cse"), losses.SoftTargetCrossEntropy
    )
    with pytest.raises(ValueError, match="distillation_loss_fn='nope'"):
        losses.get_distillation_loss("nope")
    with pytest.raises(ValueError, match="space"):
        losses.DistillationMeanSquaredError(space="probs")


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_float32_precision_for_tpus(temperature):
    teacher, student = random_logits(10.0, 14), random_logits(10.0, 15)
    loss = losses.KLDivergenceWithTemperature(precision="float32")
    values = keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )
    assert values.dtype == np.float32
    np.testing.assert_allclose(
        values, reference("kl", teacher, student, temperature), rtol=1e-3
    )


# The losses inside a Distiller: README promises checked by value.


def _sigmoid64(z):
    return 1.0 / (1.0 + np.exp(-np.float64(z)))


def _mlp(units, num_classes, seed, num_inputs=6):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((num_inputs,)), keras.layers.Dense(units, "relu"),
                             keras.layers.Dense(num_classes)])


def test_multi_label_sigmoid_kd_is_averaged_over_the_classes():
    """README, "Sigmoid outputs": a binary (multi-label) student loss selects
    the per-class Bernoulli KL, `T**2`-scaled and *averaged* over the classes
    as binary cross-entropy is; sample weights weigh it as they weigh BCE."""
    import keras_kd

    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 6)).astype("float32")
    y = (rng.uniform(size=(20, 5)) < 0.3).astype("float32")
    weights = rng.uniform(0.1, 2.0, size=20).astype("float32")
    teacher, student = _mlp(16, 5, 1), _mlp(8, 5, 2)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.25, temperature=3.0,
                      student_loss_fn=bce, run_eagerly=True)
    logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    t, s = 3.0, 3.0
    p = _sigmoid64(numpy(teacher(x)) / t)
    q = _sigmoid64(numpy(student(x)) / s)
    per_class = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    per_sample = t**2 * per_class.mean(-1)  # The mean, not the sum, over classes.
    expected = np.sum(weights * per_sample) / len(x)
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    hard = float(bce(y, student(x), sample_weight=weights))
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.25 * hard + 0.75 * expected, rtol=1e-5)


def _keras_kl64(teacher_p, student_p):
    # keras.losses.KLDivergence clips both sides to [1e-7, 1].
    a, b = np.clip(teacher_p, 1e-7, 1.0), np.clip(student_p, 1e-7, 1.0)
    return np.sum(a * np.log(a / b), -1)


@pytest.mark.parametrize("own", [None, "sum"])
def test_a_plain_keras_loss_keeps_its_own_reduction(own):
    """`keras.losses.KLDivergence()` as `distillation_loss_fn` next to a
    student loss with `reduction="mean_with_sample_weight"`: today the Keras
    loss's *own* reduction wins (README, "How terms are reduced": "any other
    Keras loss instance uses its own `reduction`"), also when it is Keras'
    default `"sum_over_batch_size"`, which the user may not have chosen: the
    distillation term is `sum(w * kl) / n`, not the student's
    `sum(w * kl) / sum(w)`. With `KLDivergence(reduction="sum")` it is
    `sum(w * kl)`. The keras.io convention holds: softened probabilities,
    no `T**2`."""
    import keras_kd

    rng = np.random.default_rng(8)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 4, size=16)
    weights = rng.uniform(0.0, 3.0, size=16).astype("float32")
    teacher, student = _mlp(16, 4, 3), _mlp(8, 4, 4)
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    kl = keras.losses.KLDivergence() if own is None else keras.losses.KLDivergence(reduction=own)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=2.0,
        student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"),
        distillation_loss_fn=kl, run_eagerly=True)
    logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)

    def softmax64(z):
        z = np.float64(z) / 2.0
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    values = _keras_kl64(softmax64(numpy(teacher(x))), softmax64(numpy(student(x))))
    total = np.sum(weights * values)
    expected = total / len(x) if own is None else total
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)
    # Not the student loss's reduction: the weights do not sum to n.
    assert not np.isclose(expected, total / weights.sum(), rtol=1e-3)
    # The student term keeps its own `mean_with_sample_weight`.
    log_q = np.log(softmax64(2.0 * numpy(student(x))))
    hard = -np.sum(weights * log_q[np.arange(16), y]) / weights.sum()
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)


# The top-k temperature refusal where the first batch is not checked before
# the step (README, "Top-k teacher cache": "PyDatasets, generators and ragged
# datasets: in the step only, an assert XLA drops").

_VOCAB, _TIME = 12, 4


def _lm(seed, ragged=False):
    keras.utils.set_random_seed(seed)
    if not ragged:
        return keras.Sequential([keras.Input((_TIME,), dtype="int32"),
                                 keras.layers.Embedding(_VOCAB, 4), keras.layers.Dense(_VOCAB)])

    class DenseTokens(keras.Model):
        """Takes ragged token rows (all of length `_TIME`)."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.embedding = keras.layers.Embedding(_VOCAB, 4)
            self.logits = keras.layers.Dense(_VOCAB)

        def call(self, tokens):
            if isinstance(tokens, tf.RaggedTensor):
                tokens = tokens.to_tensor(shape=(None, _TIME))
            return self.logits(self.embedding(tokens))

    model = DenseTokens()
    model(np.zeros((1, _TIME), "int32"))
    return model


def _top_k_batches(cache_temperature=2.0, batches=2, batch_size=4):
    from keras_kd.distillation import top_k

    teacher = _lm(40)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(batches):
        tokens = rng.integers(0, _VOCAB, size=(batch_size, _TIME)).astype("int32")
        indices, values, log_normalizer = top_k.top_k_logits(
            teacher(tokens), 3, temperature=cache_temperature)
        cached = {"indices": numpy(indices), "values": numpy(values),
                  "log_normalizer": numpy(log_normalizer),
                  "cache_temperature": np.full(batch_size, cache_temperature, "float32")}
        out.append((tokens, {"labels": np.roll(tokens, -1, 1), "teacher_top_k": cached}))
    return teacher, out


def _as_input(kind, batches):
    if kind == "pydataset":
        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return len(batches)

            def __getitem__(self, index):
                return batches[index]

        return Batches()
    if kind == "generator":
        return (b for b in batches)
    tokens = np.concatenate([b[0] for b in batches])
    y = {"labels": np.concatenate([b[1]["labels"] for b in batches]),
         "teacher_top_k": {k: np.concatenate([b[1]["teacher_top_k"][k] for b in batches])
                           for k in batches[0][1]["teacher_top_k"]}}
    ragged = tf.RaggedTensor.from_tensor(tokens)
    return tf.data.Dataset.from_tensor_slices((ragged, y)).batch(len(batches[0][0]))


def _trace_spy(monkeypatch):
    """The run-time checks `jax.debug.callback` is given, as steps trace."""
    import jax

    traced = []
    callback = jax.debug.callback
    monkeypatch.setattr(jax.debug, "callback",
                        lambda *args, **kwargs: (traced.append(args[0]),
                                                 callback(*args, **kwargs))[1])
    return traced


def _top_k_distiller(teacher, temperature=2.0):
    import keras_kd

    distiller = keras_kd.Distiller(student=_lm(41), teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=temperature)
    return distiller


def _dense_dataset(batches):
    return _as_input("ragged", batches).map(lambda x, y: (x.to_tensor(), y))


def _arrays(batches):
    return next(iter(_dense_dataset(batches).unbatch().batch(1000).as_numpy_iterator()))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX step's host callbacks")
def test_jax_step_leaves_its_checks_to_batches_checked_eagerly(monkeypatch):
    # Arrays (every row) and a dense tf.data dataset (every batch, in the
    # input pipeline) are checked eagerly: their step runs without host
    # callbacks (each stops the step on the host). A generator's is not:
    # the step is traced again, with them.
    from keras_kd.distillation import top_k

    traced = _trace_spy(monkeypatch)
    teacher, batches = _top_k_batches(cache_temperature=2.0)
    distiller = _top_k_distiller(teacher)
    dense, (tokens, targets) = _dense_dataset(batches), _arrays(batches)
    for name, inputs in [("tf.data", {"x": dense}),
                         ("arrays", {"x": tokens, "y": targets, "batch_size": 4})]:
        history = distiller.fit(**inputs, epochs=1, verbose=0).history
        assert np.isfinite(history["distillation_loss"][0]), name
        assert traced == [], name
    # The eager check still refuses another temperature before any step.
    distiller.temperature = 1.0
    with pytest.raises(ValueError, match=re.escape(top_k.bin_temperature_message(2.0))):
        distiller.fit(dense, epochs=1, verbose=0)
    # A generator's step has them, although the step of the arrays (another
    # jit of the same bound method) is still held here.
    held = distiller.train_function  # noqa: F841
    with pytest.raises(runtime_check_error(), match="log-normaliser at the loss"):
        distiller.fit(_as_input("generator", batches), steps_per_epoch=len(batches),
                      epochs=1, verbose=0)
    assert traced, "the generator's step was not traced with its checks"


@pytest.mark.parametrize("kind", ["tf.data", "arrays"])
def test_a_later_batch_of_another_cache_is_refused(kind):
    # The first batch of the right cache, then batches of another one: a
    # dataset's later batches are checked in its input pipeline, arrays'
    # rows before the first step (another vocabulary) or, several caches'
    # temperatures, in the step. Failed on JAX before: the step had no
    # checks and trained on.
    from keras_kd.distillation import top_k

    teacher, good = _top_k_batches(cache_temperature=2.0)
    _, bad = _top_k_batches(cache_temperature=1.0)
    distiller = _top_k_distiller(teacher)
    if kind == "tf.data":
        data = _dense_dataset(good).concatenate(_dense_dataset(bad))
        with pytest.raises(ValueError, match=re.escape(top_k.bin_temperature_message(1.0))):
            distiller.fit(data, epochs=1, verbose=0)
        return
    # (Past the 64 rows `fit` checks as its first batch.)
    _, more = _top_k_batches(cache_temperature=2.0, batches=16)
    tokens, targets = _arrays(more + bad)
    with pytest.raises(runtime_check_error(), match="log-normaliser at the loss"):
        distiller.fit(tokens, targets, batch_size=4, shuffle=False, epochs=1, verbose=0)
    tokens, targets = _arrays(good + good)
    targets["teacher_top_k"]["vocab_size"] = np.where(
        np.arange(len(tokens)) < 4, _VOCAB, _VOCAB + 1).astype("int32")
    with pytest.raises(ValueError, match=re.escape(top_k.vocabulary_message(_VOCAB + 1, _VOCAB))):
        _top_k_distiller(_lm(40)).fit(tokens, targets, batch_size=4, epochs=1, verbose=0)


def test_a_later_epochs_first_batch_of_another_cache_is_refused():
    # Every epoch's iterator starts at index 0 again; from_generator calls
    # the generator again: epoch 1 reads the right cache, epoch 2 another.
    # Failed on JAX before (found by a read-only review): a later epoch's
    # first batch went unchecked and the step had no checks.
    from keras_kd.distillation import top_k

    teacher, good = _top_k_batches(cache_temperature=2.0, batches=1)
    _, bad = _top_k_batches(cache_temperature=1.0, batches=1)
    calls = []

    def batches():
        calls.append(1)
        yield next(iter(_dense_dataset(good if len(calls) == 1 else bad)))

    data = tf.data.Dataset.from_generator(
        batches, output_signature=_dense_dataset(good).element_spec)
    with pytest.raises(ValueError, match=re.escape(top_k.bin_temperature_message(1.0))):
        _top_k_distiller(teacher).fit(data, epochs=2, verbose=0)
    assert len(calls) == 2


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX step's checks")
@pytest.mark.parametrize("nested", ["train_on_batch", "fit"])
def test_a_call_nested_in_fit_leaves_fit_its_own_step(nested):
    # A callback's call on arrays traces a step without checks; the outer
    # generator fit, whose later batches are of another cache, keeps its own.
    from keras_kd.distillation import top_k

    teacher, good = _top_k_batches(cache_temperature=2.0)
    _, bad = _top_k_batches(cache_temperature=1.0, batches=3)
    distiller = _top_k_distiller(teacher)

    class Nested(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 0:
                if nested == "train_on_batch":
                    self.model.train_on_batch(*good[0])
                else:
                    self.model.fit(*good[0], epochs=1, verbose=0)

    with pytest.raises(runtime_check_error(), match="log-normaliser at the loss"):
        distiller.fit((b for b in good[1:] + bad), steps_per_epoch=4, epochs=1, verbose=0,
                      callbacks=[Nested()])


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX step's retracing")
def test_jax_step_is_not_traced_again_without_a_top_k_part(monkeypatch):
    # Arrays, a tf.data dataset and a generator in turn, none with a top-k
    # part: one traced step for all (a retrace cost a 3x slower first epoch
    # in benchmarks/backends.py).
    import jax

    import keras_kd
    from keras_kd.distillation.backend import jax as jax_steps

    tokens = np.random.default_rng(0).integers(0, _VOCAB, size=(8, _TIME)).astype("int32")
    labels = np.roll(tokens, -1, 1)
    distiller = keras_kd.Distiller(student=_lm(41), teacher=_lm(40))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.5, temperature=2.0)
    traces = []
    train_step = jax_steps.JAXSteps.train_step
    monkeypatch.setattr(jax_steps.JAXSteps, "train_step",
                        lambda self, *args: (traces.append(1), train_step(self, *args))[1])
    cleared = []
    monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(1))
    for data in [{"x": tokens, "y": labels, "batch_size": 4},
                 {"x": tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(4)},
                 {"x": ((tokens[i:i + 4], labels[i:i + 4]) for i in (0, 4)), "steps_per_epoch": 2},
                 {"x": tokens, "y": labels, "batch_size": 4}]:
        distiller.fit(**data, epochs=1, verbose=0)
    assert len(traces) == 1 and cleared == []


@pytest.mark.parametrize("kind", ["pydataset", "generator", "ragged"])
def test_top_k_bin_refuses_another_temperature_in_the_step(kind):
    import keras_kd
    from keras_kd.distillation import top_k

    teacher, batches = _top_k_batches(cache_temperature=2.0)

    def make_distiller(temperature, teacher=teacher):
        distiller = keras_kd.Distiller(student=_lm(41, ragged=kind == "ragged"), teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5,
                          temperature=temperature)
        return distiller

    distiller = make_distiller(1.0)
    steps = {"steps_per_epoch": len(batches)} if kind == "generator" else {}
    with pytest.raises(runtime_check_error()) as error:
        distiller.fit(_as_input(kind, batches), epochs=1, verbose=0, **steps)
    # The assert's message (TensorFlow escapes its quotes) gives the fixes,
    # and its data the two temperatures (cache 2, received 1): TensorFlow's
    # assert op prints them as `x (...) = ] [2 2 2...`, JAX's callback as
    # `x = [2. 2. 2. ...]`.
    message = str(error.value).replace("\\'", "'")
    assert top_k.bin_temperature_message(None) in message
    if keras.backend.backend() == "jax":
        assert re.search(r"x = \[2\. 2\. 2\..*y = \[1\. 1\. 1\.", message, re.S)
    else:
        assert re.search(r"x \(.*\) = \] \[2 2 2.*y \(.*\) = \] \[1 1 1", message)
    # At the cache's temperature the same input trains (a finite, positive
    # distillation loss): the refusal is about the temperature alone. On
    # JAX new models (the same weights): Keras' JAX trainer donates the
    # state, the teacher's weights included, to the compiled step, and the
    # step that raised consumed it.
    if keras.backend.backend() == "jax":
        distiller.temperature = 2.0
        with pytest.raises(RuntimeError, match="JAX backend.*donates.*Rebuild the models"):
            distiller.fit(_as_input(kind, batches), epochs=1, verbose=0, **steps)
        distiller = make_distiller(2.0, teacher=_lm(40))
    distiller.temperature = 2.0
    history = distiller.fit(_as_input(kind, batches), epochs=1, verbose=0, **steps).history
    assert np.isfinite(history["distillation_loss"][0]) and history["distillation_loss"][0] > 0
