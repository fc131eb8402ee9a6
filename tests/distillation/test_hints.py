"""Feature hints: each method against a NumPy port of mdistiller's, FitNets
connectors that belong to the distiller, one student forward pass."""

import keras
import numpy as np
import pytest
from conftest import numpy
from conftest import tensorflow_only
from conftest import value_and_gradients

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


@pytest.mark.parametrize("method", sorted(REFERENCES))
def test_each_method_has_finite_gradients(method):
    """RKD's angles normalise each sample's difference with itself, a zero
    vector: its gradient was NaN on JAX (the square root's infinite
    derivative at 0, times the zero of `max(norm, eps)`), and an SGD step,
    even at learning rate 0, made the student's weights NaN."""
    rng = np.random.default_rng(1)
    f_s = np.maximum(rng.normal(size=(6, 4, 4, 3)), 0.0)
    f_t = np.maximum(rng.normal(size=(6, 4, 4, 3) if method == "fitnet" else (6, 2, 2, 5)), 0.0)
    f_s[1] = 0.0  # A sample whose feature is all zero (dead ReLUs).
    hint = hints.FeatureHint("a", "b", method=method)
    # The student's side (the teacher's features take no gradient).
    value, (g_s,), _ = value_and_gradients(
        lambda s: (hint.loss(s, np.float32(f_t)), None), [f_s])
    assert np.all(np.isfinite(g_s)), method
    assert np.any(g_s != 0.0)
    np.testing.assert_allclose(float(value), REFERENCES[method](f_s, f_t), rtol=2e-4, atol=1e-7)


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
    expected = 100 * np.mean((numpy(connector(s_feat, training=True)) - numpy(t_feat)) ** 2)
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
    s_feat = numpy(keras.Model(student.input, student.get_layer("s_conv").output)(x))
    for method in methods:
        t_layer = "t_conv1" if method == "attention" else "t_conv2"
        t_feat = numpy(keras.Model(teacher.input, teacher.get_layer(t_layer).output)(x))
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


# FitNets connector variants (README, "Feature hints": "conv 3x3 stride 2,
# transposed 4x4, or a `1 + h_s - h_t` kernel, + BatchNorm + ReLU; Dense +
# BatchNorm for vectors"), each against a float64 NumPy forward pass.


def batch_norm64(h, layer):
    """BatchNormalization in training mode: batch statistics (biased var)."""
    axes = tuple(range(h.ndim - 1))
    mean, var = h.mean(axes), h.var(axes)
    gamma, beta = (np.float64(w.numpy()) for w in (layer.gamma, layer.beta))
    return gamma * (h - mean) / np.sqrt(var + layer.epsilon) + beta


def conv_valid64(x, kernel, bias):
    kh, kw = kernel.shape[:2]
    h, w = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((len(x), h, w, kernel.shape[-1]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("bhwc,co->bhwo", x[:, i:i + h, j:j + w], kernel[i, j])
    return out + bias


def conv_transpose_same64(x, kernel, bias, stride=2):
    """`Conv2DTranspose(padding="same")`: the gradient of a strided conv; the
    full `(h - 1) * s + k` output cropped by `(k - s) // 2` at the start."""
    k = kernel.shape[0]  # Keras' layout: (kh, kw, out, in).
    b, h, w, _ = x.shape
    full = np.zeros((b, (h - 1) * stride + k, (w - 1) * stride + k, kernel.shape[2]))
    for i in range(h):
        for j in range(w):
            full[:, i * stride:i * stride + k, j * stride:j * stride + k] += np.einsum(
                "bc,kloc->bklo", x[:, i, j], kernel)
    crop = (k - stride) // 2
    return full[:, crop:crop + h * stride, crop:crop + w * stride] + bias


def hinted_pair(student_layer, teacher_layer, seed=0):
    """Functional models on 8x8x1 images with the named feature layers."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    feature = student_layer(inputs)
    head = keras.layers.Flatten()(feature) if len(feature.shape) > 2 else feature
    student = keras.Model(inputs, keras.layers.Dense(3)(head))
    inputs = keras.Input((8, 8, 1))
    feature = teacher_layer(inputs)
    head = keras.layers.Flatten()(feature) if len(feature.shape) > 2 else feature
    teacher = keras.Model(inputs, keras.layers.Dense(3)(head))
    return student, teacher


def flat_dense(units, name):
    return lambda x: keras.layers.Dense(units, name=name)(keras.layers.Flatten()(x))


CONNECTORS = {
    # student feature -> teacher feature: expected first layer, NumPy forward
    "strided_3x3": (lambda: keras.layers.Conv2D(3, 3, strides=1, padding="same", name="s"),
                    lambda: keras.layers.Conv2D(5, 3, strides=2, padding="same", name="t")),
    "transposed_4x4": (lambda: keras.layers.Conv2D(3, 3, strides=4, padding="same", name="s"),
                       lambda: keras.layers.Conv2D(5, 3, strides=2, padding="same", name="t")),
    "kernel_1_plus_hs_minus_ht": (
        lambda: keras.layers.Conv2D(3, 3, padding="valid", name="s"),
        lambda: keras.layers.Conv2D(5, 3, strides=2, padding="same", name="t")),
    "dense": (lambda: flat_dense(8, "s"), lambda: flat_dense(5, "t")),
}


@pytest.mark.parametrize("variant", sorted(CONNECTORS))
def test_fitnet_connector_variants_equal_a_numpy_forward_pass(images, variant):
    x, y = images
    x = x[:12]
    make_student_layer, make_teacher_layer = CONNECTORS[variant]
    student, teacher = hinted_pair(make_student_layer(), make_teacher_layer())
    distiller = keras_kd.Distiller(student=student, teacher=teacher,
                                   hints=[keras_kd.FeatureHint("s", "t")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    (connector,) = distiller.connectors
    first, norm = connector.layers[0], connector.layers[1]
    assert isinstance(norm, keras.layers.BatchNormalization)
    s = np.float64(numpy(keras.Model(student.input, student.get_layer("s").output)(x)))
    t = np.float64(numpy(keras.Model(teacher.input, teacher.get_layer("t").output)(x)))
    kernel, bias = (np.float64(w.numpy()) for w in (first.kernel, first.bias))
    if variant == "dense":
        assert isinstance(first, keras.layers.Dense) and first.units == 5
        assert len(connector.layers) == 2  # No ReLU for vectors.
        mapped = batch_norm64(s @ kernel + bias, norm)
    else:
        assert isinstance(connector.layers[2], keras.layers.ReLU)
        if variant == "strided_3x3":  # 8x8 -> 4x4.
            assert type(first) is keras.layers.Conv2D
            assert (first.kernel_size, first.strides, first.padding) == ((3, 3), (2, 2), "same")
            padded = np.pad(s, ((0, 0), (0, 1), (0, 1), (0, 0)))  # TF's "same" for stride 2.
            convolved = conv_valid64(padded, kernel, bias)[:, ::2, ::2]
        elif variant == "transposed_4x4":  # 2x2 -> 4x4.
            assert isinstance(first, keras.layers.Conv2DTranspose)
            assert (first.kernel_size, first.strides, first.padding) == ((4, 4), (2, 2), "same")
            convolved = conv_transpose_same64(s, kernel, bias)
        else:  # 6x6 -> 4x4: a valid 3x3 = (1 + 6 - 4) convolution.
            assert type(first) is keras.layers.Conv2D
            assert (first.kernel_size, first.strides, first.padding) == ((3, 3), (1, 1), "valid")
            convolved = conv_valid64(s, kernel, bias)
        assert first.filters == 5
        mapped = np.maximum(batch_norm64(convolved, norm), 0.0)
    assert mapped.shape == t.shape
    expected = 100.0 * np.mean((mapped - t) ** 2)
    logs = distiller.train_on_batch(x, y[:12], return_dict=True)
    np.testing.assert_allclose(logs["fitnet_loss"], expected, rtol=1e-4)


def test_features_of_equal_shape_need_no_connector(images):
    x, y = images
    student, teacher = hinted_pair(flat_dense(5, "s"), flat_dense(5, "t"))
    distiller = keras_kd.Distiller(student=student, teacher=teacher,
                                   hints=[keras_kd.FeatureHint("s", "t")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    assert distiller.connectors == []
    s = numpy(keras.Model(student.input, student.get_layer("s").output)(x))
    t = numpy(keras.Model(teacher.input, teacher.get_layer("t").output)(x))
    logs = distiller.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["fitnet_loss"],
                               100.0 * np.mean((np.float64(s) - t) ** 2), rtol=1e-5)


@pytest.mark.parametrize("method", ["fitnet", "similarity"])
def test_hint_terms_are_not_weighted_by_sample_weight(images, method):
    """README: "the hint terms, relations within the batch, are not weighted
    by `sample_weight`": the same value with and without weights (zeros
    included), the unweighted reference, while the distillation term moves."""
    x, y = images
    student, teacher = hinted_pair(flat_dense(5, "s"), flat_dense(5, "t"), seed=3)
    distiller = keras_kd.Distiller(student=student, teacher=teacher,
                                   hints=[keras_kd.FeatureHint("s", "t", method=method)])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.3, run_eagerly=True)
    weights = np.random.default_rng(4).uniform(0.0, 3.0, len(x)).astype("float32")
    weights[:8] = 0.0
    plain = distiller.train_on_batch(x, y, return_dict=True)
    weighted = distiller.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    s = np.float64(numpy(keras.Model(student.input, student.get_layer("s").output)(x)))
    t = np.float64(numpy(keras.Model(teacher.input, teacher.get_layer("t").output)(x)))
    expected = hints.DEFAULT_WEIGHTS[method] * REFERENCES[method](s, t)
    name = f"{method}_loss"
    np.testing.assert_allclose([plain[name], weighted[name]], [expected] * 2, rtol=1e-4)
    assert not np.isclose(plain["distillation_loss"], weighted["distillation_loss"], rtol=1e-3)
    np.testing.assert_allclose(
        weighted["loss"],
        0.3 * weighted["student_loss"] + 0.7 * weighted["distillation_loss"] + expected,
        rtol=1e-4)


# Subclass hooks (README, "Also": `student_inputs(x)`, `student_features` /
# `teacher_features`): a subclass overriding each gets exactly the loss of
# the views or features it returns.


def softmax64(z):
    z = np.float64(z)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kd64(teacher_logits, student_logits, temperature):
    p, q = softmax64(teacher_logits / temperature), softmax64(student_logits / temperature)
    return temperature**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))


class TwoLayer(keras.Model):
    """A subclassed model: its hidden layer cannot be named by a hint."""

    def __init__(self, hidden, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(hidden, activation="tanh")
        self.out = keras.layers.Dense(classes)

    def call(self, x):
        return self.out(self.hidden(x))

    def with_features(self, x):
        hidden = self.hidden(x)
        return self.out(hidden), hidden


def test_student_inputs_hook_gives_the_student_its_own_view():
    rng = np.random.default_rng(5)
    x = {"student": rng.normal(size=(16, 4)).astype("float32"),
         "teacher": rng.normal(size=(16, 7)).astype("float32")}
    y = rng.integers(0, 3, 16)

    class TwoViews(keras_kd.Distiller):
        def student_inputs(self, x):
            return x["student"]

        def teacher_inputs(self, x):
            return x["teacher"]

    keras.utils.set_random_seed(6)
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    teacher = keras.Sequential([keras.Input((7,)), keras.layers.Dense(3)])
    distiller = TwoViews(student=student, teacher=teacher)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.4, temperature=2.0,
                      run_eagerly=True)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    s, t = numpy(student(x["student"])), numpy(teacher(x["teacher"]))
    hard = -np.mean(np.log(softmax64(s))[np.arange(16), y])
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd64(t, s, 2.0), rtol=1e-5)
    # `predict` and calling the distiller take the student's view too.
    np.testing.assert_allclose(distiller.predict(x, verbose=0), s, rtol=1e-6)


def test_student_features_hook_serves_a_subclassed_student(images):
    x, y = images
    x = x.reshape(len(x), -1)[:, :16]
    keras.utils.set_random_seed(7)
    student = TwoLayer(6)
    student(x[:1])
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(9, activation="relu", name="t_hidden")(inputs)
    teacher = keras.Model(inputs, keras.layers.Dense(3)(hidden))

    class SubclassedStudent(keras_kd.Distiller):
        def student_features(self, x, training=None):
            logits, hidden = self.student.with_features(self.student_inputs(x))
            return logits, [hidden]

    distiller = SubclassedStudent(student=student, teacher=teacher, hints=[
        keras_kd.FeatureHint("unused", "t_hidden", method="similarity")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=2.0,
                      run_eagerly=True)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    s_logits, s_hidden = (np.float64(numpy(v)) for v in student.with_features(x))
    t_hidden = numpy(keras.Model(teacher.input, teacher.get_layer("t_hidden").output)(x))
    np.testing.assert_allclose(
        logs["similarity_loss"], 3000.0 * sp_reference(s_hidden, np.float64(t_hidden)),
        rtol=1e-4)
    np.testing.assert_allclose(
        logs["distillation_loss"], kd64(numpy(teacher(x)), s_logits, 2.0), rtol=1e-5)


def test_teacher_features_hook_serves_a_subclassed_teacher(images):
    """The logits the hook returns are the teacher's for the distillation
    term too (one teacher forward pass)."""
    x, y = images
    x = x.reshape(len(x), -1)[:, :16]
    keras.utils.set_random_seed(8)
    teacher = TwoLayer(10)
    teacher(x[:1])
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(4, activation="relu", name="s_hidden")(inputs)
    student = keras.Model(inputs, keras.layers.Dense(3)(hidden))

    class SubclassedTeacher(keras_kd.Distiller):
        def teacher_features(self, x):
            logits, hidden = self.teacher.with_features(self.teacher_inputs(x))
            return logits, [hidden]

    distiller = SubclassedTeacher(student=student, teacher=teacher, hints=[
        keras_kd.FeatureHint("s_hidden", "unused", method="pkt")])
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), alpha=0.5, temperature=2.0,
                      run_eagerly=True)
    logs = distiller.train_on_batch(x, y, return_dict=True)
    t_logits, t_hidden = (np.float64(numpy(v)) for v in teacher.with_features(x))
    s_hidden = numpy(keras.Model(student.input, student.get_layer("s_hidden").output)(x))
    np.testing.assert_allclose(
        logs["pkt_loss"], 30000.0 * pkt_reference(np.float64(s_hidden), t_hidden),
        rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        logs["distillation_loss"], kd64(t_logits, numpy(student(x)), 2.0), rtol=1e-5)


# Hints under `tf.distribute` (issue 25, "hints ... tf.distribute"): the
# terms are over the global batch, as on one device.


def _mlp(hidden, name):
    model = keras.Sequential([keras.Input((6,))], name=name)
    model.add(keras.layers.Dense(hidden, activation="relu", name=f"{name}_hidden"))
    model.add(keras.layers.Dense(4, name=f"{name}_logits"))
    return model


def _hinted_fit(strategy, method, reduction):
    """The distiller's trainable weights and logs after one epoch of 9
    samples in batches of 8 (the last batch, one sample, leaves one of two
    replicas empty)."""
    import contextlib

    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 6)).astype("float32")
    y = rng.integers(0, 4, size=(9,))
    weights = rng.uniform(0.5, 2.0, size=(9,)).astype("float32")
    with strategy.scope() if strategy else contextlib.nullcontext():
        keras.utils.set_random_seed(11)
        # Equal widths: no FitNets connector, whose BatchNorm normalises
        # each replica's share (as Keras' own BatchNorm does).
        teacher, student = _mlp(8, "teacher"), _mlp(8, "student")
        distiller = keras_kd.Distiller(student=student, teacher=teacher, hints=[
            keras_kd.FeatureHint("student_hidden", "teacher_hidden", method=method, weight=1.0)])
        distiller.compile(keras.optimizers.SGD(0.1), alpha=0.5, temperature=2.0,
                          student_loss_fn=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True, reduction=reduction))
        history = distiller.fit(x, y, sample_weight=weights, batch_size=8, shuffle=False,
                                verbose=0).history
    return [numpy(w) for w in distiller.trainable_weights], history


@tensorflow_only("tf.distribute replicas (JAX's keras.distribution arrays are global)")
@pytest.mark.parametrize("method, reduction", [
    ("fitnet", "sum_over_batch_size"), ("similarity", "sum"), ("rkd", "sum_over_batch_size")])
def test_hints_under_two_replicas_give_one_devices_update(method, reduction):
    """Failed before: each replica computed the hint on its own share of the
    batch (a relational hint's relations within half a batch: 52% off one
    device's weights for "similarity" even at an even split), a mean over
    a replica's share was then averaged over replicas (FitNets 7.6% off
    with a last batch of one sample), and an empty replica's mean was NaN
    (the logged loss NaN). The features are now gathered over the replicas
    (`reduction.gather_batch`): one device's weights and logs."""
    import tensorflow as tf

    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    one, one_logs = _hinted_fit(None, method, reduction)
    two, two_logs = _hinted_fit(strategy, method, reduction)
    for a, b in zip(two, one):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "student_loss", "distillation_loss", f"{method}_loss"):
        assert np.isfinite(two_logs[key][0])
        np.testing.assert_allclose(two_logs[key], one_logs[key], rtol=1e-5)


def test_rkd_of_a_one_sample_batch_is_zero_not_nan():
    """Failed before: a batch of one sample (a last partial batch) has no
    pairwise distance, and dividing the distances by their mean (0 / 0)
    made the RKD term and the step's loss NaN (mdistiller's `td[td > 0].
    mean()` is NaN there too), which `StopOnNonFiniteLoss` stops on. No
    relation to match is a term of 0 with a zero gradient."""
    rng = np.random.default_rng(2)
    student, teacher = rng.normal(size=(1, 5)), rng.normal(size=(1, 7))
    value, gradients, _ = value_and_gradients(
        lambda s: (hints.rkd_loss(s, teacher.astype("float32")), None), [student])
    assert float(value) == 0.0
    np.testing.assert_array_equal(gradients[0], np.zeros_like(student))
    # Two samples or more: mdistiller's value, as before, with a finite
    # gradient (before, NaN on JAX for every batch: the angles' zero
    # differences on the diagonal went through sqrt'(0) in the normalisation).
    s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 7))
    _, gradients, _ = value_and_gradients(
        lambda a: (hints.rkd_loss(a, t.astype("float32")), None), [s])
    assert np.isfinite(gradients[0]).all() and np.abs(gradients[0]).max() > 0
    np.testing.assert_allclose(
        float(hints.rkd_loss(s.astype("float32"), t.astype("float32"))),
        rkd_reference(s, t), rtol=1e-4)
