"""Sweeps: the best setting on validation, and a resumed sweep's cells.

README, "Sweeps": the report names "the best distillation setting on
validation"; "Running the same command again skips the finished cells, so a
killed sweep or a grid with new temperatures only trains what is missing";
"Cells of a sweep are seeded one by one, so a resumed sweep trains exactly
the cells it skipped". One tiny grid (1 seed x 2 temperatures + scratch, 1
epoch of 3 batches) run uninterrupted, in two stages, and in two stages with
a torn last line between them, once per module (7 cells, ~10 s).
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
from conftest import make_mlp

import keras_kd
from keras_kd.studies import sweeps

GRID = {"temperatures": (1.0, 4.0), "alphas": (0.5,), "seeds": (0,)}


def _data():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=1.5, size=(4, 6))

    def split(n, seed):
        r = np.random.default_rng(seed)
        y = r.integers(0, 4, n)
        return (centres[y] + r.normal(size=(n, 6))).astype("float32"), y

    return split(48, 1), split(40, 2), split(40, 3)


def _teacher(train):
    keras.utils.set_random_seed(0)
    teacher = make_mlp([16], name="teacher")
    teacher.compile(keras.optimizers.Adam(0.05),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(*train, epochs=5, batch_size=48, verbose=0)
    return teacher


def _run(output, train, test, validation, teacher, **grid):
    return keras_kd.sweep(
        teacher, lambda: make_mlp([4], name="student"), train, test, str(output),
        epochs=1, batch_size=16, validation=validation,
        optimizer=lambda: keras.optimizers.Adam(0.05), **{**GRID, **grid})


def _cells(output):
    return {sweeps._cell_key(c): c for c in sweeps.read_cells(os.path.join(output, "cells.jsonl"))}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    train, test, validation = _data()
    teacher = _teacher(train)
    full_dir = tmp_path_factory.mktemp("full")
    full = _run(full_dir, train, test, validation, teacher)
    resumed_dir = tmp_path_factory.mktemp("resumed")
    first = _run(resumed_dir, train, test, validation, teacher, temperatures=(1.0,))
    torn_dir = tmp_path_factory.mktemp("torn") / "sweep"
    shutil.copytree(resumed_dir, torn_dir)
    resumed = _run(resumed_dir, train, test, validation, teacher)
    # A kill while the T = 4 cell was being appended leaves a torn last line.
    with open(torn_dir / "cells.jsonl", "a") as f:
        f.write('{"kind": "distilled", "alpha": 0.5, "temperature": 4.0, "se')
    torn = _run(torn_dir, train, test, validation, teacher)
    return {"full": (full_dir, full), "first": first, "resumed": (resumed_dir, resumed),
            "torn": (torn_dir, torn)}


def test_the_best_setting_on_validation_is_the_highest_validation_mean(runs):
    output, summary = runs["full"]
    cells = list(_cells(output).values())
    assert len(cells) == 3 and all("validation_accuracy" in c for c in cells)
    means = {}
    for cell in cells:
        if cell["kind"] == "distilled":
            means.setdefault((cell["alpha"], cell["temperature"]), []).append(
                cell["validation_accuracy"])
    means = {k: float(np.mean(v)) for k, v in means.items()}
    with open(output / "summary.json") as f:
        written = json.load(f)
    best = (written["best_alpha_on_validation"], written["best_temperature_on_validation"])
    assert best in means and means[best] == max(means.values())
    assert (f"Best setting on validation: alpha {best[0]}, T {best[1]}."
            in summary["markdown"])
    assert written["calibrated_temperature"] == pytest.approx(summary["calibrated_temperature"])
    for name in sweeps.SWEEP_FILES:
        assert (output / name).exists()


def test_the_best_setting_is_chosen_on_validation_not_on_test(tmp_path):
    """Rows whose best test accuracy and best validation accuracy differ."""
    rows = [
        {"setting": "scratch", "alpha": None, "temperature": None, "seeds": 2,
         "test_accuracy_mean": 0.99, "test_accuracy_std": 0.0, "validation_accuracy_mean": 0.99},
        {"setting": "distilled", "alpha": 0.1, "temperature": 1.0, "seeds": 2,
         "test_accuracy_mean": 0.95, "test_accuracy_std": 0.01, "validation_accuracy_mean": 0.80},
        {"setting": "distilled", "alpha": 0.5, "temperature": 4.0, "seeds": 2,
         "test_accuracy_mean": 0.90, "test_accuracy_std": 0.01, "validation_accuracy_mean": 0.85},
    ]
    markdown = sweeps.write_summary(str(tmp_path), rows, 1.5, "t")
    assert "Best setting on validation: alpha 0.5, T 4.0." in markdown
    with open(tmp_path / "summary.json") as f:
        written = json.load(f)
    assert (written["best_alpha_on_validation"], written["best_temperature_on_validation"]) == (
        0.5, 4.0)


def _same_cells(output, reference_dir):
    ours, reference = _cells(output), _cells(reference_dir)
    assert set(ours) == set(reference)
    for key, cell in reference.items():
        # Same seeds, same batches, op determinism on: the same students.
        assert ours[key]["test_accuracy"] == cell["test_accuracy"], key
        assert ours[key]["validation_accuracy"] == cell["validation_accuracy"], key


def test_a_resumed_sweep_trains_only_the_missing_cells_to_the_same_values(runs):
    assert runs["first"]["skipped"] == 0
    output, resumed = runs["resumed"]
    assert resumed["skipped"] == 2  # scratch and T = 1.
    full_dir, full = runs["full"]
    _same_cells(output, full_dir)
    assert resumed["rows"] == full["rows"]
    assert len((output / "cells.jsonl").read_text().splitlines()) == 3
    # The settings differ (the grid is not trivial).
    assert len({c["validation_accuracy"] for c in _cells(full_dir).values()}) > 1


def test_a_sweep_resumed_after_a_torn_line_keeps_every_cell(runs):
    """Failed before the torn tail was cut: the next cell was appended to the
    torn line, and both were lost."""
    output, torn = runs["torn"]
    assert torn["skipped"] == 2  # The torn cell is not counted as finished.
    full_dir, full = runs["full"]
    _same_cells(output, full_dir)
    assert torn["rows"] == full["rows"]
