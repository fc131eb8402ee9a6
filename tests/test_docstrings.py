"""The `>>>` examples in every keras_kd docstring run and print what they
say (the API reference shows them)."""

import doctest
import importlib
import pkgutil

import pytest

import keras

import keras_kd

_STEPS = "keras_kd.distillation.backend."
MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(keras_kd.__path__, "keras_kd.")
    if name != "keras_kd.__main__"  # Runs the command line when imported.
    # Another backend's steps import that backend (not installed here).
    and not (name.startswith(_STEPS) and name != _STEPS + keras.backend.backend())
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {name} failed"


def test_the_examples_are_found():
    examples = sum(
        len(test.examples)
        for name in MODULES
        for test in doctest.DocTestFinder().find(importlib.import_module(name))
    )
    assert examples >= 15
