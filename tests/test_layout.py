"""The package's layers: the distillation core stands on its own.

`keras_kd.distillation` imports Keras, TensorFlow, NumPy and the standard
library, never the data loaders, reference models, studies or command line,
nor matplotlib, tensorflow-datasets or argparse. The check reads every
module's imports (AST), so it fails as soon as someone adds such an import,
also one inside a function.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_kd

PACKAGE = pathlib.Path(keras_kd.__file__).parent
CORE = PACKAGE / "distillation"
FORBIDDEN_IN_CORE = (
    "keras_kd.data", "keras_kd.models", "keras_kd.studies", "keras_kd.cli", "keras_kd_cli",
    "matplotlib", "tensorflow_datasets", "argparse",
)


def imported_modules(path):
    """Every module a file imports, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            names.append(module)
            # `from keras_kd import data` imports the subpackage itself.
            names += [f"{module}.{alias.name}" for alias in node.names]
    return names


def forbidden_imports(directory):
    found = []
    for path in sorted(directory.rglob("*.py")):
        for module in imported_modules(path):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN_IN_CORE):
                found.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    return found


def test_the_core_imports_no_other_layer():
    assert forbidden_imports(CORE) == []


def test_the_check_catches_a_bad_import(tmp_path):
    core = tmp_path / "keras_kd" / "distillation"
    core.mkdir(parents=True)
    (core / "fine.py").write_text("import keras\nfrom keras_kd.distillation import losses\n")
    (core / "bad.py").write_text("def f():\n    from keras_kd.data import loaders\n")
    (core / "plots.py").write_text("import matplotlib.pyplot as plt\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "keras_kd"
    try:
        found = forbidden_imports(core)
    finally:
        PACKAGE = saved
    assert found == [
        "keras_kd/distillation/bad.py imports keras_kd.data",
        "keras_kd/distillation/bad.py imports keras_kd.data.loaders",
        "keras_kd/distillation/plots.py imports matplotlib.pyplot",
    ]


def test_the_top_level_shows_the_layers():
    entries = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith("__pycache__"))
    assert entries == ["__init__.py", "__main__.py", "_deprecated.py", "cli", "data",
                       "distillation", "models", "studies", "version.py"]


OLD_MODULE_PATHS = [
    ("keras_kd.cache", "keras_kd.distillation.cache"),
    ("keras_kd.losses", "keras_kd.distillation.losses"),
    ("keras_kd.datasets", "keras_kd.data.datasets"),
    ("keras_kd.runs", "keras_kd.studies.runs"),
    ("keras_kd.backbones", "keras_kd.models.backbones"),
]


@pytest.fixture(scope="module")
def fresh_process():
    """What a fresh Python process sees on `import keras_kd` and on the old
    module paths: one subprocess (one TensorFlow import) for all the checks.

    Keras itself imports matplotlib when it is installed; blocking both
    shows keras_kd imports neither (the import would fail). Each old path is
    imported for the first time in this process, so each must warn.
    """
    code = (
        "import json, sys, warnings\n"
        "sys.modules['matplotlib'] = None\n"
        "sys.modules['tensorflow_datasets'] = None\n"
        "import keras_kd\n"
        "keras_kd.Distiller, keras_kd.sweep, keras_kd.few_label_study\n"
        "found = {}\n"
        f"for old, _ in {OLD_MODULE_PATHS!r}:\n"
        "    with warnings.catch_warnings(record=True) as caught:\n"
        "        warnings.simplefilter('always', DeprecationWarning)\n"
        "        module = __import__(old, fromlist=['_'])\n"
        "    found[old] = {'name': module.__name__,\n"
        "                  'warnings': [str(w.message) for w in caught\n"
        "                               if w.category is DeprecationWarning]}\n"
        "print(json.dumps(found))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, timeout=300)
    return result


def test_import_keras_kd_needs_neither_matplotlib_nor_tensorflow_datasets(fresh_process):
    assert fresh_process.returncode == 0, fresh_process.stderr[-2000:]
    assert set(json.loads(fresh_process.stdout)) == {old for old, _ in OLD_MODULE_PATHS}


@pytest.mark.parametrize("old, new", OLD_MODULE_PATHS)
def test_old_module_paths_work_with_a_deprecation_warning(old, new, fresh_process):
    assert fresh_process.returncode == 0, fresh_process.stderr[-2000:]
    found = json.loads(fresh_process.stdout)[old]
    assert found["name"] == new
    assert len(found["warnings"]) == 1 and f"`{old}` moved to `{new}`" in found["warnings"][0]


def test_old_attribute_paths_warn():
    with pytest.warns(DeprecationWarning, match="keras_kd.data.datasets"):
        module = keras_kd.__getattr__("datasets")
    assert module.make_dataset is not None
    with pytest.raises(AttributeError):
        keras_kd.__getattr__("nonexistent")


FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.mark.skipif(
    tuple(int(v) for v in keras.__version__.split(".")[:2]) < (3, 15),
    reason="the fixtures were saved with Keras 3.15.1, whose layer configs older Keras cannot read",
)
@pytest.mark.parametrize("kind", ["single", "ensemble", "hints"])
def test_distillers_saved_by_round_2_load_and_predict_the_same(kind):
    """Files saved by keras-kd 0.1 (before the core was rebuilt and moved);
    tests/fixtures/README.md says how they were made."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # No skipped variables.
        distiller = keras.models.load_model(FIXTURES / f"round2_{kind}.keras")
    x = np.load(FIXTURES / "round2_inputs.npy")
    expected = np.load(FIXTURES / f"round2_{kind}_predictions.npy")
    predictions = distiller.predict(x, verbose=0)
    # float32 kernels differ between CPUs (oneDNN picks them by instruction
    # set): ~1e-7 apart on logits of magnitude ~1, so the float32 golden
    # gets float32's cross-machine tolerance, not rtol=1e-6 alone.
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)
    # The loaded weights are the student's own: a float64 NumPy forward pass
    # of its dense layers gives the same logits.
    reference = x.astype("float64")
    for layer in distiller.student.layers:
        kernel, bias = (w.astype("float64") for w in layer.get_weights())
        reference = reference @ kernel + bias
        if layer.get_config()["activation"] == "relu":
            reference = np.maximum(reference, 0.0)
    np.testing.assert_allclose(predictions, reference, rtol=1e-5, atol=1e-6)
    assert distiller.alpha == pytest.approx(0.3) and distiller.temperature == 4.0  # Saved settings.
    y = np.arange(len(x)) % 4
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "sparse_categorical_accuracy", "teacher_agreement"} <= set(logs)
    distiller.fit(x, y, epochs=1, verbose=0)


def test_every_package_is_in_the_wheel():
    """pyproject.toml lists packages by name: a new subpackage left out
    installs without its modules (as keras_kd.distillation.backend once did)."""
    import pathlib
    import tomllib

    root = pathlib.Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "keras_kd").rglob("__init__.py")
    }
    assert found == listed, f"add to pyproject.toml: {sorted(found - listed)}"
