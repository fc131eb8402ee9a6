"""Module paths of keras-kd 0.1 that moved in the layered layout.

`import keras_kd.cache` (or `from keras_kd import datasets`) keeps working
for one release: it gives the module at its new path and warns with a
`DeprecationWarning` that names it. Classes saved in `.keras` files are
registered by name (`keras_kd>Distiller`), so files saved before the move
load unchanged.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# Old module -> new module.
MOVED = {
    **{f"keras_kd.{name}": f"keras_kd.distillation.{name}" for name in (
        "batch", "cache", "callbacks", "class_weights", "compat", "distiller",
        "divergences", "ensembles", "hints", "labels", "logit_methods", "losses",
        "metrics", "outputs", "reduction", "teacher", "terms", "top_k",
        "validation", "xla",
    )},
    **{f"keras_kd.{name}": f"keras_kd.data.{name}" for name in (
        "datasets", "loaders", "file_formats", "text",
    )},
    **{f"keras_kd.{name}": f"keras_kd.studies.{name}" for name in (
        "calibration", "export", "few_labels", "reporting", "runs", "sweeps",
    )},
    "keras_kd.backbones": "keras_kd.models.backbones",
}


def warn_moved(old, new, stacklevel=3):
    warnings.warn(
        f"`{old}` moved to `{new}` in keras-kd 0.2; import it from there "
        "(public names also import from `keras_kd`). The old path goes away "
        "in 0.3.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path and loads the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        warn_moved(spec.name, MOVED[spec.name], stacklevel=8)
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # Already executed at its new path.


def install():
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())


def moved_attribute(name):
    """`keras_kd.<name>` for an old module name, or `None`."""
    old = f"keras_kd.{name}"
    if old not in MOVED:
        return None
    warn_moved(old, MOVED[old], stacklevel=4)
    return importlib.import_module(MOVED[old])
