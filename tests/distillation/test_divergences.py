"""The token-level divergences of `keras_kd.divergences` against float64
NumPy ports of the published formulas (and of TRL's `generalized_jsd_loss`),
their identities, gradients, serialization and argument checks."""

import keras
import numpy as np
import pytest

from conftest import compiled
from conftest import gradients
from conftest import numpy

from keras_kd.distillation import divergences
from keras_kd.distillation import losses

SHAPE = (2, 3, 7)  # (batch, time, vocab)
TEMPERATURES = [1.0, 2.0]
SCALES = [1.0, 30.0]


# ---------------------------------------------------------------------------
# Float64 NumPy references, written from the papers in probability space.


def softmax64(z, temperature):
    z = np.asarray(z, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kl64(p, q):
    """`KL(p || q)` over the last axis, with 0 log 0 = 0."""
    safe_p = np.where(p > 0, p, 1.0)
    return np.sum(np.where(p > 0, p * np.log(safe_p / q), 0.0), axis=-1)


def forward_kl_ref(p_t, p_s):
    return kl64(p_t, p_s)


def reverse_kl_ref(p_t, p_s):
    return kl64(p_s, p_t)


def gjsd_ref(p_t, p_s, beta):
    if beta == 0.0:
        return kl64(p_t, p_s)
    if beta == 1.0:
        return kl64(p_s, p_t)
    m = beta * p_t + (1.0 - beta) * p_s
    return beta * kl64(p_t, m) + (1.0 - beta) * kl64(p_s, m)


def skew_kl_ref(p_t, p_s, skew):
    return kl64(p_t, skew * p_t + (1.0 - skew) * p_s)


def skew_reverse_kl_ref(p_t, p_s, skew):
    return kl64(p_s, (1.0 - skew) * p_t + skew * p_s)


def reference(ref, teacher, student, temperature):
    p_t = softmax64(teacher, temperature)
    p_s = softmax64(student, temperature)
    return temperature**2 * ref(p_t, p_s)


def log_softmax64(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def trl_generalized_jsd_loss(student_logits, teacher_logits, beta, temperature):
    """TRL's `GKDTrainer.generalized_jsd_loss` in NumPy, reduction="none"
    summed over the vocabulary: one value per token."""
    student_logits = np.float64(student_logits) / temperature
    teacher_logits = np.float64(teacher_logits) / temperature
    student_log_probs = log_softmax64(student_logits)
    teacher_log_probs = log_softmax64(teacher_logits)

    def kl_div(input, target):  # F.kl_div(input, target, log_target=True)
        return np.exp(target) * (target - input)

    if beta == 0:
        jsd = kl_div(student_log_probs, teacher_log_probs)
    elif beta == 1:
        jsd = kl_div(teacher_log_probs, student_log_probs)
    else:
        mixture_log_probs = np.logaddexp(
            student_log_probs + np.log(1 - beta),
            teacher_log_probs + np.log(beta),
        )
        kl_teacher = kl_div(mixture_log_probs, teacher_log_probs)
        kl_student = kl_div(mixture_log_probs, student_log_probs)
        jsd = beta * kl_teacher + (1 - beta) * kl_student
    return jsd.sum(axis=-1)


# (id, constructor taking keyword arguments, reference on probabilities)
CASES = [
    ("forward_kl", lambda **kw: divergences.ForwardKL(**kw), forward_kl_ref),
    ("reverse_kl", lambda **kw: divergences.ReverseKL(**kw), reverse_kl_ref),
] + [
    (
        f"gjsd_{beta}",
        lambda beta=beta, **kw: divergences.GeneralizedJSD(beta=beta, **kw),
        lambda p_t, p_s, beta=beta: gjsd_ref(p_t, p_s, beta),
    )
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0)
] + [
    (
        f"skew_kl_{skew}",
        lambda skew=skew, **kw: divergences.SkewKL(skew=skew, **kw),
        lambda p_t, p_s, skew=skew: skew_kl_ref(p_t, p_s, skew),
    )
    for skew in (0.0, 0.1, 0.5)
] + [
    (
        f"skew_reverse_kl_{skew}",
        lambda skew=skew, **kw: divergences.SkewReverseKL(skew=skew, **kw),
        lambda p_t, p_s, skew=skew: skew_reverse_kl_ref(p_t, p_s, skew),
    )
    for skew in (0.0, 0.1, 0.5)
]
CASE_IDS = [case[0] for case in CASES]


def random_logits(scale, seed, shape=SHAPE, dtype="float32"):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * scale).astype(dtype)


def per_position(loss, teacher, student, temperature):
    return keras.ops.convert_to_numpy(
        loss.compute_per_sample(teacher, student, temperature)
    )


# ---------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_float32_matches_float64_reference(case, temperature, scale):
    _, make, ref = case
    teacher = random_logits(scale, 1)
    student = random_logits(scale, 2)
    loss = make(temperature=temperature)
    values = per_position(loss, teacher, student, temperature)
    expected = reference(ref, teacher, student, temperature)
    assert values.shape == SHAPE[:-1]
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    # Called as a Keras loss: the mean over every position.
    np.testing.assert_allclose(
        float(loss(teacher, student)), expected.mean(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
def test_float64_precision_matches_reference(case, temperature, scale):
    _, make, ref = case
    teacher = random_logits(scale, 3, dtype="float64")
    student = random_logits(scale, 4, dtype="float64")
    loss = make(precision="float64", dtype="float64")
    values = per_position(loss, teacher, student, temperature)
    expected = reference(ref, teacher, student, temperature)
    assert values.dtype == np.float64
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_nearly_identical_logits_in_float64(case):
    # Late in training the distributions nearly agree and the loss is tiny
    # (~1e-5): float32 log-softmax rounding then costs percents, for
    # Hinton's KL too; precision="float64" keeps it to 1e-8.
    _, make, ref = case
    teacher = random_logits(3.0, 5)
    student = teacher + random_logits(1e-2, 6)
    values = per_position(make(precision="float64"), teacher, student, 1.0)
    expected = reference(ref, teacher, student, 1.0)
    assert np.all(expected > 1e-8)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    values64 = per_position(
        make(precision="float64", dtype="float64"), teacher, student, 1.0
    )
    np.testing.assert_allclose(values64, expected, rtol=1e-8)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_generalized_jsd_matches_trl(beta, temperature, scale, precision):
    dtype = precision
    teacher = random_logits(scale, 7, dtype=dtype)
    student = random_logits(scale, 8, dtype=dtype)
    loss = divergences.GeneralizedJSD(
        beta=beta, precision=precision, dtype=dtype
    )
    values = per_position(loss, teacher, student, temperature)
    # TRL has no T**2 factor; keras_kd multiplies by it.
    expected = temperature**2 * trl_generalized_jsd_loss(
        student, teacher, beta, temperature
    )
    if precision == "float32":
        np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)


def test_trl_port_agrees_with_the_paper_formula():
    # The two references are independent; they must agree with each other.
    teacher = random_logits(5.0, 9, dtype="float64")
    student = random_logits(5.0, 10, dtype="float64")
    for beta in (0.0, 0.3, 1.0):
        def ref(p_t, p_s):
            return gjsd_ref(p_t, p_s, beta)

        np.testing.assert_allclose(
            trl_generalized_jsd_loss(student, teacher, beta, 1.0),
            reference(ref, teacher, student, 1.0),
            rtol=1e-12,
        )


# ---------------------------------------------------------------------------
# Identities and shapes.


def test_generalized_jsd_ends_are_forward_and_reverse_kl():
    teacher = random_logits(10.0, 11)
    student = random_logits(10.0, 12)
    for t in TEMPERATURES:
        forward = per_position(divergences.ForwardKL(), teacher, student, t)
        reverse = per_position(divergences.ReverseKL(), teacher, student, t)
        at_0 = per_position(
            divergences.GeneralizedJSD(beta=0.0), teacher, student, t
        )
        at_1 = per_position(
            divergences.GeneralizedJSD(beta=1.0), teacher, student, t
        )
        np.testing.assert_allclose(at_0, forward, rtol=1e-6)
        np.testing.assert_allclose(at_1, reverse, rtol=1e-6)
        assert not np.allclose(forward, reverse)


def test_skews_of_zero_are_the_plain_divergences():
    teacher = random_logits(10.0, 13)
    student = random_logits(10.0, 14)
    forward = per_position(divergences.ForwardKL(), teacher, student, 2.0)
    reverse = per_position(divergences.ReverseKL(), teacher, student, 2.0)
    np.testing.assert_allclose(
        per_position(divergences.SkewKL(skew=0.0), teacher, student, 2.0),
        forward,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        per_position(
            divergences.SkewReverseKL(skew=0.0), teacher, student, 2.0
        ),
        reverse,
        rtol=1e-6,
    )
    # Skewing shrinks the divergence; a full skew removes it.
    skewed = per_position(divergences.SkewKL(skew=0.1), teacher, student, 2.0)
    assert np.all(skewed < forward)
    for loss in (
        divergences.SkewKL(skew=1.0),
        divergences.SkewReverseKL(skew=1.0),
    ):
        np.testing.assert_array_equal(
            per_position(loss, teacher, student, 2.0), np.zeros(SHAPE[:-1])
        )


@pytest.mark.parametrize("beta", [0.5])
def test_jsd_is_symmetric(beta):
    teacher = random_logits(30.0, 15)
    student = random_logits(30.0, 16)
    loss = divergences.GeneralizedJSD(beta=beta)
    np.testing.assert_allclose(
        per_position(loss, teacher, student, 2.0),
        per_position(loss, student, teacher, 2.0),
        rtol=1e-6,
    )
    # Not for other betas.
    skewed = divergences.GeneralizedJSD(beta=0.2)
    assert not np.allclose(
        per_position(skewed, teacher, student, 2.0),
        per_position(skewed, student, teacher, 2.0),
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("scale", SCALES)
def test_identical_logits_give_exactly_zero(case, scale):
    _, make, _ = case
    logits = random_logits(scale, 17)
    for temperature in TEMPERATURES:
        values = per_position(make(), logits, logits, temperature)
        np.testing.assert_array_equal(values, np.zeros(SHAPE[:-1]))
        assert not np.any(np.signbit(values))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_never_negative(case):
    _, make, _ = case
    teacher = random_logits(1.0, 18, shape=(64, 4))
    student = teacher + random_logits(1e-4, 19, shape=(64, 4))
    assert np.all(per_position(make(), teacher, student, 1.0) >= 0.0)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize(
    "shape", [(4, 6), (2, 3, 6), (2, 2, 3, 6)], ids=["2d", "3d", "4d"]
)
def test_one_value_per_position(case, shape):
    _, make, ref = case
    teacher = random_logits(2.0, 20, shape=shape)
    student = random_logits(2.0, 21, shape=shape)
    values = per_position(make(), teacher, student, 2.0)
    assert values.shape == shape[:-1]
    # Each position is its own distribution: the same as row by row.
    np.testing.assert_allclose(
        values.reshape(-1),
        reference(ref, teacher.reshape(-1, 6), student.reshape(-1, 6), 2.0),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_temperature_variable_and_graph_mode(case):
    # A Distiller passes its temperature variable, compiled (a tf.function, jax.jit).
    _, make, _ = case
    teacher = random_logits(3.0, 22)
    student = random_logits(3.0, 23)
    loss = make()
    expected = per_position(loss, teacher, student, 2.0)
    temperature = keras.Variable(2.0)
    graph = compiled(lambda t, s: loss.compute_per_sample(t, s, temperature))
    np.testing.assert_allclose(
        numpy(graph(keras.ops.convert_to_tensor(teacher), keras.ops.convert_to_tensor(student))),
        expected,
        rtol=1e-6,
    )


# ---------------------------------------------------------------------------
# Gradients.


def numeric_gradient(ref, teacher, student, temperature, step=1e-6):
    """Central finite difference of the summed float64 reference."""
    gradient = np.zeros_like(student)
    for index in np.ndindex(student.shape):
        plus, minus = student.copy(), student.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (
            reference(ref, teacher, plus, temperature).sum()
            - reference(ref, teacher, minus, temperature).sum()
        ) / (2 * step)
    return gradient


def tape_gradient(loss, teacher, student, temperature):
    """The backend's gradient of the summed loss in the student logits."""
    teacher = keras.ops.convert_to_tensor(teacher)

    def total(student):
        return keras.ops.sum(loss.compute_per_sample(teacher, student, temperature))

    (gradient,) = gradients(total, [student], dtype=student.dtype)
    return gradient


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("spread", ["random", "close"])
def test_gradient_matches_finite_difference(case, temperature, spread):
    # "close" keeps every log-ratio small, "random" mixes small and large.
    _, make, ref = case
    shape = (2, 2, 5)
    teacher = random_logits(2.0, 24, shape=shape, dtype="float64")
    noise = 2.0 if spread == "random" else 0.05
    student = teacher + random_logits(noise, 25, shape=shape, dtype="float64")
    loss = make(precision="float64", dtype="float64")
    analytic = tape_gradient(loss, teacher, student, temperature)
    numeric = numeric_gradient(ref, teacher, student, temperature)
    assert np.abs(numeric).max() > 1e-4  # The check is not vacuous.
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_reverse_kl_gradient_is_analytic(temperature, scale):
    # d/ds_j T**2 KL(q || p) = T * q_j * (log q_j - log p_j - KL(q || p)).
    teacher = random_logits(scale, 26)
    student = random_logits(scale, 27)
    gradient = tape_gradient(
        divergences.ReverseKL(), teacher, student, temperature
    )
    log_p = log_softmax64(np.float64(teacher) / temperature)
    log_q = log_softmax64(np.float64(student) / temperature)
    q = np.exp(log_q)
    kl = np.sum(q * (log_q - log_p), axis=-1, keepdims=True)
    expected = temperature * q * (log_q - log_p - kl)
    # log q - log p - KL cancels: float32 leaves a few ulps of the largest
    # log-ratio (~2e-6 at scale 10 on XLA's CPU kernels).
    float32_cancellation = 4 * np.finfo(np.float32).eps * temperature * np.abs(log_q - log_p).max()
    np.testing.assert_allclose(
        gradient, expected, rtol=1e-4, atol=max(1e-6, float32_cancellation))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradient_at_identical_logits_is_zero(case):
    _, make, _ = case
    logits = random_logits(5.0, 28)
    gradient = tape_gradient(make(), logits, logits.copy(), 2.0)
    assert np.all(np.isfinite(gradient))
    np.testing.assert_allclose(gradient, 0.0, atol=1e-6)


# ---------------------------------------------------------------------------
# Serialization, names and argument checks.

CONFIGURED = [
    divergences.ReverseKL(
        temperature=2.0, precision="float64", reduction="sum"
    ),
    divergences.GeneralizedJSD(beta=0.3, temperature=4.0, name="gkd"),
    divergences.SkewKL(skew=0.25, reduction="mean"),
    divergences.SkewReverseKL(skew=0.75, temperature=1.5, precision="float64"),
]


@pytest.mark.parametrize(
    "loss", CONFIGURED, ids=[type(loss).__name__ for loss in CONFIGURED]
)
def test_config_round_trip(loss):
    config = loss.get_config()
    for key in ("beta", "skew", "temperature", "precision"):
        if hasattr(loss, key):
            assert config[key] == getattr(loss, key)
    assert config["reduction"] == loss.own_reduction
    teacher = random_logits(3.0, 29)
    student = random_logits(3.0, 30)
    expected = float(loss(teacher, student))

    rebuilt = type(loss).from_config(config)
    assert rebuilt.get_config() == config
    assert float(rebuilt(teacher, student)) == pytest.approx(expected, rel=1e-6)

    serialized = keras.saving.serialize_keras_object(loss)
    assert serialized["registered_name"] == f"keras_kd>{type(loss).__name__}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(loss)
    assert restored.get_config() == config
    assert float(restored(teacher, student)) == pytest.approx(
        expected, rel=1e-6
    )


def test_defaults():
    assert divergences.GeneralizedJSD().beta == 0.5
    assert divergences.SkewKL().skew == 0.1
    assert divergences.SkewReverseKL().skew == 0.1
    for cls in (divergences.ReverseKL, divergences.GeneralizedJSD,
                divergences.SkewKL, divergences.SkewReverseKL):
        loss = cls()
        assert isinstance(loss, losses.DistillationLoss)
        assert loss.temperature is None
        assert loss.precision == "float32"
        assert loss.own_reduction is None


def test_names():
    assert divergences.ForwardKL is losses.KLDivergenceWithTemperature
    assert divergences.DIVERGENCES == {
        "forward_kl": losses.KLDivergenceWithTemperature,
        "reverse_kl": divergences.ReverseKL,
        "generalized_jsd": divergences.GeneralizedJSD,
        "jsd": divergences.GeneralizedJSD,
        "skew_kl": divergences.SkewKL,
        "skew_reverse_kl": divergences.SkewReverseKL,
    }


@pytest.mark.parametrize(
    "cls, argument",
    [
        (divergences.GeneralizedJSD, "beta"),
        (divergences.SkewKL, "skew"),
        (divergences.SkewReverseKL, "skew"),
    ],
)
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.5", True, None])
def test_bad_fractions_are_refused(cls, argument, value):
    with pytest.raises(ValueError, match=f"`{argument}` must be a number in"):
        cls(**{argument: value})


@pytest.mark.parametrize(
    "cls, argument",
    [
        (divergences.GeneralizedJSD, "beta"),
        (divergences.SkewKL, "skew"),
        (divergences.SkewReverseKL, "skew"),
    ],
)
@pytest.mark.parametrize("value", [0, 1, 0.5, np.float32(0.25)])
def test_fractions_at_and_inside_the_ends_are_accepted(cls, argument, value):
    loss = cls(**{argument: value})
    assert getattr(loss, argument) == float(value)
    assert type(getattr(loss, argument)) is float


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_gradient_where_the_distributions_tie(beta):
    # Per element, d/d log p_S of the JSD is (1 - beta) p_S log(p_S / M) and
    # d/d log p_T is beta p_T log(p_T / M): 0 where log p_S == log p_T. The
    # one-pass form splits on the sign of the log-ratio; its gradient must
    # not jump at an exact tie (abs() there gave (1 - beta) p_S instead).
    rng = np.random.default_rng(3)
    teacher_p = softmax64(rng.normal(size=(4, 12)), 1.0)
    # The student ties the teacher on every third class and spreads the
    # rest of the mass at random: both normalised, ties exact.
    ties = np.arange(12) % 3 == 0
    rest = rng.uniform(0.1, 1.0, size=(4, 12)) * ~ties
    rest = rest / rest.sum(-1, keepdims=True) * (1 - (teacher_p * ties).sum(-1, keepdims=True))
    student_p = np.where(ties, teacher_p, rest)
    teacher_log_p = np.log(teacher_p).astype("float32").astype("float64")
    student_log_p = np.where(ties, teacher_log_p, np.log(student_p).astype("float32"))
    mixture = beta * np.exp(teacher_log_p) + (1 - beta) * np.exp(student_log_p)
    expected_teacher = beta * np.exp(teacher_log_p) * (teacher_log_p - np.log(mixture))
    expected_student = (1 - beta) * np.exp(student_log_p) * (student_log_p - np.log(mixture))
    teacher_gradient, student_gradient = gradients(
        lambda t, s: keras.ops.sum(divergences._generalized_jsd(t, s, beta)),
        [teacher_log_p, student_log_p])
    np.testing.assert_allclose(student_gradient, expected_student, atol=1e-7)
    np.testing.assert_allclose(teacher_gradient, expected_teacher, atol=1e-7)
