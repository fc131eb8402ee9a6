"""Every Keras and TensorFlow internal keras_kd relies on, in one place.

Public APIs do not offer these. Each one is used through a function here and
checked by `tests/test_compat.py`, which fails loudly when a Keras or
TensorFlow upgrade renames or changes it.
"""

import keras
import tensorflow as tf
from keras.src import backend as _keras_backend
from keras.src.trainers.trainer import model_supports_jit as _supports_jit
from keras.src.utils.python_utils import pythonify_logs as _pythonify_logs
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
    if keras.backend.backend() != "tensorflow":
        return logs  # Keras' JAX trainer reduces no logs across workers.
    if not in_multi_worker_mode(tf.distribute.get_strategy()):
        return logs
    return {
        name: tf.reshape(value, (1,)) if len(value.shape) == 0 else value
        for name, value in logs.items()
    }


def python_logs(logs):
    """Logs with Python floats for scalars, as `Model.get_metrics_result`
    returns them on Keras 3.12 (whose `evaluate` returns that dict as it
    is; later versions convert in `evaluate` instead, so converting here
    changes nothing there). Call outside traced steps only."""
    return _pythonify_logs(logs)


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


# Keras' TF-trainer hook that builds a model from a first batch at the start
# of `fit`/`evaluate`; the Distiller overrides it under the same name (see
# `symbolic_build_arguments`), so a rename in Keras must fail the compat test.
SYMBOLIC_BUILD = "_maybe_symbolic_build"


def symbolic_build_arguments(model, iterator=None, data_batch=None):
    """`(iterator, data_batch)` for Keras' `_maybe_symbolic_build`.

    Under a strategy, the first local batch replaces the iterator, whose
    first batch Keras would average across replicas with a collective that
    fails under MultiWorkerMirroredStrategy (`first_local_batch`).
    """
    if iterator is not None and model_strategy(model) is not None:
        return None, first_local_batch(model.distribute_strategy, iterator)
    return iterator, data_batch


def keras_mask(tensor):
    """The Keras mask a layer attached to a tensor (e.g. `Embedding(
    mask_zero=True)`'s, carried to the logits), or `None`."""
    return _keras_backend.get_keras_mask(tensor)


def producing_layer(symbolic_tensor):
    """The layer that produced a Functional model's symbolic output."""
    history = getattr(symbolic_tensor, "_keras_history", None)
    return history[0] if history else None


def model_strategy(model):
    """The `tf.distribute` strategy a model was built under, or `None`."""
    return model._distribute_strategy


def update_compiled_metrics(model, y_true, y_pred, mask, sample_weight):
    """Updates `compile(metrics=..., weighted_metrics=...)` on labelled
    positions only.

    Keras hands `sample_weight` to `weighted_metrics` alone, so a mask passed
    as a weight would not reach `metrics`. Here `metrics` get the mask as
    their weights and `weighted_metrics` the mask times the sample weights:
    both see exactly the labelled positions, and `metrics` stay unweighted.
    """
    compiled = model._compile_metrics
    if compiled is None:
        return
    if not compiled.built:
        compiled.build(y_true, y_pred)
    weights = mask if sample_weight is None else mask * sample_weight
    for metric in compiled._flat_metrics:
        if metric:
            metric.update_state(y_true, y_pred, sample_weight=mask)
    for metric in compiled._flat_weighted_metrics:
        if metric:
            metric.update_state(y_true, y_pred, sample_weight=weights)


def seed_generator_states(model):
    """The state variables of a model's `SeedGenerator`s (random layers)."""
    return [v for v in model.variables if "seed_generator_state" in v.path]


def compiled_metrics(model):
    """The `CompileMetrics` container of `compile(metrics=...)`, or `None`."""
    return model._compile_metrics


# Keras' JAX trainer empties the model's variables (`variable._value =
# None`) while `fit` / `evaluate` / `predict` hold their values in their own
# state (`_get_jax_state(..., purge_model_variables=True)`), and writes them
# back only after a step succeeded: an error before (a refused first batch)
# left every variable empty. The JAX steps keep the values `_get_jax_state`
# read and give them back to the variables still empty.
JAX_GET_STATE = "_get_jax_state"


def stored_value(variable):
    """A variable's stored value (`None` while Keras' JAX trainer holds it)."""
    return variable._value


def restore_value(variable, value):
    """Gives an emptied variable its value back, as Keras' JAX trainer's
    state sync would."""
    variable._value = value


def value_lost(variable):
    """True when a variable has neither a value nor an initializer to make
    one: Keras' JAX trainer emptied it and the step that held its value
    failed (the donated value is deleted)."""
    value = variable._value
    if value is None:
        return getattr(variable, "_initializer", None) is None
    is_deleted = getattr(value, "is_deleted", None)
    return bool(is_deleted is not None and is_deleted())


def shards_per_process(distribution):
    """Whether `distribution` (a `keras.distribution.Distribution`, or
    None) shards a `tf.data.Dataset` per process: Keras' multi-process
    setting (`keras.distribution.initialize`) with `auto_shard_dataset`.
    Keras finds the batch size to shard by in the dataset's graph, which a
    `map` after the `batch` hides."""
    return (distribution is not None and bool(getattr(distribution, "_is_multi_process", False))
            and bool(getattr(distribution, "auto_shard_dataset", False)))
