"""keras.distribution tests: 8 simulated CPU devices, JAX only.

Keras' distribution API (`DataParallel`, `ModelParallel`) runs on JAX; its
TensorFlow module is a prototype, so these tests skip on TensorFlow. Run:

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python -m pytest tests/distribution

XLA reads the device count when JAX first initialises its backend, so the
flag is added here too (before any test runs), in case the command line
did not set it; if JAX started earlier with fewer devices, the tests skip.
"""

import os

import keras
import pytest

DEVICES = 8
_FLAG = "--xla_force_host_platform_device_count"

if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}={DEVICES}".strip()


def pytest_runtest_setup(item):
    backend = keras.backend.backend()
    if backend != "jax":
        pytest.skip(
            f"keras.distribution runs on JAX; Keras runs on {backend!r} (its "
            "TensorFlow distribution module is a prototype). Run with "
            f"KERAS_BACKEND=jax XLA_FLAGS={_FLAG}={DEVICES}."
        )
    count = len(keras.distribution.list_devices())
    if count < DEVICES:
        pytest.skip(
            f"{DEVICES} devices needed, JAX has {count}: it started before "
            f"XLA_FLAGS={_FLAG}={DEVICES} was set. Set it on the command line."
        )
