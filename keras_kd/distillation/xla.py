"""When keras_kd compiles with XLA by default: Keras' own rule.

`jit_compile="auto"` means XLA only on machines with a GPU or TPU, outside
`tf.distribute` strategies, when every layer supports it and op determinism
is off, exactly as `keras.Model.compile` decides. On CPU-only machines XLA
is a measured opt-in (`jit_compile=True`; `benchmarks/fast_paths.py`).
On JAX, Keras compiles with XLA whenever every layer supports it; on
PyTorch "auto" is eager, as Keras' torch trainer runs it.
"""

import keras
import tensorflow as tf

from keras_kd.distillation import compat


def auto_jit_compile(model):
    """Returns whether `jit_compile="auto"` means XLA for `model`.

    Args:
        model: A Keras model.

    Returns:
        `True` on a machine with an accelerator, outside a `tf.distribute`
        strategy, when every layer supports XLA and op determinism is off;
        on JAX whenever every layer supports XLA; on PyTorch never.
    """
    if keras.backend.backend() == "torch":
        return False  # Keras' rule: "auto" is eager on torch.
    if keras.backend.backend() != "tensorflow":
        return compat.model_supports_jit(model)
    devices = tf.config.list_physical_devices()
    if all(device.device_type == "CPU" for device in devices):
        return False
    if tf.distribute.has_strategy():
        return False
    return compat.model_supports_jit(model)
