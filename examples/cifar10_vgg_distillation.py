"""E4: VGG16 -> 3-block CNN on CIFAR-10, soft loss and sweeps.

The teacher, a CIFAR VGG16, trains with SGD (momentum 0.9, no weight decay)
on the step schedule lr 0.1 / 0.01 / 0.001 (epochs 1-150 / 151-250 /
251-300 of 300; here scaled to --teacher-epochs), in a resumable run
directory: stop it at any time and run the same command with --resume,
or train in stages by raising --teacher-epochs and resuming (with
--teacher-only, each stage stops after the teacher).

Students (3 convolutional blocks, Adam lr 1e-4 or SGD on the same schedule)
are trained from scratch and distilled with a soft loss that is either
cross-entropy on softened outputs ("cse") or MSE ("mse"), over soft weights
and temperatures. Note the convention: E4's `alpha` weights the *soft*
term; keras_kd's `alpha` weights the hard one, so `alpha = 1 - soft_weight`.

CIFAR-10 is needed (none ships with keras-kd): pass --data-dir with
`cifar-10-batches-py` or `cifar-10-batches-bin`, or have it in
`~/.keras/datasets`. For a quick look:

    python examples/cifar10_vgg_distillation.py --data-dir DIR --limit 2000 \\
        --teacher-epochs 3 --student-epochs 3 --output e4

Writes `e4/e4.json`, the teacher's run directory `e4/teacher/`.
"""

import argparse
import json
import os

import keras

from keras_kd import Distiller
from keras_kd.data import datasets
from keras_kd import models
from keras_kd.models.builders import VGG16_CONFIG
from keras_kd.studies import runs
from keras_kd.distillation.cache import compute_teacher_logits

PUBLISHED = {
    "teacher": 91.90, "scratch": 85.01,
    ("cse", 1.0, 1.0): 84.99, ("mse", 1.0, 1.0): 84.85,
    ("cse", 0.5, 1.0): 85.38, ("mse", 0.5, 1.0): 84.92,
    ("cse", 0.5, 2.0): 85.27, ("cse", 0.5, 4.0): 86.46,
    ("cse", 0.5, 8.0): 86.33, ("cse", 0.5, 16.0): 86.58,
    ("cse", 0.1, 16.0): 85.69, ("cse", 0.3, 16.0): 86.48,
    ("cse", 0.7, 16.0): 86.16, ("cse", 0.9, 16.0): 86.08,
}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data-dir", default=None, help="CIFAR-10 files")
parser.add_argument("--limit", type=int, default=None, help="training examples")
parser.add_argument("--teacher-epochs", type=int, default=300)
parser.add_argument("--student-epochs", type=int, default=300)
parser.add_argument("--soft-losses", nargs="+", choices=("cse", "mse"), default=["cse"])
parser.add_argument("--soft-weights", type=float, nargs="+", default=[0.5])
parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0, 16.0])
parser.add_argument("--student-optimizer", choices=("adam", "sgd"), default="adam")
parser.add_argument("--no-augment", action="store_true", help="train the teacher without crop and flip")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--resume", action="store_true", help="continue the teacher's run")
parser.add_argument("--teacher-only", action="store_true",
                    help="train (or continue) the teacher, then stop: no students")
parser.add_argument("--teacher-width", type=float, default=1.0,
                    help="scale the VGG16 teacher's filters (64 ... 512) by this factor, e.g. 0.125 "
                         "for a quick look on a CPU (default 1: the CIFAR VGG16)")
parser.add_argument("--output", default="e4")
args = parser.parse_args()
ACCURACY = "sparse_categorical_accuracy"
BATCH_SIZE = 128

# 1. Data: per-channel standardisation. Crop-and-flip augmentation runs in
# the tf.data graph for the teacher.
x_train, y_train = datasets.select("cifar10", "train", data_dir=args.data_dir, limit=args.limit)
x_test, y_test = datasets.select("cifar10", "test", data_dir=args.data_dir)
inputs_train = datasets.preprocess(x_train, "cifar10", "standardize").numpy()
inputs_test = datasets.preprocess(x_test, "cifar10", "standardize").numpy()
print(f"CIFAR-10: {len(x_train)} training and {len(x_test)} test images")
steps = datasets.steps_per_epoch(len(x_train), BATCH_SIZE)


def step_schedule(epochs):
    # 0.1, then 0.01 after half the epochs, 0.001 after 5/6 (150/250 of 300).
    boundaries = [int(epochs * 150 / 300) * steps, int(epochs * 250 / 300) * steps]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [0.1, 0.01, 0.001])


def test_accuracy(model):
    return 100 * float(model.evaluate(inputs_test, y_test, batch_size=256, verbose=0, return_dict=True)[ACCURACY])


# 2. The teacher, in a run directory that survives interruptions. The
# schedule reads the optimizer's step count, which the backup restores.
runs.set_determinism(args.seed)
teacher_dir = os.path.join(args.output, "teacher")
teacher_settings = {"limit": args.limit, "seed": args.seed, "augment": not args.no_augment,
                    "epochs": args.teacher_epochs}
if args.teacher_width != 1.0:  # (Not in the settings of full-width runs saved before it existed.)
    teacher_settings["teacher_width"] = args.teacher_width
runs.prepare_run_dir(teacher_dir, "e4-teacher", teacher_settings,
                     resume=args.resume or os.path.exists(os.path.join(teacher_dir, runs.RUN_FILE)))
if args.teacher_width == 1.0:
    teacher = models.build_vgg16_teacher()
else:  # The same 13 convolutions and 5 poolings, with fewer filters.
    teacher = models.build_vgg(
        [item if item == "M" else max(1, round(item * args.teacher_width))
         for item in VGG16_CONFIG], name="vgg16")
teacher.compile(keras.optimizers.SGD(step_schedule(args.teacher_epochs), momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[ACCURACY])
runs.fit_resumable(
    teacher,
    lambda start: datasets.make_dataset(
        x_train, y_train, name="cifar10", batch_size=BATCH_SIZE, shuffle=True,
        augment=not args.no_augment, seed=args.seed, scaling="standardize", start_epoch=start),
    steps, args.teacher_epochs, teacher_dir, seed=args.seed, verbose=2,
)
results = {"teacher": test_accuracy(teacher)}
print(f"teacher: {results['teacher']:.2f}%")
if args.teacher_only:
    print(f"Stopped after the teacher (--teacher-only); its run is in {teacher_dir}")
    raise SystemExit(0)

# 3. The teacher's logits on the un-augmented training images, once for all
# students (kept in the run directory, keyed by the teacher's weights).
teacher_logits = compute_teacher_logits(
    teacher, inputs_train, path=os.path.join(teacher_dir, "teacher_logits.npz"), rebuild=True)


def student_optimizer():
    if args.student_optimizer == "sgd":
        return keras.optimizers.SGD(step_schedule(args.student_epochs), momentum=0.9)
    return keras.optimizers.Adam(1e-4)


def train_student(soft_loss=None, soft_weight=None, temperature=None):
    keras.utils.set_random_seed(args.seed + 1)  # Same initial weights for every student.
    student = models.build_cifar_student()
    if soft_loss is None:
        model = student
        model.compile(student_optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[ACCURACY])
    else:
        model = Distiller(student=student, teacher=teacher)
        model.compile(student_optimizer(), metrics=[ACCURACY], distillation_loss_fn=soft_loss,
                      alpha=1.0 - soft_weight, temperature=temperature)
    train = datasets.make_dataset(inputs_train, y_train, name=None, scaling=None, batch_size=BATCH_SIZE,
                                  shuffle=True, seed=args.seed,
                                  teacher_logits=None if soft_loss is None else teacher_logits)
    model.fit(train, epochs=args.student_epochs, verbose=0)
    return test_accuracy(model)


# 4. The students: from scratch, then every soft loss x soft weight x T.
results["scratch"] = train_student()
print(f"scratch: {results['scratch']:.2f}%")
for soft_loss in args.soft_losses:
    for soft_weight in args.soft_weights:
        for temperature in args.temperatures:
            key = (soft_loss, soft_weight, temperature)
            results[key] = train_student(*key)
            print(f"{soft_loss}, soft weight {soft_weight:g}, T={temperature:g}: {results[key]:.2f}%")

# 5. The table next to the published figures (full CIFAR-10, 300 epochs).
print("\n| student | test accuracy (%) | published |")
print("|---|---|---|")
for key, value in results.items():
    name = key if isinstance(key, str) else f"{key[0]}, soft weight {key[1]:g}, T={key[2]:g}"
    published = PUBLISHED.get(key)
    print(f"| {name} | {value:.2f} | {'-' if published is None else f'{published:.2f}'} |")
with open(os.path.join(args.output, "e4.json"), "w") as f:
    json.dump({"arguments": vars(args), "test_accuracy": {
        k if isinstance(k, str) else f"{k[0]}/{k[1]:g}/{k[2]:g}": v for k, v in results.items()}}, f, indent=2)
print(f"Wrote {args.output}/e4.json")
