"""Peak memory and time of one distillation step: dense logits vs chunked.

One step is the loss of a token-level objective (the student's
cross-entropy plus a divergence from the teacher) and its gradient with
respect to the student's final hidden states and head kernel, at a
vocabulary V and a number of positions N (hidden size 512):

- dense: both models' `(N, V)` logits materialised, keras_kd's
  `KLDivergenceWithTemperature` / `GeneralizedJSD` and Keras' sparse
  cross-entropy on them, the gradient by the backend's autodiff;
- chunked: `keras_kd.chunked.chunked_distillation_loss` on the hidden
  states, `--chunk-size` positions of logits at a time.

`--step evaluate` measures what the Distiller's `evaluate` computes instead:
the student's cross-entropy alone, no teacher and no gradient (dense: the
student's `(N, V)` logits and Keras' sparse cross-entropy; chunked:
`chunked_distillation_loss` without a teacher, `training=False`, as
`Distiller.evaluate` runs it on the chunked path). The divergence column is
then unused.

Each configuration runs in its own process (compiled with `tf.function` on
TensorFlow, `jax.jit` on JAX). Peak memory is the process's peak RSS
(`resource.getrusage().ru_maxrss`); "step" memory is the peak minus the RSS
after the inputs and weights exist. Time is the median of `--repeats` steps
after one warm-up (compile) step.

Usage:
    python benchmarks/memory.py --quick                  # small, < 6 GiB
    python benchmarks/memory.py                          # the full table
    python benchmarks/memory.py --configs 32768x4096,131072x2048
    python benchmarks/memory.py --step evaluate --configs 131072x4096 --divergences forward_kl
    KERAS_BACKEND=jax python benchmarks/memory.py --quick
"""

import argparse
import json
import os
import statistics
import time

from processes import peak_rss_gib
from processes import run_child
from processes import volunteer_for_oom_killer

FULL = [(v, n) for v in (32768, 131072, 262144) for n in (2048, 4096, 8192)]
QUICK = [(32768, 2048)]  # dense peaks 2.3 (KL) and 5.6 GiB (GJSD) on TF
DIVERGENCES = ("forward_kl", "generalized_jsd")


def child(args):
    """Runs one configuration; prints one JSON line."""
    volunteer_for_oom_killer()
    import keras
    import numpy as np
    from keras import ops

    from keras_kd.distillation import divergences
    from keras_kd.distillation.chunked import LinearHead
    from keras_kd.distillation.chunked import chunked_distillation_loss

    n, vocab, hidden = args.positions, args.vocab, args.hidden
    rng = np.random.default_rng(0)
    student_hidden = rng.normal(size=(n, hidden)).astype("float32")
    teacher_hidden = rng.normal(size=(n, hidden)).astype("float32")
    kernel = (rng.normal(size=(hidden, vocab)) / hidden**0.5).astype("float32")
    teacher_kernel = (rng.normal(size=(hidden, vocab)) / hidden**0.5).astype("float32")
    labels = rng.integers(0, vocab, n).astype("int32")
    weights = np.full(n, 1.0 / n, "float32")
    temperature = 2.0
    loss = (
        divergences.ForwardKL()
        if args.divergence == "forward_kl"
        else divergences.GeneralizedJSD(beta=0.5)
    )
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def dense(student_hidden, kernel, teacher_hidden, teacher_kernel, labels, weights):
        student = ops.matmul(student_hidden, kernel)
        teacher = ops.stop_gradient(ops.matmul(teacher_hidden, teacher_kernel))
        kd = loss.compute_per_sample(teacher, student, temperature)
        return 0.5 * ops.sum(weights * cross_entropy(labels, student)) + 0.5 * ops.sum(weights * kd)

    def chunked(student_hidden, kernel, teacher_hidden, teacher_kernel, labels, weights):
        return chunked_distillation_loss(
            student_hidden, LinearHead(kernel), teacher_hidden, LinearHead(teacher_kernel),
            labels, 0.5 * weights, divergence=loss, temperature=temperature,
            chunk_size=args.chunk_size,
        ).loss

    def dense_evaluate(student_hidden, kernel, teacher_hidden, teacher_kernel, labels, weights):
        student = ops.matmul(student_hidden, kernel)
        return ops.sum(weights * cross_entropy(labels, student))

    def chunked_evaluate(student_hidden, kernel, teacher_hidden, teacher_kernel, labels, weights):
        return chunked_distillation_loss(
            student_hidden, LinearHead(kernel), None, None, labels, weights,
            chunk_size=args.chunk_size, training=False,
        ).loss

    evaluate = args.step == "evaluate"
    if evaluate:
        objective = dense_evaluate if args.method == "dense" else chunked_evaluate
    else:
        objective = dense if args.method == "dense" else chunked
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        data = [tf.constant(x) for x in (student_hidden, kernel, teacher_hidden, teacher_kernel, labels, weights)]

        @tf.function
        def step(*data):
            if evaluate:  # Values only: no tape.
                value = objective(*data)
                return value, (value, value[None, None])
            with tf.GradientTape() as tape:
                tape.watch(data[:2])
                value = objective(*data)
            grads = tape.gradient(value, data[:2])
            return value, grads

        def run():
            value, grads = step(*data)
            return float(value) + float(tf.reduce_sum(grads[1][0, :8]))

    elif backend == "jax":
        import jax

        data = [jax.device_put(x) for x in (student_hidden, kernel, teacher_hidden, teacher_kernel, labels, weights)]
        if evaluate:
            step = jax.jit(lambda *d: (objective(*d), (0.0, jax.numpy.zeros((1, 8)))))
        else:
            step = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))

        def run():
            value, grads = step(*data)
            return float(value) + float(grads[1][0, :8].sum())

    else:
        raise SystemExit(f"no step for the {backend} backend")
    del student_hidden, teacher_hidden, kernel, teacher_kernel
    baseline = peak_rss_gib()
    times, value = [], None
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "baseline_gib": baseline,
                "peak_gib": peak_rss_gib(),
                "seconds": statistics.median(times[1:]),
                "check": value,
            }
        )
    )


def run_config(args, method, vocab, positions, divergence):
    return run_child(__file__, [
        "--method", method, "--vocab", vocab, "--positions", positions,
        "--divergence", divergence, "--hidden", args.hidden,
        "--chunk-size", args.chunk_size, "--repeats", args.repeats, "--step", args.step,
    ])


def parse_configs(text):
    configs = []
    for item in text.split(","):
        vocab, positions = item.lower().split("x")
        configs.append((int(vocab), int(positions)))
    return configs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK} (VOCABxPOSITIONS; dense peak < 6 GiB)")
    parser.add_argument("--configs", help="comma-separated VOCABxPOSITIONS, e.g. 32768x4096")
    parser.add_argument("--divergences", default=",".join(DIVERGENCES))
    parser.add_argument("--methods", default="dense,chunked")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step", choices=("train", "evaluate"), default="train",
                        help="train: loss and gradient; evaluate: the student's loss alone, no gradient")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--positions", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--divergence", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    configs = parse_configs(args.configs) if args.configs else QUICK if args.quick else FULL
    methods = args.methods.split(",")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"backend={backend} step={args.step} hidden={args.hidden} chunk_size={args.chunk_size} "
          f"repeats={args.repeats}")
    header = f"{'divergence':<16}{'V':>8}{'N':>6}  {'method':<8}{'peak GiB':>9}{'step GiB':>9}{'ms':>9}"
    print(header + f"{'peak/dense':>11}{'step/dense':>11}{'time/dense':>11}")
    for divergence in args.divergences.split(","):
        for vocab, positions in configs:
            results = {m: run_config(args, m, vocab, positions, divergence) for m in methods}
            dense = results.get("dense", {})
            for method, r in results.items():
                row = f"{divergence:<16}{vocab:>8}{positions:>6}  {method:<8}"
                if "error" in r:
                    print(row + "  " + r["error"], flush=True)
                    continue
                step = r["peak_gib"] - r["baseline_gib"]
                row += f"{r['peak_gib']:>9.2f}{step:>9.2f}{1000 * r['seconds']:>9.0f}"
                if method != "dense" and "peak_gib" in dense:
                    dense_step = dense["peak_gib"] - dense["baseline_gib"]
                    row += f"{r['peak_gib'] / dense['peak_gib']:>11.2f}"
                    row += f"{step / dense_step:>11.2f}" if dense_step > 0 else f"{'-':>11}"
                    row += f"{r['seconds'] / dense['seconds']:>11.2f}"
                print(row, flush=True)


if __name__ == "__main__":
    main()
