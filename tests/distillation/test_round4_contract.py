"""Round 4 (issue 25): the paths around the step keep the step's contract.

One test (or a few) per row of the issue's table; each failed on the code
before round 4, as its docstring says: replicas with every reduction, teacher
metrics of an ensemble, cache fingerprints of the architecture, softmax
teachers in caches, float16 top-k values, top-k vocabularies, string inputs,
and the documented defaults (a top-k cache's temperature, a plain Keras
loss's reduction). Numbers are checked against float64 NumPy references or
against Keras' own student.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from conftest import numpy
from conftest import outputs
from conftest import tensorflow_only
from conftest import value_and_gradients

import keras_kd
from keras_kd import Distiller
from keras_kd.distillation import cache as cache_module
from keras_kd.distillation import top_k


def softmax64(z):
    z = np.float64(z) - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl64(teacher_logits, student_logits, temperature=1.0):
    p_t = softmax64(np.float64(teacher_logits) / temperature)
    p_s = softmax64(np.float64(student_logits) / temperature)
    terms = np.where(p_t > 0, p_t * (np.log(np.where(p_t > 0, p_t, 1.0)) - np.log(p_s)), 0.0)
    return temperature**2 * np.sum(terms, axis=-1)


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 4, size=(n,)),
            rng.uniform(0.5, 2.0, size=(n,)).astype("float32"))


# Row 1: replicas.

@pytest.fixture(scope="module")
def mirrored():
    # Not collective ops: two strategies of one process that use them may
    # share instance keys, and collectives of other shapes then fail.
    return tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())


def _one_step(strategy, reduction, alphas, run_eagerly=False):
    """The student's weights after one SGD step of a global batch of 8 from
    its initial weights, for each alpha in `alphas` (`None`: Keras' own
    student, no Distiller). One compiled model serves every alpha: the
    step reads alpha from a variable, so it is traced once."""
    x, y, weights = _data()
    with strategy.scope():
        keras.utils.set_random_seed(11)
        teacher, student = make_mlp([8], name="teacher"), make_mlp([4], name="student")
        initial = student.get_weights()
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
        if alphas[0] is not None:
            model = Distiller(student=student, teacher=teacher)
            model.compile(keras.optimizers.SGD(0.1), student_loss_fn=loss, alpha=alphas[0],
                          temperature=2.0, run_eagerly=run_eagerly)
        else:
            model = student
            model.compile(keras.optimizers.SGD(0.1), loss=loss, run_eagerly=run_eagerly)
        updated = []
        for alpha in alphas:
            student.set_weights(initial)
            if alpha is not None:
                model.alpha = alpha
            model.fit(x, y, sample_weight=weights, batch_size=8, shuffle=False, verbose=0)
            updated.append([w.numpy() for w in student.weights])
    return updated


@tensorflow_only("tf.distribute replicas (MirroredStrategy); on JAX the Distiller refuses a "
                 "tf.distribute scope and keras.distribution is tested in tests/distribution")
@pytest.mark.parametrize("reduction", ["sum", "sum_over_batch_size", "mean_with_sample_weight"])
def test_replicas_give_one_devices_update_for_every_reduction(mirrored, reduction):
    """Row 1. Before round 4 the step divided every reduction by the number
    of replicas, so `reduction="sum"` under two replicas gave half the update
    (ratio 0.5). Both terms (alpha=0.5) and the hard term alone (alpha=1,
    against Keras' own student under the same strategy) must give one
    device's update (for mean_with_sample_weight Keras' own student under
    replicas divides by each replica's weights: the reference is one device)."""
    keras.utils.set_random_seed(11)
    make_mlp([8])
    initial = [w.numpy() for w in make_mlp([4]).weights]
    # The one-device references run eagerly (test_reduction.py's
    # test_two_replicas_update_as_one_device traces one device's step for
    # each reduction); the replicated steps trace, once for both alphas.
    one_device, = _one_step(tf.distribute.get_strategy(), reduction, [0.5], run_eagerly=True)
    replicated, hard_only = _one_step(mirrored, reduction, [0.5, 1.0])
    for a, b, start in zip(one_device, replicated, initial):
        # The updates themselves, so that a halved one cannot hide in atol.
        np.testing.assert_allclose(b - start, a - start, rtol=1e-4, atol=1e-7)
    assert max(np.abs(a - s).max() for a, s in zip(one_device, initial)) > 1e-3
    # Keras' own student on one device: under replicas Keras divides
    # mean_with_sample_weight by each replica's weights, not the batch's.
    keras_student, = _one_step(tf.distribute.get_strategy(), reduction, [None],
                               run_eagerly=True)
    for a, b, start in zip(keras_student, hard_only, initial):
        np.testing.assert_allclose(b - start, a - start, rtol=1e-4, atol=1e-7)


def _logs(strategy, reduction, cached, run_eagerly=False):
    """`fit`'s and `evaluate`'s logs for 11 samples in batches of 4: the
    last batch (3 samples) splits 2 + 1 over two replicas."""
    x, y, weights = _data(11, seed=3)
    with strategy.scope():
        keras.utils.set_random_seed(11)
        teacher, student = make_mlp([8], name="teacher"), make_mlp([4], name="student")
        model = Distiller(student=student, teacher=teacher)
        model.compile(keras.optimizers.SGD(0.1), alpha=0.5, temperature=2.0,
                      student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True, reduction=reduction),
                      metrics=["accuracy"] + ([] if cached else [keras_kd.TeacherAgreement()]),
                      run_eagerly=run_eagerly)
    targets = keras_kd.targets(y, teacher_logits=cache_module.compute_teacher_logits(
        teacher, x)) if cached else y
    fit = model.fit(x, targets, sample_weight=weights, batch_size=4, shuffle=False,
                    validation_data=(x, y, weights), verbose=0).history
    evaluated = model.evaluate(x, y, sample_weight=weights, batch_size=4, verbose=0,
                               return_dict=True)
    return {key: value[0] for key, value in fit.items()}, evaluated


@tensorflow_only("tf.distribute replicas")
@pytest.mark.parametrize("reduction, cached", [
    ("sum_over_batch_size", False), ("sum", True), ("mean_with_sample_weight", False)])
def test_replicas_log_one_devices_losses_for_an_uneven_last_batch(mirrored, reduction, cached):
    """Failed before: each replica's loss (its share of the global value)
    was weighed in the trackers by its own batch size, so a last batch split
    2 + 1 logged other losses than one device (0.988 against 0.961 for the
    epoch's loss; Keras' own student logs the one-device value). Every
    replica now weighs its share by the global batch size over N."""
    # One device, the reference, eagerly (test_reduction.py's
    # test_two_replicas_update_as_one_device compares a traced one-device
    # fit's logs with the replicas'); the replicas trace.
    one_fit, one_evaluate = _logs(tf.distribute.get_strategy(), reduction, cached,
                                  run_eagerly=True)
    two_fit, two_evaluate = _logs(mirrored, reduction, cached)
    # Metrics too (failed before, read-only review: `evaluate` and `val_*`
    # reported the replicas' mean of their own accuracies, e.g. 0.4667
    # against one device's 0.4545, because the training trackers in
    # `get_metrics_result` made Keras fall back to the last step's logs).
    trained = {"loss", "student_loss", "distillation_loss", "accuracy"}
    trained |= set() if cached else {"teacher_agreement"}
    evaluated = trained - {"distillation_loss"}
    assert set(two_fit) == trained | {f"val_{key}" for key in evaluated}
    assert set(two_evaluate) == evaluated
    for key in two_fit:
        assert two_fit[key] == pytest.approx(one_fit[key], rel=1e-5), key
    for key in one_evaluate:
        assert two_evaluate[key] == pytest.approx(one_evaluate[key], rel=1e-5), key


# Row 2: teacher metrics of an ensemble.

@pytest.mark.parametrize("temperature", [4.0, 10.0])
def test_teacher_metrics_of_an_ensemble_mix_at_temperature_one(temperature):
    """Row 2. Before round 4 the metrics got the mixture formed at the
    training temperature: TeacherKL 2.139 at T=4 and 2.228 at T=10 where the
    float64 KL(mixture at T=1 || student) is 1.826."""
    x, y, _ = _data(32, seed=3)
    keras.utils.set_random_seed(12)
    teachers = [make_mlp([8], name="t1", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0)),
                make_mlp([8], name="t2", kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))]
    student = make_mlp([4], name="student")
    distiller = Distiller(student=student, teacher=teachers, teacher_weights=[0.3, 0.7])
    distiller.compile(metrics=[keras_kd.TeacherKL(), keras_kd.TeacherAgreement()],
                      temperature=temperature, run_eagerly=True)
    logs = distiller.evaluate(x, y, batch_size=32, return_dict=True, verbose=0)
    member_p = [softmax64(outputs(t, x)) for t in teachers]
    mixture = 0.3 * member_p[0] + 0.7 * member_p[1]
    s = np.float64(outputs(student, x))
    log_s = s - np.max(s, -1, keepdims=True)
    log_s = log_s - np.log(np.exp(log_s).sum(-1, keepdims=True))
    expected_kl = np.mean(np.sum(mixture * (np.log(mixture) - log_s), -1))
    # The mixture at the training temperature is another number.
    assert abs(expected_kl - _mixture_kl_at(teachers, x, s, temperature)) > 1e-2
    np.testing.assert_allclose(logs["teacher_kl"], expected_kl, rtol=1e-5)
    agreement = np.mean(np.argmax(mixture, -1) == np.argmax(s, -1))
    np.testing.assert_allclose(logs["teacher_agreement"], agreement, rtol=1e-6)


def _mixture_kl_at(teachers, x, s, temperature):
    """What the metric gave before: the T-mixture read back at T = 1."""
    member_p = [softmax64(np.float64(outputs(t, x)) / temperature) for t in teachers]
    logits = temperature * np.log(0.3 * member_p[0] + 0.7 * member_p[1])
    return np.mean(kl64(logits, s))


# Row 3: a cache belongs to a teacher's weights and architecture.

VOCAB, TIME = 8, 5


def _image_teacher(scale, activation="relu"):
    keras.utils.set_random_seed(13)
    return keras.Sequential([
        keras.Input((6,)), keras.layers.Rescaling(scale, name="scale"),
        keras.layers.Dense(8, activation=activation, name="hidden"),
        keras.layers.Dense(4, name="logits"),
    ], name="teacher")  # Named layers: the weights' paths are the same too.


def _lm(seed=20, activation=None, vocab=VOCAB, softmax=False, stddev=None):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((TIME,), dtype="int32"), keras.layers.Embedding(vocab, 8, name="embed")]
    if activation is not None:
        layers.append(keras.layers.Activation(activation, name="activation"))
    init = "glorot_uniform" if stddev is None else keras.initializers.RandomNormal(stddev=stddev)
    layers.append(keras.layers.Dense(vocab, activation="softmax" if softmax else None,
                                     kernel_initializer=init, name="logits"))
    return keras.Sequential(layers, name="lm")


def _tokens(n=6, vocab=VOCAB, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(n, TIME)).astype("int32")


@pytest.mark.parametrize("change", ["rescaling", "activation"])
def test_a_changed_weightless_layer_is_another_teacher_for_the_dense_cache(tmp_path, change):
    """Row 3. Before round 4 the fingerprint hashed the weights only, and the
    cache of `Rescaling(1.0)` (or a relu) came back for `Rescaling(2.0)` (or
    a tanh) with the same weights."""
    x = _data(16)[0]
    old = _image_teacher(1.0)
    new = _image_teacher(2.0) if change == "rescaling" else _image_teacher(1.0, "tanh")
    assert all(np.array_equal(a, b) for a, b in zip(old.get_weights(), new.get_weights()))
    path = tmp_path / "teacher.npz"
    cache_module.compute_teacher_logits(old, x, path=path)
    with pytest.raises(cache_module.CacheError, match="another teacher or other inputs"):
        cache_module.compute_teacher_logits(new, x, path=path)
    rebuilt = cache_module.compute_teacher_logits(new, x, path=path, rebuild=True)
    np.testing.assert_allclose(rebuilt, outputs(new, x), rtol=1e-5, atol=1e-6)


def test_a_changed_activation_is_another_teacher_for_the_top_k_cache(tmp_path):
    """Row 3, the top-k cache: the same fingerprint serves both caches."""
    tokens = _tokens()
    old, new = _lm(activation="relu"), _lm(activation="tanh")
    top_k.write_top_k_cache(old, tokens, tmp_path / "cache", k=3, batch_size=3)
    with pytest.raises(cache_module.CacheError, match="another teacher.*architecture"):
        top_k.read_top_k_cache(tmp_path / "cache", teacher=new)
    with pytest.raises(cache_module.CacheError, match="another teacher"):
        top_k.write_top_k_cache(new, tokens, tmp_path / "cache", k=3, batch_size=3)


def test_freezing_or_reloading_a_teacher_keeps_its_fingerprint(tmp_path):
    """What is not another teacher: the Distiller freezes its teacher
    (`trainable=False`), and a saved teacher reloads with the same outputs."""
    teacher = _image_teacher(2.0)
    before = cache_module.fingerprint_model(teacher)
    Distiller(student=make_mlp([4]), teacher=teacher)
    assert teacher.trainable is False
    assert cache_module.fingerprint_model(teacher) == before
    teacher.save(tmp_path / "teacher.keras")
    reloaded = keras.models.load_model(tmp_path / "teacher.keras")
    assert cache_module.fingerprint_model(reloaded) == before


# Row 4: a softmax teacher in a cache holds what the online Distiller reads.

def _distillation_loss(teacher, x, targets, student_seed=21, temperature=1.0, **compile_args):
    """The distillation term of one step (SGD at rate 0) on these targets."""
    keras.utils.set_random_seed(student_seed)
    student = _lm(student_seed) if x.dtype == np.int32 else make_mlp([4], name="student")
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(keras.optimizers.SGD(0.0), alpha=0.0, temperature=temperature,
                      run_eagerly=True, **compile_args)
    logs = distiller.train_on_batch(x, targets, return_dict=True)
    return logs["distillation_loss"], outputs(student, x)


def test_a_softmax_teacher_is_cached_as_the_logs_of_its_probabilities():
    """Row 4, the dense cache. Before round 4 `compute_teacher_logits` stored
    the probabilities as logits (dense loss 0.305 against 1.113 online)."""
    keras.utils.set_random_seed(14)
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        4, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))])
    x, y, _ = _data(16, seed=4)
    cached = cache_module.compute_teacher_logits(teacher, x)
    online, s = _distillation_loss(teacher, x, y)
    offline, _ = _distillation_loss(
        teacher, x, keras_kd.targets(y, teacher_logits=cached))
    expected = np.mean(kl64(np.log(np.float64(outputs(teacher, x))), s))
    np.testing.assert_allclose(online, expected, rtol=1e-5)
    np.testing.assert_allclose(offline, expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"softmax, but teacher_outputs='logits'.*"
                                         r"teacher_outputs='probabilities'"):
        cache_module.compute_teacher_logits(teacher, x, teacher_outputs="logits")


def test_a_softmax_teacher_in_a_top_k_cache_with_k_vocab_is_the_online_loss(tmp_path):
    """Row 4, the top-k cache. Before round 4 probabilities were stored as
    logits: with k = vocab 0.0020 against 0.0256 online."""
    teacher = _lm(22, softmax=True, stddev=3.0)
    tokens = _tokens(6, seed=5)
    labels = np.roll(tokens, -1, axis=1)
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path / "cache", k=VOCAB, batch_size=6,
                                    values_dtype="float32")
    assert cache.manifest["teacher_outputs"] == "probabilities"
    # As NumPy: Keras' JAX train_on_batch takes no tf.Tensor (fit reads tf.data).
    element = numpy(next(iter(top_k.top_k_dataset(cache, batch_size=6))))
    online, s = _distillation_loss(teacher, tokens, labels)
    offline, _ = _distillation_loss(
        teacher, tokens, keras_kd.targets(labels, teacher_top_k=element))
    expected = np.mean(kl64(np.log(np.float64(outputs(teacher, tokens))), s))
    np.testing.assert_allclose(online, expected, rtol=1e-5)
    np.testing.assert_allclose(offline, expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"teacher_outputs='logits'.*write_top_k_cache"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "other", k=3,
                                teacher_outputs="logits")


def test_the_same_teacher_built_after_other_models_keeps_its_fingerprint():
    """Keras names layers by creation order: a teacher rebuilt after other
    layers exist gets `dense_9` for `dense`. The first architecture
    fingerprint (review of round 4) hashed those names and refused the
    cache of the very same teacher."""
    def build():
        keras.utils.set_random_seed(3)
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(4)])

    first = build()
    for _ in range(3):
        keras.layers.Dense(2)  # Shifts the automatic names.
    second = build()
    assert [l.name for l in first.layers] != [l.name for l in second.layers]
    assert cache_module.fingerprint_model(first) == cache_module.fingerprint_model(second)
    # A real change still tells them apart.
    second.layers[-1].bias.assign(np.ones(4, "float32"))
    assert cache_module.fingerprint_model(first) != cache_module.fingerprint_model(second)


def test_uncentred_float16_values_beyond_its_range_are_refused(tmp_path):
    """Review of round 4: clipped uncentred values lost a probable id's mass
    (loss 15.88 against 3.52 online) without a word."""
    teacher = _lm(23)
    teacher.layers[-1].bias.assign(np.where(np.arange(VOCAB) == 0, 1e5, 0.0).astype("float32"))
    with pytest.raises(ValueError, match=r"float16 range.*center_values=True"):
        top_k.write_top_k_cache(teacher, _tokens(4), tmp_path / "cache", k=VOCAB,
                                batch_size=4, center_values=False)
    top_k.write_top_k_cache(teacher, _tokens(4), tmp_path / "centred", k=VOCAB, batch_size=4)


# Row 5: float16 top-k values of near-impossible ids.

@pytest.mark.parametrize("tail", ["bin", "renormalize"])
def test_float16_cache_of_near_impossible_ids_is_finite_and_exact(tmp_path, tail):
    """Row 5. Before round 4 a centred value below -65504 (a logit bias of
    -1e5) became -inf in the default float16 cache and the loss was NaN.
    Now the value is clipped, its bin has probability exactly 0, and the loss
    equals the float64 dense KL of the logits the cache holds."""
    teacher = _lm(23, stddev=2.0)
    dense = teacher.layers[-1]
    dense.bias.assign(np.where(np.arange(VOCAB) % 3 == 0, -1e5, 0.0).astype("float32"))
    tokens = _tokens(4, seed=6)
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path / "cache", k=VOCAB, batch_size=4)
    element = numpy(next(iter(top_k.top_k_dataset(cache, batch_size=4))))
    stored = element["values"]
    assert stored.dtype == np.float16 and np.isfinite(stored).all() and stored.min() == -65504
    student_logits = np.random.default_rng(7).normal(size=(4, TIME, VOCAB)).astype("float32")

    def kl_of(logits):
        kl = top_k.top_k_kl_divergence(
            element["indices"], element["values"], element["log_normalizer"], logits,
            temperature=1.0, tail=tail, cache_temperature=1.0)
        return keras.ops.sum(kl), kl

    _, (gradient,), kl = value_and_gradients(kl_of, [student_logits])
    kl = numpy(kl)
    assert np.isfinite(kl).all() and np.isfinite(gradient).all()
    # Within float16's rounding of the other logits (2**-11 relative) of
    # the float64 dense KL; the -1e5 ids have probability 0 in both.
    teacher_logits = outputs(teacher, tokens)
    np.testing.assert_allclose(kl, kl64(teacher_logits, student_logits), rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("tail", ["bin", "renormalize"])
def test_bins_of_zero_teacher_probability_contribute_exactly_zero(tail):
    """Row 5: an -inf value (a masked id) is a bin of probability 0, which
    contributes 0, not `0 * inf` (NaN before round 4)."""
    rng = np.random.default_rng(8)
    teacher = rng.normal(size=(3, VOCAB)) * 2.0
    teacher[:, ::3] = -np.inf
    indices = np.argsort(-teacher, axis=-1).astype("int32")
    values = np.take_along_axis(teacher, indices, -1).astype("float32")
    finite = np.where(np.isfinite(teacher), teacher, -np.inf)
    log_normalizer = np.log(np.sum(np.exp(finite), -1)).astype("float32")
    student = rng.normal(size=(3, VOCAB)).astype("float32")

    def kl_of(logits):
        kl = top_k.top_k_kl_divergence(indices, values, log_normalizer, logits, 1.0, tail=tail)
        return keras.ops.sum(kl), kl

    _, (gradient,), kl = value_and_gradients(kl_of, [student])
    assert np.isfinite(gradient).all()
    np.testing.assert_allclose(numpy(kl), kl64(teacher, student), rtol=1e-5)


# Row 6: a top-k cache of another vocabulary.

@pytest.mark.parametrize("teacher_vocabulary, student_vocabulary", [(8, 6), (6, 8)])
@pytest.mark.parametrize("call", ["fit", "train_on_batch"])
def test_a_top_k_cache_of_another_vocabulary_is_refused_at_the_first_batch(
        tmp_path, teacher_vocabulary, student_vocabulary, call):
    """Row 6. Before round 4: teacher 8 ids and student 6, an opaque gather
    error inside the graph; teacher 6 and student 8, silent training."""
    tokens = _tokens(4, vocab=6)
    teacher = _lm(25, vocab=teacher_vocabulary)
    cache = top_k.write_top_k_cache(teacher, tokens, tmp_path / "cache", k=3, batch_size=4)
    labels = np.roll(tokens, -1, axis=1)
    batches = tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(4),
        top_k.top_k_dataset(cache, batch_size=4),
    ).map(lambda xy, t: (xy[0], keras_kd.targets(xy[1], teacher_top_k=t)))
    student = _lm(26, vocab=student_vocabulary)
    # The teacher given to the Distiller is the student's size; the cache is not.
    distiller = Distiller(student=student, teacher=_lm(27, vocab=student_vocabulary))
    # The first batch's check runs in the input pipeline, outside the step:
    # (6, 8) in `fit` checks it eagerly, (8, 6) in `fit` through a traced step.
    distiller.compile(alpha=0.5, run_eagerly=(teacher_vocabulary, call) == (6, "fit"))
    message = (rf"vocabulary of {teacher_vocabulary} ids, but the student outputs "
               rf"{student_vocabulary} logits")
    with pytest.raises(ValueError, match=message):
        if call == "fit":
            distiller.fit(batches, verbose=0)
        else:
            x, y = next(iter(batches))
            distiller.train_on_batch(x, y)


# Row 7: a student that takes strings.

def _text_model(seed, units):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((1,), dtype="string")
    ids = keras.layers.TextVectorization(
        vocabulary=["a", "b", "c", "d"], output_sequence_length=3)(inputs)
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(6, units)(ids))
    return keras.Model(inputs, keras.layers.Dense(4)(hidden))


@tensorflow_only("string inputs: Keras' JAX trainer takes no string arrays (JAX has no "
                 "string dtype), so `student.fit` on this student fails on JAX too")
def test_a_string_input_student_distils_as_student_fit_trains_it():
    """Row 7. Before round 4 the Distiller refused it ("`x` has dtype
    string; the student needs numeric inputs") although `student.fit` trains it.
    At alpha = 1 its update is Keras' own; at alpha = 0.5 it distils."""
    words = np.array(["a", "b", "c", "d", "e"])
    rng = np.random.default_rng(9)
    x = np.array([[" ".join(rng.choice(words, 3))] for _ in range(8)])
    y = rng.integers(0, 4, size=(8,))
    # A dataset of tf.string: Keras' own array adapter takes no NumPy str.
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    updates = {}
    # Keras' own reference eagerly.
    student = _text_model(28, 4)
    student.compile(keras.optimizers.SGD(0.5), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), run_eagerly=True)
    student.fit(data, shuffle=False, verbose=0)
    updates["keras"] = [w.numpy() for w in student.weights]
    # One traced Distiller for both alphas (a variable the step reads), each
    # fit from the same initial weights.
    student = _text_model(28, 4)
    initial = student.get_weights()
    distiller = Distiller(student=student, teacher=_text_model(29, 8))
    distiller.compile(keras.optimizers.SGD(0.5), alpha=1.0)
    for name, alpha in (("hard", 1.0), ("both", 0.5)):
        student.set_weights(initial)
        distiller.alpha = alpha
        distiller.fit(data, shuffle=False, verbose=0)
        updates[name] = [w.numpy() for w in student.weights]
    for a, b in zip(updates["keras"], updates["hard"]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(updates["hard"], updates["both"]))
    with pytest.raises(ValueError, match=r"`x` has dtype float32, but the student's input "
                                         r"takes strings"):
        Distiller(student=_text_model(28, 4), teacher=_text_model(29, 8)).fit(
            np.zeros((4, 1), "float32"), y[:4])


# Row 8: where the Distiller's metrics differ from student.evaluate.

def test_ignore_class_leaves_metrics_as_documented():
    """Row 8 (documented, not changed, so it passed before round 4 too):
    with `ignore_class` the loss equals `student.evaluate`'s; accuracy counts
    only the positions the loss does, where Keras' counts the ignored ones."""
    x, y, _ = _data(32, seed=10)
    y[::2] = 0  # Class 0 is padding: ignored by the loss.
    keras.utils.set_random_seed(30)
    student = make_mlp([4])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0)
    # Keras' own reference, eagerly.
    student.compile(loss=loss, metrics=["sparse_categorical_accuracy"], run_eagerly=True)
    keras_logs = student.evaluate(x, y, return_dict=True, verbose=0)
    distiller = Distiller(student=student, teacher=make_mlp([8]))
    distiller.compile(student_loss_fn=loss, metrics=["sparse_categorical_accuracy"])
    logs = distiller.evaluate(x, y, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], keras_logs["loss"], rtol=1e-5)
    predicted = np.argmax(outputs(student, x), -1)
    kept = y != 0
    np.testing.assert_allclose(logs["sparse_categorical_accuracy"],
                               np.mean(predicted[kept] == y[kept]), rtol=1e-6)
    np.testing.assert_allclose(keras_logs["sparse_categorical_accuracy"],
                               np.mean(predicted == y), rtol=1e-6)
    assert not np.isclose(np.mean(predicted[kept] == y[kept]), np.mean(predicted == y))


# Design: a top-k cache's temperature when none was chosen.

def _cached_top_k_batches(tmp_path, **write):
    tokens = _tokens(6, seed=11)
    labels = np.roll(tokens, -1, axis=1)
    cache = top_k.write_top_k_cache(_lm(31, stddev=2.0), tokens, tmp_path / "cache", k=4,
                                    batch_size=6, **write)
    return tf.data.Dataset.zip(
        tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(6),
        top_k.top_k_dataset(cache, batch_size=6),
    ).map(lambda xy, t: (xy[0], keras_kd.targets(xy[1], teacher_top_k=t)))


@pytest.fixture(scope="module")
def cached_top_k_batches(tmp_path_factory):
    """One cache for both calls below (its teacher is traced to write it)."""
    return _cached_top_k_batches(tmp_path_factory.mktemp("temperature"))


@pytest.mark.parametrize("call", ["fit", "train_on_batch"])
def test_a_distiller_without_a_temperature_takes_the_caches(cached_top_k_batches, call):
    """Before round 4 `write_top_k_cache`'s own docstring example raised: the
    cache is written at T = 1 and the Distiller's default is 3. Without an
    explicit temperature the call uses the cache's (and gives the loss of
    `compile(temperature=1.0)`), then the Distiller's is back at 3; an
    explicit other temperature is still refused."""
    batches = cached_top_k_batches
    losses = {}
    for name, temperature in (("default", None), ("explicit", 1.0)):
        distiller = Distiller(student=_lm(32), teacher=_lm(31, stddev=2.0))
        # The default, under test, traces in `fit`; the explicit reference
        # and the `train_on_batch` case (the same term, whose graph the
        # `fit` case traces) run eagerly.
        distiller.compile(keras.optimizers.SGD(0.0), alpha=0.5, temperature=temperature,
                          run_eagerly=temperature is not None or call == "train_on_batch")
        if call == "fit":
            losses[name] = distiller.fit(batches, verbose=0).history["distillation_loss"][0]
        else:
            # NumPy: Keras' JAX train_on_batch takes no tf.Tensor.
            x, y = numpy(next(iter(batches)))
            losses[name] = distiller.train_on_batch(x, y, return_dict=True)["distillation_loss"]
        if temperature is None:
            assert distiller.temperature == 3.0
    assert losses["default"] > 0.0
    # 1e-5: traced against eager float32 (`fit`); T = 3 gives another loss
    # by far.
    np.testing.assert_allclose(losses["default"], losses["explicit"], rtol=1e-5)
    # Eagerly: the refusal is the input pipeline's first-batch check, which
    # tests/distillation/test_top_k.py::
    # test_a_temperature_other_than_the_caches_is_refused[fit-False] runs
    # through a traced step.
    distiller.compile(alpha=0.5, temperature=3.0, run_eagerly=True)
    with pytest.raises(ValueError, match=r"cache_temperature=1\.0.*Received: temperature=3\.0"):
        distiller.fit(batches, verbose=0)


# Design: a plain Keras loss as distillation_loss_fn keeps its own reduction.

@pytest.mark.parametrize("reduction", [None, "sum"])
def test_a_keras_distillation_loss_keeps_its_own_reduction(reduction):
    """Documented in `compile`: a Keras loss instance's `reduction` (its
    default `sum_over_batch_size` included) wins over the student loss's
    `mean_with_sample_weight`, against a float64 reference. The behaviour
    is unchanged (this passed before round 4): the test pins what is now
    documented."""
    x, y, weights = _data(8, seed=12)
    keras.utils.set_random_seed(33)
    teacher, student = make_mlp([8]), make_mlp([4])
    kl = keras.losses.KLDivergence() if reduction is None else keras.losses.KLDivergence(
        reduction=reduction)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(keras.optimizers.SGD(0.0), alpha=0.0, temperature=2.0,
                      distillation_loss_fn=kl, run_eagerly=True,
                      student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True, reduction="mean_with_sample_weight"))
    logs = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    p_t = np.clip(softmax64(outputs(teacher, x) / 2.0), 1e-7, 1.0)
    p_s = np.clip(softmax64(outputs(student, x) / 2.0), 1e-7, 1.0)
    values = np.sum(p_t * np.log(p_t / p_s), -1) * weights
    expected = values.sum() if reduction == "sum" else values.sum() / len(x)
    assert not np.isclose(expected, values.sum() / weights.sum())  # The student loss's.
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-5)


def test_an_unreduced_loss_is_refused_at_compile_by_name():
    """Row 1, the reduction Keras has that two weighed terms cannot use. The
    student loss's was refused at compile already; before round 4 a Keras
    `distillation_loss_fn` with `reduction="none"` failed inside the step."""
    distiller = Distiller(student=make_mlp([4]), teacher=make_mlp([8]))
    with pytest.raises(ValueError, match=r"`student_loss_fn` must reduce to one value.*'none'"):
        distiller.compile(student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="none"))
    with pytest.raises(ValueError, match=r"`distillation_loss_fn` has reduction='none'"):
        distiller.compile(distillation_loss_fn=keras.losses.KLDivergence(reduction="none"))


def test_a_top_k_cache_of_an_ensemble_is_refused_naming_the_alternative(tmp_path):
    """Failed before: a list of teachers was refused with "`teacher` must be
    a `keras.Model` or a list of them. Received: [...] of type list", which
    contradicts itself. A top-k cache holds one teacher; the error says so
    and names the two ways an ensemble keeps its mixture."""
    keras.utils.set_random_seed(3)
    teachers = [make_mlp([5], name="a"), make_mlp([5], name="b")]
    x = np.zeros((4, 6), "float32")
    with pytest.raises(ValueError, match=r"one `keras.Model`.*a list of 2 teachers.*"
                                         r"compute_teacher_logits\(teachers, x\)"):
        top_k.write_top_k_cache(teachers, x, tmp_path / "cache", 2)
    assert not (tmp_path / "cache").exists()
