"""Temperature x alpha x seed sweeps of a distiller, resumable cell by cell.

`sweep` distils one teacher into fresh students for every combination,
from one cache of teacher logits, plus a student trained alone per seed.
Each finished cell is appended to `cells.jsonl` (flushed and synced), so a
sweep run again into the same directory trains only the cells it lacks. The
summary is written as `summary.csv`, `summary.json`, `summary.md` and
`sweep.png`.
"""

import csv
import json
import os
import time

import keras
import numpy as np

from keras_kd.studies import reporting
from keras_kd.distillation.cache import compute_teacher_logits
from keras_kd.studies.calibration import calibrate_temperature
from keras_kd.data.datasets import make_dataset
from keras_kd.distillation.distiller import Distiller

SWEEP_FILES = ("cells.jsonl", "summary.csv", "summary.json", "summary.md", "sweep.png")
ACCURACY = "sparse_categorical_accuracy"


def read_cells(path):
    """The finished cells in a `cells.jsonl` file (none if it is missing).

    A line cut short by a crash is skipped: that cell runs again.
    """
    if not os.path.exists(path):
        return []
    cells = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    cells.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return cells


def _drop_torn_tail(path):
    """Cuts a last line a crash left without its newline, so that the next
    cell appended starts a line of its own (else both would be lost)."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


def _cell_key(cell):
    return (cell["kind"], cell["alpha"], cell["temperature"], cell["seed"], cell["epochs"])


def summarise_cells(cells):
    """Mean and std over seeds per (kind, alpha, temperature), scratch first."""
    groups = {}
    for cell in cells:
        groups.setdefault((cell["kind"], cell["alpha"], cell["temperature"]), []).append(cell)
    rows = []
    for (kind, alpha, temperature), members in sorted(
        groups.items(), key=lambda item: (item[0][0] != "scratch", item[0][1] or 0, item[0][2] or 0)
    ):
        test = np.array([m["test_accuracy"] for m in members])
        row = {
            "setting": kind, "alpha": alpha, "temperature": temperature,
            "seeds": len(members), "test_accuracy_mean": float(test.mean()),
            "test_accuracy_std": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
        }
        if members[0].get("validation_accuracy") is not None:
            row["validation_accuracy_mean"] = float(
                np.mean([m["validation_accuracy"] for m in members]))
        rows.append(row)
    return rows


def write_summary(output, rows, calibrated_temperature, title):
    """Writes `summary.csv/.json/.md` and `sweep.png`; returns the Markdown."""
    fields = ["setting", "alpha", "temperature", "seeds", "test_accuracy_mean",
              "test_accuracy_std", "validation_accuracy_mean"]
    with open(os.path.join(output, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        writer.writerows(rows)
    distilled = [r for r in rows if r["setting"] == "distilled"]
    best = None
    if distilled and "validation_accuracy_mean" in distilled[0]:
        best = max(distilled, key=lambda r: r["validation_accuracy_mean"])
    summary = {
        "rows": rows,
        "calibrated_temperature": calibrated_temperature,
        "best_temperature_on_validation": best and best["temperature"],
        "best_alpha_on_validation": best and best["alpha"],
    }
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [f"### {title}", "",
             "| setting | alpha | T | seeds | test accuracy (%) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {'' if r['alpha'] is None else r['alpha']} | "
            f"{'' if r['temperature'] is None else r['temperature']} | {r['seeds']} | "
            f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_std']:.2f} |"
        )
    lines.append("")
    if calibrated_temperature is not None:
        lines.append(f"Calibrated teacher temperature (validation NLL): {calibrated_temperature:.2f}.")
    if best is not None:
        lines.append(f"Best setting on validation: alpha {best['alpha']}, T {best['temperature']}.")
    markdown = "\n".join(lines)
    with open(os.path.join(output, "summary.md"), "w") as f:
        f.write(markdown + "\n")
    reporting.plot_sweep(rows, calibrated_temperature, os.path.join(output, "sweep.png"), title)
    return markdown


def sweep(
    teacher,
    build_student,
    train,
    test,
    output,
    temperatures=(1.0, 2.0, 4.0, 10.0),
    alphas=(0.1,),
    seeds=(0, 1, 2),
    epochs=3,
    validation=None,
    scratch=True,
    optimizer=lambda: keras.optimizers.Adam(1e-3),
    distillation_loss_fn="kl_divergence",
    batch_size=64,
    steps_per_execution=1,
    title="sweep",
    on_cell=None,
):
    """Distils `teacher` into fresh students over temperatures, alphas, seeds.

    Args:
        teacher: The trained teacher (frozen; its logits are cached once in
            `output/teacher_logits.npz`).
        build_student: A function `() -> keras.Model` that outputs logits;
            called after `keras.utils.set_random_seed(seed)` for each cell.
        train: `(x, y)` preprocessed training arrays.
        test: `(x, y)` test arrays.
        output: Directory for the cells, the summary files and the cache.
        temperatures: Temperatures to try.
        alphas: Weights of the label loss to try.
        seeds: Seeds; each cell of the grid runs once per seed.
        epochs: Epochs per student.
        validation: Optional `(x, y)`: each cell is also scored on it, the
            summary names the best setting on it, and the teacher's
            calibrated temperature is computed on it.
        scratch: Also train a student alone per seed.
        optimizer: A function returning a fresh optimizer per cell.
        distillation_loss_fn: Passed to `Distiller.compile`.
        batch_size: Batch size.
        steps_per_execution: Passed to `compile`.
        title: Title of the table and plot.
        on_cell: Optional function `(cell, done, total)` called after each
            cell finishes (e.g. a progress bar).

    Returns:
        A dict: `rows` (mean and std over seeds per setting),
        `calibrated_temperature`, `markdown` (the table), `skipped` (cells
        found finished in `output`).

    Example:

    ```python
    summary = keras_kd.sweep(teacher, models.build_keras_io_student,
                             (x_train, y_train), (x_test, y_test), "runs/sweep",
                             temperatures=[1, 4], seeds=[0, 1])
    print(summary["markdown"])
    ```
    """
    os.makedirs(output, exist_ok=True)
    x_train, y_train = train
    x_test, y_test = test
    teacher_logits = compute_teacher_logits(
        teacher, x_train, path=os.path.join(output, "teacher_logits.npz")
    )
    calibrated = None
    if validation is not None:
        calibrated = calibrate_temperature(teacher, validation)

    cells_path = os.path.join(output, "cells.jsonl")
    _drop_torn_tail(cells_path)
    finished = {_cell_key(c) for c in read_cells(cells_path)}
    grid = []
    for seed in seeds:
        if scratch:
            grid.append(("scratch", None, None, seed))
        for alpha in alphas:
            for temperature in temperatures:
                grid.append(("distilled", alpha, temperature, seed))
    todo = [g for g in grid if (*g, epochs) not in finished]
    for index, (kind, alpha, temperature, seed) in enumerate(todo):
        start = time.monotonic()
        keras.utils.set_random_seed(seed)
        student = build_student()
        if kind == "scratch":
            model = student
            model.compile(
                optimizer=optimizer(),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[ACCURACY], steps_per_execution=steps_per_execution,
            )
            logits = None
        else:
            model = Distiller(student=student, teacher=teacher)
            model.compile(optimizer=optimizer(), metrics=[ACCURACY], alpha=alpha,
                          temperature=temperature, distillation_loss_fn=distillation_loss_fn,
                          steps_per_execution=steps_per_execution)
            logits = teacher_logits
        dataset = make_dataset(
            x_train, y_train, name=None, scaling=None, batch_size=batch_size,
            shuffle=True, seed=seed, teacher_logits=logits,
        )
        model.fit(dataset, epochs=epochs, verbose=0, shuffle=False)  # `dataset` shuffles.
        cell = {"kind": kind, "alpha": alpha, "temperature": temperature, "seed": seed,
                "epochs": epochs}
        cell["test_accuracy"] = float(
            model.evaluate(x_test, y_test, verbose=0, return_dict=True)[ACCURACY])
        if validation is not None:
            cell["validation_accuracy"] = float(
                model.evaluate(*validation, verbose=0, return_dict=True)[ACCURACY])
        cell["seconds"] = round(time.monotonic() - start, 2)
        with open(cells_path, "a") as f:
            f.write(json.dumps(cell) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if on_cell is not None:
            on_cell(cell, index + 1, len(todo))

    wanted = {(*g, epochs) for g in grid}
    cells = [c for c in read_cells(cells_path) if _cell_key(c) in wanted]
    rows = summarise_cells(cells)
    markdown = write_summary(output, rows, calibrated, title)
    return {"rows": rows, "calibrated_temperature": calibrated, "markdown": markdown,
            "skipped": len(grid) - len(todo)}
