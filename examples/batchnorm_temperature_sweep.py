"""E2: BatchNorm CNNs on MNIST, and what the temperature does.

A 5-layer BatchNorm CNN teacher is distilled into a tiny BatchNorm CNN
student (2 and 4 filters, one 32-unit layer) at T = 1, 1.5, 2, 4 and 10,
with the labels. The published sweep found that lower temperatures suited
this tiny student best. Adam at lr 1e-4, batch 128.

The teacher runs once: its logits are cached, and every student of the
sweep (all temperatures, all seeds) trains from the same cache.

Run offline on the bundled sample (8,000 training digits, not 60,000):

    python examples/batchnorm_temperature_sweep.py --seeds 0 1 2 --output e2

It prints a table (mean +- std over seeds next to the published column),
and writes `e2/e2.json` and the plot `e2/e2_temperature.png`.
"""

import argparse
import json
import os

import keras
import numpy as np

from keras_kd import Distiller
from keras_kd.data import datasets
from keras_kd import models
from keras_kd.distillation.cache import compute_teacher_logits

PUBLISHED = {"teacher": 98.83, "scratch": 95.58, 1.0: 96.77, 1.5: 96.74, 2.0: 96.58, 4.0: 96.45, 10.0: 96.39}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.5, 2.0, 4.0, 10.0])
parser.add_argument("--alpha", type=float, default=0.1, help="weight of the label loss")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--teacher-epochs", type=int, default=10)
parser.add_argument("--student-epochs", type=int, default=10)
parser.add_argument("--limit", type=int, default=None, help="training examples")
parser.add_argument("--data-dir", default=None, help="full MNIST files")
parser.add_argument("--output", default="e2", help="directory for the JSON and the plot")
args = parser.parse_args()
os.makedirs(args.output, exist_ok=True)

# 1. Data: pixels in [0, 1] with a channel axis.
source = "sample" if args.data_dir is None else "auto"
x_train, y_train = datasets.select("mnist", "train", source=source, data_dir=args.data_dir, limit=args.limit)
x_test, y_test = datasets.select("mnist", "test", source=source, data_dir=args.data_dir)
x_train = datasets.preprocess(x_train, "mnist").numpy()
x_test = datasets.preprocess(x_test, "mnist").numpy()
print(f"MNIST: {len(x_train)} training and {len(x_test)} test digits")

ACCURACY = "sparse_categorical_accuracy"


def optimizer():
    return keras.optimizers.Adam(1e-4)


def test_accuracy(model):
    return 100 * float(model.evaluate(x_test, y_test, batch_size=512, verbose=0, return_dict=True)[ACCURACY])


# 2. The teacher, trained once.
keras.utils.set_random_seed(args.seeds[0])
teacher = models.build_batchnorm_cnn_teacher()
teacher.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[ACCURACY])
teacher.fit(x_train, y_train, batch_size=128, epochs=args.teacher_epochs, verbose=2)
results = {"teacher": [test_accuracy(teacher)]}
print(f"teacher: {results['teacher'][0]:.2f}%")

# 3. Its logits, computed once for the whole sweep (BatchNorm in inference
# mode, as the Distiller would run it).
teacher_logits = compute_teacher_logits(teacher, x_train)

# 4. For each seed: the student from scratch, then one distilled student per
# temperature. All start from the same weights and see the same batches.
for seed in args.seeds:
    keras.utils.set_random_seed(seed)
    template = models.build_batchnorm_cnn_student()

    def fresh_student():
        return models.copy_model(template)

    def batches(with_logits):
        return datasets.make_dataset(
            x_train, y_train, name=None, scaling=None, batch_size=128, shuffle=True,
            seed=seed, teacher_logits=teacher_logits if with_logits else None,
        )

    scratch = fresh_student()
    scratch.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[ACCURACY])
    scratch.fit(batches(False), epochs=args.student_epochs, verbose=0)
    results.setdefault("scratch", []).append(test_accuracy(scratch))

    for temperature in args.temperatures:
        distiller = Distiller(student=fresh_student(), teacher=teacher)
        distiller.compile(optimizer(), metrics=[ACCURACY], alpha=args.alpha, temperature=temperature)
        distiller.fit(batches(True), epochs=args.student_epochs, verbose=0)
        results.setdefault(temperature, []).append(test_accuracy(distiller))
    print(f"seed {seed}: scratch {results['scratch'][-1]:.2f}%, " + ", ".join(
        f"T={t:g} {results[t][-1]:.2f}%" for t in args.temperatures))

# 5. The table, mean +- std over seeds, next to the published figures.
print(f"\n| model | test accuracy (%), {len(args.seeds)} seeds | published (full MNIST) |")
print("|---|---|---|")
summary = {}
for key, values in results.items():
    name = key if isinstance(key, str) else f"distilled, T={key:g}"
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    summary[name] = {"mean": mean, "std": std, "runs": values}
    published = PUBLISHED.get(key)
    print(f"| {name} | {mean:.2f} ± {std:.2f} | {'-' if published is None else f'{published:.2f}'} |")

with open(os.path.join(args.output, "e2.json"), "w") as f:
    json.dump({"arguments": vars(args), "test_accuracy": summary}, f, indent=2)

# 6. The plot: accuracy against T, ours and published.
import matplotlib  # noqa: E402

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

temperatures = args.temperatures
figure, axis = plt.subplots(figsize=(6, 4))
axis.errorbar(
    temperatures, [np.mean(results[t]) for t in temperatures],
    yerr=[np.std(results[t]) for t in temperatures], marker="o", capsize=3,
    label=f"distilled, {len(x_train)} training digits",
)
axis.axhline(np.mean(results["scratch"]), color="#4c72b0", linestyle="--", label="scratch, same data")
published_t = [t for t in temperatures if t in PUBLISHED]
axis.plot(published_t, [PUBLISHED[t] for t in published_t], "s-", color="grey", label="distilled, published (60,000)")
axis.axhline(PUBLISHED["scratch"], color="grey", linestyle=":", label="scratch, published")
axis.set_xscale("log")
axis.set_xticks(temperatures, [f"{t:g}" for t in temperatures])
axis.set_xlabel("temperature T")
axis.set_ylabel("test accuracy (%)")
axis.set_title("E2: BatchNorm CNN student on MNIST")
axis.legend(fontsize=8)
figure.tight_layout()
figure.savefig(os.path.join(args.output, "e2_temperature.png"), dpi=120)
print(f"\nWrote {args.output}/e2.json and {args.output}/e2_temperature.png")
