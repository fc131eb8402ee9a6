"""End-to-end runs of every example with tiny settings, in subprocesses.

Each checks that the example finishes, writes its outputs, and that the
values are what they should be: above chance on the real MNIST sample,
counts of right answers on the synthetic CIFAR files (random pixels), error
counts within the test set, a picture with content. Real-size figures are in
the README.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_cifar_python

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def run_example(name, *arguments, cwd=None):
    completed = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *map(str, arguments)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def assert_picture(path):
    from matplotlib import image

    picture = image.imread(path)
    assert picture.shape[0] > 100 and picture.std() > 0.05


def test_e1_keras_io(tmp_path):
    output = tmp_path / "e1.json"
    run_example("keras_io_distillation.py", "--seeds", "0", "--teacher-epochs", "1",
                "--student-epochs", "1", "--limit", "256", "--json", output)
    results = json.loads(output.read_text())["results"]
    # Fractions of the 2,000 test digits; chance is 0.10.
    assert results["teacher"][0] > 0.4
    assert all(runs[0] > 0.12 for name, runs in results.items() if name != "teacher")


def test_e2_temperature_sweep(tmp_path):
    stdout = run_example("batchnorm_temperature_sweep.py", "--seeds", "0", "1", "--temperatures", "1", "4",
                         "--teacher-epochs", "1", "--student-epochs", "1", "--limit", "256",
                         "--output", tmp_path)
    summary = json.loads((tmp_path / "e2.json").read_text())["test_accuracy"]
    assert set(summary) == {"teacher", "scratch", "distilled, T=1", "distilled, T=4"}
    for row in summary.values():  # Percentages; the summary is that of the runs.
        assert len(row["runs"]) in (1, 2)
        assert row["mean"] == pytest.approx(np.mean(row["runs"]))
        assert row["std"] == pytest.approx(np.std(row["runs"], ddof=1) if len(row["runs"]) > 1 else 0.0)
    assert summary["teacher"]["mean"] > 10.0  # Above chance after one epoch.
    assert stdout.count("| distilled, T=") == 2
    assert_picture(tmp_path / "e2_temperature.png")


def test_e3_hinton_and_digit_three(tmp_path):
    run_example("hinton_mnist_mlp.py", "--seeds", "0", "--teacher-epochs", "1", "--student-epochs", "1",
                "--limit", "512", "--output", tmp_path)
    report = json.loads((tmp_path / "e3.json").read_text())
    errors = report["test_errors"]
    assert len(errors) == 6
    for row in errors.values():
        assert 0 <= row["errors"][0] <= report["test_digits"]
        assert 0 <= row["errors_on_threes"][0] <= min(row["errors"][0], report["threes"])
    # A student that never saw a 3 gets (nearly) every 3 wrong until its
    # bias is raised; the fitted shift is one of the grid's.
    assert errors["distilled without threes"]["errors_on_threes"][0] >= 0.9 * report["threes"]
    assert 0 <= report["fitted_shifts"][0] <= 10
    assert_picture(tmp_path / "e3_confusion.png")


@pytest.fixture
def cifar_dir(tmp_path):
    write_cifar_python(str(tmp_path / "cifar"), n_per_batch=16)
    return tmp_path / "cifar"


def test_e4_cifar_vgg_with_resume(tmp_path, cifar_dir):
    arguments = ["--data-dir", cifar_dir, "--teacher-epochs", "1", "--student-epochs", "1",
                 "--soft-losses", "cse", "mse", "--temperatures", "4", "--output", tmp_path]
    run_example("cifar10_vgg_distillation.py", *arguments)
    results = json.loads((tmp_path / "e4.json").read_text())["test_accuracy"]
    assert set(results) == {"teacher", "scratch", "cse/0.5/4", "mse/0.5/4"}
    # Percentages of the 16 synthetic test images (random pixels, so chance
    # level): each is a count of right answers, 6.25 points apiece.
    assert all(v / 6.25 == pytest.approx(round(v / 6.25), abs=1e-4) for v in results.values())
    # Training in stages: a second call with more teacher epochs continues
    # the teacher's run from epoch 1.
    stdout = run_example("cifar10_vgg_distillation.py", *arguments[:2], "--teacher-epochs", "2",
                         *arguments[4:], "--resume")
    log = (tmp_path / "teacher" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]
    assert "Epoch 2/2" in stdout and "Epoch 1/2" not in stdout


def test_e5_frozen_backbone(tmp_path, cifar_dir):
    run_example("frozen_backbone_teacher.py", "--data-dir", cifar_dir, "--backbone", "MobileNetV2",
                "--head-epochs", "1", "--student-epochs", "1", "--output", tmp_path)
    results = json.loads((tmp_path / "e5.json").read_text())["test_accuracy"]
    assert set(results) == {"teacher", "student (scratch)", "student (distilled)"}
    assert all(v / 6.25 == pytest.approx(round(v / 6.25), abs=1e-4) for v in results.values())
    assert (tmp_path / "student.keras").exists()


def test_custom_loss_subclass():
    stdout = run_example("custom_loss.py", "--epochs", "1", "--teacher-epochs", "1", "--limit", "256",
                         "--logit-weight", "0.25")
    assert "reloaded LogitMatchingDistiller with logit_weight=0.25" in stdout


def test_your_own_models(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 5)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
    np.savez(tmp_path / "mine.npz", x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    stdout = run_example("your_own_models.py", "--data", tmp_path / "mine.npz", "--classes", "3",
                         "--epochs", "30", "--output", tmp_path / "student.keras")
    accuracy = float(stdout.split("distilled student:")[1].split("test accuracy")[1].split("%")[0])
    assert accuracy > 60  # Chance is ~40% on this easy problem.
    assert (tmp_path / "student.keras").exists()


def test_teacher_with_other_inputs(tmp_path):
    output = run_example("teacher_with_other_inputs.py", "--limit", "300", "--epochs", "1",
                         "--teacher-epochs", "1", "--output", tmp_path / "student.keras")
    assert "teacher (56x56 images" in output and "distilled student (784 vectors" in output
    import keras

    student = keras.models.load_model(tmp_path / "student.keras")
    assert student.input_shape == (None, 784)


def test_multi_teacher():
    output = run_example("multi_teacher.py", "--teachers", "2", "--teacher-epochs", "1",
                         "--labels", "60", "--steps", "10")
    assert "teacher 1:" in output and "2-teacher arithmetic ensemble" in output


def test_fitnets_hints(tmp_path):
    output = run_example("fitnets_hints.py", "--teacher-epochs", "1", "--labels", "60",
                         "--steps", "10", "--output", tmp_path / "student.keras")
    assert "connector: Conv2D -> BatchNormalization -> ReLU" in output
    import keras

    student = keras.models.load_model(tmp_path / "student.keras")
    assert student.count_params() == 20_490  # The student's own, no connector.
