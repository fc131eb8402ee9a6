"""Each Keras/TensorFlow internal in keras_kd/compat.py, checked against the
installed versions: an upgrade that renames or changes one fails here, by
name, instead of deep inside a training run."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_mlp
from conftest import tensorflow_only

from keras_kd.distillation import compat


@tensorflow_only("TF op determinism is a TensorFlow setting")
def test_model_supports_jit_follows_layers_and_determinism(library_defaults):
    model = make_mlp([4])
    assert compat.model_supports_jit(model) is True
    tf.config.experimental.enable_op_determinism()
    assert compat.model_supports_jit(model) is False


def test_op_determinism_can_be_turned_off_and_on():
    assert compat.is_op_determinism_enabled()  # conftest turns it on.
    compat.disable_op_determinism()
    try:
        assert not compat.is_op_determinism_enabled()
    finally:
        tf.config.experimental.enable_op_determinism()
    assert compat.is_op_determinism_enabled()


def test_python_logs_gives_floats_for_scalar_logs():
    """Keras 3.12's `evaluate(return_dict=True)` returns what
    `get_metrics_result` returns: tensors unless converted here."""
    logs = compat.python_logs({"loss": keras.ops.convert_to_tensor(1.5), "accuracy": 0.25})
    assert logs == {"loss": 1.5, "accuracy": 0.25}
    assert all(type(value) is float for value in logs.values())


def test_loss_tracker_is_the_mean_behind_logged_loss():
    model = make_mlp([4])
    model.compile("sgd", "mse")
    tracker = compat.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean)
    logs = model.train_on_batch(np.ones((2, 6)), np.ones((2, 4)), return_dict=True)
    np.testing.assert_allclose(float(tracker.result()), logs["loss"], rtol=1e-6)


def test_multi_worker_mode_is_false_for_local_strategies():
    assert compat.in_multi_worker_mode(tf.distribute.get_strategy()) is False
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert compat.in_multi_worker_mode(mirrored) is False


def test_built_input_shape_of_every_model_kind():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    subclassed = Subclassed()
    assert compat.built_input_shape(subclassed) is None  # Not built yet.
    subclassed(np.zeros((3, 5), "float32"))
    assert compat.built_input_shape(subclassed) == (None, 5)
    assert compat.built_input_shape(make_mlp([4])) == (None, 6)


def test_keras_mask_is_read_from_masked_outputs():
    inputs = keras.Input((3,), dtype="int32")
    outputs = keras.layers.Dense(2)(keras.layers.Embedding(5, 4, mask_zero=True)(inputs))
    model = keras.Model(inputs, outputs)
    mask = compat.keras_mask(model(np.array([[1, 2, 0]])))
    np.testing.assert_array_equal(mask, [[True, True, False]])
    assert compat.keras_mask(make_mlp([4])(np.ones((1, 6), "float32"))) is None


def test_producing_layer_of_a_functional_output():
    inputs = keras.Input((3,))
    layer = keras.layers.Dense(2, name="logits")
    model = keras.Model(inputs, layer(inputs))
    assert compat.producing_layer(model.outputs[0]) is layer


@tensorflow_only("tf.distribute strategies")
def test_model_strategy_is_none_outside_a_strategy_and_set_inside():
    assert compat.model_strategy(make_mlp([4])) is None
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        assert compat.model_strategy(make_mlp([4])) is not None


def test_compiled_metrics_get_the_mask_and_the_weights():
    model = make_mlp([4])
    model.compile("sgd", "mse", metrics=["mae"], weighted_metrics=["mse"])
    assert compat.compiled_metrics(model) is not None
    y_true, y_pred = np.zeros((2, 4), "float32"), np.ones((2, 4), "float32")
    y_pred[1] = 3.0
    mask, weights = np.array([1.0, 0.0], "float32"), np.array([2.0, 5.0], "float32")
    compat.update_compiled_metrics(model, y_true, y_pred, mask, weights)
    results = compat.compiled_metrics(model).result()
    assert results["mae"] == 1.0  # Only the first (masked-in) sample.
    assert results["mse"] == 1.0


def test_seed_generator_states_of_random_layers():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dropout(0.5, seed=1)])
    states = compat.seed_generator_states(model)
    assert len(states) == 1 and "seed_generator_state" in states[0].path


@tensorflow_only("the TF trainer's hook; JAX's are pinned below")
def test_maybe_symbolic_build_is_the_keras_hook_the_distiller_overrides(tiny_data, monkeypatch):
    """The Distiller overrides Keras' private `_maybe_symbolic_build` (the
    multi-worker fix): a rename or new signature in Keras fails here."""
    import inspect

    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from keras_kd import Distiller
    from keras_kd.distillation.backend.tensorflow import TensorFlowSteps

    hook = getattr(TensorFlowTrainer, compat.SYMBOLIC_BUILD)
    assert {"iterator", "data_batch"} <= set(inspect.signature(hook).parameters)
    assert compat.SYMBOLIC_BUILD in vars(TensorFlowSteps)  # The Distiller's TF steps.
    assert issubclass(Distiller, TensorFlowSteps)
    calls = []
    original = getattr(Distiller, compat.SYMBOLIC_BUILD)

    def spy(self, iterator=None, data_batch=None):
        calls.append((iterator is not None, data_batch is not None))
        return original(self, iterator=iterator, data_batch=data_batch)

    monkeypatch.setattr(Distiller, compat.SYMBOLIC_BUILD, spy)
    x, y = tiny_data
    distiller = Distiller(student=make_mlp([4]), teacher=make_mlp([8]))
    distiller.compile(run_eagerly=True)
    distiller.fit(x[:8], y[:8], batch_size=8, verbose=0)
    assert calls  # Keras' fit still calls the hook.
    assert compat.symbolic_build_arguments(distiller, None, "batch") == (None, "batch")


jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason=f"Keras' JAX trainer internals ({keras.backend.backend()} backend)")


@jax_only
def test_jax_get_state_is_the_keras_hook_the_jax_steps_override(tiny_data, monkeypatch):
    """`JAXSteps` overrides Keras' private `_get_jax_state` and reads its
    `purge_model_variables` keyword (`compat.JAX_GET_STATE`): a rename, a new
    keyword or `fit` no longer purging through it fails here, by name."""
    import inspect

    from keras.src.backend.jax.trainer import JAXTrainer

    from keras_kd import Distiller
    from keras_kd.distillation.backend.jax import JAXSteps

    hook = getattr(JAXTrainer, compat.JAX_GET_STATE, None)
    assert hook is not None, f"keras JAXTrainer has no {compat.JAX_GET_STATE}"
    parameters = set(inspect.signature(hook).parameters)
    assert {"trainable_variables", "non_trainable_variables", "optimizer_variables",
            "metrics_variables", "purge_model_variables"} <= parameters, parameters
    assert compat.JAX_GET_STATE in vars(JAXSteps)  # The Distiller's JAX steps.
    assert issubclass(Distiller, JAXSteps)
    assert callable(getattr(JAXSteps, "_variables_restored"))

    calls = []
    original = getattr(JAXTrainer, compat.JAX_GET_STATE)

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("purge_model_variables"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JAXTrainer, compat.JAX_GET_STATE, spy)
    x, y = tiny_data
    distiller = Distiller(student=make_mlp([4]), teacher=make_mlp([8]))
    distiller.compile()
    distiller.fit(x[:8], y[:8], batch_size=8, verbose=0)
    # Keras' fit empties the variables through the hook the steps override.
    assert True in calls, calls


@jax_only
def test_stored_value_is_none_while_keras_jax_trainer_holds_the_state():
    """`compat.stored_value` / `restore_value` read and write
    `variable._value`, which Keras' JAX trainer empties (`None`) while its
    state holds the values; the Distiller's `_variables_restored` gives them
    back after a loop that failed before its first write-back."""
    model = make_mlp([4])
    model.compile("sgd", "mse")
    before = [v.numpy() for v in model.trainable_variables]
    values = [compat.stored_value(v) for v in model.trainable_variables]
    assert all(value is not None for value in values)
    (state,) = getattr(model, compat.JAX_GET_STATE)(
        trainable_variables=True, purge_model_variables=True)
    assert len(state) == len(before)
    assert all(compat.stored_value(v) is None for v in model.trainable_variables)
    for variable, value in zip(model.trainable_variables, values):
        compat.restore_value(variable, value)
    for variable, expected in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(variable.numpy(), expected)


@jax_only
def test_a_step_refused_while_tracing_leaves_the_distillers_variables_usable(tiny_data):
    """Keras' JAX `fit` purges the variables and writes them back only after
    a step: a step refused while it is traced (here a subclass hook's
    error) would leave them `None` without `_variables_restored` (the reason
    for the three internals)."""
    from keras_kd import Distiller

    class Refusing(Distiller):
        refuse = True

        def compute_distillation_loss(self, *args, **kwargs):
            if self.refuse:
                raise ValueError("refused")
            return super().compute_distillation_loss(*args, **kwargs)

    x, y = tiny_data
    distiller = Refusing(student=make_mlp([4]), teacher=make_mlp([8]))
    distiller.compile()
    weights = [v.numpy() for v in distiller.student.trainable_variables]
    with pytest.raises(ValueError, match="refused"):
        distiller.fit(x[:8], y[:8], batch_size=8, verbose=0)
    assert [v.path for v in distiller.variables if compat.stored_value(v) is None] == []
    for variable, expected in zip(distiller.student.trainable_variables, weights):
        np.testing.assert_array_equal(variable.numpy(), expected)
    distiller.refuse = False
    distiller.fit(x[:8], y[:8], batch_size=8, verbose=0)  # Still trains.


def test_shards_per_process_reads_keras_multi_process_flag():
    """`compat.shards_per_process` reads `Distribution._is_multi_process`
    and `auto_shard_dataset` (one process here: False, and True when Keras
    says it is multi-process), so a rename fails here, not in a multi-host
    run (tests/distribution/test_multi_host.py runs two processes)."""
    if keras.backend.backend() == "tensorflow":
        pytest.skip("keras.distribution's DataParallel needs JAX devices here")
    distribution = keras.distribution.DataParallel()
    assert hasattr(distribution, "_is_multi_process")
    assert distribution.auto_shard_dataset is True
    assert compat.shards_per_process(None) is False
    assert compat.shards_per_process(distribution) is False  # One process.
    distribution._is_multi_process = True
    assert compat.shards_per_process(distribution) is True
    distribution.auto_shard_dataset = False
    assert compat.shards_per_process(distribution) is False
