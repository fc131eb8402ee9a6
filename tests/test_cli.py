import json
import subprocess
import sys

import numpy as np
import pytest

from keras_kd import cli


def test_demo_writes_results_plot_and_student(tmp_path):
    output = tmp_path / "demo"
    arguments = [
        "demo", "--output", str(output), "--teacher-epochs", "1",
        "--student-epochs", "1", "--limit", "256", "--quiet",
    ]
    assert cli.main(arguments) == 0
    results = json.loads((output / "results.json").read_text())["test_accuracy"]
    assert set(results) == {"teacher", "student (scratch)", "student (distilled)"}
    assert all(0.0 <= value <= 1.0 for value in results.values())
    # Better than chance even after one epoch on 256 digits.
    assert results["teacher"] > 0.2

    from matplotlib import image

    picture = image.imread(output / "demo.png")
    assert picture.shape[0] > 100 and picture.std() > 0.05

    import keras

    student = keras.models.load_model(output / "student.keras")
    assert student.count_params() == 20_490

    # A second run into the same directory refuses to overwrite.
    with pytest.raises(SystemExit, match="--overwrite"):
        cli.main(arguments)


def test_help_lists_the_demo():
    completed = subprocess.run(
        [sys.executable, "-m", "keras_kd", "--help"],
        capture_output=True, text=True, check=True,
    )
    assert "demo" in completed.stdout
    completed = subprocess.run(
        [sys.executable, "-m", "keras_kd", "demo", "--help"],
        capture_output=True, text=True, check=True,
    )
    assert "bundled" in completed.stdout and "--overwrite" in completed.stdout


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit):
        cli.main(["distil-everything"])
