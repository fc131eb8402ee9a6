"""The `keras-kd` command line: argument parsing only.

This module lives outside the `keras_kd` package on purpose: importing any
`keras_kd` module runs the package's `__init__`, which imports TensorFlow
(about 3-6 s) so that `import keras_kd` registers the serializable classes.
Here `keras-kd --help` and `keras-kd COMMAND --help` answer at once; a
command imports `keras_kd.cli`, and with it TensorFlow, only once its
arguments are parsed and TensorFlow's log level is set.

Commands:

    keras-kd demo           where distillation helps, on real digits, offline
    keras-kd train-teacher  train a teacher, resumable
    keras-kd distill        distil a saved teacher into a student, resumable
    keras-kd sweep          distil over temperatures, alphas and seeds
    keras-kd evaluate       test accuracy of a saved model
    keras-kd export         SavedModel and TFLite files of a saved student
"""

import argparse
import ctypes
import os
import sys

DEMO_DESCRIPTION = """\
Show where distillation helps, offline, on the 10,000 real MNIST digits
bundled with keras-kd (8,000 to train, 2,000 to test). A teacher CNN learns
from all 8,000 labels. For each --labels budget a student CNN 7x smaller
then learns (1) from that many labelled digits alone, (2) from the same
digits with the teacher's soft targets, (3) from them plus the other digits
as an unlabelled transfer set the teacher labels; and (4) from all 8,000
labels, with and without the teacher. Prints a table and writes results.json, demo.png (accuracy against
number of labels) and the transfer-set student (student.keras) to
--output."""

DEMO_LABELS = [80, 240, 800]

# The names of `keras_kd.models.MODEL_BUILDERS`, here so that the parser
# needs no TensorFlow (tests/test_cli.py checks they agree).
MODEL_NAMES = (
    "keras-io-teacher", "keras-io-student", "batchnorm-teacher", "batchnorm-student",
    "hinton-teacher", "hinton-student", "vgg16-teacher", "cifar-student",
    "resnet34-student",
)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _add_data_arguments(parser, augment=True, validation_fraction=0.0):
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist", help="default: %(default)s")
    group.add_argument(
        "--source", choices=("auto", "sample", "files", "keras", "tfds"), default="auto",
        help="where to read the data: auto tries --data-dir, the Keras cache, "
        "tfds, then the bundled MNIST sample (default: %(default)s)",
    )
    group.add_argument("--data-dir", default=None, help="directory with the dataset files")
    group.add_argument("--scaling", choices=("unit", "symmetric", "standardize"), default=None,
                       help="default: unit for mnist, standardize for cifar10")
    group.add_argument("--limit", type=int, default=None, help="use only this many training examples")
    group.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    group.add_argument("--validation-fraction", type=float, default=validation_fraction,
                       help="fraction of each training class held out for validation (default: %(default)s)")
    group.add_argument("--exclude-classes", type=int, nargs="*", default=[],
                       help="classes removed from the training split, e.g. 3")
    if augment:
        group.add_argument("--augment", action="store_true",
                           help="random 2-px shifts (mnist) or crop and flip (cifar10); "
                           "the teacher then runs online")


def _add_training_arguments(parser, epochs):
    group = parser.add_argument_group("training")
    group.add_argument("--epochs", type=int, default=epochs,
                       help="total epochs; raise it with --resume to train in stages (default: %(default)s)")
    group.add_argument("--optimizer", choices=("adam", "sgd"), default="adam", help="sgd uses momentum 0.9 (default: %(default)s)")
    group.add_argument("--learning-rate", type=float, default=1e-3, help="default: %(default)s")
    group.add_argument("--seed", type=int, default=0,
                       help="seeds everything and turns on TF op determinism: the same "
                       "seed gives the same weights (default: %(default)s)")
    group.add_argument("--nondeterministic", action="store_true",
                       help="seed everything but skip TF op determinism: faster "
                       "(deterministic kernels cost ~1.2x per step on CPU), not bitwise repeatable")
    group.add_argument("--steps-per-execution", type=_positive_int, default=1, metavar="N",
                       help="training steps per compiled call; 8-32 makes small models' "
                       "epochs up to ~2x faster on CPU (benchmarks/fast_paths.py), per-batch "
                       "callbacks then see every N-th batch (default: %(default)s)")
    group.add_argument("--output", required=True, help="run directory: checkpoints, logs, model.keras")
    group.add_argument("--resume", action="store_true", help="continue the run in --output from its last epoch")
    group.add_argument("--overwrite", action="store_true", help="delete the run in --output and start again")
    group.add_argument("--quiet", action="store_true", help="no per-epoch progress")


def _add_distillation_arguments(parser):
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", required=True, help="the trained teacher, a .keras file")
    group.add_argument("--student", required=True, metavar="MODEL", help="student builder (see train-teacher --help)")
    group.add_argument("--loss", default="kl_divergence",
                       choices=("kl_divergence", "cse", "mse", "dkd", "dist",
                                "logit_standardized_kd", "nkd"),
                       help="soft loss: KL divergence, soft-target cross-entropy, MSE, or DKD, "
                       "DIST, logit-standardised KD, NKD (default: %(default)s)")


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own log lines (hidden by default)")
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3 on TensorFlow.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo", parents=[common], help="where distillation helps, on real digits (~2 minutes)",
        description=DEMO_DESCRIPTION,
    )
    demo.add_argument("--output", default="keras-kd-demo", help="output directory (default: %(default)s)")
    demo.add_argument("--labels", type=_positive_int, nargs="+", default=DEMO_LABELS, metavar="N",
                      help="few-label budgets: labelled digits of the students "
                      "(default: 80 240 800, i.e. 1, 3 and 10%% of the digits)")
    demo.add_argument("--teacher-epochs", type=_positive_int, default=4, metavar="N",
                      help="default: %(default)s")
    demo.add_argument("--steps", type=_positive_int, default=600, metavar="N",
                      help="optimizer steps per student (default: %(default)s)")
    demo.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                      help="use only this many training digits, for a quick trial")
    demo.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    demo.add_argument("--quiet", action="store_true", help="no per-stage progress")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier run's files")
    demo.set_defaults(run="run_demo")

    model_names = ", ".join(MODEL_NAMES)
    teacher = commands.add_parser(
        "train-teacher", parents=[common], help="train a teacher (resumable)",
        description="Train a reference model on MNIST or CIFAR-10 in a run "
        "directory: checkpoints, CSV and TensorBoard logs, model.keras. "
        f"Models: {model_names}.",
    )
    teacher.add_argument("--model", required=True, choices=MODEL_NAMES, metavar="MODEL",
                         help=f"one of: {model_names}")
    _add_data_arguments(teacher)
    _add_training_arguments(teacher, epochs=5)
    teacher.set_defaults(run="run_train_teacher")

    distill = commands.add_parser(
        "distill", parents=[common], help="distil a saved teacher into a student (resumable)",
        description="Distil a trained teacher (.keras) into a reference student "
        "in a run directory. Without --augment the teacher's logits are "
        "computed once and cached in the run directory.",
    )
    _add_distillation_arguments(distill)
    distill.add_argument("--temperature", type=float, default=3.0, help="default: %(default)s")
    distill.add_argument("--alpha", type=float, default=0.1, help="weight of the label loss (default: %(default)s)")
    _add_data_arguments(distill)
    _add_training_arguments(distill, epochs=3)
    distill.set_defaults(run="run_distill")

    sweep = commands.add_parser(
        "sweep", parents=[common], help="distil over temperatures, alphas and seeds",
        description="Distil one saved teacher into fresh students for every "
        "temperature x alpha x seed (plus a scratch student per seed), from one "
        "cache of teacher logits. Writes summary.csv/.json/.md and sweep.png, "
        "with the teacher's calibrated temperature. Running it again with the "
        "same --output skips the finished cells.",
    )
    _add_distillation_arguments(sweep)
    sweep.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 10.0])
    sweep.add_argument("--alphas", type=float, nargs="+", default=[0.1])
    sweep.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    sweep.add_argument("--no-scratch", action="store_true", help="skip the students trained from scratch")
    _add_data_arguments(sweep, augment=False, validation_fraction=0.1)
    _add_training_arguments(sweep, epochs=3)
    sweep.set_defaults(run="run_sweep")

    evaluate = commands.add_parser(
        "evaluate", parents=[common], help="test accuracy of a saved model",
        description="Evaluate a saved model (.keras; a saved distiller is "
        "evaluated through its student) on a dataset split.",
    )
    evaluate.add_argument("model", help="a .keras file")
    evaluate.add_argument("--split", choices=("train", "validation", "test"), default="test")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    evaluate.add_argument("--json", default=None, help="also write the results to this file")
    _add_data_arguments(evaluate, augment=False)
    evaluate.set_defaults(run="run_evaluate")

    export = commands.add_parser(
        "export", parents=[common], help="SavedModel and TFLite files of a saved student",
        description="Export a saved student (.keras; a saved distiller exports "
        "its student) as a SavedModel (tf.saved_model.load, TF Serving) and "
        "TFLite files (float32, and int8 calibrated on 500 training examples). "
        "Each file is checked against the Keras model on the test split; the "
        "accuracies and differences are printed and written to export.json.",
    )
    export.add_argument("model", help="a .keras file")
    export.add_argument("--output", required=True, help="output directory")
    export.add_argument("--formats", nargs="+", choices=("saved_model", "tflite", "tflite_int8"),
                        default=["saved_model", "tflite", "tflite_int8"])
    export.add_argument("--overwrite", action="store_true", help="replace earlier exports")
    _add_data_arguments(export, augment=False)
    export.set_defaults(run="run_export")
    return parser


# absl's `SetMinLogLevel` in TensorFlow builds whose absl log lines ignore
# TF_CPP_MIN_LOG_LEVEL. TF 2.20 (absl LTS 2025-01-27) prints Grappler's
# "E0000 ... meta_optimizer.cc:967] remapper failed: ... LeakyReluGrad" when
# it traces the training step of any model with Conv2D -> LeakyReLU (all the
# keras.io models); TF 2.21 fails the same rewrite but applies the level to
# absl itself. (The rewrite fails on both: the training graph is simply not
# remapped, so hiding the line changes no computation.)
_ABSL_SET_MIN_LOG_LEVEL = ("_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE",)


def _apply_log_level_to_absl(tf):
    """Makes TensorFlow's absl logging honour TF_CPP_MIN_LOG_LEVEL (as TF 2.21 does)."""
    try:
        # 0 all, 1 no INFO, 2 no WARNING, 3 no ERROR; absl's severities are
        # INFO 0, WARNING 1, ERROR 2, FATAL 3, shown from the minimum up.
        level = min(max(int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")), 0), 3)
    except ValueError:
        return
    directory = os.path.dirname(tf.__file__)
    for name in ("libtensorflow_framework.so.2", "libtensorflow_framework.2.dylib"):
        if not os.path.exists(os.path.join(directory, name)):
            continue
        try:
            library = ctypes.CDLL(os.path.join(directory, name))
        except OSError:
            return
        for symbol in _ABSL_SET_MIN_LOG_LEVEL:
            function = getattr(library, symbol, None)
            if function is not None:
                function.argtypes, function.restype = [ctypes.c_int], None
                function(level)
        return


def _import_quietly(module):
    """Imports `module` (a name) and TensorFlow with descriptor 2 on /dev/null.

    TensorFlow's C++ log lines go to file descriptor 2: `TF_CPP_MIN_LOG_LEVEL`
    (set here unless the user chose one) hides those of its runtime, but the
    lines absl prints while TensorFlow loads (CUDA probing: "I0000 ...
    cudart_stub.cc ...") ignore it in TF 2.21, so descriptor 2 is pointed at
    /dev/null for the import only. Python errors still show: an exception
    raised by the import is printed after descriptor 2 is restored. TF 2.20's
    absl lines later on (Grappler's) ignore the variable too: the level is
    handed to absl (`_apply_log_level_to_absl`). On every Keras backend
    TensorFlow is imported (tf.data reads the datasets), so the same holds
    on JAX.
    """
    import importlib

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        imported = importlib.import_module(module)
        import tensorflow as tf

        tf.config.list_physical_devices()  # Device probing logs here too.
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
    _apply_log_level_to_absl(tf)
    tf.get_logger().setLevel("ERROR")
    return imported


def import_commands(verbose=False):
    """Imports `keras_kd.cli` (and TensorFlow), quietly unless `verbose`
    (see `_import_quietly`)."""
    if verbose:
        from keras_kd.cli import commands

        return commands
    return _import_quietly("keras_kd.cli.commands")


def _runs_as_module(orig_argv):
    """Whether the interpreter's own arguments (`sys.orig_argv`) are
    `python [options] -m keras_kd[.submodule] ...`."""
    for index, argument in enumerate(orig_argv[1:], start=1):
        if argument == "-m":
            name = orig_argv[index + 1] if index + 1 < len(orig_argv) else ""
        elif argument.startswith("-m"):
            name = argument[2:]
        elif argument.startswith("-") and argument not in ("-c", "-"):
            continue  # An interpreter option (-X dev, -W ..., -u, ...).
        else:
            return False  # A script, -c code or stdin: not -m.
        return name.split(".")[0] == "keras_kd"
    return False


def start_module_run():
    """Called by `keras_kd/__init__.py` while `python -m keras_kd` starts.

    Python imports the package (and with it TensorFlow) before it runs
    `keras_kd/__main__.py`, so the command line's quiet import comes too late
    there: this imports TensorFlow first, quietly unless the arguments hold
    `--verbose` (then TensorFlow's lines show, as with the `keras-kd` script).
    Anything else that imports keras_kd does nothing here.
    """
    if sys.argv[:1] != ["-m"] or not _runs_as_module(getattr(sys, "orig_argv", [])):
        return
    if "--verbose" not in sys.argv[1:]:
        _import_quietly("tensorflow")


def main(argv=None):
    args = build_parser().parse_args(argv)
    commands = import_commands(args.verbose)
    from keras_kd.distillation.callbacks import NonFiniteLossError

    try:
        getattr(commands, args.run)(args)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as error:
        # keras_kd's own errors already say what to do: no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
