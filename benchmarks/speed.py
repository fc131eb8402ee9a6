"""Speed benchmark: keras_kd against keras.distillation and the student alone.

Side by side, on the same data (the bundled MNIST sample, 8,000 training
digits) and the same models (the E1 CNN pair and the E3 MLP pair), each
configuration in its own process so that peak resident memory is its own:

  (a) student      `student.fit` alone: the floor
  (b) keras        `keras.distillation.Distiller`, configured correctly
                   (an explicit `keras.losses.KLDivergence()` instance)
  (c) online       `keras_kd.Distiller`, teacher run on every step
  (d) cached       `keras_kd.Distiller` on cached teacher logits; the
                   cache-building pass is timed separately
  (e) evaluate()   of each, against `student.evaluate`

Each fit runs a warm-up epoch, then `--epochs` timed epochs; the table shows
the median seconds per epoch and the ratios the performance targets name.

By default each runs with its library's default `jit_compile` (both follow
Keras' rule: XLA off on CPU-only machines); `--jit-compile on|off` sets one
value for all four.

    python benchmarks/speed.py                 # both pairs, 3 timed epochs
    python benchmarks/speed.py --pairs e3 --epochs 5
    python benchmarks/speed.py --epochs 3 --rounds 3   # interleaved rounds
    python benchmarks/speed.py --evaluate-only 15      # (e) alternating in one process
    python benchmarks/speed.py --jit-compile off       # all without XLA
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pairs import PAIRS  # noqa: E402
from pairs import build_pair  # noqa: E402
from pairs import load_sample  # noqa: E402

CONFIGS = ("student", "keras", "online", "cached")
BATCH_SIZE = 64


def _timed_fit(model, dataset, epochs):
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            durations.append(time.perf_counter() - self.start)

    durations = []
    model.fit(dataset, epochs=epochs + 1, verbose=0, callbacks=[EpochTimer()])
    return durations[1:]  # Drop the warm-up epoch (tracing, XLA).


def _timed_evaluate(model, x, y, repeats=3):
    model.evaluate(x, y, batch_size=256, verbose=0)  # Warm-up.
    durations = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.evaluate(x, y, batch_size=256, verbose=0)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def build_configuration(config, teacher, student, x, y, jit_compile="default"):
    """`config`'s model, compiled, and the tf.data pipeline it trains on.

    Returns:
        `(model, data, cache_seconds)`: the seconds of the teacher-logit
        pass that feeds `cached`, None for the other configurations.
    """
    import keras

    import keras_kd
    from keras_kd.distillation import cache
    from keras_kd.data import datasets

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = ["sparse_categorical_accuracy"]
    options = {} if jit_compile == "default" else {"jit_compile": jit_compile == "on"}

    def pipeline(teacher_logits=None):
        # Every configuration reads the same tf.data pipeline, so the ratios
        # compare training steps, not Keras' NumPy adapter with tf.data.
        return datasets.make_dataset(
            x, y, name=None, scaling=None, batch_size=BATCH_SIZE,
            shuffle=True, teacher_logits=teacher_logits,
        )

    if config == "student":
        student.compile(optimizer="adam", loss=loss, metrics=metrics, **options)
        return student, pipeline(), None
    if config == "keras":
        from keras import distillation

        distiller = distillation.Distiller(
            teacher=teacher,
            student=student,
            distillation_losses=distillation.LogitsDistillation(
                temperature=3.0, loss=keras.losses.KLDivergence()
            ),
            student_loss_weight=0.1,
        )
        distiller.compile(optimizer="adam", loss=loss, metrics=metrics, **options)
        return distiller, pipeline(), None
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", metrics=metrics, temperature=3.0, **options)
    if config == "online":
        return distiller, pipeline(), None
    start = time.perf_counter()
    logits = cache.compute_teacher_logits(teacher, x)
    seconds = time.perf_counter() - start
    return distiller, pipeline(logits), seconds


def run_worker(pair, config, epochs, jit_compile="default"):
    """Runs one configuration and returns its measurements."""
    import keras

    keras.utils.set_random_seed(0)
    x, y = load_sample(pair)
    teacher, student = build_pair(pair)
    result = {"pair": pair, "config": config}
    model, data, cache_seconds = build_configuration(config, teacher, student, x, y, jit_compile)
    if cache_seconds is not None:
        result["cache_pass"] = cache_seconds
    result["epochs"] = _timed_fit(model, data, epochs)
    result["evaluate"] = _timed_evaluate(model, x, y)
    result["xla"] = bool(model.jit_compile)
    result["epoch_median"] = statistics.median(result["epochs"])
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def evaluate_side_by_side(pair, repeats):
    """(e) in one process: the evaluates alternate, so drift hits all alike."""
    import keras
    from keras import distillation

    import keras_kd

    keras.utils.set_random_seed(0)
    x, y = load_sample(pair)
    teacher, student = build_pair(pair)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = ["sparse_categorical_accuracy"]
    student.compile(optimizer="adam", loss=loss, metrics=metrics)
    ours = keras_kd.Distiller(student=student, teacher=teacher)
    ours.compile(optimizer="adam", metrics=metrics)
    rival = distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=distillation.LogitsDistillation(
            temperature=3.0, loss=keras.losses.KLDivergence()),
        student_loss_weight=0.1,
    )
    rival.compile(optimizer="adam", loss=loss, metrics=metrics)
    models = {"student.evaluate": student, "keras_kd": ours, "keras.distillation": rival}
    durations = {name: [] for name in models}
    for model in models.values():
        model.evaluate(x, y, batch_size=256, verbose=0)  # Warm-up: tracing.
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.evaluate(x, y, batch_size=256, verbose=0)
            durations[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(d) for name, d in durations.items()}
    print(f"\n{pair.upper()} evaluate side by side, one process, {repeats} alternating repeats, "
          f"{len(x)} digits, batch 256")
    print("| evaluate | median s | / student.evaluate |")
    print("|---|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.3f} | {value / medians['student.evaluate']:.2f} |")


def _run_in_subprocess(pair, config, epochs, jit_compile):
    command = [sys.executable, __file__, "--worker", pair, config, "--epochs", str(epochs),
               "--jit-compile", jit_compile]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _median_over_rounds(per_round):
    merged = {}
    for result in per_round:
        merged.setdefault((result["pair"], result["config"]), []).append(result)
    results = []
    for (pair, config), rounds in merged.items():
        row = {"pair": pair, "config": config}
        for key in ("epoch_median", "evaluate", "cache_pass", "peak_rss_mb", "xla"):
            if key in rounds[0]:
                row[key] = statistics.median(r[key] for r in rounds)
        results.append(row)
    return results


def report(results, epochs, rounds=1, jit_compile="default"):
    import keras
    import tensorflow as tf

    print(
        f"\nkeras-kd speed benchmark, {time.strftime('%Y-%m-%d')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"TF {tf.__version__}, Keras {keras.__version__}; MNIST sample 8,000 "
        f"digits, batch {BATCH_SIZE}, median of {epochs} epochs after 1 warm-up, "
        f"median over {rounds} interleaved round(s); jit_compile: {jit_compile}"
    )
    for pair in sorted({r["pair"] for r in results}):
        rows = {r["config"]: r for r in results if r["pair"] == pair}
        print(f"\n{pair.upper()} pair")
        print("| configuration | XLA | s/epoch | evaluate s | peak RSS MB | extra |")
        print("|---|---|---|---|---|---|")
        for config in CONFIGS:
            row = rows[config]
            extra = f"cache pass {row['cache_pass']:.2f} s" if "cache_pass" in row else ""
            print(
                f"| ({'abcd'[CONFIGS.index(config)]}) {config} | {'on' if row['xla'] else 'off'} "
                f"| {row['epoch_median']:.2f} "
                f"| {row['evaluate']:.2f} | {row['peak_rss_mb']:.0f} | {extra} |"
            )
        student, rival = rows["student"], rows["keras"]
        online, cached = rows["online"], rows["cached"]
        five_rival = 5 * rival["epoch_median"]
        five_cached = cached["cache_pass"] + 5 * cached["epoch_median"]
        ratios = [
            ("(c) online / (b) keras per epoch", online["epoch_median"] / rival["epoch_median"], "<= 1.05"),
            ("(b) keras 5 epochs / (d) cached 5 epochs incl. cache", five_rival / five_cached, ">= 3"),
            ("(d) cached / (a) student per epoch", cached["epoch_median"] / student["epoch_median"], "<= 1.3"),
            ("(e) keras_kd evaluate / student.evaluate", online["evaluate"] / student["evaluate"], "<= 1.1"),
            ("(e) keras evaluate / student.evaluate", rival["evaluate"] / student["evaluate"], "-"),
        ]
        print("\n| ratio | value | target |")
        print("|---|---|---|")
        for name, value, target in ratios:
            print(f"| {name} | {value:.2f} | {target} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", default=sorted(PAIRS), choices=sorted(PAIRS))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds; figures are medians over rounds")
    parser.add_argument("--jit-compile", choices=("default", "on", "off"), default="default",
                        help="XLA for all configurations, or each library's default")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--evaluate-only", type=int, metavar="REPEATS", default=None,
                        help="only (e), all evaluates alternating in one process")
    parser.add_argument("--worker", nargs=2, metavar=("PAIR", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(*args.worker, args.epochs, args.jit_compile)))
        return
    if args.evaluate_only:
        for pair in args.pairs:
            evaluate_side_by_side(pair, args.evaluate_only)
        return
    # Rounds interleave the configurations (a, b, c, d, a, b, ...): this
    # machine's speed drifts over minutes, and a configuration measured
    # only once, minutes after another, would carry that drift.
    per_round = []
    for round_index in range(args.rounds):
        for pair in args.pairs:
            for config in CONFIGS:
                print(f"round {round_index + 1}/{args.rounds}: {pair} {config} ...", flush=True)
                per_round.append(_run_in_subprocess(pair, config, args.epochs, args.jit_compile))
    results = _median_over_rounds(per_round)
    report(results, args.epochs, args.rounds, args.jit_compile)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(per_round, f, indent=2)


if __name__ == "__main__":
    main()
