"""Every Keras and TensorFlow internal keras_kd relies on, in one place.

Public APIs do not offer these. Each one is used through a function here and
checked by `tests/test_compat.py`, which fails loudly when a Keras or
TensorFlow upgrade renames or changes it.
"""

import tensorflow as tf
from keras.src.trainers.trainer import model_supports_jit as _supports_jit
from tensorflow.python.framework import config as _tf_config


def model_supports_jit(model):
    """Keras' own test: every layer supports XLA and op determinism is off."""
    return _supports_jit(model)


def is_op_determinism_enabled():
    """Whether `tf.config.experimental.enable_op_determinism` is in force."""
    return _tf_config.is_op_determinism_enabled()


def disable_op_determinism():
    """Turns op determinism off again (TF has no public call for it)."""
    _tf_config.disable_op_determinism()


def loss_tracker(model):
    """The `Mean` metric behind the `loss` entry of `fit`'s logs."""
    return model._loss_tracker


def in_multi_worker_mode(strategy):
    """True under a strategy that spans several workers."""
    check = getattr(strategy.extended, "_in_multi_worker_mode", None)
    return bool(check and check())


def built_input_shape(model):
    """The input shape a built model was first called with, or `None`.

    Functional and Sequential models have `model.inputs`; a subclassed model
    has no symbolic inputs, only the shapes Keras recorded when it built it.
    """
    inputs = getattr(model, "inputs", None)
    if inputs:
        return tuple(inputs[0].shape)
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        (shape,) = shapes.values()
        if isinstance(shape, (tuple, list)) and all(
            d is None or isinstance(d, int) for d in shape
        ):
            return (None,) + tuple(shape[1:])
    return None


def reducible_logs(logs):
    """A step's logs in a form Keras can average across workers.

    Across workers Keras averages each log with `strategy.reduce("MEAN",
    value, axis=0)`, which fails on scalars (keras-team/keras#20585);
    one-element vectors average to the same scalar. Unchanged elsewhere.
    """
    if not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return {
        name: tf.reshape(value, (1,)) if len(value.shape) == 0 else value
        for name, value in logs.items()
    }


def first_local_batch(strategy, iterator):
    """The first batch of a Keras epoch iterator, from the first local replica.

    Keras' TF trainer averages a first batch across replicas with
    `strategy.reduce` only to learn its structure; under
    MultiWorkerMirroredStrategy that collective fails on PerReplica inputs
    (keras-team/keras#20585). The first local replica's batch has the same
    structure and needs no communication.
    """
    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    for _, _, batches in iterator:
        return tf.nest.map_structure(local, next(batches))
    return None
