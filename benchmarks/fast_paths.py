"""Fast paths: XLA (`jit_compile`) and `steps_per_execution`, side by side.

Keras' `jit_compile="auto"` turns XLA off on CPU-only machines. This script
measures what XLA and `steps_per_execution` buy for distillation on this
machine, to decide keras_kd's defaults. On the bundled MNIST sample (8,000
digits, batch 64) and the E1 CNN and E3 MLP pairs, every configuration below
lives in one process and trains one epoch per round, round robin, so the
VM's drift over minutes hits them all alike:

  student   `student.fit` alone (the floor)
  online    `keras_kd.Distiller`, teacher run on every step
  cached    `keras_kd.Distiller` on cached teacher logits

each with XLA off and on and with each `--steps-per-execution` value. The
first epoch (tracing and XLA compilation) is reported separately; the table
shows the median of the timed epochs and the speed-up of XLA.

    python benchmarks/fast_paths.py                      # E1 and E3, 3 rounds
    python benchmarks/fast_paths.py --pairs e3 --rounds 5 --steps-per-execution 1 16 64

XLA is only measured without op determinism: Keras refuses `jit_compile=True`
while `tf.config.experimental.enable_op_determinism()` is on.
"""

import argparse
import itertools
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import cache  # noqa: E402
from keras_kd import datasets  # noqa: E402
from pairs import PAIRS  # noqa: E402
from pairs import build_pair  # noqa: E402
from pairs import load_sample  # noqa: E402

BATCH_SIZE = 64
KINDS = ("student", "online", "cached")


def build_config(pair, kind, jit_compile, steps_per_execution, x, y, teacher_logits):
    """Returns a compiled model and the dataset it trains on."""
    teacher, student = build_pair(pair)
    options = {"jit_compile": jit_compile, "steps_per_execution": steps_per_execution}
    metrics = ["sparse_categorical_accuracy"]
    if kind == "student":
        student.compile(
            optimizer="adam",
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=metrics,
            **options,
        )
        model = student
    else:
        model = keras_kd.Distiller(student=student, teacher=teacher)
        model.compile(optimizer="adam", metrics=metrics, temperature=3.0, **options)
    dataset = datasets.make_dataset(
        x, y, name=None, scaling=None, batch_size=BATCH_SIZE, shuffle=True,
        teacher_logits=teacher_logits if kind == "cached" else None,
    )
    return model, dataset


def timed_epoch(model, dataset):
    start = time.perf_counter()
    model.fit(dataset, epochs=1, verbose=0)
    return time.perf_counter() - start


def run_pair(pair, rounds, steps_per_execution_values):
    keras.utils.set_random_seed(0)
    x, y = load_sample(pair)
    teacher, _ = build_pair(pair)
    start = time.perf_counter()
    teacher_logits = cache.compute_teacher_logits(teacher, x)
    cache_pass = time.perf_counter() - start

    configs = {}
    for kind, jit, spe in itertools.product(KINDS, (False, True), steps_per_execution_values):
        model, dataset = build_config(pair, kind, jit, spe, x, y, teacher_logits)
        if bool(model.jit_compile) != jit:
            raise RuntimeError(
                f"Keras resolved jit_compile={model.jit_compile!r} for a request of "
                f"{jit}: run without op determinism."
            )
        configs[(kind, jit, spe)] = {"model": model, "data": dataset, "epochs": []}

    for config in configs.values():  # First epoch: tracing and XLA compilation.
        config["first"] = timed_epoch(config["model"], config["data"])
    for round_index in range(rounds):
        print(f"{pair}: round {round_index + 1}/{rounds}", flush=True)
        for config in configs.values():
            config["epochs"].append(timed_epoch(config["model"], config["data"]))
    return configs, cache_pass


def report(pair, configs, cache_pass, rounds, steps_per_execution_values):
    print(
        f"\n{pair.upper()} pair, {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"TF {tf.__version__}, Keras {keras.__version__}; 8,000 digits, batch "
        f"{BATCH_SIZE}; median of {rounds} round-robin epochs after a first epoch; "
        f"cache pass {cache_pass:.2f} s"
    )
    print("| configuration | steps/exec | XLA off s/epoch | XLA on s/epoch | on/off "
          "| first epoch off | first epoch on |")
    print("|---|---|---|---|---|---|---|")
    baseline = {}
    for kind, spe in itertools.product(KINDS, steps_per_execution_values):
        off, on = configs[(kind, False, spe)], configs[(kind, True, spe)]
        off_median = statistics.median(off["epochs"])
        on_median = statistics.median(on["epochs"])
        baseline.setdefault(kind, off_median)
        print(
            f"| {kind} | {spe} | {off_median:.2f} | {on_median:.2f} "
            f"| {on_median / off_median:.2f} | {off['first']:.2f} | {on['first']:.2f} |"
        )
    print("\nEach configuration against the same kind with XLA off and "
          f"steps_per_execution={steps_per_execution_values[0]}:")
    print("| configuration | steps/exec | XLA | s/epoch | fastest-slowest epoch | ratio |")
    print("|---|---|---|---|---|---|")
    for (kind, jit, spe), config in configs.items():
        median = statistics.median(config["epochs"])
        print(f"| {kind} | {spe} | {'on' if jit else 'off'} | {median:.2f} "
              f"| {min(config['epochs']):.2f}-{max(config['epochs']):.2f} "
              f"| {median / baseline[kind]:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=sorted(PAIRS), choices=sorted(PAIRS))
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed epochs per configuration, round robin")
    parser.add_argument("--steps-per-execution", type=int, nargs="+", default=[1, 16],
                        help="values to compare; the first is the baseline")
    args = parser.parse_args()
    for pair in args.pairs:
        configs, cache_pass = run_pair(pair, args.rounds, args.steps_per_execution)
        report(pair, configs, cache_pass, args.rounds, args.steps_per_execution)


if __name__ == "__main__":
    main()
