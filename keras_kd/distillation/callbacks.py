"""Keras callbacks for distillation runs: schedules of the Distiller's
`temperature` and `alpha`, and the guards that make long runs safe to
interrupt."""

import math

import keras
import numpy as np

from keras_kd.distillation import compat


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, or
    at the end of an epoch whose weights are.

    Unlike `keras.callbacks.TerminateOnNaN`, which lets the epoch finish (so
    that `ModelCheckpoint` and `BackupAndRestore` then save the broken
    weights at the end of the epoch), this callback raises
    `NonFiniteLossError` at once. The last checkpoint written before the
    failure stays the last one; the message names the epoch and the batch.

    A finite loss does not prove finite weights: a fused CPU kernel can turn
    a NaN weight into a finite activation (oneDNN's MatMul+BiasAdd+ReLU gives
    0). So at each epoch's end, before any checkpoint of that epoch, the
    trainable weights are checked too.

    Put it first in the callback list, so that it runs before any callback
    that saves on batches.

    It never makes the training loop wait for a batch's loss: Keras runs it
    off the main thread (`async_safe`), so with `steps_per_execution` and
    other asynchronous callbacks the device keeps working; a non-finite
    loss then stops training at the next batch, or before the epoch's
    end-of-epoch callbacks, with the batch that produced it named.

    Example:

    >>> callback = StopOnNonFiniteLoss()
    >>> # model.fit(x, y, callbacks=[callback, keras.callbacks.BackupAndRestore("backup")])
    """

    # Keras dispatches the batch hooks of async-safe callbacks to a thread,
    # so reading the loss does not block the next step.
    async_safe = True

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

    def on_epoch_end(self, epoch, logs=None):
        for weight in self.model.trainable_weights:
            if not np.all(np.isfinite(keras.ops.convert_to_numpy(weight))):
                raise NonFiniteLossError(
                    f"The weight {weight.path} holds NaN or Inf at the end of "
                    f"epoch {epoch + 1}, although the loss stayed finite. "
                    "Training stopped before this epoch's checkpoints; lower "
                    "the learning rate, check the inputs for NaN/Inf, or "
                    "resume from the last checkpoint."
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
        states = compat.seed_generator_states(self.model)
        for index, state in enumerate(sorted(states, key=lambda v: v.path)):
            mixed = (self.seed * 1_000_003 + index * 7_919 + epoch * 104_729) % 2**31
            state.assign(np.array([mixed, 0], dtype=state.dtype))


class _SettingScheduler(keras.callbacks.Callback):
    """Sets a `Distiller` setting at the start of each epoch."""

    setting = None

    def __init__(self, schedule):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "`schedule` must be a function `(epoch, value) -> value` or "
                f"`(epoch) -> value`. Received: schedule={schedule!r}."
            )
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        if not hasattr(self.model, self.setting):
            raise ValueError(
                f"{type(self).__name__} needs a model with a "
                f"`{self.setting}`, such as a `keras_kd.Distiller`. "
                f"Received a {type(self.model).__name__}."
            )
        current = getattr(self.model, self.setting)
        try:  # Same signatures as keras.callbacks.LearningRateScheduler.
            value = self.schedule(epoch, current)
        except TypeError:
            value = self.schedule(epoch)
        setattr(self.model, self.setting, value)  # The setter validates it.

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs[self.setting] = getattr(self.model, self.setting)


class TemperatureScheduler(_SettingScheduler):
    """Sets the `Distiller`'s temperature at the start of each epoch.

    In the style of `keras.callbacks.LearningRateScheduler`. The temperature
    is a variable of the distiller, so it is saved with it and restored by
    `keras.callbacks.BackupAndRestore`: a resumed run continues the schedule
    from the value it had reached. Each epoch's value is logged as
    `temperature`.

    Args:
        schedule: A function `(epoch, temperature) -> temperature` (or
            `(epoch) -> temperature`), epochs counted from 0.

    Example:

    >>> # Anneal from T=8 down to T=2 over 4 epochs.
    >>> callback = TemperatureScheduler(lambda epoch: max(2.0, 8.0 - 2 * epoch))
    >>> # distiller.fit(x, y, epochs=5, callbacks=[callback])
    """

    setting = "temperature"


class AlphaScheduler(_SettingScheduler):
    """Sets the `Distiller`'s `alpha` (weight of the student loss) at the
    start of each epoch.

    Works as `TemperatureScheduler`; each epoch's value is logged as
    `alpha`. A warm-up of the distillation term is a schedule that starts
    with `alpha=1` and lowers it.

    Args:
        schedule: A function `(epoch, alpha) -> alpha` (or
            `(epoch) -> alpha`), values in `[0, 1]`.

    Example:

    >>> # Labels only for 2 epochs, then mostly the teacher.
    >>> callback = AlphaScheduler(lambda epoch: 1.0 if epoch < 2 else 0.1)
    >>> # distiller.fit(x, y, epochs=10, callbacks=[callback])
    """

    setting = "alpha"
