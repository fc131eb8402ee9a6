"""Backends benchmark: ms per training step on TensorFlow and on JAX.

Two workloads, each on both backends, one backend per process (Keras reads
KERAS_BACKEND when it is imported; `--tf-python`, `--jax-python` name the
Pythons), keras-kd beside `keras.distillation` on the same backend:

E1, the CNN pair on the bundled MNIST sample, batch 64 (the configurations
of `speed.py`), one child process per (round, backend, configuration), or
with `--e1-interleaved` all four in one process per backend, `--rounds`
interleaved one-epoch rounds after a warm-up epoch each, as the LM's:

  student   `student.fit` alone: the floor and the cached epoch's baseline
  keras     `keras.distillation.Distiller` on the same backend
  online    `keras_kd.Distiller`, teacher run on every step
  cached    `keras_kd.Distiller` on cached teacher logits (a full-logit cache)

LM, the KerasHub GPT-2 character models of `sequence.py` (built from
configs: teacher 2 x 128, student 2 x 64; 16 x 64 Shakespeare windows,
alpha 0.1, T 2), one child process per backend that builds every
configuration, runs one warm-up epoch of each (tracing) and then
`--lm-rounds` interleaved rounds of one `--lm-steps`-step epoch each (order
reversed every other round):

  student   `student.fit` (LM loss, sample weights on padding)
  keras     `keras.distillation.Distiller` (`LogitsDistillation`, `KLDivergence()`)
  online    `keras_kd.Distiller`, teacher run on every step
  top-k     `keras_kd.Distiller` + `TopKKLDivergence` on a top-8 cache written
            once by `write_top_k_cache` and streamed by `top_k_dataset`

Every configuration runs with its library's default `jit_compile` (XLA off
on a CPU-only TensorFlow; Keras' JAX trainer always jits). The tables show
medians (E1: over rounds of each child's median timed epoch; LM: over the
interleaved rounds) in ms per step, and the ratios keras-kd /
keras.distillation, cached / student epoch (aim <= 1.15) and JAX / TF.

    python benchmarks/backends.py --jax-python /work/venv-jax/bin/python   # both, both
    python benchmarks/backends.py --workloads lm --lm-rounds 5 --jax-python ...
    python benchmarks/backends.py --workloads lm --lm-variants --jax-python ...  # + cache in memory
    python benchmarks/backends.py --backends jax --workloads e1 --jax-python ...
    python benchmarks/backends.py --workloads e1 --e1-interleaved --rounds 5 --jax-python ...
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
CONFIGS = {"e1": ("student", "keras", "online", "cached"),
           "lm": ("student", "keras", "online", "top-k")}
CACHED = {"e1": "cached", "lm": "top-k"}
# sequence.py's configuration names, by this benchmark's.
LM_NAMES = {"student": "student", "keras": "keras.distillation",
            "online": "keras_kd online", "top-k": "keras_kd top-8",
            # --lm-variants: the same top-8 cache read into memory first (the
            # step without the cache's tf.data stream).
            "top-k in memory": "keras_kd top-8, cache in memory"}


def run_e1_worker(config, epochs):
    """One E1 configuration on this process's backend: its measurements."""
    sys.path.insert(0, BENCHMARKS)
    import keras
    import speed
    from pairs import load_sample

    result = speed.run_worker("e1", config, epochs)
    steps = math.ceil(len(load_sample("e1")[1]) / speed.BATCH_SIZE)
    result["backend"] = keras.backend.backend()
    result["workload"] = "e1"
    result["ms_per_step"] = 1000 * result["epoch_median"] / steps
    return result


def run_e1_interleaved_worker(rounds):
    """Every E1 configuration on this process's backend, interleaved as the
    LM's are (`--e1-interleaved`): one result per configuration, with its
    ms per step per round. One process holds all four, so the ratios do not
    carry the spread between processes."""
    sys.path.insert(0, BENCHMARKS)
    import keras
    import sequence
    import speed
    from pairs import build_pair
    from pairs import load_sample

    keras.utils.set_random_seed(0)
    x, y = load_sample("e1")
    teacher, _ = build_pair("e1")
    configurations = {}
    for config in CONFIGS["e1"]:
        model, data, _ = speed.build_configuration(config, teacher, build_pair("e1")[1], x, y)
        model.fit(data, epochs=1, verbose=0)  # Tracing.
        configurations[config] = (model, data)
    steps = math.ceil(len(y) / speed.BATCH_SIZE)
    times, loads = sequence.interleaved_rounds(configurations, rounds)
    return [{"backend": keras.backend.backend(), "workload": "e1", "config": config,
             "rounds": [1000 * s / steps for s in seconds],
             "ms_per_step": 1000 * statistics.median(seconds) / steps,
             "load": [min(loads), max(loads)]}
            for config, seconds in times.items()]


def run_lm_worker(steps, rounds, variants=False):
    """Every LM configuration on this process's backend, interleaved: one
    result per configuration, with its seconds per round (`variants`: also
    the top-8 cache held in memory)."""
    sys.path.insert(0, BENCHMARKS)
    import keras
    import sequence

    keras.utils.set_random_seed(0)
    vocabulary, x, y, weight = sequence.make_windows(steps * sequence.BATCH_SIZE)
    with tempfile.TemporaryDirectory() as cache_root:
        built, caches = sequence.build_configurations(
            vocabulary, x, y, weight, cache_root, "default", (8,), variants=variants)
        names = CONFIGS["lm"] + (("top-k in memory",) if variants else ())
        configurations = {config: built[LM_NAMES[config]] for config in names}
        warm = {}
        for config, (model, data) in configurations.items():
            start = time.perf_counter()
            model.fit(data, epochs=1, verbose=0, shuffle=False)  # Tracing.
            warm[config] = time.perf_counter() - start
        times, loads = sequence.interleaved_rounds(configurations, rounds)
    backend = keras.backend.backend()
    return [{"backend": backend, "workload": "lm", "config": config,
             "rounds": [1000 * s / steps for s in seconds],
             "ms_per_step": 1000 * statistics.median(seconds) / steps,
             "warm_up_seconds": warm[config], "load": [min(loads), max(loads)],
             "jit_compile": bool(configurations[config][0].jit_compile),
             "top_k_cache_seconds": caches[8]["seconds"]}
            for config, seconds in times.items()]


def run_child(python, backend, arguments):
    root = os.path.dirname(BENCHMARKS)
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                   "PYTHONPATH": os.pathsep.join(
                       [root, BENCHMARKS, os.environ.get("PYTHONPATH", "")])}
    command = [python, os.path.abspath(__file__), "--worker", backend, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        raise RuntimeError(f"{backend} {arguments} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    for row in result if isinstance(result, list) else [result]:
        assert row["backend"] == backend, row
    return result


def report(results, backends, workloads, notes):
    ms = {}
    for row in results:
        ms.setdefault((row["workload"], row["backend"], row["config"]), []).append(
            row["ms_per_step"])
    medians = {key: statistics.median(values) for key, values in ms.items()}
    print("\n| workload | backend | student | keras.distillation | keras-kd online | "
          "keras-kd cached | online / keras | cached / student |")
    print("|---|---|---|---|---|---|---|---|")
    for workload in workloads:
        for backend in backends:
            m = {config: medians[workload, backend, config] for config in CONFIGS[workload]}
            cached = m[CACHED[workload]]
            print(f"| {workload} | {backend} | {m['student']:.2f} | {m['keras']:.2f} | "
                  f"{m['online']:.2f} | {cached:.2f} ({CACHED[workload]}) | "
                  f"{m['online'] / m['keras']:.2f} | {cached / m['student']:.2f} |")
    for backend in backends:
        key = ("lm", backend, "top-k in memory")
        if key in medians:
            print(f"lm {backend}: top-8 cache in memory {medians[key]:.2f} ms per step, "
                  f"{medians[key] / medians['lm', backend, 'student']:.2f}x the student's")
    if set(backends) == {"tensorflow", "jax"}:
        for workload in workloads:
            print(f"\n{workload} JAX / TF: " + ", ".join(
                f"{config} {medians[workload, 'jax', config] / medians[workload, 'tensorflow', config]:.2f}"
                for config in CONFIGS[workload]))
    for note in notes:
        print(note)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"],
                        choices=("tensorflow", "jax"))
    parser.add_argument("--workloads", nargs="+", default=["e1", "lm"], choices=("e1", "lm"))
    parser.add_argument("--tf-python", default=sys.executable,
                        help="a Python with TensorFlow (default: this one)")
    parser.add_argument("--jax-python", default=sys.executable,
                        help="a Python with JAX (default: this one)")
    parser.add_argument("--epochs", type=int, default=2, help="E1: timed epochs after the warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="E1: rounds of child processes")
    parser.add_argument("--e1-interleaved", action="store_true",
                        help="E1: the four configurations in one process per backend, "
                             "--rounds interleaved epochs (as the LM's)")
    parser.add_argument("--lm-steps", type=int, default=60, help="LM: steps of one epoch")
    parser.add_argument("--lm-rounds", type=int, default=5, help="LM: interleaved rounds")
    parser.add_argument("--lm-variants", action="store_true",
                        help="LM: also the top-8 cache read into memory (rounds in the notes)")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker[1] == "lm":
            print(json.dumps(run_lm_worker(args.lm_steps, args.lm_rounds, args.lm_variants)))
        elif args.worker[1] == "e1-interleaved":
            print(json.dumps(run_e1_interleaved_worker(args.rounds)))
        else:
            print(json.dumps(run_e1_worker(args.worker[2], args.epochs)))
        return
    pythons = {"tensorflow": args.tf_python, "jax": args.jax_python}
    results, notes = [], []

    def save():
        # After every child: a long run stopped early keeps what it measured.
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)

    start_load = os.getloadavg()[0]
    if "e1" in args.workloads and args.e1_interleaved:
        for backend in args.backends:
            print(f"e1: {backend}, {args.rounds} interleaved rounds ...", flush=True)
            rows = run_child(pythons[backend], backend,
                             ["e1-interleaved", "--rounds", str(args.rounds)])
            results.extend(rows)
            save()
            load = rows[0]["load"]
            notes.append(f"e1 {backend}: rounds (ms per step) " + "; ".join(
                f"{row['config']} {', '.join(f'{v:.1f}' for v in row['rounds'])}"
                for row in rows) + f"; load {load[0]:.1f}..{load[1]:.1f}")
        notes.append(f"e1: ms per step, median of {args.rounds} interleaved rounds of one "
                     "epoch (batch 64, 8,000 digits), in one process per backend.")
    elif "e1" in args.workloads:
        for round_index in range(args.rounds):
            for config in CONFIGS["e1"]:
                for backend in args.backends:
                    print(f"e1 round {round_index + 1}/{args.rounds}: {backend} {config} ...",
                          flush=True)
                    results.append(run_child(pythons[backend], backend,
                                             ["e1", config, "--epochs", str(args.epochs)]))
                    save()
        notes.append(f"\ne1: ms per training step, median of {args.rounds} round(s) of "
                     f"child processes, each the median of {args.epochs} timed epochs after a "
                     "warm-up; batch 64, 8,000 digits.")
    if "lm" in args.workloads:
        for backend in args.backends:
            print(f"lm: {backend}, {args.lm_rounds} interleaved rounds ...", flush=True)
            rows = run_child(pythons[backend], backend,
                             ["lm", "--lm-steps", str(args.lm_steps),
                              "--lm-rounds", str(args.lm_rounds)]
                             + (["--lm-variants"] if args.lm_variants else []))
            results.extend(rows)
            save()
            load = rows[0]["load"]
            notes.append(f"lm {backend}: rounds (ms per step) " + "; ".join(
                f"{row['config']} {', '.join(f'{v:.1f}' for v in row['rounds'])}"
                for row in rows) + f"; jit_compile {rows[0]['jit_compile']}; load "
                f"{load[0]:.1f}..{load[1]:.1f}")
        notes.append(f"lm: ms per step, median of {args.lm_rounds} interleaved rounds of "
                     f"{args.lm_steps} steps of 16 x 64 windows, in one process per backend.")
    notes.append(f"1-minute load: {start_load:.1f} at the start, "
                 f"{os.getloadavg()[0]:.1f} at the end.")
    report(results, args.backends, args.workloads, notes)


if __name__ == "__main__":
    main()
