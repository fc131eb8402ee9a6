"""Cached teacher path against keras.distillation, and float32 vs float64 losses.

Part 1, side by side in one process, on the same data and models (the E1
keras.io CNN pair, the first `--samples` digits of the bundled MNIST sample,
batch 64, the same tf.data pipeline), each starting from the same weights:

  keras.distillation   `keras.distillation.Distiller` (LogitsDistillation
                       with an explicit `keras.losses.KLDivergence()`),
                       `--epochs` epochs, the teacher run on every step
  keras_kd cached      the teacher's logits computed once
                       (`cache.compute_teacher_logits`), then `--epochs`
                       epochs of `keras_kd.Distiller` on them

Each wall time covers everything a user waits for: the cache pass, every
epoch, the first epoch's tracing. The rounds alternate which runs first; the
table prints medians and the ratio keras.distillation / keras_kd, then where
the time goes: an epoch each way after the first (no tracing), the teacher
pass, and the ratio they bound (no setup, no tracing).

Part 2: one loss + gradient of Hinton's KD with respect to the student
logits on a `(--rows, --classes)` batch (4096 x 4000 by default, and
`--sequence` for `(8, 512, 32000)`, a language model's vocabulary), with
`precision="float32"` (the default) and `"float64"`, alternating, medians.

    python benchmarks/cached_path.py                 # 3 rounds
    python benchmarks/cached_path.py --rounds 5 --sequence
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pairs import build_pair  # noqa: E402
from pairs import load_sample  # noqa: E402

BATCH_SIZE = 64


def EpochTimer():
    """A callback that keeps each epoch's wall seconds in `.seconds`."""
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.start)

    return Timer()


def run_keras(teacher, student, x, y, epochs):
    import keras
    from keras import distillation

    from keras_kd.data import datasets

    start = time.perf_counter()
    rival = distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=distillation.LogitsDistillation(
            temperature=3.0, loss=keras.losses.KLDivergence()),
        student_loss_weight=0.1,
    )
    rival.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["sparse_categorical_accuracy"])
    data = datasets.make_dataset(x, y, name=None, scaling=None, batch_size=BATCH_SIZE,
                                 shuffle=True, seed=0)
    timer = EpochTimer()
    rival.fit(data, epochs=epochs, verbose=0, callbacks=[timer])
    return time.perf_counter() - start, timer.seconds


def run_cached(teacher, student, x, y, epochs):
    import keras_kd
    from keras_kd.distillation import cache
    from keras_kd.data import datasets

    start = time.perf_counter()
    logits = cache.compute_teacher_logits(teacher, x)
    cache_pass = time.perf_counter() - start
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", metrics=["sparse_categorical_accuracy"],
                      temperature=3.0)
    data = datasets.make_dataset(x, y, name=None, scaling=None, batch_size=BATCH_SIZE,
                                 shuffle=True, seed=0, teacher_logits=logits)
    timer = EpochTimer()
    distiller.fit(data, epochs=epochs, verbose=0, callbacks=[timer])
    return time.perf_counter() - start, cache_pass, timer.seconds


def cached_path(samples, epochs, rounds):
    import keras

    x, y = load_sample("e1")
    x, y = x[:samples], y[:samples]
    keras.utils.set_random_seed(0)
    teacher, student = build_pair("e1")
    initial = student.get_weights()
    times = {"keras.distillation": [], "keras_kd cached": [], "cache pass": []}
    # Epochs after the first (no tracing): what an epoch costs each way.
    later_epochs = {"keras.distillation": [], "keras_kd cached": []}

    def keras_round():
        student.set_weights(initial)
        total, epoch_seconds = run_keras(teacher, student, x, y, epochs)
        times["keras.distillation"].append(total)
        later_epochs["keras.distillation"].extend(epoch_seconds[1:])

    def cached_round():
        student.set_weights(initial)
        total, cache_pass, epoch_seconds = run_cached(teacher, student, x, y, epochs)
        times["keras_kd cached"].append(total)
        times["cache pass"].append(cache_pass)
        later_epochs["keras_kd cached"].extend(epoch_seconds[1:])

    for number in range(rounds):
        order = (keras_round, cached_round) if number % 2 == 0 else (cached_round, keras_round)
        for run in order:
            run()
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n## Cached path: E1 pair, {samples} digits, {epochs} epochs, batch {BATCH_SIZE}, "
          f"{rounds} rounds, the order alternating (wall seconds, everything included)")
    print("| run | median s | rounds |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    ratio = medians["keras.distillation"] / medians["keras_kd cached"]
    per_round = statistics.median(
        a / b for a, b in zip(times["keras.distillation"], times["keras_kd cached"]))
    print(f"\nkeras.distillation / keras_kd cached: {ratio:.2f}x of the medians, "
          f"{per_round:.2f}x the median of per-round ratios (aim: >= 3x)")
    # The bound: with no setup and no tracing, keras.distillation costs
    # `epochs` online epochs, keras_kd one teacher pass + `epochs` student epochs.
    online = statistics.median(later_epochs["keras.distillation"])
    cached = statistics.median(later_epochs["keras_kd cached"])
    teacher_pass = medians["cache pass"]
    bound = epochs * online / (teacher_pass + epochs * cached)
    print(f"Where the time goes (medians of epochs 2..{epochs}): an online epoch "
          f"{online:.2f} s, a cached epoch {cached:.2f} s, the teacher pass {teacher_pass:.2f} s; "
          f"the ratio without any setup or tracing would be {epochs} x {online:.2f} / "
          f"({teacher_pass:.2f} + {epochs} x {cached:.2f}) = {bound:.2f}x.")


def precision(shape, rounds):
    import tensorflow as tf

    from keras_kd.distillation import losses

    rng = tf.random.Generator.from_seed(0)
    teacher = rng.normal(shape) * 4.0
    student = tf.Variable(rng.normal(shape) * 4.0)
    results = {}
    functions = {}
    for dtype in ("float32", "float64"):
        loss = losses.KLDivergenceWithTemperature(precision=dtype)

        @tf.function
        def step(loss=loss):
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(loss.compute_per_sample(teacher, student, 2.0))
            return value, tape.gradient(value, student)

        step()  # Trace.
        functions[dtype] = step
        results[dtype] = []
    for _ in range(rounds):
        for dtype, step in functions.items():
            start = time.perf_counter()
            value, gradient = step()
            float(value), gradient.numpy()
            results[dtype].append(time.perf_counter() - start)
    medians = {dtype: statistics.median(v) * 1000 for dtype, v in results.items()}
    print(f"\n## Loss + gradient, Hinton KD at T=2, logits {tuple(shape)}, {rounds} rounds")
    print("| precision | median ms |")
    print("|---|---|")
    for dtype, value in medians.items():
        print(f"| {dtype} | {value:.0f} |")
    print(f"\nfloat64 / float32: {medians['float64'] / medians['float32']:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=4000)
    parser.add_argument("--sequence", action="store_true",
                        help="also time (8, 512, 32000) sequence logits")
    parser.add_argument("--skip-cached-path", action="store_true")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    print(f"keras-kd cached-path and precision benchmark, {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}")
    if not args.skip_cached_path:
        cached_path(args.samples, args.epochs, args.rounds)
    precision((args.rows, args.classes), max(args.rounds, 5))
    if args.sequence:
        precision((8, 512, 32000), max(args.rounds, 5))


if __name__ == "__main__":
    main()
