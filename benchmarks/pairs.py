"""The teacher/student pairs the speed benchmarks compare, on the MNIST sample.

Shared by `speed.py`, `fast_paths.py` and `cache_pass.py`, so that they time
the same models on the same data.
"""

from keras_kd.data import datasets
from keras_kd import models

# Pair -> (teacher, student), as named in `keras_kd.models.MODEL_BUILDERS`.
PAIRS = {
    "e1": ("keras-io-teacher", "keras-io-student"),
    "e3": ("hinton-teacher", "hinton-student"),
}


def load_sample(pair):
    """The sample's 8,000 training digits and labels, preprocessed for `pair`."""
    (x, y), _ = datasets.load_arrays("mnist", source="sample")
    layout = models.model_layout(PAIRS[pair][0])
    return datasets.preprocess(x, "mnist", layout=layout).numpy(), y


def build_pair(pair):
    """A fresh `(teacher, student)` of `pair`, teacher built first."""
    return tuple(models.build_model(name, (28, 28, 1))[0] for name in PAIRS[pair])
