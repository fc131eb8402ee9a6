"""Training runs that survive a crash: one directory per run.

A run directory holds what a long training run needs to be stopped and
continued, built from Keras' own callbacks:

    run.json          the run's settings and status (checked on --resume)
    backup/           `RunBackup`: weights and optimizer state, and the epoch
    checkpoint.keras  keras.callbacks.ModelCheckpoint, the model of the last epoch
    log.csv           keras.callbacks.CSVLogger (appended to on resume)
    tensorboard/      keras.callbacks.TensorBoard

`fit_resumable` trains on an epoch-indexed dataset
(`datasets.make_dataset(start_epoch=...)`) and reseeds the model's random
layers each epoch (`EpochSeeds`), so a run killed in the middle of an epoch
and resumed ends with the same weights as one that was never interrupted.
A kill at any moment leaves a resumable run: the backup is written so that
it is always either the last epoch's or the one before (`RunBackup`).
"""

import glob
import json
import os
import shutil

import keras
import tensorflow as tf

from keras_kd.distillation.callbacks import EpochSeeds
from keras_kd.distillation.callbacks import StopOnNonFiniteLoss
from keras_kd.version import __version__

RUN_FILE = "run.json"
BACKUP_DIR = "backup"
CHECKPOINT_FILE = "checkpoint.keras"
LOG_FILE = "log.csv"
TENSORBOARD_DIR = "tensorboard"
# The backup's metadata: the epochs done and the weights file that holds them.
_BACKUP_METADATA = "training_metadata.json"
# The weights file of runs backed up by keras.callbacks.BackupAndRestore
# (keras-kd <= 0.2), whose metadata names no file.
_LEGACY_BACKUP_WEIGHTS = "latest.weights.h5"
# What a run writes; --overwrite deletes these and nothing else in the
# directory (it may hold the user's own files).
RUN_FILES = (
    RUN_FILE, BACKUP_DIR, f"{BACKUP_DIR}-worker-*", CHECKPOINT_FILE, LOG_FILE,
    TENSORBOARD_DIR, "model.keras", "teacher_logits.npz", "cells.jsonl",
    "summary.csv", "summary.json", "summary.md", "sweep.png",
)
# Settings that may change between the parts of one run.
RESUMABLE_SETTINGS = ("epochs", "resume", "overwrite", "quiet", "steps_per_execution")


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


def set_determinism(seed, ops=True):
    """Seeds Python, NumPy, TensorFlow and Keras, and makes TF ops deterministic.

    Two runs with the same seed then give bitwise-identical weights on the
    same machine (CPU; on GPU, as far as TensorFlow's deterministic kernels
    go). Op determinism cannot be turned off again in the process, and its
    deterministic kernels are slower (1.17x per step for the E1 teacher on
    2 CPU cores, `benchmarks/determinism.py`).

    Args:
        seed: Integer seed.
        ops: Also turn on TensorFlow's op determinism.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"`seed` must be an integer. Received: seed={seed!r}.")
    keras.utils.set_random_seed(seed)
    if ops:
        tf.config.experimental.enable_op_determinism()


def _read_run_file(path):
    run_file = os.path.join(path, RUN_FILE)
    try:
        with open(run_file) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise RunError(
            f"{run_file} is not valid JSON ({error}); the run directory is "
            "damaged. Pass --overwrite to start the run again."
        ) from None


def _write_run_file(path, record):
    temporary = os.path.join(path, RUN_FILE + ".tmp")
    with open(temporary, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    os.replace(temporary, os.path.join(path, RUN_FILE))


def prepare_run_dir(
    path, command, settings, resume=False, overwrite=False, resumable=RESUMABLE_SETTINGS
):
    """Creates a run directory, or reopens it to resume.

    Args:
        path: The run directory.
        command: Name of the command (`"train-teacher"`, `"distill"`, ...).
        settings: JSON-serialisable dict of the run's settings.
        resume: Continue the run in `path`. Its command and settings must
            match, except those in `resumable` (so `epochs` may grow to
            train in stages).
        overwrite: Delete an earlier run in `path` and start again.
        resumable: Names of the settings that may differ on `resume`.

    Returns:
        The run record (a dict) now stored in `path/run.json`.

    Raises:
        RunError: `path` holds another run (without `overwrite`), or
            `resume` finds nothing to resume or a different run.
    """
    exists = os.path.exists(os.path.join(path, RUN_FILE))
    if resume and overwrite:
        raise RunError("Pass either --resume or --overwrite, not both.")
    if resume:
        if not exists:
            raise RunError(
                f"Nothing to resume in {path}: it holds no {RUN_FILE}. Start "
                "the run without --resume."
            )
        record = _read_run_file(path)
        fixed = {k: v for k, v in settings.items() if k not in resumable}
        stored = {k: v for k, v in record["settings"].items() if k not in resumable}
        # Through JSON, so that tuples and lists compare equal.
        fixed = json.loads(json.dumps(fixed, default=str))
        if record["command"] != command or stored != fixed:
            changed = sorted(
                k for k in set(stored) | set(fixed) if stored.get(k) != fixed.get(k)
            )
            raise RunError(
                f"{path} holds a different run ({record['command']}; settings "
                f"that differ: {', '.join(changed) or 'the command'}). Resume "
                "with the same settings, or choose another directory."
            )
        record["settings"] = json.loads(json.dumps(settings, default=str))
        record["status"] = "running"
    else:
        if exists and not overwrite:
            raise RunError(
                f"{path} already holds a run. Pass --resume to continue it, "
                "--overwrite to delete it and start again, or choose another "
                "directory."
            )
        if exists:
            _remove_run_files(path)
        record = {
            "command": command,
            "settings": settings,
            "status": "running",
            "keras_kd_version": __version__,
        }
    os.makedirs(path, exist_ok=True)
    _write_run_file(path, record)
    return _read_run_file(path)


def _remove_run_files(path):
    for pattern in RUN_FILES:
        for entry in glob.glob(os.path.join(glob.escape(path), pattern)):
            if os.path.isdir(entry):
                shutil.rmtree(entry)
            else:
                os.remove(entry)


def finish_run(path, results):
    """Marks the run in `path` finished and stores its results."""
    record = _read_run_file(path)
    record["status"] = "finished"
    record["results"] = results
    _write_run_file(path, record)
    return record


def _backup_dir(path):
    if is_chief():
        return os.path.join(path, BACKUP_DIR)
    task_id = tf.distribute.cluster_resolver.TFConfigClusterResolver().task_id
    return os.path.join(path, f"{BACKUP_DIR}-worker-{task_id}")


def _read_backup(directory):
    """`(epochs done, weights file)` of the backup in `directory`, or `None`."""
    metadata = os.path.join(directory, _BACKUP_METADATA)
    if not os.path.exists(metadata):
        return None
    try:
        with open(metadata) as f:
            record = json.load(f)
        epoch = int(record["epoch"])
    except (ValueError, KeyError, TypeError) as error:
        raise RunError(
            f"{metadata} is damaged ({type(error).__name__}: {error}); the run "
            "cannot be resumed. Pass --overwrite to start the run again."
        ) from None
    return epoch, os.path.join(directory, record.get("weights", _LEGACY_BACKUP_WEIGHTS))


def _write_durably(path, write):
    """`write(temporary path)`, flushed to disk, then renamed to `path`."""
    directory, name = os.path.split(path)
    # Keras' save_weights wants a name ending in .weights.h5.
    temporary = os.path.join(directory, f"tmp-{os.getpid()}-{name}")
    write(temporary)
    with open(temporary, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(temporary, path)


class RunBackup(keras.callbacks.Callback):
    """Backs up and restores a run's training state; survives a kill at any moment.

    Like `keras.callbacks.BackupAndRestore(directory, delete_checkpoint=False)`,
    whose writes are not atomic: a kill while it writes its weights leaves a
    truncated file that cannot be loaded, and a kill between its weights
    and its metadata pairs one epoch's weights with the previous epoch's
    number (the resumed run then trains that epoch twice). Here each epoch's
    weights go to a new file; the metadata, which names the file, is
    replaced atomically after it; older files are deleted last. Whenever the
    process dies, the metadata names a complete file of the epoch it says.

    Args:
        directory: The backup directory (one per process of a run).
    """

    def __init__(self, directory):
        super().__init__()
        self.directory = directory

    def on_train_begin(self, logs=None):
        backup = _read_backup(self.directory)
        if backup is None:
            return
        epoch, weights = backup
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # The optimizer's variables must exist to be loaded.
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights)
        # As BackupAndRestore: fit starts from here (fit_resumable also
        # passes initial_epoch).
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epoch + 1}.weights.h5"
        _write_durably(
            os.path.join(self.directory, name),
            lambda path: self.model.save_weights(path, overwrite=True),
        )

        def write_metadata(path):
            with open(path, "w") as f:
                json.dump({"epoch": epoch + 1, "batch": 0, "weights": name}, f)

        _write_durably(os.path.join(self.directory, _BACKUP_METADATA), write_metadata)
        for entry in os.listdir(self.directory):
            if entry != name and entry.endswith(".weights.h5"):
                os.remove(os.path.join(self.directory, entry))


def restored_epoch(path):
    """The epoch a resumed run in `path` starts from (0 for a new run)."""
    backup = _read_backup(_backup_dir(path))
    return 0 if backup is None else backup[0]


def _truncate_log(path, start_epoch):
    """Drops the CSV log's rows of epochs from `start_epoch` on.

    A run killed after writing an epoch's row but before its backup trains
    that epoch again on resume; a kill while writing leaves half a row.
    """
    log = os.path.join(path, LOG_FILE)
    if not os.path.exists(log):
        return
    with open(log) as f:
        lines = f.read().splitlines(keepends=True)
    kept = lines[:1] + [
        line for line in lines[1:]
        if line.endswith("\n") and line.split(",")[0].isdigit()
        and int(line.split(",")[0]) < start_epoch
    ]
    if kept != lines:

        def write(temporary):
            with open(temporary, "w") as f:
                f.writelines(kept)

        _write_durably(log, write)


def is_chief():
    """Whether this process writes the run's files (one writer per cluster).

    True without a cluster (no `TF_CONFIG`), for the `chief` task, and for
    worker 0 of a cluster that has no `chief` task (TensorFlow's rule).
    """
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    task_type = resolver.task_type
    if not task_type:
        return True
    if task_type == "chief":
        return True
    jobs = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs


def run_callbacks(path, seed, checkpoint=True, tensorboard=True):
    """Keras callbacks of a resumable run in `path`, in the order they must run.

    The backup comes last, so an epoch's backup is written after its log
    row and checkpoint. In a multi-worker cluster only the chief
    (`is_chief`) writes the checkpoint, the CSV log and TensorBoard; every
    worker keeps its own backup (`backup/` on the chief, `backup-worker-N/` on the others) so that
    all of them resume at the same epoch.

    Args:
        path: The run directory.
        seed: The run's seed (for `EpochSeeds`).
        checkpoint: Add a `ModelCheckpoint` of the model each epoch.
        tensorboard: Add a `TensorBoard` log.

    Returns:
        A list of callbacks for `fit`.
    """
    # First: raises before anything saves a NaN model.
    callbacks = [StopOnNonFiniteLoss(), EpochSeeds(seed)]
    if is_chief():
        callbacks.append(
            keras.callbacks.CSVLogger(os.path.join(path, LOG_FILE), append=True)
        )
        if checkpoint:
            callbacks.append(
                keras.callbacks.ModelCheckpoint(os.path.join(path, CHECKPOINT_FILE))
            )
        if tensorboard:
            callbacks.append(
                keras.callbacks.TensorBoard(os.path.join(path, TENSORBOARD_DIR))
            )
    # Last: an epoch counts as done once everything else of it is written.
    callbacks.append(RunBackup(_backup_dir(path)))
    return callbacks


def fit_resumable(
    model,
    make_train_dataset,
    steps_per_epoch,
    epochs,
    path,
    seed=0,
    callbacks=(),
    checkpoint=True,
    tensorboard=True,
    **fit_kwargs,
):
    """Fits `model` so that an interrupted run continues where it stopped.

    Args:
        model: A compiled, built `keras.Model` (or `keras_kd.Distiller`).
        make_train_dataset: Function `start_epoch -> tf.data.Dataset` giving
            the epochs from `start_epoch` on, e.g.
            `lambda e: datasets.make_dataset(x, y, shuffle=True, start_epoch=e)`.
        steps_per_epoch: Batches per epoch (`datasets.steps_per_epoch`).
        epochs: Total number of epochs of the run.
        path: The run directory (see `prepare_run_dir`).
        seed: The run's seed.
        callbacks: More callbacks, run after the run's own.
        checkpoint: Save `checkpoint.keras` each epoch.
        tensorboard: Write TensorBoard logs.
        **fit_kwargs: Passed to `model.fit` (`validation_data`, `verbose`).

    Returns:
        The `History` of this part of the run.

    Example:

    ```python
    prepare_run_dir("runs/student", "fit", {"lr": 1e-3})
    fit_resumable(
        model,
        lambda epoch: datasets.make_dataset(x, y, shuffle=True, start_epoch=epoch),
        datasets.steps_per_epoch(len(x), 128),
        epochs=20,
        path="runs/student",
    )
    ```
    """
    os.makedirs(path, exist_ok=True)
    start_epoch = restored_epoch(path)
    if is_chief():
        _truncate_log(path, start_epoch)
    return model.fit(
        make_train_dataset(start_epoch),
        epochs=epochs,
        initial_epoch=start_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=run_callbacks(path, seed, checkpoint, tensorboard) + list(callbacks),
        # The dataset orders its own epochs; Keras would warn that it
        # ignores its default `shuffle=True`.
        **{"shuffle": False, **fit_kwargs},
    )
