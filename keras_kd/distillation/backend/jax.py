"""The Distiller's JAX steps: stateless, as Keras' JAX trainer runs them.

`train_step(state, data)` and `test_step(state, data)` take and return the
model's state as lists of arrays (`(trainable, non_trainable, optimizer,
metrics)` for training, `(trainable, non_trainable, metrics)` for
evaluation) and return `(logs, new_state)`, so Keras' `fit` / `evaluate`
can `jax.jit` them and shard them under `keras.distribution`. Inside, the
objective runs as it runs on TensorFlow: every variable the models, the
terms and the metrics read is mapped to its value in `state` by a
`keras.StatelessScope`, and what they write is read back from it.

Under `keras.distribution` the arrays are global (one logical batch over
the mesh), so the loss is the global batch's loss as written: no replica
count divides it (see `keras_kd.distillation.reduction`).
"""

import contextlib
import sys
import threading

import jax
import keras
import numpy as np
from keras.src import backend as keras_backend

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import compat
from keras_kd.distillation import objective
from keras_kd.distillation.backend.common import CommonSteps


def _mapping(variables, values):
    return list(zip(variables, values))


def _current(scope, variables, values):
    # A variable the step did not write keeps the value it came in with.
    current = []
    for variable, value in zip(variables, values):
        new = scope.get_current_value(variable)
        current.append(value if new is None else new)
    return current


# Run-time checks, for the losses (`top_k_loss`), as the TensorFlow
# backend's: under `jax.jit` a value is a tracer, known only when the step
# runs, and the assert is a `jax.debug.callback` (which XLA keeps: the
# step raises a `JaxRuntimeError` carrying the message). A callback stops
# the step on the host every time (1.5-1.9x the student's own step for the
# GPT-2 character LM on a top-8 cache): a Distiller step whose call checks
# every batch in its input pipeline instead leaves them out
# (`checks_left_out`).

_checks = threading.local()


@contextlib.contextmanager
def checks_left_out(leave=True):
    """While tracing a step: leave the run-time checks out (`leave`), the
    Distiller running them eagerly on every batch of the call.

    Yields:
        A dict that records, once traced, whether the step `"left_out"` a
        check and whether it `"kept"` one.
    """
    outer = (getattr(_checks, "leave", False), getattr(_checks, "record", None))
    record = {"left_out": False, "kept": False}
    _checks.leave, _checks.record = bool(leave), record
    try:
        yield record
    finally:
        _checks.leave, _checks.record = outer


def static_value(value):
    """`value` as a float64 NumPy array if concrete, else None (a tracer)."""
    if isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)


def as_tensor(value):
    """A JAX array of `value` (a traced array cannot become a `tf.Tensor`)."""
    return keras.ops.convert_to_tensor(value)


def _assert(check, x, y, message):
    record = getattr(_checks, "record", None)
    if getattr(_checks, "leave", False):
        record["left_out"] = True
        return []
    if record is not None:
        record["kept"] = True

    def callback(x, y):
        x, y = np.asarray(x), np.broadcast_to(np.asarray(y), np.shape(x))
        if not check(x, y):
            raise ValueError(f"{message} Received: x = {x}, y = {y}.")

    jax.debug.callback(callback, x, y)
    return []


def assert_near(x, y, rtol, message):
    """`x ~= y` checked when the step runs; returns no dependency (the
    callback is an effect that XLA keeps)."""
    return _assert(lambda x, y: np.allclose(x, y, rtol=rtol, atol=0.0), x, y, message)


def assert_equal(x, y, message):
    """`x == y` checked when the step runs."""
    return _assert(lambda x, y: np.array_equal(x.astype(np.int64), y.astype(np.int64)),
                   x, y, message)


def after(dependencies, value):
    """`value` (JAX orders effects itself)."""
    del dependencies
    return value


class JAXSteps(CommonSteps):
    """`train_step(state, data)` / `test_step(state, data)` for Keras' JAX
    trainer (`keras/src/backend/jax/trainer.py`)."""

    def _check_backend_setup(self):
        """Refuses a `tf.distribute` strategy, which JAX would ignore."""
        tf = sys.modules.get("tensorflow")  # Not imported: no strategy either.
        if tf is not None and tf.distribute.has_strategy():
            strategy = type(tf.distribute.get_strategy()).__name__
            raise RuntimeError(
                f"The Distiller runs on the JAX backend, which does not use "
                f"`tf.distribute` strategies (received a {strategy} scope): the "
                "step would run on one device. Use `keras.distribution` instead, "
                "e.g. `keras.distribution.set_distribution("
                "keras.distribution.DataParallel())` before building the models, "
                "or `KERAS_BACKEND=tensorflow` to keep the strategy."
            )

    def fit(self, *args, **kwargs):
        # A model built outside a strategy may still be fitted inside one.
        self._check_backend_setup()
        with self._outer_step_kept(), self._variables_restored():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._check_backend_setup()
        with self._variables_restored():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        self._check_state_usable()
        with self._variables_restored():
            return super().predict(*args, **kwargs)

    def _get_jax_state(self, *args, **kwargs):
        # Keras' hook (`compat.JAX_GET_STATE`): where it empties the
        # variables, their values are kept for `_variables_restored`.
        if kwargs.get("purge_model_variables"):
            held = getattr(self, "_held_values", None)
            if held is not None:
                for variable in self._state_variables():
                    value = compat.stored_value(variable)
                    if value is not None:
                        held.setdefault(id(variable), (variable, value))
        return super()._get_jax_state(*args, **kwargs)

    def _check_state_usable(self):
        """Refuses to run on variables whose values a failed step consumed
        (Keras' JAX trainer donates the state to the compiled step: an error
        raised while the step ran, such as a run-time check of the losses,
        deletes it, the teacher's weights included)."""
        if getattr(self, "_held_values", None) is not None:
            return  # Inside a loop (fit's evaluate): Keras holds the values.
        lost = [v.path for v in self._state_variables() if compat.value_lost(v)]
        if lost:
            raise RuntimeError(
                f"The Distiller's variables hold no values ({len(lost)} of them, e.g. "
                f"{lost[0]!r}): on the JAX backend Keras' trainer donates the model's "
                "state to the compiled step, and an earlier step that raised while it "
                "ran consumed it (the teacher's and the student's weights). Rebuild the "
                "models or reload their weights (a saved `.keras` file, a checkpoint or "
                "`BackupAndRestore`) and a new Distiller; on `KERAS_BACKEND=tensorflow` "
                "a failed step leaves the models as they were."
            )

    def _state_variables(self):
        optimizer = getattr(self, "optimizer", None)
        return (self.trainable_variables + self.non_trainable_variables
                + (list(optimizer.variables) if optimizer is not None else [])
                + self.metrics_variables)

    @contextlib.contextmanager
    def _variables_restored(self):
        """Runs a Keras loop; a variable Keras' JAX trainer left empty (an
        error before its first step's state was written back) gets the
        value it had when the loop emptied it."""
        if getattr(self, "_held_values", None) is not None:  # Nested (fit's evaluate).
            yield
            return
        self._held_values = {}
        try:
            yield
        finally:
            held, self._held_values = self._held_values, None
            for variable, value in held.values():
                if compat.stored_value(variable) is None and not value.is_deleted():
                    compat.restore_value(variable, value)

    def _input_pipeline_scope(self):
        """A scope factory for running the models in the input pipeline (the
        first-batch checks of a `tf.data.Dataset`): Keras' JAX `fit` keeps
        the weights in its own state and empties the variables meanwhile, so
        their values are taken now, before `fit` starts."""
        mapping = [(v, v.value) for v in self.variables]
        return lambda: keras.StatelessScope(state_mapping=mapping)

    def _run_if(self, predicate, fn, skipped):
        """`fn()` where `predicate` holds, else zeros in the structure of
        `fn()`'s result (`skipped` is TensorFlow's stand-in; here the zeros
        take `fn`'s own shapes, as `jax.lax.cond` needs equal branch types:
        a teacher with a padded vocabulary is wider than the student).

        `fn` may write variables (a teacher's counters or statistics): a
        write inside `jax.lax.cond` would leave the branch as a tracer
        (`UnexpectedTracerError`), so it runs in a scope of its own and
        returns the variables' new values with its result; the values of
        the branch taken are written outside the cond.

        A training step traced while `alpha < 1` (read when `fit` makes
        its train function) runs `fn()` without the cond: XLA compiles a
        cond's branch apart, which cost the E1 pair's online step 64 ms
        against 58 on CPU (more than keras.distillation's 62). Where such a
        step later runs at `alpha == 1` (a scheduler's), the result is the
        cond's zeros, so the values are the cond's (a NaN of the teacher
        does not reach the loss); the teacher has run, though, and written
        what it writes. A later `fit` starting at `alpha == 1` traces the
        step again, with the cond.
        """
        del skipped
        if getattr(self, "_teacher_runs_unconditionally", False):
            return jax.tree_util.tree_map(
                lambda value: jax.numpy.where(predicate, value, jax.numpy.zeros_like(value)),
                fn())
        # Every weight is read through the branch's scope (Keras' JAX fit
        # has emptied the variables themselves); only non-trainable ones
        # are written by a forward pass.
        weights = self.trainable_variables + self.non_trainable_variables
        mapping = _mapping(weights, [v.value for v in weights])
        variables = self.non_trainable_variables
        values = [v.value for v in variables]

        def run(values):
            with keras.StatelessScope(
                    state_mapping=mapping + _mapping(variables, values)) as scope:
                result = fn()
            return result, _current(scope, variables, values)

        shapes = jax.eval_shape(run, values)[0]

        def skip(values):
            zeros = jax.tree_util.tree_map(
                lambda s: jax.numpy.zeros(s.shape, s.dtype), shapes)
            return zeros, values

        result, new_values = jax.lax.cond(predicate, run, skip, values)
        for variable, new in zip(variables, new_values):
            variable.assign(new)
        return result

    def _stateless_training_loss(self, trainable, non_trainable, optimizer_variables, batch):
        """The objective of one batch, as a function of the weights (for
        `jax.value_and_grad`): `(scaled_loss, (terms, outputs, mask,
        non_trainable))`."""
        mapping = (_mapping(self.trainable_variables, trainable)
                   + _mapping(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            alpha = keras.ops.cast(self._alpha, "float32")
            outputs = objective.forward(self, batch, alpha, training=True)
            terms = objective.training_terms(self, batch, outputs, alpha)
        non_trainable = _current(scope, self.non_trainable_variables, non_trainable)
        loss = terms.loss
        if self.optimizer is not None:
            # In a scope of its own, as Keras does: a LossScaleOptimizer
            # reads its scale from the optimizer's state.
            with keras.StatelessScope(
                    state_mapping=_mapping(self.optimizer.variables, optimizer_variables)):
                loss = self.optimizer.scale_loss(loss)
        # The Keras mask does not survive `value_and_grad`: it travels apart.
        mask = compat.keras_mask(outputs.student_logits)
        return loss, (terms, outputs, mask, non_trainable)

    def make_train_function(self, force=False):
        # The teacher's cond (`_run_if`): alpha read now, since fit empties
        # the variables before the step is traced (inside a running fit,
        # from a callback, they are empty already: the cond then stays).
        alpha = compat.stored_value(self._alpha)
        unconditional = alpha is not None and float(np.asarray(alpha)) < 1.0
        object.__setattr__(self, "_teacher_runs_unconditionally", unconditional)
        traced_teacher = getattr(self, "_train_step_teacher_unconditional", None)
        if traced_teacher is not None and traced_teacher != unconditional:
            force = True  # A later fit at alpha == 1 skips the teacher again.
        # The run-time checks: the step traced last left them out, and this
        # call's batches are not all checked eagerly: trace it again, with
        # them. jit's cache is keyed on the bound `train_step` and the
        # arguments, not on this choice: without a cleared cache a step
        # still held somewhere would be reused. The other way round (for
        # speed) only for a call that has a top-k part.
        eager = bool(getattr(self, "_step_checks_done_eagerly", False))
        traced = getattr(self, "_train_step_checks", None)
        if traced is not None and traced["left_out"] and not eager:
            jax.clear_caches()
            force = True
        elif (traced is not None and traced["kept"] and eager
              and getattr(self, "_call_carries_top_k", False)):
            force = True
        object.__setattr__(self, "_train_step_leaves_checks", eager)
        return super().make_train_function(force=force)

    def train_on_batch(self, *args, **kwargs):
        with self._outer_step_kept():
            return super().train_on_batch(*args, **kwargs)

    @contextlib.contextmanager
    def _outer_step_kept(self):
        """A call nested in `fit` (from a callback) may trace another step;
        the outer `fit`, which reads `train_function` at every batch, gets
        its own back."""
        if getattr(self, "_held_values", None) is None:
            yield
            return
        names = ("_train_step_checks", "_train_step_leaves_checks",
                 "_train_step_teacher_unconditional", "_teacher_runs_unconditionally")
        outer = (self.train_function, [getattr(self, name, None) for name in names])
        try:
            yield
        finally:
            self.train_function = outer[0]
            for name, value in zip(names, outer[1]):
                object.__setattr__(self, name, value)

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        batch = batch_module.parse_batch(data)
        grad_fn = jax.value_and_grad(self._stateless_training_loss, argnums=0, has_aux=True)
        with checks_left_out(getattr(self, "_train_step_leaves_checks", False)) as checks:
            (_, (terms, outputs, mask, non_trainable)), grads = grad_fn(
                trainable, non_trainable, optimizer_variables, batch)
        object.__setattr__(self, "_train_step_checks", checks)
        object.__setattr__(self, "_train_step_teacher_unconditional",
                           getattr(self, "_teacher_runs_unconditionally", False))
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable)
        logs, metrics_variables = self._stateless_metrics(
            metrics_variables, non_trainable, batch, outputs, mask, terms)
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        batch = batch_module.parse_batch(data)
        mapping = (_mapping(self.trainable_variables, trainable)
                   + _mapping(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            outputs = objective.evaluation_forward(self, batch)
            terms = objective.evaluation_terms(self, batch, outputs)
        non_trainable = _current(scope, self.non_trainable_variables, non_trainable)
        mask = compat.keras_mask(outputs.student_logits)
        logs, metrics_variables = self._stateless_metrics(
            metrics_variables, non_trainable, batch, outputs, mask, terms)
        return logs, (trainable, non_trainable, metrics_variables)

    def _stateless_metrics(self, metrics_variables, non_trainable, batch, outputs, mask, terms):
        """`objective.update_metrics` over the metrics' state: `(logs,
        new metrics variables)`."""
        if mask is not None:
            keras_backend.set_keras_mask(outputs.student_logits, mask)
        # The non-trainable values too: a teacher metric mixes an ensemble
        # with the distiller's temperature variable, say.
        mapping = (_mapping(self.metrics_variables, metrics_variables)
                   + _mapping(self.non_trainable_variables, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = objective.update_metrics(self, batch, outputs, terms)
        return logs, _current(scope, self.metrics_variables, metrics_variables)
