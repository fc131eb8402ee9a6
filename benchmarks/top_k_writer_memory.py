"""Peak memory and time of `write_top_k_cache`: dense logits vs chunked.

The teacher is GPT-like, as in issue 27's measurements: `Embedding(V, H)`,
one `Dense(H, "gelu")` hidden layer and a `Dense(V)` head (hidden size H =
512 by default). The writer runs it over `--batches` batches of `--batch` x
`--time` tokens (4 x 1024 = 4,096 positions by default) and writes a top-k
cache (k = 16, float16 values):

- dense: `write_top_k_cache(teacher, ...)`, the teacher's whole `(batch,
  time, V)` logits, then their top k and log-normaliser;
- chunked: `write_top_k_cache(teacher, ..., chunk_size=C)`, the hidden
  states, then `C` positions of logits at a time.

Each configuration runs in its own process. Peak memory is the process's
peak RSS (`resource.getrusage().ru_maxrss`); "write" memory is the peak
minus the RSS (`VmRSS`) once the teacher and the inputs exist; "built" is
the peak before the write (building the teacher). Time is the median of
`--repeats` whole writes (each compiles its pass again: the writer builds a
new compiled function per call). Each child also prints a check of what it
wrote (the first position's top ids, the mean log-normaliser): dense and
chunked must agree.

Usage:
    python benchmarks/top_k_writer_memory.py                   # V=131072, 4,096 positions
    python benchmarks/top_k_writer_memory.py --vocab 32768     # smaller
    KERAS_BACKEND=jax python benchmarks/top_k_writer_memory.py
"""

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time

from processes import current_rss_gib
from processes import peak_rss_gib
from processes import run_child
from processes import volunteer_for_oom_killer


def child(args):
    """Runs one configuration; prints one JSON line."""
    volunteer_for_oom_killer()
    import keras
    import numpy as np

    from keras_kd.distillation.top_k import write_top_k_cache

    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([
        keras.Input((args.time,), dtype="int32"),
        keras.layers.Embedding(args.vocab, args.hidden),
        keras.layers.Dense(args.hidden, activation="gelu"),
        keras.layers.Dense(args.vocab, name="lm_head"),
    ])
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, args.vocab, (args.batches * args.batch, args.time)).astype("int32")
    chunked = {} if args.method == "dense" else {"chunk_size": args.chunk_size}
    directory = tempfile.mkdtemp(prefix="top_k_writer_memory-")
    baseline, built_peak = current_rss_gib(), peak_rss_gib()
    times = []
    try:
        for repeat in range(args.repeats):
            start = time.perf_counter()
            cache = write_top_k_cache(
                teacher, tokens, os.path.join(directory, "cache"), k=16, batch_size=args.batch,
                rebuild=True, **chunked)
            times.append(time.perf_counter() - start)
        shard = cache.shard(0)
        check = {
            "first_ids": np.asarray(shard["indices"][0, 0, :4]).tolist(),
            "mean_log_normalizer": float(np.mean(shard["log_normalizer"])),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps({"baseline_gib": baseline, "built_peak_gib": built_peak, "peak_gib": peak_rss_gib(),
                      "seconds": statistics.median(times), "check": check}))


def run_config(args, method):
    return run_child(__file__, [
        "--method", method, "--vocab", args.vocab, "--hidden", args.hidden,
        "--batch", args.batch, "--time", args.time, "--batches", args.batches,
        "--chunk-size", args.chunk_size, "--repeats", args.repeats,
    ])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4, help="examples per batch")
    parser.add_argument("--time", type=int, default=1024, help="positions per example")
    parser.add_argument("--batches", type=int, default=2, help="batches written")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="whole writes per process")
    parser.add_argument("--methods", default="dense,chunked")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    positions = args.batch * args.time
    print(f"backend={backend} V={args.vocab} hidden={args.hidden} positions/batch={positions} "
          f"batches={args.batches} chunk_size={args.chunk_size} k=16 repeats={args.repeats}")
    print(f"{'method':<8}{'built GiB':>10}{'peak GiB':>9}{'write GiB':>10}{'s':>8}{'peak/dense':>11}"
          f"{'write/dense':>12}{'time/dense':>11}  check")
    dense = None
    for method in args.methods.split(","):
        result = run_config(args, method)  # One at a time: never two big processes.
        row = f"{method:<8}"
        if "error" in result:
            print(row + "  " + result["error"], flush=True)
            continue
        write = result["peak_gib"] - result["baseline_gib"]
        row += f"{result['built_peak_gib']:>10.2f}{result['peak_gib']:>9.2f}{write:>10.2f}"
        row += f"{result['seconds']:>8.1f}"
        if method == "dense":
            dense = result
            row += f"{'':>11}{'':>12}{'':>11}"
        elif dense is not None:
            dense_write = dense["peak_gib"] - dense["baseline_gib"]
            row += f"{result['peak_gib'] / dense['peak_gib']:>11.2f}"
            row += f"{write / dense_write:>12.2f}" if dense_write > 0 else f"{'-':>12}"
            row += f"{result['seconds'] / dense['seconds']:>11.2f}"
        print(row + "  " + json.dumps(result["check"]), flush=True)


if __name__ == "__main__":
    main()
