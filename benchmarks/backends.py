"""Backends benchmark: ms per training step on TensorFlow and on JAX.

The E1 CNN pair (the bundled MNIST sample, batch 64), in one process per
(backend, configuration), the configurations of `speed.py`:

  student   `student.fit` alone: the floor and the cached epoch's baseline
  keras     `keras.distillation.Distiller` on the same backend
  online    `keras_kd.Distiller`, teacher run on every step
  cached    `keras_kd.Distiller` on cached teacher logits

KERAS_BACKEND is read when Keras is imported, so each measurement is a child
process with its own backend and Python (`--tf-python`, `--jax-python`).
Rounds interleave every (backend, configuration); the table shows medians
over rounds of each child's median timed epoch, and the ratios keras-kd /
keras.distillation, cached / student epoch, and JAX / TF.

    python benchmarks/backends.py --epochs 2 --rounds 3
    python benchmarks/backends.py --backends jax --jax-python /work/venv-jax/bin/python

Not yet here: the GPT-2 character LM and the top-k cache stream (issue 26,
item 6); `cached` is the full-logit cache of `speed.py`.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("student", "keras", "online", "cached")


def run_worker(config, epochs):
    """One configuration on this process's backend: its measurements."""
    sys.path.insert(0, BENCHMARKS)
    import keras
    import speed
    from pairs import load_sample

    result = speed.run_worker("e1", config, epochs)
    steps = math.ceil(len(load_sample("e1")[1]) / speed.BATCH_SIZE)
    result["backend"] = keras.backend.backend()
    result["ms_per_step"] = 1000 * result["epoch_median"] / steps
    return result


def run_child(python, backend, config, epochs):
    root = os.path.dirname(BENCHMARKS)
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join(
                       [root, BENCHMARKS, os.environ.get("PYTHONPATH", "")])}
    command = [python, os.path.abspath(__file__), "--worker", backend, config,
               "--epochs", str(epochs)]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        raise RuntimeError(f"{backend} {config} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend, result
    return result


def report(per_round, backends):
    ms = {}
    for result in per_round:
        ms.setdefault((result["backend"], result["config"]), []).append(result["ms_per_step"])
    medians = {key: statistics.median(values) for key, values in ms.items()}
    print("\n| backend | student | keras.distillation | keras-kd online | keras-kd cached |"
          " online / keras | cached / student |")
    print("|---|---|---|---|---|---|---|")
    for backend in backends:
        m = {config: medians[backend, config] for config in CONFIGS}
        print(f"| {backend} | {m['student']:.2f} | {m['keras']:.2f} | {m['online']:.2f} | "
              f"{m['cached']:.2f} | {m['online'] / m['keras']:.2f} | "
              f"{m['cached'] / m['student']:.2f} |")
    if set(backends) == {"tensorflow", "jax"}:
        print("\nJAX / TF: " + ", ".join(
            f"{config} {medians['jax', config] / medians['tensorflow', config]:.2f}"
            for config in CONFIGS))
    rounds = len(next(iter(ms.values())))
    print(f"\nms per training step, median of {rounds} round(s); E1 pair, batch 64.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"],
                        choices=("tensorflow", "jax"))
    parser.add_argument("--tf-python", default=sys.executable,
                        help="a Python with TensorFlow (default: this one)")
    parser.add_argument("--jax-python", default=sys.executable,
                        help="a Python with JAX (default: this one)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker[1], args.epochs)))
        return
    pythons = {"tensorflow": args.tf_python, "jax": args.jax_python}
    per_round = []
    for round_index in range(args.rounds):
        for config in CONFIGS:
            for backend in args.backends:
                print(f"round {round_index + 1}/{args.rounds}: {backend} {config} ...", flush=True)
                per_round.append(run_child(pythons[backend], backend, config, args.epochs))
    report(per_round, args.backends)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(per_round, f, indent=2)


if __name__ == "__main__":
    main()
