"""End-to-end runs of every example with tiny settings.

Each checks that the example finishes, writes its outputs, and that the
values it reports are the models' own: accuracies and error counts equal a
re-evaluation of the saved models in this process, tables equal their
records, teachers are above chance where the data is learnable (the MNIST
sample, CIFAR files whose classes are colours). Each example runs as
`python examples/NAME ARGS` would (conftest.run_example: as `__main__`,
with its own argv), in this process: a process per example cost its
TensorFlow import, 5-10 s apiece. Those whose models take a few steps each
run their steps eagerly (`eager=True`: tracing costs more than the steps,
and the library's tests check the traced steps); the ones of many steps,
and FitNets' (the only traced run of a Conv2D connector), stay traced. The
multi-teacher example also runs in a subprocess under JAX. Real-size
figures are in the README.
"""

import json
import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import EXAMPLES, run_example
from keras_kd.data import datasets


def sample_mnist_test():
    return datasets.select("mnist", "test", source="sample")


def assert_picture(path):
    from matplotlib import image

    picture = image.imread(path)
    assert picture.shape[0] > 100 and picture.std() > 0.05


def test_e1_keras_io(tmp_path):
    output = tmp_path / "e1.json"
    stdout = run_example("keras_io_distillation.py", "--seeds", "0", "--teacher-epochs", "1",
                         "--student-epochs", "1", "--limit", "256", "--json", output,
                         "--save-models", tmp_path / "models")
    results = json.loads(output.read_text())["results"]
    # Each reported accuracy is the saved model's own on the 2,000 test
    # digits (the Distillers' metric is their student's accuracy).
    x_test, y_test = sample_mnist_test()
    x_test = x_test.astype("float32") / 255.0
    for name, file in [("teacher", "teacher"), ("student (scratch)", "scratch"),
                       ("distilled, keras.io settings", "keras_io_settings"),
                       ("distilled, keras_kd defaults", "keras_kd_defaults")]:
        model = keras.models.load_model(tmp_path / "models" / f"{file}.keras", compile=False)
        predictions = np.argmax(model.predict(x_test, batch_size=32, verbose=0), axis=1)
        assert results[name][0] == pytest.approx(np.mean(predictions == y_test), abs=1e-6), name
        # The table prints the same numbers (mean +- std over the one seed).
        assert f"| {name:<30} | {f'{100 * results[name][0]:.2f} +- 0.00%':>17} |" in stdout
    # One epoch on 256 digits: the teacher is well above chance (0.10).
    assert results["teacher"][0] > 0.4


def test_e2_temperature_sweep(tmp_path):
    stdout = run_example("batchnorm_temperature_sweep.py", "--seeds", "0", "1", "--temperatures", "1", "4",
                         "--teacher-epochs", "1", "--student-epochs", "1", "--limit", "256",
                         "--output", tmp_path, eager=True)
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
                "--limit", "512", "--output", tmp_path, "--save-models", eager=True)
    report = json.loads((tmp_path / "e3.json").read_text())
    errors = report["test_errors"]
    assert len(errors) == 6
    # The error counts are the saved models' own, recounted on the test
    # digits; the student without threes as trained, then with its 3-logit
    # bias raised by the paper's 3.5 and by the fitted shift.
    x_test, y_test = sample_mnist_test()
    flat_test = datasets.preprocess(x_test, "mnist", layout="flat").numpy()
    assert report["test_digits"] == len(y_test) and report["threes"] == int((y_test == 3).sum())

    def recount(model):
        wrong = np.argmax(model.predict(flat_test, batch_size=512, verbose=0), axis=1) != y_test
        return [int(wrong.sum()), int((wrong & (y_test == 3)).sum())]

    for name, file in [("teacher", "teacher"), ("student alone", "student_alone"),
                       ("distilled", "distilled")]:
        model = keras.models.load_model(tmp_path / f"e3_{file}.keras", compile=False)
        assert [errors[name]["errors"][0], errors[name]["errors_on_threes"][0]] == recount(model), name
    without_threes = keras.models.load_model(tmp_path / "e3_without_threes.keras", compile=False)
    bias = without_threes.layers[-1].bias
    trained = bias.numpy().copy()
    fitted = report["fitted_shifts"][0]
    for name, shift in [("distilled without threes", 0.0), ("+ bias +3.5 (paper)", 3.5),
                        ("+ bias fitted on validation", fitted)]:
        shifted = trained.copy()
        shifted[3] += shift
        bias.assign(shifted)
        assert [errors[name]["errors"][0], errors[name]["errors_on_threes"][0]] == \
            recount(without_threes), name
    # A student that never saw a 3 gets (nearly) every 3 wrong until its
    # bias is raised; the fitted shift is one of the grid's.
    assert errors["distilled without threes"]["errors_on_threes"][0] >= 0.9 * report["threes"]
    assert fitted in np.arange(0.0, 10.01, 0.25)
    assert_picture(tmp_path / "e3_confusion.png")


PALETTE = np.random.default_rng(7).integers(30, 226, size=(10, 3))


def write_colour_cifar(directory, n_per_batch=16):
    """CIFAR-10 files in the real `cifar-10-batches-py` format whose class is
    the image's colour (plus noise): a frozen random backbone's pooled
    features separate them, so a trained head is above chance."""
    directory = os.path.join(directory, "cifar-10-batches-py")
    os.makedirs(directory)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(n_per_batch) % 10
        images = PALETTE[labels][:, None, None, :] + rng.integers(-25, 26, (n_per_batch, 32, 32, 3))
        data = images.clip(0, 255).astype(np.uint8).transpose(0, 3, 1, 2).reshape(n_per_batch, -1)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)]}
        with open(os.path.join(directory, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def cifar_test(cifar_dir):
    return datasets.select("cifar10", "test", data_dir=str(cifar_dir))


def test_e4_cifar_vgg_with_resume(tmp_path):
    cifar_dir = tmp_path / "cifar"
    write_colour_cifar(str(cifar_dir), n_per_batch=16)
    # The VGG16 teacher at an eighth of its filters (--teacher-width): the
    # same 13 convolutions, run directory, schedule and resume, 64x fewer
    # multiply-adds.
    arguments = ["--data-dir", cifar_dir, "--teacher-epochs", "1", "--student-epochs", "1",
                 "--soft-losses", "cse", "mse", "--temperatures", "4", "--output", tmp_path,
                 "--teacher-width", "0.125"]
    run_example("cifar10_vgg_distillation.py", *arguments, eager=True)
    results = json.loads((tmp_path / "e4.json").read_text())["test_accuracy"]
    assert set(results) == {"teacher", "scratch", "cse/0.5/4", "mse/0.5/4"}
    # Percentages of the 16 test images: each is a count of right answers,
    # 6.25 points apiece; the teacher's is its checkpoint's own.
    assert all(v / 6.25 == pytest.approx(round(v / 6.25), abs=1e-4) for v in results.values())
    x_test, y_test = cifar_test(cifar_dir)
    inputs_test = datasets.preprocess(x_test, "cifar10", "standardize").numpy()
    checkpoint = keras.models.load_model(tmp_path / "teacher" / "checkpoint.keras")
    predictions = np.argmax(checkpoint.predict(inputs_test, batch_size=256, verbose=0), axis=1)
    assert results["teacher"] == pytest.approx(100 * np.mean(predictions == y_test), abs=1e-4)
    # Training in stages: a second call with more teacher epochs continues
    # the teacher's run from epoch 1 (its optimizer's step count goes on:
    # 1 step per epoch of 80 images), and stops there (--teacher-only).
    steps = int(checkpoint.optimizer.iterations.numpy())
    assert steps == 1
    stdout = run_example("cifar10_vgg_distillation.py", *arguments[:2], "--teacher-epochs", "2",
                         *arguments[4:], "--resume", "--teacher-only", eager=True)
    log = (tmp_path / "teacher" / "log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == ["0", "1"]
    assert "Epoch 2/2" in stdout and "Epoch 1/2" not in stdout
    assert "scratch:" not in stdout and "Stopped after the teacher" in stdout
    resumed = keras.models.load_model(tmp_path / "teacher" / "checkpoint.keras")
    assert int(resumed.optimizer.iterations.numpy()) == 2 * steps


def test_e5_frozen_backbone(tmp_path):
    cifar_dir = tmp_path / "cifar"
    write_colour_cifar(str(cifar_dir), n_per_batch=32)  # 64 of 160 training, 32 test images.
    # A tiny backbone of one's own (random, frozen) and a ResNet-10 student:
    # the example's path, at a fraction of MobileNetV2's and ResNet-34's cost
    # (build_frozen_backbone_teacher's doctest builds a keras.applications one).
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Rescaling(10 / 255.0, -5.0),
                                 keras.layers.Conv2D(64, 3, activation="relu")])
    backbone.save(tmp_path / "backbone.keras")
    # 64 training images (--limit): one batch per epoch, so each student
    # trains one step and the head one per epoch.
    stdout = run_example("frozen_backbone_teacher.py", "--data-dir", cifar_dir, "--limit", 64,
                         "--backbone", tmp_path / "backbone.keras", "--student-blocks", 1, 1, 1, 1,
                         "--head-epochs", "60", "--student-epochs", "1", "--output", tmp_path,
                         eager=True)
    results = json.loads((tmp_path / "e5.json").read_text())["test_accuracy"]
    assert set(results) == {"teacher", "student (scratch)", "student (distilled)"}
    # Counts of right answers on the 32 test images, 3.125 points apiece.
    assert all(v / 3.125 == pytest.approx(round(v / 3.125), abs=1e-4) for v in results.values())
    # Only the head trained (60 steps on the 64 images: 59% here, 38% after 30), on colours a
    # random backbone keeps apart; chance is 10%.
    assert results["teacher"] > 40.0
    assert f"{64 * 10 + 10:,} trainable (the head)" in stdout
    # The saved student is the distilled one, whose accuracy is reported.
    x_test, y_test = cifar_test(cifar_dir)
    student = keras.models.load_model(tmp_path / "student.keras")
    assert [layer.name for layer in student.layers][-1] == "resnet"
    predictions = np.argmax(student.predict(x_test.astype("float32"), batch_size=256, verbose=0), 1)
    assert results["student (distilled)"] == pytest.approx(100 * np.mean(predictions == y_test),
                                                           abs=1e-4)
    for name, value in results.items():  # The table prints the JSON's values.
        assert f"| {name} | {value:.2f} |" in stdout, name


def test_soft_targets_few_labels(tmp_path):
    stdout = run_example("soft_targets_few_labels.py", "--labels", "20", "--seeds", "0", "1",
                         "--teacher-epochs", "1", "--steps", "3", "--limit", "600",
                         "--json", tmp_path / "few.json", "--plot", tmp_path / "few.png",
                         eager=True)
    report = json.loads((tmp_path / "few.json").read_text())
    records = report["records"]
    assert [(r["seed"], r["method"], r["labels"], r["unlabelled"]) for r in records] == [
        (s, m, 20, 580 if m == "transfer_set" else 0)
        for s in (0, 1) for m in ("scratch", "soft_targets", "transfer_set")]
    # One epoch on 600 digits: the teacher is far above chance (0.10).
    assert report["teacher_accuracy"] > 0.5
    for row in report["summary"]:
        accuracies = [r["test_accuracy"] for r in records if r["method"] == row["method"]]
        assert row["mean"] == pytest.approx(np.mean(accuracies))
        assert row["std"] == pytest.approx(np.std(accuracies, ddof=1))
    # The table prints those rows, gains over scratch included.
    by_method = {row["method"]: row for row in report["summary"]}
    cells = [f"{100 * by_method['scratch']['mean']:.2f} +- {100 * by_method['scratch']['std']:.2f}"]
    for method in ("soft_targets", "transfer_set"):
        row = by_method[method]
        gain = 100 * (row["mean"] - by_method["scratch"]["mean"])
        cells.append(f"{100 * row['mean']:.2f} +- {100 * row['std']:.2f} ({gain:+.2f})")
    assert "| 20 | " + " | ".join(cells) + " |" in stdout
    assert_picture(tmp_path / "few.png")


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
                         "--teacher-epochs", "1", "--output", tmp_path / "student.keras", eager=True)
    assert "teacher (56x56 images" in output and "distilled student (784 vectors" in output
    import keras

    student = keras.models.load_model(tmp_path / "student.keras")
    assert student.input_shape == (None, 784)


def printed_percentage(stdout, start):
    """The percentage on the printed line that starts with `start`."""
    line = next(line for line in stdout.splitlines() if line.startswith(start))
    return float(line.rsplit(":", 1)[1].split("%")[0])


def test_multi_teacher():
    # Teachers on 1,000 of the 8,000 digits (--limit), one epoch each.
    output = run_example("multi_teacher.py", "--teachers", "2", "--teacher-epochs", "1",
                         "--limit", "1000", "--labels", "60", "--steps", "10")
    assert "2-teacher arithmetic ensemble" in output
    accuracies = [printed_percentage(output, start) for start in (
        "teacher 0:", "teacher 1:", "ensemble (mean", "student from 60 labels + teacher 0",
        "student from 60 labels + 2-teacher")]
    # Each a count of right answers on the 2,000 test digits; the teachers
    # and their ensemble far above chance (10%).
    assert all(a / 0.05 == pytest.approx(round(a / 0.05), abs=1e-6) for a in accuracies)
    assert min(accuracies[:3]) > 40.0


def test_fitnets_hints(tmp_path):
    output = run_example("fitnets_hints.py", "--teacher-epochs", "1", "--limit", "1000",
                         "--labels", "60", "--steps", "10", "--output", tmp_path / "student.keras")
    assert "connector: Conv2D -> BatchNormalization -> ReLU" in output

    student = keras.models.load_model(tmp_path / "student.keras")
    assert student.count_params() == 20_490  # The student's own, no connector.
    # The printed accuracy is the saved student's own on the test digits.
    from keras_kd.studies import few_labels

    _, (x_test, y_test) = datasets.load_preprocessed(limit=1)
    accuracy = printed_percentage(output, "student with 60 labels + fitnet hint")
    assert accuracy == pytest.approx(100 * few_labels.top1_accuracy(student, x_test, y_test),
                                     abs=1e-6)
    assert printed_percentage(output, "teacher:") > 40.0


def test_multi_teacher_on_jax():
    """The ensemble example under KERAS_BACKEND=jax, whatever this process's
    backend (skipped where JAX is not installed): its printed ensemble
    accuracy is a percentage of the 2,000 test digits, above chance."""
    probe = subprocess.run([sys.executable, "-c", "import jax"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("jax is not installed for this Python")
    completed = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys, keras; assert keras.backend.backend() == 'jax'; "
         "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')",
         os.path.join(EXAMPLES, "multi_teacher.py"), "--teachers", "2", "--teacher-epochs", "1",
         "--labels", "20", "--steps", "2"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("ensemble (mean"))
    accuracy = float(line.split(":")[1].strip().rstrip("%"))
    assert accuracy / 0.05 == pytest.approx(round(accuracy / 0.05), abs=1e-6)  # n / 2,000.
    assert accuracy > 20.0  # One epoch: far above chance (10%).
    assert "2-teacher arithmetic ensemble" in completed.stdout
