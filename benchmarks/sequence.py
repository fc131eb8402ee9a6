"""Sequence (language-model) distillation: step speed, top-k cache size, float64 cost.

Everything in one process, on the same batches and models: KerasHub GPT-2
character models on the bundled Shakespeare plays, built from configs with
random weights (`GPT2Backbone(dropout=0.0, max_sequence_length=64)` +
`GPT2CausalLM(backbone, preprocessor=None)`):

  teacher  2 layers, 4 heads, width 128, intermediate 512
  student  2 layers, 2 heads, width  64, intermediate 256

The data: the plays cut at blank lines into "documents" of whole speeches
(each at least a random 32..512 characters long); each document goes
through `keras_kd.data.text.causal_lm_dataset(ids, 64, ...,
drop_remainder=False)`, so its last window is padded (`padding_mask` and
`sample_weight` False). The first `--steps * 16` windows, in order, are
rebatched into `--steps` batches of 16 x 64; every configuration reads
these same batches through the same `tf.data` pipeline.

Part 1, tokens per second of `fit` (real, unpadded target tokens; total
positions per second too), alpha = 0.1, T = 2, Adam, each configuration
with its own copy of the student (same initial weights):

  student         `student.fit`, `SparseCategoricalCrossentropy(from_logits=True)`,
                  `weighted_metrics=["sparse_categorical_accuracy"]`
  keras_kd online `keras_kd.Distiller`, the teacher run on every step
  keras_kd top-k  `keras_kd.Distiller` + `TopKKLDivergence(cache_temperature=2)`
                  on a cache written once by `write_top_k_cache` (k = 8 and
                  32), streamed by `top_k_dataset(..., batch_size=16)` and
                  zipped with the batches as `keras_kd.targets(labels,
                  teacher_top_k=...)`; for the first k also paired per
                  example (`top_k_dataset` unbatched, zipped with the
                  examples, then batched: what an example-level shuffle
                  needs) and with the cache read into memory beforehand
                  (`from_tensor_slices`), the step without reading the files
  keras           `keras.distillation.Distiller` with
                  `LogitsDistillation(temperature=2, loss=keras.losses.KLDivergence())`,
                  `student_loss_weight=0.1`

Each is compiled and run for one warm-up epoch (tracing), then timed over
`--rounds` rounds of one `fit` epoch of `--steps` steps each, the
configurations interleaved (order reversed every other round); the tables
give medians. Then the input pipelines alone (first batch and a whole epoch, no training),
and a padding check: one batch with its padded positions
(inputs and targets) filled with zeros vs random tokens, the `distillation_loss`
and `student_loss` each distiller reports from `train_on_batch` (the
student's weights restored in between). keras.distillation averages over
every position (it takes no sample weights), so its values change;
keras_kd's must not.

Part 2: cache bytes per token, a dense float32 row (`4 * V`) against
`top_k.bytes_per_token(k)` (float16 values), for the character vocabulary
and V = 32,000 at k = 8, 32, 64; and the k = 8 cache of part 1 on disk
(all its files) divided by its tokens.

Part 3: one loss + gradient with respect to the student logits, float32
against float64 `precision`, for `KLDivergenceWithTemperature` and
`GeneralizedJSD(beta=0.5)` at T = 2, logits `--precision-shape` (default
2 x 256 x 32000: at 8 x 256 x 32000 one float64 GeneralizedJSD step needs
about 11 GB beyond the process and a minute on 2 shared cores),
`--repeats` alternating repeats, medians; and how far the float32 values
and gradients are from the float64 ones.

    python benchmarks/sequence.py --quick                  # smoke test, ~1 minute
    python benchmarks/sequence.py                          # 60 steps x 5 rounds
    python benchmarks/sequence.py --steps 100 --rounds 7 --wait-load 1.5
    python benchmarks/sequence.py --skip-speed             # parts 2 (sizes only) and 3
"""

import argparse
import os
import platform
import resource
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEQUENCE_LENGTH = 64
BATCH_SIZE = 16
TEMPERATURE = 2.0
ALPHA = 0.1
TEACHER = {"num_layers": 2, "num_heads": 4, "hidden_dim": 128, "intermediate_dim": 512}
STUDENT = {"num_layers": 2, "num_heads": 2, "hidden_dim": 64, "intermediate_dim": 256}
TOP_KS = (8, 32)
LARGE_VOCABULARY = 32000


# --- Data and models -------------------------------------------------------


def make_windows(num_windows, seed=0):
    """`(vocabulary, x, y, sample_weight)` NumPy arrays of `num_windows` windows."""
    import numpy as np

    from keras_kd.data import text

    plays = text.load_plays()
    vocabulary = text.CharacterVocabulary.from_text([play for _, play in plays])
    paragraphs = [p for _, play in plays for p in play.split("\n\n") if p.strip()]
    rng = np.random.default_rng(seed)
    parts = {"token_ids": [], "padding_mask": [], "y": [], "sample_weight": []}
    count, start = 0, 0
    while count < num_windows:
        target = int(rng.integers(32, 513))
        document = []
        while sum(len(p) + 2 for p in document) < target and start < len(paragraphs):
            document.append(paragraphs[start])
            start += 1
        if not document:
            raise ValueError("The plays hold too few windows; lower --steps.")
        ids = vocabulary.encode("\n\n".join(document) + "\n\n")
        windows = -(-len(ids) // (SEQUENCE_LENGTH + 1))
        dataset = text.causal_lm_dataset(
            ids, SEQUENCE_LENGTH, batch_size=windows, drop_remainder=False)
        x, y, weight = next(iter(dataset))
        parts["token_ids"].append(x["token_ids"].numpy())
        parts["padding_mask"].append(x["padding_mask"].numpy())
        parts["y"].append(y.numpy())
        parts["sample_weight"].append(weight.numpy())
        count += windows
    arrays = {key: np.concatenate(value)[:num_windows] for key, value in parts.items()}
    x = {"token_ids": arrays["token_ids"], "padding_mask": arrays["padding_mask"]}
    return vocabulary, x, arrays["y"], arrays["sample_weight"]


def build(config, vocabulary_size, seed):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size, dropout=0.0,
        max_sequence_length=SEQUENCE_LENGTH, **config)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _options(jit_compile):
    return {} if jit_compile == "default" else {"jit_compile": jit_compile == "on"}


def _pipeline(dataset, steps, batched=False):
    import tensorflow as tf

    batches = dataset if batched else dataset.batch(BATCH_SIZE, drop_remainder=True)
    # The same known length for every pipeline, so that Keras never warns at
    # an epoch's end that the data ran out.
    batches = batches.apply(tf.data.experimental.assert_cardinality(steps))
    return batches.prefetch(tf.data.AUTOTUNE)


def build_configurations(vocabulary, x, y, weight, cache_root, jit_compile, top_ks,
                         variants=True):
    """`({name: (model, dataset)}, {k: cache info})`, compiled, not yet run.

    `variants=False` leaves out the first k's "paired per example" and
    "cache in memory" configurations (benchmarks/backends.py).
    """
    import keras
    import numpy as np
    import tensorflow as tf
    from keras import distillation

    import keras_kd
    from keras_kd.distillation import top_k

    size = vocabulary.vocabulary_size
    options = _options(jit_compile)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = ["sparse_categorical_accuracy"]
    examples = tf.data.Dataset.from_tensor_slices((x, y, weight))
    steps = len(y) // BATCH_SIZE
    plain = _pipeline(examples, steps)
    teacher = build(TEACHER, size, seed=0)
    configurations = {}

    student = build(STUDENT, size, seed=1)
    student.compile(optimizer="adam", loss=loss, weighted_metrics=metrics, **options)
    configurations["student"] = (student, plain)

    online = keras_kd.Distiller(student=build(STUDENT, size, seed=1), teacher=teacher)
    online.compile(optimizer="adam", weighted_metrics=metrics, alpha=ALPHA,
                   temperature=TEMPERATURE, **options)
    configurations["keras_kd online"] = (online, plain)

    def distiller():
        cached = keras_kd.Distiller(student=build(STUDENT, size, seed=1), teacher=teacher)
        cached.compile(optimizer="adam", weighted_metrics=metrics, alpha=ALPHA,
                       temperature=TEMPERATURE,
                       distillation_loss_fn=keras_kd.TopKKLDivergence(
                           cache_temperature=TEMPERATURE), **options)
        return cached

    caches = {}
    inputs = plain.map(lambda x, y, w: x)
    for k in top_ks:
        path = os.path.join(cache_root, f"top{k}")
        start = time.perf_counter()
        cache = top_k.write_top_k_cache(teacher, inputs, path, k=k, temperature=TEMPERATURE)
        seconds = time.perf_counter() - start
        disk = sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))
        caches[k] = {"seconds": seconds, "bytes": disk, "positions": cache.manifest["num_tokens"]}
        # Paired per batch: the cache's batch i with the inputs' batch i.
        zipped = tf.data.Dataset.zip(
            examples.batch(BATCH_SIZE, drop_remainder=True),
            top_k.top_k_dataset(path, teacher=teacher, batch_size=BATCH_SIZE,
                                drop_remainder=True))
        data = _pipeline(zipped.map(
            lambda e, t: (e[0], keras_kd.targets(e[1], teacher_top_k=t), e[2])), steps,
            batched=True)
        configurations[f"keras_kd top-{k}"] = (distiller(), data)
        if variants and k == top_ks[0]:
            # Paired per example (unbatched, then batched): the pipeline an
            # example-level shuffle needs.
            zipped = tf.data.Dataset.zip(examples, top_k.top_k_dataset(path, teacher=teacher))
            data = _pipeline(zipped.map(
                lambda e, t: (e[0], keras_kd.targets(e[1], teacher_top_k=t), e[2])), steps)
            configurations[f"keras_kd top-{k}, paired per example"] = (distiller(), data)
            # The same cache read into memory first: the step without
            # reading the cache's files.
            chunks = list(cache.chunks())
            in_memory = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
            data = _pipeline(tf.data.Dataset.from_tensor_slices(
                (x, keras_kd.targets(y, teacher_top_k=in_memory), weight)), steps)
            configurations[f"keras_kd top-{k}, cache in memory"] = (distiller(), data)

    rival = distillation.Distiller(
        teacher=teacher, student=build(STUDENT, size, seed=1),
        distillation_losses=distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()),
        student_loss_weight=ALPHA)
    rival.compile(optimizer="adam", loss=loss, weighted_metrics=metrics, **options)
    configurations["keras.distillation"] = (rival, plain)
    return configurations, caches


def timed_fit(model, dataset):
    """Seconds of one `fit` epoch (begin to end of the epoch)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds = time.perf_counter() - self.start

    timer = EpochTimer()
    model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return timer.seconds


# --- Part 1 ----------------------------------------------------------------


def interleaved_rounds(configurations, rounds):
    """`rounds` rounds of one timed epoch of every configuration (a name:
    `(model, data)` dict), the order reversed every other round.

    Returns:
        `(times, loads)`: each configuration's seconds per round, and the
        1-minute load average before the first round and after each.
    """
    times = {config: [] for config in configurations}
    loads = [os.getloadavg()[0]]
    for round_number in range(rounds):
        order = list(configurations)
        for config in order if round_number % 2 == 0 else order[::-1]:
            times[config].append(timed_fit(*configurations[config]))
        loads.append(os.getloadavg()[0])
    return times, loads


def speed(args, cache_root):
    num_windows = args.steps * BATCH_SIZE
    vocabulary, x, y, weight = make_windows(num_windows)
    real = int(weight.sum())
    positions = weight.size
    configurations, caches = build_configurations(
        vocabulary, x, y, weight, cache_root, args.jit_compile, args.top_k)
    names = list(configurations)
    warm = {}
    for name, (model, data) in configurations.items():
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0, shuffle=False)  # Warm-up epoch: tracing.
        warm[name] = time.perf_counter() - start
    times, loads = interleaved_rounds(configurations, args.rounds)
    medians = {name: statistics.median(values) for name, values in times.items()}

    print(f"\n## Part 1: fit speed, {args.steps} steps of {BATCH_SIZE} x {SEQUENCE_LENGTH}, "
          f"{args.rounds} interleaved rounds (+1 warm-up epoch each)")
    print(f"\nVocabulary {vocabulary.vocabulary_size} characters; {positions} positions per "
          f"epoch, {real} real target tokens ({100 * (1 - real / positions):.1f} % padding). "
          f"Teacher {configurations['keras_kd online'][0].teacher.count_params():,} "
          f"parameters, student {configurations['student'][0].count_params():,}. "
          f"1-minute load during the rounds: {min(loads):.2f}..{max(loads):.2f}.\n")
    print("| configuration | jit | median ms/step | real tokens/s | positions/s | "
          "warm-up epoch s | rounds (s per epoch) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        model = configurations[name][0]
        seconds = medians[name]
        print(f"| {name} | {model.jit_compile} | {1000 * seconds / args.steps:.1f} | "
              f"{real / seconds:,.0f} | {positions / seconds:,.0f} | {warm[name]:.1f} | "
              f"{', '.join(f'{v:.2f}' for v in times[name])} |")
    def ratio_row(top, bottom, aim=""):
        of_medians = medians[top] / medians[bottom]
        per_round = statistics.median(a / b for a, b in zip(times[top], times[bottom]))
        print(f"| {top} / {bottom} | {of_medians:.2f} | {per_round:.2f} | {aim} |")

    print("\n| ratio (time per step) | of the medians | median of per-round ratios | aim |")
    print("|---|---|---|---|")
    for name in names:
        if name.startswith("keras_kd top-"):
            ratio_row(name, "student", "<= 1.15")
    ratio_row("keras_kd online", "keras.distillation", "<= 1.00")
    ratio_row("keras_kd online", "student")
    ratio_row("keras.distillation", "student")

    print("\n| top-k cache | teacher pass + write s | files on disk | bytes per position | "
          "bytes per real token |")
    print("|---|---|---|---|---|")
    for k, info in caches.items():
        print(f"| k={k} | {info['seconds']:.1f} | {info['bytes']:,} B | "
              f"{info['bytes'] / info['positions']:.1f} | {info['bytes'] / real:.1f} |")

    reading(configurations)
    padding_check(configurations, x, y, weight, vocabulary.vocabulary_size)
    return vocabulary, caches


def reading(configurations, repeats=5):
    """The input pipelines alone: first batch and whole epoch, no training."""
    names = ["student"] + [name for name in configurations if name.startswith("keras_kd top-")]
    print(f"\n## Reading the batches alone (no training), medians of {repeats} epochs\n")
    print("| pipeline of | first batch ms | whole epoch ms |")
    print("|---|---|---|")
    for name in names:
        dataset = configurations[name][1]
        first, whole = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            iterator = iter(dataset)
            next(iterator)
            first.append(time.perf_counter() - start)
            for _ in iterator:
                pass
            whole.append(time.perf_counter() - start)
        print(f"| {name} | {1000 * statistics.median(first):.1f} | "
              f"{1000 * statistics.median(whole):.1f} |")


def padding_check(configurations, x, y, weight, vocabulary_size):
    """The reported losses of one batch, padding filled with zeros vs random tokens."""
    import numpy as np

    padded = (~weight.astype(bool)).reshape(-1, BATCH_SIZE, SEQUENCE_LENGTH).sum(axis=(1, 2))
    number = int(np.argmax(padded))
    rows = slice(number * BATCH_SIZE, (number + 1) * BATCH_SIZE)
    mask = x["padding_mask"][rows]
    target_mask = weight[rows].astype(bool)
    rng = np.random.default_rng(0)
    variants = {}
    for fill in ("zeros", "random"):
        if fill == "zeros":
            tokens = np.where(mask, x["token_ids"][rows], 0)
            labels = np.where(target_mask, y[rows], 0)
        else:
            tokens = np.where(mask, x["token_ids"][rows],
                              rng.integers(2, vocabulary_size, mask.shape))
            labels = np.where(target_mask, y[rows],
                              rng.integers(2, vocabulary_size, mask.shape))
        variants[fill] = ({"token_ids": tokens.astype("int32"), "padding_mask": mask},
                          labels.astype("int32"), weight[rows])
    print(f"\n## Padding check: batch {number}, {int(padded[number])} of "
          f"{BATCH_SIZE * SEQUENCE_LENGTH} positions padded, filled with zeros vs random "
          "tokens (inputs and targets; padding_mask and sample_weight unchanged)\n")
    print("| distiller | reported | padding = zeros | padding = random | |difference| |")
    print("|---|---|---|---|---|")
    for name in ("keras.distillation", "keras_kd online"):
        model = configurations[name][0]
        weights = model.student.get_weights()
        logs = {}
        for fill, (bx, by, bw) in variants.items():
            model.reset_metrics()
            logs[fill] = model.train_on_batch(bx, by, sample_weight=bw, return_dict=True)
            model.student.set_weights(weights)
        for key in ("distillation_loss", "student_loss"):
            zeros, random = float(logs["zeros"][key]), float(logs["random"][key])
            print(f"| {name} | {key} | {zeros:.6f} | {random:.6f} | {abs(zeros - random):.2e} |")


# --- Part 2 ----------------------------------------------------------------


def cache_sizes(vocabulary_size, caches, real_tokens=None):
    from keras_kd.distillation import top_k

    print("\n## Part 2: cache bytes per token (top-k: int32 ids + float16 values + "
          "float32 log-normaliser)\n")
    print("| vocabulary V | dense float32 4*V | top-8 | top-32 | top-64 | dense / top-8 | "
          "dense / top-64 |")
    print("|---|---|---|---|---|---|---|")
    for v in (vocabulary_size, LARGE_VOCABULARY):
        dense = 4 * v
        sizes = {k: top_k.bytes_per_token(k) for k in (8, 32, 64) if k <= v}
        cells = [f"{sizes[k]}" if k in sizes else "k > V" for k in (8, 32, 64)]
        print(f"| {v:,} | {dense:,} | {' | '.join(cells)} | {dense / sizes[8]:.1f}x | "
              + (f"{dense / sizes[64]:.1f}x |" if 64 in sizes else "- |"))
    if caches and 8 in caches:
        info = caches[8]
        print(f"\nThe k=8 cache of part 1 on disk: {info['bytes']:,} bytes / "
              f"{info['positions']:,} positions = {info['bytes'] / info['positions']:.1f} "
              f"bytes per position (formula: {top_k.bytes_per_token(8)}; the rest is .npy "
              "headers and the manifest), against a dense float32 cache of "
              f"{4 * vocabulary_size} bytes per position.")


# --- Part 3 ----------------------------------------------------------------


def precision(shape, repeats):
    import numpy as np
    import tensorflow as tf

    import keras_kd

    rng = tf.random.Generator.from_seed(0)
    teacher = rng.normal(shape) * 4.0
    student = tf.Variable(rng.normal(shape) * 4.0)
    losses = {
        "KLDivergenceWithTemperature": keras_kd.KLDivergenceWithTemperature,
        "GeneralizedJSD(beta=0.5)": lambda precision: keras_kd.GeneralizedJSD(
            beta=0.5, precision=precision),
    }
    functions, results, outputs = {}, {}, {}
    for name, make in losses.items():
        for dtype in ("float32", "float64"):
            loss = make(precision=dtype)

            @tf.function
            def step(loss=loss):
                with tf.GradientTape() as tape:
                    per_position = loss.compute_per_sample(teacher, student, TEMPERATURE)
                    value = tf.reduce_mean(per_position)
                return value, tape.gradient(value, student), per_position

            functions[name, dtype] = step
            results[name, dtype] = []
        # Trace, and keep both results of this loss only (memory).
        first = {dtype: [t.numpy() for t in functions[name, dtype]()[1:]]
                 for dtype in ("float32", "float64")}
        (g32, p32), (g64, p64) = first["float32"], first["float64"]
        outputs[name] = (
            float(np.max(np.abs(p32 - p64)) / np.max(np.abs(p64))),
            float(np.max(np.abs(g32 - g64)) / np.max(np.abs(g64))),
        )
        del first, g32, g64, p32, p64
    for _ in range(repeats):
        for key, step in functions.items():
            start = time.perf_counter()
            value, gradient, _ = step()
            float(value), gradient.numpy()
            results[key].append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n## Part 3: loss + gradient wrt the student logits, T={TEMPERATURE:g}, logits "
          f"{tuple(shape)} float32 (random normal x 4), {repeats} alternating repeats "
          f"(process peak RSS {peak:,.0f} MB)\n")
    print("| loss | float32 ms | float64 ms | float64 / float32 | max per-position loss "
          "|32 - 64| / max loss | max gradient |32 - 64| / max |gradient| |")
    print("|---|---|---|---|---|---|")
    for name in losses:
        m32 = statistics.median(results[name, "float32"]) * 1000
        m64 = statistics.median(results[name, "float64"]) * 1000
        loss_error, gradient_error = outputs[name]
        print(f"| {name} | {m32:.0f} | {m64:.0f} | {m64 / m32:.2f}x | {loss_error:.1e} | "
              f"{gradient_error:.1e} |")


# --- Main ------------------------------------------------------------------


def wait_for_load(limit, patience):
    if limit is None:
        return
    start = time.monotonic()
    while os.getloadavg()[0] >= limit and time.monotonic() < start + patience:
        time.sleep(10)
    load = os.getloadavg()[0]
    outcome = "reached" if load < limit else "not reached"
    print(f"(waited {time.monotonic() - start:.0f} s for a 1-minute load below {limit}: "
          f"{outcome}, {load:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per timed epoch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="part 3 repeats (>= 5)")
    parser.add_argument("--precision-shape", default="2,256,32000",
                        help="logits shape of part 3, e.g. 8,256,32000")
    parser.add_argument("--top-k", type=int, nargs="+", default=list(TOP_KS),
                        help="k of the cached configurations (default 8 32)")
    parser.add_argument("--jit-compile", choices=("default", "on", "off"), default="default")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 5 steps, 2 rounds, k=8 only, (1, 64, 32000) "
                        "logits, 3 repeats")
    parser.add_argument("--skip-speed", action="store_true", help="parts 2 and 3 only")
    parser.add_argument("--wait-load", type=float, default=None,
                        help="first wait (up to --max-wait s) for a 1-minute load below this")
    parser.add_argument("--max-wait", type=float, default=600)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.repeats, args.top_k = 5, 2, 3, [8]
        args.precision_shape = "1,64,32000"
    shape = tuple(int(v) for v in args.precision_shape.split(","))

    wait_for_load(args.wait_load, args.max_wait)
    import keras
    import keras_hub
    import tensorflow as tf

    import keras_kd

    print(f"keras-kd sequence benchmark, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}, KerasHub {keras_hub.__version__}, "
          f"keras_kd {keras_kd.__version__}, 1-minute load {os.getloadavg()[0]:.2f}")
    cache_root = tempfile.mkdtemp(prefix="keras_kd_sequence_")
    try:
        caches = {}
        if not args.skip_speed:
            vocabulary, caches = speed(args, cache_root)
            vocabulary_size = vocabulary.vocabulary_size
        else:
            from keras_kd.data import text

            plays = text.load_plays()
            vocabulary_size = text.CharacterVocabulary.from_text(
                [p for _, p in plays]).vocabulary_size
        cache_sizes(vocabulary_size, caches)
        precision(shape, args.repeats)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    main()
