"""The Distiller's PyTorch steps: eager autograd, as Keras' torch trainer runs.

Keras' torch trainer (`keras/src/backend/torch/trainer.py`) runs
`train_step(data)` eagerly (or under `torch.compile` with
`jit_compile=True`): the forward pass records the autograd graph, and the
weights' gradients come from it before `optimizer.apply` under
`torch.no_grad()`. The objective runs here as it runs on TensorFlow; the
teacher runs under `ops.stop_gradient` (a `detach`) with frozen weights, so
autograd records nothing through it. The gradients come from
`torch.autograd.grad` on the trained variables only, rather than from
`loss.backward()`, which would also fill `.grad` of every other weight the
loss reached and need a `zero_grad` before each step.
"""

import contextlib
import sys

import torch
from keras import ops

from keras_kd.distillation import batch as batch_module
from keras_kd.distillation import objective
from keras_kd.distillation.backend.common import CommonSteps


class TorchSteps(CommonSteps):
    """`train_step(data)` / `test_step(data)` as Keras' torch trainer calls them."""

    def _check_backend_setup(self):
        """Refuses a `tf.distribute` strategy, which torch would ignore."""
        tf = sys.modules.get("tensorflow")  # Not imported: no strategy either.
        if tf is not None and tf.distribute.has_strategy():
            strategy = type(tf.distribute.get_strategy()).__name__
            raise RuntimeError(
                f"The Distiller runs on the PyTorch backend, which does not use "
                f"`tf.distribute` strategies (received a {strategy} scope): the "
                "step would run on one device. Leave the strategy scope, or set "
                "`KERAS_BACKEND=tensorflow` to keep the strategy."
            )

    def fit(self, *args, **kwargs):
        # A model built outside a strategy may still be fitted inside one.
        self._check_backend_setup()
        return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self._check_backend_setup()
        return super().evaluate(*args, **kwargs)

    def _input_pipeline_scope(self):
        """No scope: the variables hold their values throughout `fit`."""
        return contextlib.nullcontext

    def train_step(self, data):
        batch = batch_module.parse_batch(data)
        alpha = ops.cast(self._alpha, "float32")
        if batch.labels is None and bool(alpha > 0.0):
            # Eager: `fit` checks this too, but the alpha may change in fit.
            raise ValueError(objective.no_labels_message(float(alpha)))
        outputs = objective.forward(self, batch, alpha, training=True)
        terms = objective.training_terms(self, batch, outputs, alpha)
        variables = self._trained_variables()
        loss = self.optimizer.scale_loss(terms.loss)
        gradients = torch.autograd.grad(
            loss, [v.value for v in variables], allow_unused=True)
        with torch.no_grad():  # Neither the update nor the metrics need a graph.
            self.optimizer.apply(list(gradients), variables)
            return objective.update_metrics(self, batch, outputs, terms)

    def test_step(self, data):
        batch = batch_module.parse_batch(data)
        outputs = objective.evaluation_forward(self, batch)
        terms = objective.evaluation_terms(self, batch, outputs)
        return objective.update_metrics(self, batch, outputs, terms)
