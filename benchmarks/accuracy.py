"""Accuracy benchmark: E1 on the bundled MNIST sample, keras_kd against
keras.distillation, mean +- std of test accuracy over seeds.

Per seed one teacher is trained (5 epochs), then each student variant starts
from the same initial weights and trains 3 epochs (batch 64, Adam, alpha=0.1
on the labels, T=3):

  teacher                                  the E1 teacher
  scratch student                          no teacher
  keras_kd online                          Hinton KL * T**2, teacher per step
  keras_kd cached                          the same on cached teacher logits
  keras.distillation default               LogitsDistillation(loss="kl_divergence")
  keras.distillation KLDivergence()        an explicit KLDivergence() instance

    python benchmarks/accuracy.py --seeds 0 1 2
"""

import argparse
import json
import os
import time

import numpy as np

VARIANTS = (
    "teacher",
    "scratch student",
    "keras_kd online",
    "keras_kd cached",
    "keras.distillation default",
    "keras.distillation KLDivergence()",
)


def run_seed(seed, x_train, y_train, x_test, y_test, args):
    import keras
    from keras import distillation

    import keras_kd
    from keras_kd.distillation import cache
    from keras_kd.data import datasets
    from keras_kd import models

    keras.utils.set_random_seed(seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metric = "sparse_categorical_accuracy"

    def accuracy(model):
        return float(model.evaluate(x_test, y_test, verbose=0, return_dict=True)[metric])

    teacher = models.build_keras_io_teacher()
    teacher.compile(optimizer="adam", loss=loss, metrics=[metric])
    teacher.fit(x_train, y_train, batch_size=64, epochs=args.teacher_epochs, verbose=0)
    template = models.build_keras_io_student()

    def student():
        return models.copy_model(template)

    def train(model, data, **kwargs):
        keras.utils.set_random_seed(seed + 1000)  # Same batches for all.
        model.fit(*data, epochs=args.student_epochs, verbose=0, **kwargs)
        return accuracy(model)

    results = {"teacher": accuracy(teacher)}
    scratch = student()
    scratch.compile(optimizer="adam", loss=loss, metrics=[metric])
    results["scratch student"] = train(scratch, (x_train, y_train), batch_size=64)

    online = keras_kd.Distiller(student=student(), teacher=teacher)
    online.compile(optimizer="adam", metrics=[metric], alpha=0.1, temperature=3.0)
    results["keras_kd online"] = train(online, (x_train, y_train), batch_size=64)

    logits = cache.compute_teacher_logits(teacher, x_train)
    cached = keras_kd.Distiller(student=student(), teacher=teacher)
    cached.compile(optimizer="adam", metrics=[metric], alpha=0.1, temperature=3.0)
    train_set = datasets.make_dataset(
        x_train, y_train, name=None, scaling=None, batch_size=64,
        shuffle=True, seed=seed, teacher_logits=logits,
    )
    results["keras_kd cached"] = train(cached, (train_set,))

    for name, distillation_loss in (
        ("keras.distillation default", "kl_divergence"),
        ("keras.distillation KLDivergence()", keras.losses.KLDivergence()),
    ):
        rival = distillation.Distiller(
            teacher=teacher,
            student=student(),
            distillation_losses=distillation.LogitsDistillation(
                temperature=3.0, loss=distillation_loss
            ),
            student_loss_weight=0.1,
        )
        rival.compile(optimizer="adam", loss=loss, metrics=[metric])
        results[name] = train(rival, (x_train, y_train), batch_size=64)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=5)
    parser.add_argument("--student-epochs", type=int, default=3)
    parser.add_argument("--json", help="also write the raw accuracies here")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from keras_kd.data import datasets

    (x_train, y_train), (x_test, y_test) = datasets.load_arrays("mnist", source="sample")
    x_train = datasets.preprocess(x_train, "mnist").numpy()
    x_test = datasets.preprocess(x_test, "mnist").numpy()

    start = time.monotonic()
    per_seed = []
    for seed in args.seeds:
        per_seed.append(run_seed(seed, x_train, y_train, x_test, y_test, args))
        print(f"seed {seed}: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in per_seed[-1].items()), flush=True)

    print(
        f"\nE1 test accuracy, MNIST sample (8,000 train / 2,000 test), seeds "
        f"{args.seeds}, teacher {args.teacher_epochs} epochs, students "
        f"{args.student_epochs} epochs; {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores, TF {tf.__version__}, Keras "
        f"{keras.__version__}, {time.monotonic() - start:.0f} s"
    )
    print("| model | test accuracy, mean +- std |")
    print("|---|---|")
    for name in VARIANTS:
        values = [100 * r[name] for r in per_seed]
        print(f"| {name} | {np.mean(values):.2f} +- {np.std(values):.2f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"seeds": args.seeds, "results": per_seed}, f, indent=2)


if __name__ == "__main__":
    main()
