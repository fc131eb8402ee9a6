import json
import os

import keras
import numpy as np
import pytest

from keras_kd.data import datasets
from keras_kd.studies import runs
from keras_kd.distillation.callbacks import NonFiniteLossError
from keras_kd.distillation.callbacks import StopOnNonFiniteLoss


def make_dropout_mlp():
    # Dropout: the resumed run must also replay the same dropout masks.
    return keras.Sequential(
        [
            keras.Input((784,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10),
        ]
    )


@pytest.fixture(scope="module")
def digits():
    x, y = datasets.select("mnist", "train", source="sample", limit=192)
    return x, y


def compiled_model(seed):
    keras.utils.set_random_seed(seed)
    model = make_dropout_mlp()
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit_run(path, digits, epochs, callbacks=()):
    x, y = digits
    model = compiled_model(seed=3)
    runs.fit_resumable(
        model,
        lambda start: datasets.make_dataset(
            x, y, batch_size=32, shuffle=True, augment=True, seed=3,
            layout="flat", start_epoch=start,
        ),
        datasets.steps_per_epoch(len(x), 32),
        epochs,
        str(path),
        seed=3,
        callbacks=list(callbacks),
        tensorboard=False,
        verbose=0,
    )
    return model


class AtBatch(keras.callbacks.Callback):
    """Calls `action(model)` before one batch of one epoch."""

    def __init__(self, epoch, batch, action):
        super().__init__()
        self.at = (epoch, batch)
        self.action = action
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.action(self.model)


def crash(model):
    raise KeyboardInterrupt("simulated crash")


def crash_at(epoch, batch):
    return AtBatch(epoch, batch, crash)


class EpochWeights(keras.callbacks.Callback):
    """Keeps the weights at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory):
    """The weights after each epoch of a 3-epoch run that was never stopped."""
    record = EpochWeights()
    fit_run(tmp_path_factory.mktemp("uninterrupted"), digits, epochs=3, callbacks=[record])
    return record.weights


def crash_in_backup_write(epoch, truncate):
    """Patches `Model.save_weights` to crash in the backup at the end of `epoch`.

    `truncate`: leave the file half written (a kill during the write);
    otherwise crash right after it (a kill before the metadata is written).
    """
    save = keras.Model.save_weights
    calls = []

    def save_weights(model, filepath, *args, **kwargs):
        save(model, filepath, *args, **kwargs)
        calls.append(filepath)
        if len(calls) == epoch + 1:
            if truncate:
                with open(filepath, "r+b") as f:
                    f.truncate(os.path.getsize(filepath) // 2)
            raise KeyboardInterrupt("simulated kill in the backup")

    return save_weights


class CrashAtTrainEnd(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        raise KeyboardInterrupt("simulated kill after the last epoch")


# Where a run stops, and the epoch its backup then says it resumes at.
KILL_POINTS = {
    "before the first backup": (lambda mp: [crash_at(epoch=0, batch=2)], 0),
    "mid-epoch": (lambda mp: [crash_at(epoch=1, batch=3)], 1),
    "during a backup's weights write": (lambda mp: mp.setattr(
        keras.Model, "save_weights", crash_in_backup_write(1, truncate=True)) or [], 1),
    "between a backup's weights and its metadata": (lambda mp: mp.setattr(
        keras.Model, "save_weights", crash_in_backup_write(1, truncate=False)) or [], 1),
    "after the last epoch": (lambda mp: [CrashAtTrainEnd()], 3),
}


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_stopped_anywhere_resumes_to_the_same_weights(point, tmp_path, digits, uninterrupted):
    arrange, resume_epoch = KILL_POINTS[point]
    with pytest.MonkeyPatch.context() as patch:
        callbacks = arrange(patch)
        with pytest.raises(KeyboardInterrupt):
            fit_run(tmp_path, digits, epochs=3, callbacks=callbacks)
    assert runs.restored_epoch(str(tmp_path)) == resume_epoch
    resumed = fit_run(tmp_path, digits, epochs=3)
    for expected, actual in zip(uninterrupted[-1], resumed.get_weights()):
        np.testing.assert_array_equal(actual, expected)
    # The CSV log has one row per epoch, across both parts of the run.
    rows = (tmp_path / runs.LOG_FILE).read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    # One weights file is kept, the one the metadata names.
    assert sorted(p.name for p in (tmp_path / runs.BACKUP_DIR).iterdir()) == [
        "epoch-3.weights.h5", "training_metadata.json"]


def test_a_backup_of_keras_backup_and_restore_resumes(tmp_path, digits, uninterrupted):
    # Runs started before RunBackup: latest.weights.h5, metadata without a file name.
    with pytest.raises(KeyboardInterrupt):
        fit_run(tmp_path, digits, epochs=3, callbacks=[crash_at(epoch=2, batch=0)])
    backup = tmp_path / runs.BACKUP_DIR
    (backup / "epoch-2.weights.h5").rename(backup / "latest.weights.h5")
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    resumed = fit_run(tmp_path, digits, epochs=3)
    for expected, actual in zip(uninterrupted[-1], resumed.get_weights()):
        np.testing.assert_array_equal(actual, expected)


def test_a_damaged_backup_is_a_clear_error(tmp_path):
    (tmp_path / runs.BACKUP_DIR).mkdir()
    (tmp_path / runs.BACKUP_DIR / "training_metadata.json").write_text('{"epo')
    with pytest.raises(runs.RunError, match="training_metadata.json is damaged.*--overwrite"):
        runs.restored_epoch(str(tmp_path))


def test_without_epoch_seeds_the_resumed_dropout_masks_differ(tmp_path, digits, monkeypatch):
    # Guards the test above: it would catch a resume that replays other
    # dropout masks.
    from keras_kd.distillation import callbacks

    monkeypatch.setattr(callbacks.EpochSeeds, "on_epoch_begin", lambda *args, **kwargs: None)
    uninterrupted = fit_run(tmp_path / "a", digits, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        fit_run(tmp_path / "b", digits, epochs=3, callbacks=[crash_at(epoch=1, batch=3)])
    resumed = fit_run(tmp_path / "b", digits, epochs=3)
    assert not np.array_equal(uninterrupted.get_weights()[0], resumed.get_weights()[0])


def test_two_runs_with_the_same_seed_are_bitwise_identical(tmp_path, digits, uninterrupted):
    # The second run is the module's uninterrupted one (seed 3, its first 2 epochs).
    runs.set_determinism(7)
    weights = fit_run(tmp_path, digits, epochs=2).get_weights()
    for first, second in zip(uninterrupted[1], weights):
        np.testing.assert_array_equal(first, second)


def poison_output_bias(model):
    # The output layer's bias: NaN + anything is NaN in every kernel, fused
    # or not (a NaN *hidden* kernel can vanish in a fused MatMul+ReLU).
    bias = model.layers[-1].bias
    bias.assign(np.full(bias.shape, np.nan, "float32"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits):
    path = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 3"):
        fit_run(path, digits, epochs=3, callbacks=[AtBatch(1, 2, poison_output_bias)])
    assert runs.restored_epoch(str(path)) == 1
    checkpoint = keras.models.load_model(path / runs.CHECKPOINT_FILE)
    assert all(np.isfinite(w).all() for w in checkpoint.get_weights())


def test_non_finite_weights_stop_at_epoch_end_even_with_a_finite_loss():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    callback = StopOnNonFiniteLoss()
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 0.5})  # Finite weights: no error.
    kernel = model.layers[0].kernel
    kernel.assign(np.where(np.eye(3, 2) > 0, np.inf, 0.0).astype("float32"))
    with pytest.raises(NonFiniteLossError, match=r"kernel.*end of epoch 4"):
        callback.on_epoch_end(3, {"loss": 0.5})


def test_prepare_run_dir_guards_other_runs(tmp_path):
    path = str(tmp_path / "run")
    with pytest.raises(runs.RunError, match="Nothing to resume"):
        runs.prepare_run_dir(path, "distill", {"alpha": 0.1}, resume=True)
    runs.prepare_run_dir(path, "distill", {"alpha": 0.1, "epochs": 3})
    with pytest.raises(runs.RunError, match="already holds a run"):
        runs.prepare_run_dir(path, "distill", {"alpha": 0.1, "epochs": 3})
    with pytest.raises(runs.RunError, match="settings that differ: alpha"):
        runs.prepare_run_dir(path, "distill", {"alpha": 0.5, "epochs": 3}, resume=True)
    # More epochs continue the same run (training in stages).
    record = runs.prepare_run_dir(path, "distill", {"alpha": 0.1, "epochs": 6}, resume=True)
    assert record["settings"]["epochs"] == 6
    runs.finish_run(path, {"test_accuracy": 0.5})
    with open(os.path.join(path, runs.RUN_FILE)) as f:
        assert json.load(f)["status"] == "finished"
    (tmp_path / "run" / runs.LOG_FILE).write_text("epoch\n")
    (tmp_path / "run" / "my_notes.txt").write_text("the user's own file")
    record = runs.prepare_run_dir(path, "train-teacher", {}, overwrite=True)
    assert record["command"] == "train-teacher"
    # --overwrite deletes the run's files, not the user's.
    assert not (tmp_path / "run" / runs.LOG_FILE).exists()
    assert (tmp_path / "run" / "my_notes.txt").read_text() == "the user's own file"


def test_damaged_run_file_is_reported(tmp_path):
    (tmp_path / runs.RUN_FILE).write_text("{not json")
    with pytest.raises(runs.RunError, match="damaged"):
        runs.prepare_run_dir(str(tmp_path), "distill", {}, resume=True)
