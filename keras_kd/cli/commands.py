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
    from keras_kd.studies import demo

    files = ("results.json", "demo.png", "student.keras")
    _check_output_dir(args.output, args.overwrite, files)
    start = time.monotonic()

    def stage(text):
        if not args.quiet:
            print(f"{text} [{time.monotonic() - start:.0f} s]", flush=True)

    def report(record):
        stage(f"    {record['labels']:>5,} labels, {record['method']:<12} "
              f"{100 * record['test_accuracy']:6.2f}%")

    try:
        study = demo.demo_study(
            args.labels, args.teacher_epochs, args.steps, seed=args.seed, limit=args.limit,
            on_stage=stage, on_result=report, verbose=0 if args.quiet else 2)
    except ValueError as error:
        raise ValueError(f"--labels: {error}") from None
    teacher, teacher_accuracy = study["teacher"], study["teacher_accuracy"]
    records, scenarios = study["records"], study["scenarios"]
    num_train = study["num_train"]
    elapsed = time.monotonic() - start

    stage("3/3 results")
    ratio = round(teacher.count_params() / study["student_parameters"])
    print(f"\nTest accuracy on {study['num_test']:,} held-out digits (teacher "
          f"{100 * teacher_accuracy:.2f}%, student {ratio}x smaller):")
    print(demo.demo_table(scenarios))
    gain = 100 * (scenarios[-1]["distilled"] - scenarios[-1]["scratch"])
    if gain < 1.0:
        print(f"With all {num_train:,} labels the teacher adds little ({gain:+.2f} points "
              "with this seed):\nsoft targets pay where labels are few.")
    print(f"{elapsed:.0f} s")

    transfer_student = next(r["student"] for r in records if r["method"] == "transfer_set")
    transfer_student.save(os.path.join(args.output, "student.keras"))
    for record in records:
        del record["student"]
    from keras_kd.studies import few_labels
    from keras_kd.studies import reporting

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
        from keras_kd.data import datasets

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
        from keras_kd.data import datasets

        return datasets.preprocess(images, self.name, self.scaling, self.layout).numpy()

    def evaluation_dataset(self, images, labels, batch_size):
        from keras_kd.data import datasets

        return datasets.make_dataset(
            images, labels, name=self.name, batch_size=batch_size,
            scaling=self.scaling, layout=self.layout,
        )


def _fit_run(args, model, data, teacher_logits=None):
    """Trains `model` (a model or a distiller) resumably in args.output."""
    from keras_kd.data import datasets
    from keras_kd.studies import runs

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

    from keras_kd.distillation.outputs import ends_in_softmax

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
    from keras_kd.studies import runs

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
    from keras_kd.studies import runs
    from keras_kd.distillation.cache import compute_teacher_logits
    from keras_kd.distillation.validation import validate_fraction
    from keras_kd.distillation.validation import validate_temperature

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
    from keras_kd.data import datasets
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
    from keras_kd.data import datasets
    from keras_kd.studies import export
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
    report = export.verify_export(model, paths, x_test, y_test)
    report["model"] = args.model
    print(f"{'format':<12} {'accuracy':>9} {'max |logit - keras|':>20}  file")
    for name, row in report["formats"].items():
        print(f"{name:<12} {100 * row['accuracy']:8.2f}% {row['max_abs_difference']:20.2e}  "
              f"{paths.get(name, args.model)}")
    with open(os.path.join(args.output, "export.json"), "w") as f:
        json.dump(report, f, indent=2)


def run_sweep(args):
    import keras

    from keras_kd import models
    from keras_kd.studies import runs
    from keras_kd.studies import sweeps

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
    validation = None
    if data.validation is not None:
        validation = (data.inputs(data.validation[0]), data.validation[1])
    cells = len(args.seeds) * (len(args.alphas) * len(args.temperatures) + (not args.no_scratch))
    progress = None if args.quiet else keras.utils.Progbar(cells, unit_name="cell")
    summary = sweeps.sweep(
        teacher,
        lambda: models.build_model(args.student, data.image_shape)[0],
        (data.inputs(data.x_train), data.y_train),
        (data.inputs(data.x_test), data.y_test),
        args.output,
        temperatures=args.temperatures, alphas=args.alphas, seeds=args.seeds,
        epochs=args.epochs, validation=validation, scratch=not args.no_scratch,
        optimizer=lambda: _optimizer(args), distillation_loss_fn=args.loss,
        batch_size=args.batch_size, steps_per_execution=args.steps_per_execution,
        title=f"{args.student} from {os.path.basename(args.teacher)}, {args.dataset}, "
        f"{args.epochs} epochs",
        on_cell=None if progress is None else (
            lambda cell, done, total: progress.update(cells - total + done)),
    )
    runs.finish_run(args.output, {"rows": summary["rows"],
                                  "calibrated_temperature": summary["calibrated_temperature"]})
    print(f"\nSweep: {cells} cells, {summary['skipped']} already finished in {args.output}")
    print(summary["markdown"])
    print(f"Wrote {', '.join(sweeps.SWEEP_FILES)} to {args.output}")
