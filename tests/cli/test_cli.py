import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_kd_cli as cli


DEMO = ["demo", "--teacher-epochs", "1", "--limit", "400", "--labels", "40", "--steps", "20"]


# A user's environment: no TF_CPP_MIN_LOG_LEVEL or absl settings of ours.
USER_ENVIRONMENT = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "ABSL"))}
TENSORFLOW_NOISE = ("I0000", "E0000", "W0000", "cuda", "oneDNN", "Warning", "WARNING")


def run_command(arguments, **kwargs):
    """`keras-kd ARGUMENTS` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-c", "import keras_kd_cli, sys; sys.exit(keras_kd_cli.main())",
         *arguments], capture_output=True, text=True, env=USER_ENVIRONMENT, timeout=600,
        **kwargs,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run in a fresh process: its output directory and printout."""
    output = tmp_path_factory.mktemp("demo") / "demo"
    completed = run_command(DEMO + ["--output", str(output)])
    assert completed.returncode == 0, completed.stderr[-2000:]
    return output, completed


def test_demo_writes_results_plot_and_student(demo_run, capsys):
    output, completed = demo_run
    printed = completed.stdout
    results = json.loads((output / "results.json").read_text())
    scenarios = results["scenarios"]
    assert [row["scenario"] for row in scenarios] == [
        "soft targets", "+ transfer set", "all labels, soft targets"]
    for row in scenarios:
        assert set(row) == {"scenario", "labels", "unlabelled", "teacher", "scratch", "distilled"}
        assert all(0.0 <= row[key] <= 1.0 for key in ("teacher", "scratch", "distilled"))
    assert [(r["labels"], r["unlabelled"]) for r in scenarios] == [(40, 0), (40, 360), (400, 0)]
    # One teacher, and the transfer set's baseline is the same few-label student.
    assert len({row["teacher"] for row in scenarios}) == 1
    assert scenarios[0]["scratch"] == scenarios[1]["scratch"]
    assert scenarios[0]["teacher"] > 0.2  # Better than chance.
    # Every student's record, with its seed, for the plot and for rereading.
    assert {(r["labels"], r["method"]) for r in results["records"]} == {
        (40, "scratch"), (40, "soft_targets"), (40, "transfer_set"),
        (400, "scratch"), (400, "soft_targets")}
    # The printed table fits a terminal and shows every scenario.
    long_lines = [
        line for line in printed.splitlines() if len(line) > 80 and str(output) not in line]
    assert not long_lines
    assert "+ transfer set" in printed and "all labels" in printed

    from matplotlib import image

    picture = image.imread(output / "demo.png")
    assert picture.shape[0] > 100 and picture.std() > 0.05

    import keras

    from keras_kd.data import datasets
    from keras_kd.studies import few_labels

    # student.keras is the transfer-set student: its test accuracy is the
    # table's "+ transfer set" entry (the same 2,000 test digits).
    student = keras.models.load_model(output / "student.keras")
    assert student.count_params() == 20_490
    _, (x_test, y_test) = datasets.load_preprocessed(limit=400)
    accuracy = few_labels.top1_accuracy(student, x_test, y_test)
    assert accuracy == pytest.approx(scenarios[1]["distilled"], abs=1e-9)

    # A second run into the same directory refuses to overwrite.
    assert cli.main(DEMO + ["--output", str(output)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_commands_print_no_tensorflow_log_lines(demo_run):
    """A user's run, in a fresh process with no TF_CPP_MIN_LOG_LEVEL set:
    no C++ log lines (I0000/E0000/W0000, CUDA probing, Grappler), no warnings."""
    _, completed = demo_run
    output = completed.stdout + completed.stderr
    for noise in TENSORFLOW_NOISE:
        assert noise not in output, output[-3000:]
    assert "+ transfer set" in completed.stdout


@pytest.mark.parametrize("entry", ["python -m keras_kd", "keras-kd"])
def test_a_command_prints_no_log_lines_on_this_backend(entry, tmp_path):
    """`evaluate` of a saved model (TensorFlow imported, tf.data read, the
    backend's step run) in a fresh process on this process's Keras backend
    (the JAX leg of .ci/run: KERAS_BACKEND=jax): no C++ log lines. Failed
    before for `python -m keras_kd` on both backends: Python imports the
    package, and with it TensorFlow, before `__main__` (CUDA probing lines)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    model.save(tmp_path / "model.keras")
    start = (["-m", "keras_kd"] if entry.startswith("python") else
             ["-c", "import keras_kd_cli, sys; sys.exit(keras_kd_cli.main())"])
    completed = subprocess.run(
        [sys.executable, *start, "evaluate", str(tmp_path / "model.keras"), "--source",
         "sample", "--limit", "64"], capture_output=True, text=True, timeout=600,
        env={**USER_ENVIRONMENT, "KERAS_BACKEND": keras.backend.backend()},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "accuracy" in completed.stdout
    for noise in TENSORFLOW_NOISE:
        assert noise not in completed.stdout + completed.stderr, completed.stderr[-3000:]


def test_demo_runs_on_jax(tmp_path):
    """`KERAS_BACKEND=jax keras-kd demo` at the smallest settings, in a fresh
    process: the same table, quiet, a student above chance whose saved
    file predicts (in this process, on this process's backend) the
    accuracy the run reported."""
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed in this Python (pip install jax[cpu])")
    output = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-c", "import keras_kd_cli, sys; sys.exit(keras_kd_cli.main())",
         *DEMO, "--output", str(output)], capture_output=True, text=True, timeout=900,
        env={**USER_ENVIRONMENT, "KERAS_BACKEND": "jax"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for noise in TENSORFLOW_NOISE:
        assert noise not in completed.stdout + completed.stderr, completed.stderr[-3000:]
    assert "+ transfer set" in completed.stdout
    results = json.loads((output / "results.json").read_text())
    scenarios = results["scenarios"]
    assert [(r["labels"], r["unlabelled"]) for r in scenarios] == [(40, 0), (40, 360), (400, 0)]
    # Chance is 0.10 on ten digit classes.
    assert scenarios[0]["teacher"] > 0.2
    assert all(row["distilled"] > 0.2 and row["scratch"] > 0.2 for row in scenarios)

    import keras

    from keras_kd.data import datasets
    from keras_kd.studies import few_labels

    student = keras.models.load_model(output / "student.keras")
    assert student.count_params() == 20_490
    _, (x_test, y_test) = datasets.load_preprocessed(limit=400)
    accuracy = few_labels.top1_accuracy(student, x_test, y_test)
    # On another backend float32 rounding may flip a digit or two of 2,000.
    same_backend = keras.backend.backend() == "jax"
    assert accuracy == pytest.approx(
        scenarios[1]["distilled"], abs=1e-9 if same_backend else 2.5 / len(y_test))


@pytest.mark.parametrize("arguments", [["--help"], ["demo", "--help"], ["distill", "--help"]])
def test_help_answers_without_importing_tensorflow(arguments):
    code = (
        "import sys, keras_kd_cli\n"
        "try:\n    keras_kd_cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow')"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code, *arguments], capture_output=True, text=True, check=True,
    )
    assert completed.stdout.strip().endswith("no tensorflow")
    assert "usage: keras-kd" in completed.stdout
    if arguments[0] == "demo":
        assert "bundled" in completed.stdout and "--overwrite" in completed.stdout


def test_help_of_the_installed_command():
    import shutil

    command = shutil.which("keras-kd")
    if command is None:
        pytest.skip("keras-kd is not on PATH (the package is not installed)")
    completed = subprocess.run([command, "--help"], capture_output=True, text=True, check=True)
    assert "demo" in completed.stdout and "--verbose" in completed.stdout


def test_model_names_match_the_builders():
    from keras_kd.models.builders import MODEL_BUILDERS

    assert set(cli.MODEL_NAMES) == set(MODEL_BUILDERS)


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["distil-everything"])


def test_python_dash_m_keras_kd_is_the_command(monkeypatch, capsys):
    """`python -m keras_kd` runs keras_kd_cli.main (here in this process: the
    module is what `-m` runs, as `__main__`)."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["keras_kd", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("keras_kd", run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage: keras-kd" in capsys.readouterr().out


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A small trained teacher, via `keras-kd train-teacher`."""
    output = tmp_path_factory.mktemp("runs") / "teacher"
    assert cli.main([
        "train-teacher", "--model", "keras-io-student", "--source", "sample",
        "--limit", "512", "--epochs", "1", "--output", str(output), "--quiet",
    ]) == 0
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "finished"
    # Chance is 0.10 on ten digit classes; one epoch on 512 digits is well above.
    assert record["results"]["test_accuracy"] > 0.3
    for name in ("model.keras", "checkpoint.keras", "log.csv"):
        assert (output / name).exists(), name
    assert any((output / "tensorboard").rglob("*tfevents*"))
    return output / "model.keras"


def test_distill_then_evaluate(teacher_file, tmp_path):
    output = tmp_path / "distill"
    arguments = [
        "distill", "--teacher", str(teacher_file), "--student", "keras-io-student",
        "--source", "sample", "--limit", "512", "--epochs", "2", "--output",
        str(output), "--quiet", "--validation-fraction", "0.1",
    ]
    assert cli.main(arguments) == 0
    results = json.loads((output / "run.json").read_text())["results"]
    # An untrained student is at chance (0.10); distilled, clearly above.
    assert results["test_accuracy"] > 0.3 and results["test_examples"] == 2000
    assert (output / "teacher_logits.npz").exists()
    log = (output / "log.csv").read_text().splitlines()
    assert "val_sparse_categorical_accuracy" in log[0] and len(log) == 3  # Header, 2 epochs.

    report = tmp_path / "evaluate.json"
    assert cli.main([
        "evaluate", str(output / "model.keras"), "--source", "sample", "--json", str(report),
    ]) == 0
    evaluated = json.loads(report.read_text())
    # The evaluate command agrees with the run's own test accuracy.
    assert evaluated["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-6)
    # The distiller checkpoint is evaluated through its student.
    assert cli.main([
        "evaluate", str(output / "checkpoint.keras"), "--source", "sample", "--json", str(report),
    ]) == 0
    assert json.loads(report.read_text())["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-6)

    # A second run into the same directory is refused; --resume with other
    # settings too; --resume with more epochs continues (training in stages).
    assert cli.main(arguments) == 2
    changed = arguments + ["--resume", "--alpha", "0.5"]
    assert cli.main(changed) == 2
    # (argparse keeps the last value of a repeated option.) A speed setting
    # may change between stages.
    assert cli.main(arguments + ["--epochs", "3", "--resume", "--steps-per-execution", "4"]) == 0
    assert len((output / "log.csv").read_text().splitlines()) == 4
    import keras

    # The option reaches compile (saved with the distiller's compile config).
    resumed = keras.models.load_model(output / "checkpoint.keras")
    assert resumed.steps_per_execution == 4


@pytest.mark.parametrize("value", ["0", "-3", "four"])
def test_steps_per_execution_must_be_a_positive_integer(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["distill", "--teacher", "t.keras", "--student", "keras-io-student",
                  "--output", "run", "--steps-per-execution", value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--steps-per-execution" in error and repr(value) in error


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["distill", "--teacher", "missing.keras", "--student", "keras-io-student"], "no such file"),
        (["distill", "--teacher", "{teacher}", "--student", "hinton-student"], "same inputs"),
        (["distill", "--teacher", "{teacher}", "--student", "keras-io-student", "--resume"], "Nothing to resume"),
        (["distill", "--teacher", "{teacher}", "--student", "keras-io-student", "--temperature", "0"], "temperature"),
        (["train-teacher", "--model", "keras-io-teacher", "--source", "files", "--data-dir", "nowhere"], "nowhere"),
        (["evaluate", "{not_a_model}"], "could not be loaded"),
    ],
)
def test_bad_input_is_a_clear_error(arguments, message, teacher_file, tmp_path, capsys):
    not_a_model = tmp_path / "notes.keras"
    not_a_model.write_text("not a model")
    arguments = [a.format(teacher=teacher_file, not_a_model=not_a_model) for a in arguments]
    if arguments[0] != "evaluate":
        arguments += ["--output", str(tmp_path / "run"), "--source", "sample"][
            : 2 if "--source" in arguments else 4
        ]
    assert cli.main(arguments + ["--quiet"] * (arguments[0] != "evaluate")) == 2
    assert message in capsys.readouterr().err
    # A refused command leaves no run behind.
    assert not (tmp_path / "run" / "run.json").exists()


def test_sweep_writes_a_table_and_skips_finished_cells(teacher_file, tmp_path):
    output = tmp_path / "sweep"
    arguments = [
        "sweep", "--teacher", str(teacher_file), "--student", "keras-io-student",
        "--source", "sample", "--limit", "256", "--epochs", "1",
        "--temperatures", "1", "4", "--seeds", "0", "1", "--output", str(output), "--quiet",
    ]
    assert cli.main(arguments) == 0
    summary = json.loads((output / "summary.json").read_text())
    settings = {(r["setting"], r["temperature"]) for r in summary["rows"]}
    assert settings == {("scratch", None), ("distilled", 1.0), ("distilled", 4.0)}
    assert all(r["seeds"] == 2 and r["test_accuracy_mean"] > 0.15 for r in summary["rows"])
    assert summary["calibrated_temperature"] > 0
    table = (output / "summary.md").read_text()
    assert table.count("| distilled |") == 2 and "Calibrated teacher temperature" in table

    from matplotlib import image

    assert image.imread(output / "sweep.png").std() > 0.05
    cells = (output / "cells.jsonl").read_text().splitlines()
    assert len(cells) == 6

    # Again, with one more temperature: only the 2 new cells run.
    assert cli.main(arguments + ["--temperatures", "1", "4", "10"]) == 0
    assert len((output / "cells.jsonl").read_text().splitlines()) == 8


# A `keras-kd` process that SIGKILLs itself at one moment of its run
# (argv[1]): "batch:E,B" before batch B of epoch E, or "backup:N" in the
# N-th backup's weights write, leaving the file half written.
KILLED_COMMAND = r"""
import os, signal, sys
import keras

def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

kind, where = sys.argv[1].split(":")
if kind == "batch":
    from keras_kd.studies import runs
    at = tuple(int(n) for n in where.split(","))

    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if (self.epoch, batch) == at:
                die()

    run_callbacks = runs.run_callbacks
    runs.run_callbacks = lambda *a, **k: run_callbacks(*a, **k) + [Kill()]
else:
    save, calls = keras.Model.save_weights, []

    def save_weights(model, filepath, *args, **kwargs):
        save(model, filepath, *args, **kwargs)
        calls.append(filepath)
        if len(calls) == int(where):
            with open(filepath, "r+b") as f:
                f.truncate(os.path.getsize(filepath) // 2)
            die()

    keras.Model.save_weights = save_weights
import keras_kd_cli
sys.exit(keras_kd_cli.main(sys.argv[2:]))
"""


def test_distill_killed_at_any_moment_resumes_to_the_same_weights(teacher_file, tmp_path, capsys):
    """SIGKILLed before the first backup, then in the middle of a backup's
    write, the run resumes each time and ends with the uninterrupted weights.
    (tests/studies/test_runs.py stops runs at more moments, in-process.)"""
    import signal

    import keras

    def arguments(output):
        return [
            "distill", "--teacher", str(teacher_file), "--student", "keras-io-student",
            "--source", "sample", "--limit", "256", "--epochs", "2",
            "--output", str(output), "--quiet", "--seed", "5",
        ]

    # The reference in this process: same machine, thread count and TF op
    # determinism (--seed) as the children, so bitwise equality is the claim.
    assert cli.main(arguments(tmp_path / "whole")) == 0
    interrupted = tmp_path / "interrupted"
    for kill_at, resume in (("batch:0,2", False), ("backup:2", True)):
        completed = subprocess.run(
            [sys.executable, "-c", KILLED_COMMAND, kill_at,
             *arguments(interrupted), *["--resume"] * resume],
            capture_output=True, text=True, timeout=600)
        assert completed.returncode == -signal.SIGKILL, (kill_at, completed.stderr[-3000:])
        assert not (interrupted / "model.keras").exists()
    # The resume reads only the run directory: it runs in this process (a
    # fresh one cost a TensorFlow import), like the reference.
    capsys.readouterr()
    assert cli.main(arguments(interrupted) + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "Resuming" in printed and "epoch 2 of 2" in printed
    whole = keras.models.load_model(tmp_path / "whole" / "model.keras").get_weights()
    resumed = keras.models.load_model(interrupted / "model.keras").get_weights()
    for expected, actual in zip(whole, resumed):
        np.testing.assert_array_equal(actual, expected)
    assert len((interrupted / "log.csv").read_text().splitlines()) == 3  # Header, 2 epochs.


def test_verbose_brings_tensorflow_log_lines_back(teacher_file, tmp_path):
    """--verbose shows TensorFlow's C++ log lines (at least Grappler's
    remapper line, which the keras.io models' Conv2D -> LeakyReLU training
    step gives); the quiet counterpart is the demo run above."""
    import re

    log_line = re.compile(r"^([IWEF]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )", re.M)
    completed = run_command([
        "distill", "--teacher", str(teacher_file), "--student", "keras-io-student",
        "--source", "sample", "--limit", "128", "--epochs", "1",
        "--output", str(tmp_path / "run"), "--quiet", "--verbose",
    ])
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert log_line.search(completed.stderr), completed.stderr[-3000:]
    assert log_line.search(completed.stdout) is None


def test_export_command_checks_each_file(teacher_file, tmp_path):
    output = tmp_path / "export"
    arguments = ["export", str(teacher_file), "--output", str(output), "--source", "sample", "--limit", "200"]
    assert cli.main(arguments) == 0
    report = json.loads((output / "export.json").read_text())
    assert set(report["formats"]) == {"keras", "saved_model", "tflite", "tflite_int8"}
    assert report["formats"]["saved_model"]["max_abs_difference"] < 1e-5
    assert report["formats"]["tflite"]["max_abs_difference"] < 1e-5
    accuracies = [row["accuracy"] for row in report["formats"].values()]
    # Every format keeps the teacher's accuracy (int8 within 2 points), well above chance.
    assert min(accuracies) > 0.3 and max(accuracies) - min(accuracies) < 0.02
    assert cli.main(arguments) == 2  # Refuses to overwrite.
