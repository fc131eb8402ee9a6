"""DKD, DIST, logit-standardised KD and NKD against float64 NumPy ports of
their authors' reference code (conventions in REFERENCE.md), their
gradients against finite differences, and their use in the Distiller."""

import keras
import numpy as np
import pytest
from conftest import make_mlp
from conftest import value_and_gradients

import keras_kd
from keras_kd.distillation import logit_methods


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_div_sum(log_q, p):
    """torch.nn.functional.kl_div(log_q, p, reduction="sum"), 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * (np.log(safe) - log_q), 0.0))


def mdistiller_dkd(z_s, z_t, target, alpha, beta, t):
    """mdistiller's dkd_loss in NumPy float64."""
    b, c = z_s.shape
    gt = np.eye(c)[target]
    other = 1.0 - gt

    def cat_mask(p):
        return np.concatenate([(p * gt).sum(1, keepdims=True), (p * other).sum(1, keepdims=True)], 1)

    p_s, p_t = cat_mask(softmax(z_s / t)), cat_mask(softmax(z_t / t))
    tckd = kl_div_sum(np.log(p_s), p_t) * t**2 / b
    nckd = kl_div_sum(log_softmax(z_s / t - 1000.0 * gt), softmax(z_t / t - 1000.0 * gt)) * t**2 / b
    return alpha * tckd + beta * nckd


def dist_reference(z_s, z_t, beta, gamma, tau):
    """The DIST authors' loss in NumPy float64."""
    def cosine(a, b, eps=1e-8):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)

    def pearson(a, b):
        return cosine(a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True))

    y_s, y_t = softmax(z_s / tau), softmax(z_t / tau)
    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.T, y_t.T).mean()
    return tau**2 * (beta * inter + gamma * intra)


def logit_standardized_reference(z_s, z_t, t):
    """The logit-standardisation authors' kd_loss (torch std is unbiased)."""
    def normalize(z):
        return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))

    log_p_s = log_softmax(normalize(z_s) / t)
    p_t = softmax(normalize(z_t) / t)
    return kl_div_sum(log_p_s, p_t) / len(z_s) * t**2


def nkd_reference(z_s, z_t, target, gamma, t):
    """The NKD authors' loss in NumPy float64 (true class removed)."""
    n, c = z_s.shape
    s_i, t_i = log_softmax(z_s), softmax(z_t)
    loss_t = -(t_i[np.arange(n), target] * s_i[np.arange(n), target]).mean()
    keep = np.ones((n, c), bool)
    keep[np.arange(n), target] = False
    s_rest, t_rest = z_s[keep].reshape(n, c - 1), z_t[keep].reshape(n, c - 1)
    loss_non = (softmax(t_rest / t) * log_softmax(s_rest / t)).sum(1).mean()
    return loss_t - gamma * t**2 * loss_non


def random_case(scale, seed, shape=(16, 10)):
    rng = np.random.default_rng(seed)
    z_s = rng.normal(size=shape) * scale
    z_t = rng.normal(size=shape) * scale
    return z_s, z_t, rng.integers(0, shape[1], size=shape[0])


SCALES = [0.1, 1.0, 10.0, 50.0]


def ours(loss, z_s, z_t, t, labels=None):
    values = loss.compute_per_sample(z_t, z_s, t, labels)
    return float(np.mean(keras.ops.convert_to_numpy(values).astype("float64")))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dkd_equals_the_authors_code(scale, t):
    z_s, z_t, target = random_case(scale, 1)
    loss = logit_methods.DecoupledKD(alpha=1.0, beta=8.0, dtype="float64", precision="float64")
    expected = mdistiller_dkd(z_s, z_t, target, 1.0, 8.0, t)
    np.testing.assert_allclose(ours(loss, z_s, z_t, t, target), expected, rtol=1e-5)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_dist_equals_the_authors_code(scale, t):
    z_s, z_t, _ = random_case(scale, 2)
    loss = logit_methods.DIST(beta=1.0, gamma=2.0, dtype="float64", precision="float64")
    np.testing.assert_allclose(ours(loss, z_s, z_t, t), dist_reference(z_s, z_t, 1.0, 2.0, t),
                               rtol=1e-5)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [1.0, 2.0])
def test_logit_standardized_kd_equals_the_authors_code(scale, t):
    z_s, z_t, _ = random_case(scale, 3)
    loss = logit_methods.LogitStandardizedKD(dtype="float64", precision="float64")
    np.testing.assert_allclose(ours(loss, z_s, z_t, t),
                               logit_standardized_reference(z_s, z_t, t), rtol=1e-5)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_nkd_equals_the_authors_code(scale, t):
    z_s, z_t, target = random_case(scale, 4)
    loss = logit_methods.NormalizedKD(gamma=1.5, dtype="float64", precision="float64")
    np.testing.assert_allclose(ours(loss, z_s, z_t, t, target),
                               nkd_reference(z_s, z_t, target, 1.5, t), rtol=1e-5)


LOSSES = {
    "dkd": lambda: logit_methods.DecoupledKD(dtype="float64", precision="float64"),
    "dist": lambda: logit_methods.DIST(dtype="float64", precision="float64"),
    "logit_standardized_kd": lambda: logit_methods.LogitStandardizedKD(dtype="float64", precision="float64"),
    "nkd": lambda: logit_methods.NormalizedKD(dtype="float64", precision="float64"),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_gradients_match_finite_differences(name, scale):
    z_s, z_t, target = random_case(scale, 5, shape=(4, 5))
    loss = LOSSES[name]()

    def value(student):
        # A sum over the batch size: Keras' `ops.mean` on JAX computes in
        # float32 (`result_type(x.dtype, "float32")`), too coarse here.
        values = keras.ops.cast(loss.compute_per_sample(z_t, student, 2.0, target), "float64")
        return keras.ops.sum(values) / len(z_s)

    _, (gradient,), _ = value_and_gradients(lambda s: (value(s), None), [z_s], "float64")
    assert np.all(np.isfinite(gradient))
    step = 1e-6 * max(1.0, scale)
    numeric = np.zeros_like(z_s)
    for index in np.ndindex(z_s.shape):
        up, down = z_s.copy(), z_s.copy()
        up[index] += step
        down[index] -= step
        numeric[index] = (float(value(keras.ops.convert_to_tensor(up, "float64")))
                          - float(value(keras.ops.convert_to_tensor(down, "float64")))) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_named_in_compile_and_saved_with_the_distiller(tmp_path, tiny_data, name):
    x, y = tiny_data
    keras.utils.set_random_seed(7)
    distiller = keras_kd.Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), distillation_loss_fn=name,
                      temperature=4.0, alpha=0.5)
    assert type(distiller.distillation_loss_fn) is type(LOSSES[name]())
    history = distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["distillation_loss"]))
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    assert type(loaded.distillation_loss_fn) is type(distiller.distillation_loss_fn)
    assert loaded.distillation_loss_fn.get_config() == distiller.distillation_loss_fn.get_config()


@pytest.mark.parametrize("loss", [logit_methods.DecoupledKD, logit_methods.NormalizedKD])
def test_label_losses_take_the_labels_and_the_teacher_where_there_are_none(tiny_data, loss):
    """Through the Distiller the loss sees the batch's labels; an unlabelled
    sample is scored as if its label were the teacher's top class."""
    x, y = tiny_data
    x, y = x[:16], y[:16]
    keras.utils.set_random_seed(8)
    distiller = keras_kd.Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), distillation_loss_fn=loss(),
                      temperature=2.0, alpha=0.0)
    z_t = distiller.teacher.predict(x, verbose=0).astype("float64")
    z_s = distiller.student.predict(x, verbose=0).astype("float64")
    reference = loss(dtype="float64", precision="float64")
    def step(*data):
        distiller.reset_metrics()  # Keras < 3.13 accumulates across *_on_batch calls.
        return distiller.train_on_batch(*data, return_dict=True)["distillation_loss"]

    with_labels = step(x, y)
    np.testing.assert_allclose(with_labels, ours(reference, z_s, z_t, 2.0, y), rtol=1e-5)
    marked = y.copy()
    marked[::2] = keras_kd.UNLABELLED
    stand_in = np.where(marked == keras_kd.UNLABELLED, z_t.argmax(1), y)
    mixed = step(x, marked)
    np.testing.assert_allclose(mixed, ours(reference, z_s, z_t, 2.0, stand_in), rtol=1e-5)
    unlabelled = step(x)
    np.testing.assert_allclose(unlabelled, ours(reference, z_s, z_t, 2.0, z_t.argmax(1)),
                               rtol=1e-5)


def test_dkd_warmup_schedule():
    schedule = logit_methods.dkd_warmup(20)
    alphas = [schedule(epoch) for epoch in (0, 5, 20, 100)]
    # The ratio of the distillation term to the label term ramps 0 -> 1.
    ratios = [(1 - a) / a for a in alphas]
    np.testing.assert_allclose(ratios, [0.0, 0.25, 1.0, 1.0])


@pytest.mark.parametrize("loss", [logit_methods.DIST, logit_methods.LogitStandardizedKD])
def test_a_row_of_equal_student_logits_has_finite_gradients(loss):
    """A student whose ReLUs are all off outputs its bias (zeros at
    initialisation) for that sample: zero spread under the square root.
    The gradient must stay finite there (on PyTorch and JAX `sqrt`'s
    backward gave NaN, then NaN in every weight), and the other rows keep
    theirs."""
    from conftest import value_and_gradients

    rng = np.random.default_rng(3)
    z_t = rng.normal(size=(6, 4)).astype("float32")
    z_s = rng.normal(size=(6, 4)).astype("float32")
    z_s[2] = 0.0
    fn = loss(temperature=2.0)
    value, (gradient,), _ = value_and_gradients(
        lambda s: (keras.ops.mean(fn.compute_per_sample(z_t, s, 2.0)), None), [z_s])
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(gradient))
    assert np.abs(gradient[[0, 1, 3, 4, 5]]).max() > 1e-3
