"""The commands of the `keras-kd` command line.

`keras_kd_cli` parses the arguments (without importing TensorFlow) and calls
one `run_*` function here with them.
"""

import json
import os
import time

def _check_output_dir(path, overwrite, expected_files):
    """Refuses to overwrite results of an earlier run without --overwrite."""
    existing = [f for f in expected_files if os.path.exists(os.path.join(path, f))]
    if existing and not overwrite:
        raise ValueError(
            f"--output {path} already holds {', '.join(existing)} from "
            "an earlier run. Choose another directory or pass --overwrite."
        )
    os.makedirs(path, exist_ok=True)


def run_demo(args):
    """Where distillation helps: few labels, a transfer set, all labels."""
    import keras

    from keras_kd import datasets
    from keras_kd import few_labels
    from keras_kd import models
    from keras_kd import reporting
    from keras_kd.cache import compute_teacher_logits

    files = ("results.json", "demo.png", "student.keras")
    _check_output_dir(args.output, args.overwrite, files)
    start = time.monotonic()

    def stage(text):
        if not args.quiet:
            print(f"{text} [{time.monotonic() - start:.0f} s]", flush=True)

    x_train, y_train = datasets.select("mnist", "train", source="sample", limit=args.limit)
    x_test, y_test = datasets.select("mnist", "test", source="sample")
    if max(args.labels) >= len(x_train):
        raise ValueError(
            f"--labels must be below the {len(x_train):,} training digits: they "
            f"are the few-label budgets. Received: --labels {max(args.labels)}."
        )
    x_train = datasets.preprocess(x_train, "mnist").numpy()
    x_test = datasets.preprocess(x_test, "mnist").numpy()
    print(f"MNIST sample: {len(x_train):,} training and {len(x_test):,} test digits")

    keras.utils.set_random_seed(args.seed)
    # The keras.io architecture at 64/128 filters: as accurate on this sample
    # as the 256/512 original (96.4% vs 96.6%) at a tenth of its cost.
    teacher = models.build_strided_cnn((64, 128), name="teacher")
    student_parameters = models.build_keras_io_student().count_params()
    stage(f"1/3 teacher ({teacher.count_params():,} parameters): "
          f"{args.teacher_epochs} epochs on {len(x_train):,} labels")
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x_train, y_train, batch_size=64, epochs=args.teacher_epochs,
                verbose=0 if args.quiet else 2)
    teacher_accuracy = few_labels.top1_accuracy(teacher, x_test, y_test)
    teacher_logits = compute_teacher_logits(teacher, x_train)
    stage(f"    teacher {100 * teacher_accuracy:.2f}%; its logits on the training "
          "digits computed once")

    budgets = sorted(set(args.labels))
    stage(f"2/3 students ({student_parameters:,} parameters): "
          f"{', '.join(f'{n:,}' for n in budgets)} and {len(x_train):,} labels")

    def report(record):
        stage(f"    {record['labels']:>5,} labels, {record['method']:<12} "
              f"{100 * record['test_accuracy']:6.2f}%")

    records = few_labels.few_label_study(
        teacher, models.build_keras_io_student, x_train, y_train, x_test, y_test,
        label_counts=budgets + [len(x_train)], seeds=[args.seed], steps=args.steps,
        teacher_logits=teacher_logits, on_result=report,
    )
    scenarios = demo_scenarios(records, teacher_accuracy, len(x_train))
    elapsed = time.monotonic() - start

    stage("3/3 results")
    ratio = round(teacher.count_params() / student_parameters)
    print(f"\nTest accuracy on {len(x_test):,} held-out digits (teacher "
          f"{100 * teacher_accuracy:.2f}%, student {ratio}x smaller):")
    print(demo_table(scenarios))
    gain = 100 * (scenarios[-1]["distilled"] - scenarios[-1]["scratch"])
    if gain < 1.0:
        print(f"With all {len(x_train):,} labels the teacher adds little ({gain:+.2f} points "
              "with this seed):\nsoft targets pay where labels are few.")
    print(f"{elapsed:.0f} s")

    transfer_student = next(r["student"] for r in records if r["method"] == "transfer_set")
    transfer_student.save(os.path.join(args.output, "student.keras"))
    for record in records:
        del record["student"]
    reporting.plot_label_budget(
        few_labels.summarise(records), teacher_accuracy,
        os.path.join(args.output, "demo.png"),
        f"keras-kd demo: MNIST sample, seed {args.seed}",
    )
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(
            {"scenarios": scenarios, "records": records, "seconds": elapsed,
             "arguments": {k: v for k, v in vars(args).items() if k != "run"}},
            f, indent=2,
        )
    print(f"Wrote {', '.join(files)} to {args.output}")


def demo_scenarios(records, teacher_accuracy, num_train):
    """The demo's scenarios from the study's records, in table order.

    Each label budget gives two scenarios, the soft targets and the transfer
    set (both against the same student alone); all labels gives one.
    """
    accuracy = {(r["labels"], r["method"]): r["test_accuracy"] for r in records}
    scenarios = []
    for labels in sorted({r["labels"] for r in records}):
        for method, name in (("soft_targets", "soft targets"), ("transfer_set", "+ transfer set")):
            if (labels, method) not in accuracy:
                continue
            scenarios.append({
                "scenario": name if labels < num_train else "all labels, soft targets",
                "labels": labels,
                "unlabelled": num_train - labels if method == "transfer_set" else 0,
                "teacher": teacher_accuracy,
                "scratch": accuracy[labels, "scratch"],
                "distilled": accuracy[labels, method],
            })
    return scenarios


def demo_table(scenarios):
    """The demo's results as a table that fits an 80-column terminal."""
    lines = [f"  {'scenario':<26}{'labels':>7}{'unlabelled':>11}{'scratch':>9}"
             f"{'distilled':>10}{'gain':>8}"]
    for row in scenarios:
        unlabelled = f"{row['unlabelled']:,}" if row["unlabelled"] else "-"
        lines.append(
            f"  {row['scenario']:<26}{row['labels']:>7,}{unlabelled:>11}"
            f"{100 * row['scratch']:>8.2f}%{100 * row['distilled']:>9.2f}%"
            f"{100 * (row['distilled'] - row['scratch']):>+8.2f}"
        )
    return "\n".join(lines)


ACCURACY = "sparse_categorical_accuracy"
DEFAULT_SCALING = {"mnist": "unit", "cifar10": "standardize"}


def _load_keras_model(path, argument):
    """Loads a `.keras` file in Keras' safe mode, with a clear error."""
    import keras

    import keras_kd  # noqa: F401  (registers the serializable classes)

    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{argument} {path}: no such file. Pass a model saved with "
            "`model.save('....keras')`, e.g. the model.keras of a "
            "`keras-kd train-teacher` run."
        )
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for foreign files.
        raise ValueError(
            f"{argument} {path} could not be loaded as a Keras model "
            f"({type(error).__name__}: {error}). Pass a `.keras` file written "
            "by `model.save`."
        ) from None


def _load_student(path):
    """A saved model; for a saved distiller, its student."""
    from keras_kd import Distiller

    model = _load_keras_model(path, "model")
    return model.student if isinstance(model, Distiller) else model


def _scaling(args):
    return args.scaling or DEFAULT_SCALING[args.dataset]


def _optimizer(args):
    import keras

    if args.optimizer == "sgd":
        return keras.optimizers.SGD(args.learning_rate, momentum=0.9)
    return keras.optimizers.Adam(args.learning_rate)


class _Data:
    """The splits of one command, as raw uint8 images and labels."""

    def __init__(self, args, layout):
        from keras_kd import datasets

        self.name = args.dataset
        self.layout = layout
        self.scaling = _scaling(args)
        source = dict(
            source=args.source, data_dir=args.data_dir,
            validation_fraction=args.validation_fraction, seed=args.seed,
        )
        self.x_train, self.y_train = datasets.select(
            args.dataset, "train", exclude_classes=tuple(args.exclude_classes or ()),
            limit=args.limit, **source,
        )
        self.validation = None
        if args.validation_fraction:
            self.validation = datasets.select(args.dataset, "validation", **source)
        self.x_test, self.y_test = datasets.select(args.dataset, "test", **source)
        self.image_shape = self.x_train.shape[1:]

    def inputs(self, images):
        """Preprocessed float32 inputs, as NumPy."""
        from keras_kd import datasets

        return datasets.preprocess(images, self.name, self.scaling, self.layout).numpy()

    def evaluation_dataset(self, images, labels, batch_size):
        from keras_kd import datasets

        return datasets.make_dataset(
            images, labels, name=self.name, batch_size=batch_size,
            scaling=self.scaling, layout=self.layout,
        )


def _fit_run(args, model, data, teacher_logits=None):
    """Trains `model` (a model or a distiller) resumably in args.output."""
    from keras_kd import datasets
    from keras_kd import runs

    if teacher_logits is not None:
        x_train = data.inputs(data.x_train)

        def train_dataset(start_epoch):
            return datasets.make_dataset(
                x_train, data.y_train, name=None, scaling=None,
                batch_size=args.batch_size, shuffle=True, seed=args.seed,
                teacher_logits=teacher_logits, start_epoch=start_epoch,
            )
    else:

        def train_dataset(start_epoch):
            return datasets.make_dataset(
                data.x_train, data.y_train, name=data.name,
                batch_size=args.batch_size, shuffle=True, seed=args.seed,
                augment=args.augment, scaling=data.scaling, layout=data.layout,
                start_epoch=start_epoch,
            )

    validation = None
    if data.validation is not None:
        validation = data.evaluation_dataset(*data.validation, args.batch_size)
    start = runs.restored_epoch(args.output)
    if start:
        print(f"Resuming {args.output} at epoch {start + 1} of {args.epochs}")
    runs.fit_resumable(
        model,
        train_dataset,
        datasets.steps_per_epoch(len(data.x_train), args.batch_size),
        args.epochs,
        args.output,
        seed=args.seed,
        validation_data=validation,
        verbose=0 if args.quiet else 2,
    )


def _test_results(model, data, batch_size):
    test = data.evaluation_dataset(data.x_test, data.y_test, batch_size)
    results = model.evaluate(test, verbose=0, return_dict=True)
    return {"test_accuracy": float(results[ACCURACY]), "test_examples": len(data.x_test)}


def _compile_classifier(model, optimizer="adam", steps_per_execution=1):
    import keras

    from keras_kd.distiller import ends_in_softmax

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not ends_in_softmax(model)
        ),
        metrics=[ACCURACY],
        steps_per_execution=steps_per_execution,
    )
    return model


def _settings(args):
    return {
        k: v for k, v in vars(args).items() if k not in ("run", "command", "output")
    }


def run_train_teacher(args):
    from keras_kd import models
    from keras_kd import runs

    # Data first: a missing dataset must not leave a half-made run behind.
    data = _Data(args, models.model_layout(args.model))
    runs.prepare_run_dir(args.output, "train-teacher", _settings(args), args.resume, args.overwrite)
    runs.set_determinism(args.seed, ops=not args.nondeterministic)
    model, _ = models.build_model(args.model, data.image_shape)
    _compile_classifier(model, _optimizer(args), args.steps_per_execution)
    _fit_run(args, model, data)
    model.save(os.path.join(args.output, "model.keras"))
    results = _test_results(model, data, args.batch_size)
    runs.finish_run(args.output, results)
    print(f"{args.model}: test accuracy {100 * results['test_accuracy']:.2f}% "
          f"on {results['test_examples']} examples; wrote {args.output}/model.keras")


def _teacher_and_layout(args):
    """The --teacher model and the input layout it shares with --student."""
    from keras_kd import models

    teacher = _load_keras_model(args.teacher, "--teacher")
    layout = models.input_layout(teacher)
    student_layout = models.model_layout(args.student)
    if layout != student_layout:
        raise ValueError(
            f"--teacher {args.teacher} takes {layout} inputs but --student "
            f"{args.student} takes {student_layout} inputs; they must read the "
            "same inputs. Choose a matching pair (e.g. hinton-teacher and "
            "hinton-student)."
        )
    return teacher, layout


def run_distill(args):
    from keras_kd import Distiller
    from keras_kd import models
    from keras_kd import runs
    from keras_kd.cache import compute_teacher_logits
    from keras_kd.validation import validate_fraction
    from keras_kd.validation import validate_temperature

    # Everything that can be refused is checked before the run directory
    # is made, so a refused command leaves nothing behind.
    validate_temperature(args.temperature, "--temperature")
    validate_fraction(args.alpha, "--alpha")
    teacher, layout = _teacher_and_layout(args)
    data = _Data(args, layout)
    runs.prepare_run_dir(args.output, "distill", _settings(args), args.resume, args.overwrite)
    runs.set_determinism(args.seed, ops=not args.nondeterministic)
    student, _ = models.build_model(args.student, data.image_shape)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=_optimizer(args), metrics=[ACCURACY], alpha=args.alpha,
        temperature=args.temperature, distillation_loss_fn=args.loss,
        steps_per_execution=args.steps_per_execution,
    )
    teacher_logits = None
    if not args.augment:
        # Un-augmented inputs: the teacher runs once, and each epoch costs
        # a student epoch. The file is keyed and re-used on --resume.
        teacher_logits = compute_teacher_logits(
            teacher, data.inputs(data.x_train),
            path=os.path.join(args.output, "teacher_logits.npz"),
        )
    _fit_run(args, distiller, data, teacher_logits)
    student.save(os.path.join(args.output, "model.keras"))
    results = _test_results(distiller, data, args.batch_size)
    runs.finish_run(args.output, results)
    print(f"{args.student} distilled from {args.teacher}: test accuracy "
          f"{100 * results['test_accuracy']:.2f}% on {results['test_examples']} "
          f"examples; wrote {args.output}/model.keras")


def run_evaluate(args):
    from keras_kd import datasets
    from keras_kd import models

    model = _load_student(args.model)
    _compile_classifier(model)
    args.validation_fraction = args.validation_fraction if args.split == "validation" else 0.0
    images, labels = datasets.select(
        args.dataset, args.split, source=args.source, data_dir=args.data_dir,
        validation_fraction=args.validation_fraction, seed=args.seed, limit=args.limit,
    )
    dataset = datasets.make_dataset(
        images, labels, name=args.dataset, batch_size=args.batch_size,
        scaling=_scaling(args),
        layout=models.input_layout(model),
    )
    results = model.evaluate(dataset, verbose=0, return_dict=True)
    report = {
        "model": args.model, "dataset": args.dataset, "split": args.split,
        "examples": len(labels), "accuracy": float(results[ACCURACY]),
        "loss": float(results["loss"]),
    }
    print(f"{args.model} on {args.dataset} {args.split} ({len(labels)} examples): "
          f"accuracy {100 * report['accuracy']:.2f}%, loss {report['loss']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def run_export(args):
    import numpy as np
    import tensorflow as tf

    from keras_kd import datasets
    from keras_kd import export
    from keras_kd import models

    model = _load_student(args.model)
    _check_output_dir(
        args.output, args.overwrite,
        ("saved_model", "student.tflite", "student_int8.tflite", "export.json"),
    )
    layout = models.input_layout(model)
    scaling = _scaling(args)
    source = dict(source=args.source, data_dir=args.data_dir)
    x_train, _ = datasets.select(args.dataset, "train", limit=500, **source)
    x_test, y_test = datasets.select(args.dataset, "test", limit=args.limit, **source)
    x_train = datasets.preprocess(x_train, args.dataset, scaling, layout).numpy()
    x_test = datasets.preprocess(x_test, args.dataset, scaling, layout).numpy()
    paths = export.export_student(model, args.output, args.formats, representative_data=x_train)

    # Check each file against the Keras model on the test split.
    reference = model.predict(x_test, batch_size=256, verbose=0)
    predictions = {"keras": reference}
    if "saved_model" in paths:
        served = tf.saved_model.load(paths["saved_model"])
        predictions["saved_model"] = np.concatenate(
            [served.serve(x_test[i:i + 256]).numpy() for i in range(0, len(x_test), 256)]
        )
    for name in ("tflite", "tflite_int8"):
        if name in paths:
            predictions[name] = export.tflite_predict(paths[name], x_test, batch_size=256, use_xnnpack=False)
    report = {"model": args.model, "files": paths, "test_examples": len(y_test), "formats": {}}
    print(f"{'format':<12} {'accuracy':>9} {'max |logit - keras|':>20}  file")
    for name, outputs in predictions.items():
        row = {
            "accuracy": float((outputs.argmax(axis=1) == y_test).mean()),
            "max_abs_difference": float(np.abs(outputs - reference).max()),
        }
        report["formats"][name] = row
        print(f"{name:<12} {100 * row['accuracy']:8.2f}% {row['max_abs_difference']:20.2e}  {paths.get(name, args.model)}")
    with open(os.path.join(args.output, "export.json"), "w") as f:
        json.dump(report, f, indent=2)


SWEEP_FILES = ("cells.jsonl", "summary.csv", "summary.json", "summary.md", "sweep.png")


def _read_cells(path):
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
                    # A line cut short by a crash: that cell runs again.
                    continue
    return cells


def _cell_key(cell):
    return (cell["kind"], cell["alpha"], cell["temperature"], cell["seed"], cell["epochs"])


def _summarise(cells):
    """Mean and std over seeds per (kind, alpha, temperature)."""
    import numpy as np

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
            row["validation_accuracy_mean"] = float(np.mean([m["validation_accuracy"] for m in members]))
        rows.append(row)
    return rows


def _write_sweep_report(output, rows, calibrated_temperature, title):
    import csv

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

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
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump({
            "rows": rows,
            "calibrated_temperature": calibrated_temperature,
            "best_temperature_on_validation": best and best["temperature"],
            "best_alpha_on_validation": best and best["alpha"],
        }, f, indent=2)
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
    with open(os.path.join(output, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    figure, axis = plt.subplots(figsize=(6, 4))
    for alpha in sorted({r["alpha"] for r in distilled}):
        points = sorted((r for r in distilled if r["alpha"] == alpha), key=lambda r: r["temperature"])
        axis.errorbar(
            [p["temperature"] for p in points],
            [100 * p["test_accuracy_mean"] for p in points],
            yerr=[100 * p["test_accuracy_std"] for p in points],
            marker="o", capsize=3, label=f"distilled, alpha {alpha}",
        )
    for r in rows:
        if r["setting"] == "scratch":
            axis.axhline(100 * r["test_accuracy_mean"], color="grey", linestyle="--", label="student from scratch")
    if calibrated_temperature is not None:
        axis.axvline(calibrated_temperature, color="#c44e52", linestyle=":", label="calibrated T")
    axis.set_xscale("log")
    axis.set_xlabel("temperature T")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(output, "sweep.png"), dpi=120)
    plt.close(figure)
    return "\n".join(lines)


def run_sweep(args):
    import keras

    from keras_kd import Distiller
    from keras_kd import datasets
    from keras_kd import models
    from keras_kd import runs
    from keras_kd.cache import compute_teacher_logits
    from keras_kd.calibration import calibrate_temperature

    teacher, layout = _teacher_and_layout(args)
    args.seed = args.seeds[0]  # Seed of the validation split.
    args.augment = False
    data = _Data(args, layout)
    # The grid may grow between runs; everything else must match.
    exists = os.path.exists(os.path.join(args.output, runs.RUN_FILE))
    runs.prepare_run_dir(
        args.output, "sweep", _settings(args), resume=exists and not args.overwrite,
        overwrite=args.overwrite,
        resumable=runs.RESUMABLE_SETTINGS + ("temperatures", "alphas", "seeds", "seed"),
    )
    runs.set_determinism(args.seed, ops=not args.nondeterministic)
    x_train = data.inputs(data.x_train)
    # One teacher pass for every cell of the sweep.
    teacher_logits = compute_teacher_logits(
        teacher, x_train, path=os.path.join(args.output, "teacher_logits.npz")
    )
    calibrated = None
    validation = None
    if data.validation is not None:
        x_val, y_val = data.validation
        x_val = data.inputs(x_val)
        calibrated = calibrate_temperature(teacher, (x_val, y_val))
        validation = (x_val, y_val)
    x_test = data.inputs(data.x_test)

    cells_path = os.path.join(args.output, "cells.jsonl")
    finished = {_cell_key(c) for c in _read_cells(cells_path)}
    grid = []
    for seed in args.seeds:
        if not args.no_scratch:
            grid.append(("scratch", None, None, seed))
        for alpha in args.alphas:
            for temperature in args.temperatures:
                grid.append(("distilled", alpha, temperature, seed))
    todo = [g for g in grid if (*g, args.epochs) not in finished]
    print(f"Sweep: {len(grid)} cells, {len(grid) - len(todo)} already finished in {args.output}")
    progress = None if args.quiet else keras.utils.Progbar(len(todo), unit_name="cell")
    for index, (kind, alpha, temperature, seed) in enumerate(todo):
        start = time.monotonic()
        keras.utils.set_random_seed(seed)
        student, _ = models.build_model(args.student, data.image_shape)
        if kind == "scratch":
            model = _compile_classifier(student, _optimizer(args), args.steps_per_execution)
            logits = None
        else:
            model = Distiller(student=student, teacher=teacher)
            model.compile(optimizer=_optimizer(args), metrics=[ACCURACY], alpha=alpha,
                          temperature=temperature, distillation_loss_fn=args.loss,
                          steps_per_execution=args.steps_per_execution)
            logits = teacher_logits
        train = datasets.make_dataset(
            x_train, data.y_train, name=None, scaling=None, batch_size=args.batch_size,
            shuffle=True, seed=seed, teacher_logits=logits,
        )
        model.fit(train, epochs=args.epochs, verbose=0, shuffle=False)  # Shuffled by `train`.
        cell = {"kind": kind, "alpha": alpha, "temperature": temperature, "seed": seed,
                "epochs": args.epochs}
        cell["test_accuracy"] = float(
            model.evaluate(x_test, data.y_test, verbose=0, return_dict=True)[ACCURACY])
        if validation is not None:
            cell["validation_accuracy"] = float(
                model.evaluate(*validation, verbose=0, return_dict=True)[ACCURACY])
        cell["seconds"] = round(time.monotonic() - start, 2)
        with open(cells_path, "a") as f:
            f.write(json.dumps(cell) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if progress is not None:
            progress.update(index + 1)

    wanted = {(*g, args.epochs) for g in grid}
    cells = [c for c in _read_cells(cells_path) if _cell_key(c) in wanted]
    rows = _summarise(cells)
    title = f"{args.student} from {os.path.basename(args.teacher)}, {args.dataset}, {args.epochs} epochs"
    table = _write_sweep_report(args.output, rows, calibrated, title)
    runs.finish_run(args.output, {"rows": rows, "calibrated_temperature": calibrated})
    print()
    print(table)
    print(f"Wrote {', '.join(SWEEP_FILES)} to {args.output}")


