"""What does op determinism (`--seed`) cost? The E1 teacher's training step
with and without `tf.config.experimental.enable_op_determinism()`.

Op determinism cannot be turned off inside a process, so each setting runs
in its own process; the settings alternate over rounds against the machine's
drift. Prints the median ms per step of each and their ratio.

    python benchmarks/determinism.py --rounds 3
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

STEPS = 40


def worker(deterministic):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from keras_kd.data import datasets
    from keras_kd import models

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    x, y = datasets.select("mnist", "train", source="sample", limit=STEPS * 32)
    x = datasets.preprocess(x, "mnist").numpy()
    teacher = models.build_keras_io_teacher()
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = datasets.make_dataset(x, y, name=None, scaling=None, batch_size=64, shuffle=True)
    teacher.fit(train, epochs=1, verbose=0)  # Warm-up: tracing.
    start = time.perf_counter()
    teacher.fit(train, epochs=2, verbose=0)
    return 1000 * (time.perf_counter() - start) / STEPS


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker == "on")))
        return
    times = {"on": [], "off": []}
    for _ in range(args.rounds):
        for setting in ("off", "on"):
            output = subprocess.run(
                [sys.executable, __file__, "--worker", setting],
                check=True, capture_output=True, text=True,
            ).stdout
            times[setting].append(json.loads(output.strip().splitlines()[-1]))
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    print(f"E1 teacher training step, batch 64, {time.strftime('%Y-%m-%d')}, "
          f"median of {args.rounds} alternating rounds")
    print("| op determinism | ms/step |\n|---|---|")
    print(f"| off | {off:.0f} |\n| on | {on:.0f} |")
    print(f"ratio on / off: {on / off:.2f}")


if __name__ == "__main__":
    main()
