"""Keras callbacks that make long distillation runs safe to interrupt."""

import math

import keras
import numpy as np


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN`, which lets the epoch finish (so
    that `ModelCheckpoint` and `BackupAndRestore` then save the broken
    weights at the end of the epoch), this callback raises
    `NonFiniteLossError` at once. The last checkpoint written before the
    failure stays the last one; the message names the epoch and the batch.

    Put it first in the callback list, so that it runs before any callback
    that saves on batches.

    Example:

    >>> callback = StopOnNonFiniteLoss()
    >>> # model.fit(x, y, callbacks=[callback, keras.callbacks.BackupAndRestore("backup")])
    """

    def __init__(self):
        super().__init__()
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        loss = float(loss)
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"The training loss became {loss} at epoch {self._epoch + 1}, "
                f"batch {batch + 1}. Training stopped; the checkpoints written "
                "before this batch are kept. Lower the learning rate, check the "
                "inputs for NaN/Inf, or resume from the last checkpoint."
            )


class EpochSeeds(keras.callbacks.Callback):
    """Makes the model's random layers a function of `(seed, epoch)`.

    Keras' random layers (`Dropout`, `GaussianNoise`, ...) draw from
    `SeedGenerator` states that advance each step, and
    `Model.save_weights` does not save those states. After a resume the
    dropout masks would therefore differ from an uninterrupted run. This
    callback sets every seed-generator state at the start of each epoch from
    `seed`, the epoch and the variable's position, so epoch `k` draws the
    same masks whether or not the run was interrupted before it.

    Args:
        seed: Integer seed of the run.

    Example:

    >>> callback = EpochSeeds(seed=0)
    >>> # model.fit(dataset, epochs=10, callbacks=[callback])
    """

    def __init__(self, seed=0):
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}.")
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if "seed_generator_state" in v.path]
        for index, state in enumerate(sorted(states, key=lambda v: v.path)):
            mixed = (self.seed * 1_000_003 + index * 7_919 + epoch * 104_729) % 2**31
            state.assign(np.array([mixed, 0], dtype=state.dtype))
