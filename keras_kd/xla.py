"""When keras_kd compiles with XLA by default.

Keras' `jit_compile="auto"` keeps XLA off on CPU-only machines. For
distillation it pays on CPU too (`benchmarks/fast_paths.py`,
`benchmarks/cache_pass.py`), so keras_kd's "auto" only keeps Keras' other
exclusions: layers without XLA support, op determinism (Keras refuses XLA
under it) and `tf.distribute` strategies.
"""

import tensorflow as tf
from keras.src.trainers.trainer import model_supports_jit


def auto_jit_compile(model, distribute_strategy=None):
    """Returns whether `jit_compile="auto"` means XLA for `model`.

    Args:
        model: A Keras model (or a distiller holding its student and teacher).
        distribute_strategy: The strategy the model was built under, if any.

    Returns:
        `True` when every layer supports XLA, op determinism is off and no
        `tf.distribute` strategy is in use.
    """
    if distribute_strategy is not None or tf.distribute.has_strategy():
        return False
    # Also checks every layer's `supports_jit` and op determinism.
    return model_supports_jit(model)
