"""Where the cache pass's time goes: the teacher's forward pass over the data.

The cached-logits path pays one forward pass of the teacher over the training
set. This script times the ways of running it side by side in one process
(round robin, so drift hits all alike) on the bundled MNIST sample: Keras'
`predict` at several batch sizes, a plain `tf.function` forward pass with and
without XLA, and the fingerprinting that keys the cache. It also times one
training epoch's teacher share, for comparison: the online Distiller runs the
same forward pass at batch 64, inside its training step.

    python benchmarks/cache_pass.py                    # E1 teacher, 5 rounds
    python benchmarks/cache_pass.py --pair e3 --rounds 7
"""

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_kd import cache  # noqa: E402
from pairs import PAIRS  # noqa: E402
from pairs import build_pair  # noqa: E402
from pairs import load_sample  # noqa: E402


def forward_pass(teacher, x, batch_size, jit_compile):
    """A tf.function forward pass over `x`; returns a callable timing target."""
    step = tf.function(lambda batch: teacher(batch, training=False), jit_compile=jit_compile,
                       reduce_retracing=True)
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]

    def run():
        return np.concatenate([step(batch).numpy() for batch in batches])

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", choices=sorted(PAIRS), default="e1")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    x, _ = load_sample(args.pair)
    teacher, _ = build_pair(args.pair)

    ways = {
        f"teacher.predict, batch {size}": (
            lambda size=size: teacher.predict(x, batch_size=size, verbose=0))
        for size in (32, 64, 256, 1024)
    }
    for size in (64, 256):
        for jit in (False, True):
            ways[f"tf.function forward, batch {size}, XLA {'on' if jit else 'off'}"] = (
                forward_pass(teacher, x, size, jit))
    ways["fingerprint of teacher weights and inputs"] = lambda: (
        cache.fingerprint_model(teacher), cache.fingerprint_array(x))
    reference = teacher.predict(x, batch_size=256, verbose=0)
    for name, way in ways.items():  # Warm-up: tracing, XLA compilation.
        output = way()
        if isinstance(output, np.ndarray):
            np.testing.assert_allclose(output, reference, rtol=1e-4, atol=1e-4, err_msg=name)

    durations = {name: [] for name in ways}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1}/{args.rounds}", flush=True)
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            durations[name].append(time.perf_counter() - start)

    print(
        f"\n{args.pair.upper()} teacher forward pass over {len(x)} digits, "
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, TF {tf.__version__}, Keras {keras.__version__}; "
        f"median of {args.rounds} round-robin repeats"
    )
    baseline = statistics.median(durations["teacher.predict, batch 256"])
    print("| way | median s | fastest-slowest | / predict at 256 |")
    print("|---|---|---|---|")
    for name, values in durations.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f}-{max(values):.2f} "
              f"| {median / baseline:.2f} |")


if __name__ == "__main__":
    main()
