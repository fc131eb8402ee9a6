"""The `keras-kd` command line (also `python -m keras_kd`).

Commands:

    keras-kd demo       distil the keras.io MNIST CNN offline, in minutes
"""

import argparse
import json
import os
import sys
import time

DEMO_DESCRIPTION = """\
Distil the keras.io MNIST teacher CNN (1.4M parameters) into a student 70x
smaller, offline, on the 10,000 real MNIST digits bundled with keras-kd.
Trains the teacher, the student from scratch and the distilled student,
prints their test accuracy, and writes a bar chart (demo.png), the results
(results.json) and the distilled student (student.keras) to --output."""


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _check_output_dir(path, overwrite, expected_files):
    """Refuses to overwrite results of an earlier run without --overwrite."""
    existing = [f for f in expected_files if os.path.exists(os.path.join(path, f))]
    if existing and not overwrite:
        raise SystemExit(
            f"error: --output {path} already holds {', '.join(existing)} from "
            "an earlier run. Choose another directory or pass --overwrite."
        )
    os.makedirs(path, exist_ok=True)


def _plot_accuracies(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = list(results)
    values = [100 * results[n] for n in names]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    bars = axis.bar(names, values, color=["#4c72b0", "#c44e52", "#55a868"])
    axis.bar_label(bars, fmt="%.2f%%")
    axis.set_ylim(max(0.0, min(values) - 5), 100)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_demo(args):
    _quiet_tensorflow()
    import keras

    from keras_kd import Distiller
    from keras_kd import datasets
    from keras_kd import models
    from keras_kd.cache import compute_teacher_logits

    files = ("results.json", "demo.png", "student.keras")
    _check_output_dir(args.output, args.overwrite, files)
    keras.utils.set_random_seed(args.seed)
    verbose = 0 if args.quiet else 2
    start = time.monotonic()

    x_train, y_train = datasets.select("mnist", "train", source="sample", limit=args.limit)
    x_test, y_test = datasets.select("mnist", "test", source="sample")
    x_train = datasets.preprocess(x_train, "mnist").numpy()
    x_test = datasets.preprocess(x_test, "mnist").numpy()
    print(f"MNIST sample: {len(x_train)} training and {len(x_test)} test digits")

    def compiled(model):
        model.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["sparse_categorical_accuracy"],
        )
        return model

    print(f"\n1/3 teacher ({args.teacher_epochs} epochs)")
    teacher = compiled(models.build_keras_io_teacher())
    teacher.fit(x_train, y_train, batch_size=64, epochs=args.teacher_epochs, verbose=verbose)

    student = models.build_keras_io_student()
    initial_weights = student.get_weights()

    def pipeline(teacher_logits=None):
        # Both students see the same seeded batches.
        return datasets.make_dataset(
            x_train, y_train, name=None, scaling=None, batch_size=64,
            shuffle=True, seed=args.seed, teacher_logits=teacher_logits,
        )

    print(f"\n2/3 student from scratch ({args.student_epochs} epochs)")
    scratch = compiled(keras.models.clone_model(student))
    scratch.set_weights(initial_weights)
    scratch.fit(pipeline(), epochs=args.student_epochs, verbose=verbose)

    print(f"\n3/3 distilled student ({args.student_epochs} epochs, T={args.temperature})")
    # The teacher is frozen and the inputs are not augmented: its logits are
    # computed once, and each distillation epoch costs a student epoch.
    teacher_logits = compute_teacher_logits(teacher, x_train)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer="adam",
        metrics=["sparse_categorical_accuracy"],
        alpha=args.alpha,
        temperature=args.temperature,
    )
    distiller.fit(pipeline(teacher_logits), epochs=args.student_epochs, verbose=verbose)

    accuracy = "sparse_categorical_accuracy"
    results = {
        "teacher": teacher.evaluate(x_test, y_test, verbose=0, return_dict=True)[accuracy],
        "student (scratch)": scratch.evaluate(x_test, y_test, verbose=0, return_dict=True)[accuracy],
        "student (distilled)": distiller.evaluate(x_test, y_test, verbose=0, return_dict=True)[accuracy],
    }
    elapsed = time.monotonic() - start

    print(f"\nTest accuracy on {len(x_test)} held-out digits:")
    for name, value in results.items():
        print(f"  {name:<20} {100 * value:6.2f}%")
    print(
        f"  parameters: teacher {teacher.count_params():,}, "
        f"student {student.count_params():,}; {elapsed:.0f} s"
    )
    distiller.student.save(os.path.join(args.output, "student.keras"))
    _plot_accuracies(
        results,
        os.path.join(args.output, "demo.png"),
        f"keras-kd demo: MNIST sample, seed {args.seed}",
    )
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(
            {"test_accuracy": results, "seconds": elapsed, "arguments": vars(args)},
            f, indent=2, default=str,
        )
    print(f"Wrote {', '.join(files)} to {args.output}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3 on TensorFlow.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", help="distil the keras.io MNIST CNN offline (~2 minutes)",
        description=DEMO_DESCRIPTION,
    )
    demo.add_argument("--output", default="keras-kd-demo", help="output directory (default: %(default)s)")
    demo.add_argument("--teacher-epochs", type=int, default=2, help="default: %(default)s")
    demo.add_argument("--student-epochs", type=int, default=3, help="default: %(default)s")
    demo.add_argument("--temperature", type=float, default=3.0, help="default: %(default)s")
    demo.add_argument("--alpha", type=float, default=0.1, help="weight of the label loss (default: %(default)s)")
    demo.add_argument("--limit", type=int, default=None, help="use only this many training digits")
    demo.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    demo.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    demo.set_defaults(run=run_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:
        # keras_kd's own errors already say what to do: no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
