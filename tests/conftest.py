"""Shared fixtures. Two logical CPU devices are set up before TensorFlow runs
any op, so that MirroredStrategy tests can use two replicas on one CPU.

Op determinism is on for the session, as the CLI turns it on. Tests of the
library's default configuration (no op determinism) use the
`library_defaults` fixture, which turns it off for the test and back on
after it."""

import contextlib
import io
import os
import pickle
import runpy
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# tests/distribution needs 8 devices; on JAX, XLA reads the count when JAX
# first starts its backend, so it is set before anything can start it.
DISTRIBUTION_DEVICES = 8
_DEVICE_FLAG = "--xla_force_host_platform_device_count"
if (os.environ.get("KERAS_BACKEND") == "jax"
        and _DEVICE_FLAG not in os.environ.get("XLA_FLAGS", "")):
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} {_DEVICE_FLAG}={DISTRIBUTION_DEVICES}".strip())

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_kd import compat  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)
tf.config.experimental.enable_op_determinism()
# Under op determinism, random ops need a global seed (e.g. the shuffle of
# `fit(x, y)` on arrays).
keras.utils.set_random_seed(0)


# The files that take longest (`--durations`, 2026-12-06: 40-155 s each of
# the suite's ~900 worker-seconds) start first: `--dist loadfile` hands out
# whole files in collection order, and one of them collected last (as
# tests/test_examples.py is) kept one worker busy a minute after the other
# had finished.
SLOWEST_FILES = (
    "tests/test_examples.py",
    "tests/distillation/test_chunked_distiller.py",
    "tests/cli/test_cli.py",
    "tests/distillation/test_distiller_paths.py",
    "tests/distillation/test_distiller.py",
    "tests/distillation/test_round4_contract.py",
    "tests/distillation/test_chunked_evaluate.py",
    "tests/test_language_model_example.py",
    "tests/distillation/test_distiller_contract.py",
)


def pytest_collection_modifyitems(config, items):
    """Puts the `SLOWEST_FILES` first, each file's tests in their order."""
    root = str(config.rootpath)

    def rank(item):
        path = os.path.relpath(str(item.path), root).replace(os.sep, "/")
        return SLOWEST_FILES.index(path) if path in SLOWEST_FILES else len(SLOWEST_FILES)

    items.sort(key=rank)  # Stable: the rest keep their collection order.


def pytest_runtest_setup(item):
    """keras.distribution tests (tests/distribution) run on JAX with 8
    devices: Keras' TensorFlow distribution module is a prototype. (Here
    rather than in a tests/distribution/conftest.py, which would shadow this
    module for `from conftest import ...`.)"""
    if item.path.parent.name != "distribution":
        return
    backend = keras.backend.backend()
    if backend != "jax":
        pytest.skip(
            f"keras.distribution runs on JAX; Keras runs on {backend!r} (its "
            "TensorFlow distribution module is a prototype). Run with "
            f"KERAS_BACKEND=jax XLA_FLAGS={_DEVICE_FLAG}={DISTRIBUTION_DEVICES}."
        )
    count = len(keras.distribution.list_devices())
    if count < DISTRIBUTION_DEVICES:
        pytest.skip(
            f"{DISTRIBUTION_DEVICES} devices needed, JAX has {count}: it started "
            f"before XLA_FLAGS={_DEVICE_FLAG}={DISTRIBUTION_DEVICES} was set. Set "
            "it on the command line."
        )


def value_and_gradients(fn, arguments, dtype="float32", compiled=True):
    """`fn(*arguments) = (value, aux)`'s value, the gradients of the value
    with respect to each argument (NumPy) and aux, with the backend's
    autodiff: a tape on TensorFlow (eager), `torch.autograd.grad` on
    PyTorch, and on JAX `jax.value_and_grad` under `jax.jit`, as Keras' JAX
    trainer compiles a step (one compilation: op by op, JAX compiled each
    op on its own, and test_hints.py's one-sample RKD test took 17-22 s
    against 4.5-6.5 s, 2026-12-07); `compiled=False` runs it op by op. The
    arguments are cast to `dtype` (float64 on JAX needs JAX_ENABLE_X64=1)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        arguments = [tf.constant(a, dtype) for a in arguments]
        with tf.GradientTape() as tape:
            tape.watch(arguments)
            value, aux = fn(*arguments)
        return value, [g.numpy() for g in tape.gradient(value, arguments)], aux
    if backend == "jax":
        import jax

        arguments = [np.asarray(a, dtype) for a in arguments]
        differentiated = jax.value_and_grad(
            fn, argnums=tuple(range(len(arguments))), has_aux=True)
        if compiled:
            differentiated = jax.jit(differentiated)
        (value, aux), grads = differentiated(*arguments)
        return value, [np.asarray(g) for g in grads], aux
    if backend == "torch":
        import torch

        arguments = [torch.tensor(np.asarray(a, dtype), requires_grad=True)
                     for a in arguments]
        value, aux = fn(*arguments)
        grads = torch.autograd.grad(value, arguments, allow_unused=True)
        return value, [None if g is None else g.numpy() for g in grads], aux
    pytest.skip(f"no gradient helper for the {backend} backend")


def gradients(fn, arguments, dtype="float32"):
    """The gradients (NumPy) of the scalar `fn(*arguments)` with respect to
    each argument, with the backend's autodiff."""
    _, grads, _ = value_and_gradients(lambda *a: (fn(*a), None), arguments, dtype)
    return grads


def compiled(fn):
    """`fn` compiled as the backend compiles a step: a `tf.function` on
    TensorFlow, `jax.jit` on JAX."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return tf.function(fn)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    pytest.skip(f"no compiled-function helper for the {backend} backend")


def numpy(x):
    """`x` (a tensor of any backend, or nested in lists/dicts) as NumPy."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, x)


def outputs(model, x):
    """A model's outputs on `x` as NumPy, from one direct inference call: a
    reference that traces no `predict` function (each fresh model's costs a
    trace, ~0.3 s)."""
    return numpy(model(x, training=False))


def runtime_check_error():
    """The exception a failed in-graph check raises when a compiled step
    runs: TensorFlow's assert op, or JAX's `jax.debug.callback` (whose
    message carries the check's)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.errors.JaxRuntimeError
    return tf.errors.InvalidArgumentError


def tensorflow_only(reason):
    """A mark that skips a test on every backend but TensorFlow."""
    backend = keras.backend.backend()
    return pytest.mark.skipif(
        backend != "tensorflow", reason=f"TensorFlow only ({backend}): {reason}")


def jax_xfail(reason):
    """A strict xfail on JAX only, for a JAX bug named in `reason`."""
    return pytest.mark.xfail(
        keras.backend.backend() == "jax", strict=True, reason=f"JAX: {reason}")


def make_mlp(hidden_units, num_inputs=6, num_classes=4, name=None, **dense):
    """A tiny MLP that outputs logits."""
    model = keras.Sequential([keras.Input((num_inputs,))], name=name)
    for units in hidden_units:
        model.add(keras.layers.Dense(units, activation="relu", **dense))
    model.add(keras.layers.Dense(num_classes, **dense))
    return model


@pytest.fixture
def library_defaults():
    """Runs a test as a user's process runs: without op determinism."""
    compat.disable_op_determinism()
    assert not compat.is_op_determinism_enabled()
    try:
        yield
    finally:
        tf.config.experimental.enable_op_determinism()


@pytest.fixture
def seeded():
    keras.utils.set_random_seed(1234)
    yield


@pytest.fixture
def tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.integers(0, 4, size=(64,))
    return x, y


def fake_images(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


_CIFAR_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]


def write_cifar_python(directory, n_per_batch=4):
    """CIFAR-10 files in the real `cifar-10-batches-py` format (random pixels)."""
    directory = os.path.join(directory, "cifar-10-batches-py")
    os.makedirs(directory)
    expected = {}
    for index, name in enumerate(_CIFAR_TRAIN_BATCHES + ["test_batch"]):
        data = fake_images(n_per_batch, (3072,), index)
        labels = [int(v) for v in np.arange(n_per_batch) % 10]
        batch = {
            b"batch_label": f"batch {index}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
        expected[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels)
    return directory, expected


EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def run_example(name, *arguments, cwd=None, eager=False):
    """`python examples/NAME ARGUMENTS` in this process; returns its printout.

    As `__main__`, with its own argv, so the script runs as from the shell,
    without a second TensorFlow import (5-10 s a process). What it changes
    of the process is put back: argv, the working directory, TensorFlow's
    logger level, op determinism (off while the example runs, as in a
    user's process, unless the example turns it on), eager tf.functions,
    Keras' session and the global seed set above.

    `eager=True` (TensorFlow) runs the example's tf.functions, Keras' train,
    test and predict steps among them, eagerly
    (`tf.config.run_functions_eagerly`): for runs of a few steps per model,
    tracing a step costs more than running it (E4's test: 28.4 s traced,
    9.5 s eager; E2's 17.8 s and 6.0 s, 2026-12-07). Their traced steps are
    the library tests' to check; an example whose path has no traced test
    elsewhere (FitNets' connector) stays traced, as do runs of many steps
    (the 30-epoch your_own_models.py: 10.0 s traced, 44.6 s eager).

    An exception of the example propagates (its traceback is the failure);
    `SystemExit` with a non-zero code fails the test."""
    path = os.path.join(EXAMPLES, name)
    argv, directory, log_level = sys.argv, os.getcwd(), tf.get_logger().level
    printed = io.StringIO()
    keras.backend.clear_session()  # Fresh layer names, as in a new process.
    sys.argv = [path, *map(str, arguments)]
    # A user's process has no op determinism unless the example turns it on
    # (E4 does); its deterministic kernels are slower.
    compat.disable_op_determinism()
    functions_eagerly = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(eager)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            if eager:  # tf.data's functions stay traced; it warns that they do.
                warnings.filterwarnings("ignore", "Even though the `tf.config.experimental_run_"
                                        "functions_eagerly` option is set")
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as stop:
                assert stop.code in (None, 0), (stop.code, printed.getvalue()[-3000:])
    finally:
        sys.argv = argv
        os.chdir(directory)
        tf.get_logger().setLevel(log_level)
        tf.config.experimental.enable_op_determinism()
        tf.config.run_functions_eagerly(functions_eagerly)
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)  # As conftest.py leaves it.
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
    return printed.getvalue()
