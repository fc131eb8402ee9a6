"""Distilling a character-level GPT-2 on Shakespeare: five ways, over seeds.

A KerasHub GPT-2-style teacher learns nine plays character by character;
a student several times smaller then learns the same text five ways, with
the same steps, the same batches in the same seeded order and the same
initial weights per seed:

  scratch        `student.fit` on the language-model loss alone
  forward KL     + KL(teacher || student) per token (Hinton's KD)
  reverse KL     + KL(student || teacher) per token (MiniLLM's token term)
  GJSD           + generalized Jensen-Shannon divergence, beta 0.5 (GKD)
  top-k cached   forward KL from a cache of the teacher's 8 largest logits
                 per token (plus the tail mass): the teacher never runs
                 while the student trains

Each student is scored in bits per character on a play it never saw, As You
Like It. The teacher and its top-k cache are kept in --cache-dir and reused
by later runs (a config check for the teacher, the cache's fingerprints of
the teacher's weights and of the inputs for the cache).

    python examples/language_model_distillation.py            # 3 seeds, ~20 min on 2 cores
    python examples/language_model_distillation.py --quick    # tiny models, < 1 min
    python examples/language_model_distillation.py --seeds 0 --methods scratch "forward KL"

Prints a Markdown table (bits/char mean +- std over seeds, gain over
scratch, seconds per run), writes `lm_distillation.json` and
`lm_distillation.png` to --output. Needs `keras-hub` (no download: the
models are built from configs with random weights).
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sys
import time

wall_start = time.monotonic()  # The wall time reported includes the imports.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.data import text  # noqa: E402
from keras_kd.distillation import top_k  # noqa: E402
from keras_kd.distillation.cache import CacheError  # noqa: E402
from keras_kd.studies.reporting import paired_gain_verdict  # noqa: E402

try:
    import keras_hub  # noqa: E402
except ImportError:
    sys.exit(
        "This example builds its GPT-2 models with KerasHub, which is not "
        "installed. Install it with `pip install keras-hub` (no preset is "
        "downloaded: the models are built from configs)."
    )

METHODS = ("scratch", "forward KL", "reverse KL", "GJSD", "top-k cached")
HELD_OUT = "As You Like It"

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: 0 1 2 (0 with --quick)")
parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
# alpha 0.5 and T 1 were the best of (0.5, 1), (0.5, 2) and (0.2, 1) in one-seed
# runs of 600 steps: at T 2 the divergences weigh 4x more (the T**2 factor)
# and the top 8 cached characters hold 69% of the teacher's mass, not 89%.
parser.add_argument("--alpha", type=float, default=0.5,
                    help="weight of the language-model (label) loss; the divergence gets 1 - alpha")
parser.add_argument("--temperature", type=float, default=1.0)
parser.add_argument("--k", type=int, default=8, help="teacher logits cached per token")
parser.add_argument("--teacher", default="2,128,4,512", help="layers,width,heads,intermediate")
parser.add_argument("--student", default="2,64,2,256", help="layers,width,heads,intermediate")
parser.add_argument("--teacher-steps", type=int, default=3000)
parser.add_argument("--steps", type=int, default=500,
                    help="optimizer steps per student (500: 15 runs in ~15 min on 2 cores)")
parser.add_argument("--sequence-length", type=int, default=64)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--learning-rate", type=float, default=3e-3)
parser.add_argument("--characters", type=int, default=None,
                    help="train on the first N characters of the nine plays (default: all)")
parser.add_argument("--held-out-characters", type=int, default=None,
                    help="score on the first N characters of As You Like It (default: all)")
parser.add_argument("--xla", choices=("teacher", "all", "none"), default="teacher",
                    help="which training steps XLA compiles on TensorFlow (default: the teacher's "
                         "3000 steps, where it pays for its compile time; not the students' "
                         "few hundred); on JAX every step is compiled, as Keras does")
parser.add_argument("--quick", action="store_true",
                    help="tiny models, few steps, one seed, 20k characters: a smoke test (1,32,2,128 "
                         "teacher, 1,16,2,64 student, --teacher-steps 150 --steps 60 "
                         "--sequence-length 32 --batch-size 8 --characters 20000 "
                         "--held-out-characters 5000 --xla none; any of them given "
                         "explicitly wins)")
parser.add_argument("--cache-dir", default=None,
                    help="where the teacher and its top-k cache live (default runs/lm-teacher, "
                         "runs/lm-teacher-quick with --quick)")
parser.add_argument("--output", default="docs", help="directory of the JSON and the plot")
args = parser.parse_args()
if args.quick:
    # Small enough for a test: every step of the tutorial runs, in seconds.
    # These are --quick's defaults: a setting given on the command line
    # (e.g. --teacher-steps) wins over them.
    parser.set_defaults(
        seeds=[0], teacher="1,32,2,128", student="1,16,2,64", teacher_steps=150, steps=60,
        sequence_length=32, batch_size=8, characters=20_000, held_out_characters=5_000,
        xla="none")  # Compiling with XLA would take longer than training.
    args = parser.parse_args()
args.seeds = args.seeds or [0, 1, 2]
if args.cache_dir is None:
    args.cache_dir = os.path.join("runs", "lm-teacher-quick" if args.quick else "lm-teacher")
os.makedirs(args.cache_dir, exist_ok=True)
os.makedirs(args.output, exist_ok=True)
teacher_jit = args.xla in ("teacher", "all")
student_jit = args.xla == "all"
if keras.backend.backend() != "tensorflow":
    # --xla is TensorFlow's choice. Keras' JAX trainer compiles every step
    # with XLA by default; `jit_compile=False` there runs JAX op by op (the
    # --quick teacher took minutes instead of seconds). Each backend's own
    # default ("auto": XLA on JAX, eager on PyTorch).
    teacher_jit = student_jit = "auto"
# keras_kd.data.text.bits_per_character traces a tf.function per call, and
# TensorFlow warns about retracing when it is called in a loop: quiet that.
tf.get_logger().setLevel("ERROR")

# 1. The text. Lines of one play depend on each other, so the held-out text
# is a whole play, not a random sample of lines. The vocabulary is every
# character of the ten plays (82 ids with padding and unknown): the held-out
# play then has no out-of-vocabulary character, and an untrained model that
# spreads its mass evenly scores log2(82) = 6.36 bits per character.
plays = text.load_plays()
vocabulary = text.CharacterVocabulary.from_text([play for _, play in plays])
train_text = "".join(play for title, play in plays if title != HELD_OUT)
held_out_text = dict(plays)[HELD_OUT]
if args.characters:
    train_text = train_text[: args.characters]
if args.held_out_characters:
    held_out_text = held_out_text[: args.held_out_characters]
train_ids = vocabulary.encode(train_text)
held_out_ids = vocabulary.encode(held_out_text)
V = vocabulary.vocabulary_size
print(f"text: {len(train_ids):,} training characters (9 plays), {len(held_out_ids):,} "
      f"held out ({HELD_OUT}); vocabulary {V} ids, log2(V) = {math.log2(V):.2f} bits")

# Batches as KerasHub's CausalLMPreprocessor makes them: x = {"token_ids",
# "padding_mask"}, y = the next characters, sample_weight = 0 on padding.
held_out = text.causal_lm_dataset(held_out_ids, args.sequence_length, 64, drop_remainder=False)


def parse_architecture(value):
    layers, width, heads, intermediate = (int(v) for v in value.split(","))
    return {"num_layers": layers, "hidden_dim": width, "num_heads": heads,
            "intermediate_dim": intermediate}


def build_gpt2(architecture, name):
    """A GPT-2 causal LM from a config: random weights, no preprocessor.

    Without a preprocessor the model takes the batches' `token_ids` and
    `padding_mask` and returns logits `(batch, length, vocabulary)`.
    """
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=V, dropout=0.0, max_sequence_length=args.sequence_length,
        name=f"{name}_backbone", **architecture)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None, name=name)


def optimizer(steps):
    # AdamW with a short warmup and a cosine decay to a tenth, gradients
    # clipped: what benchmarks/lm_sizes.py found stable for these models.
    warmup = min(50, steps // 5)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(steps - warmup, 1), alpha=0.1,
        warmup_target=args.learning_rate, warmup_steps=warmup)
    return keras.optimizers.AdamW(schedule, beta_2=0.99, global_clipnorm=1.0)


def lm_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build_optimizer(optimizer, model):
    # Keras on TensorFlow creates the optimizer's variables inside the first
    # traced train step, and TensorFlow then traces that step a second time.
    # Creating them beforehand halves the seconds fit takes to start (about
    # 4 s a run on a busy 2-core machine, the bulk of a --quick run).
    optimizer.build(model.trainable_variables)


# 2. The teacher, trained once and kept. Its config (architecture, text,
# steps, optimizer) is saved beside the weights; a later run with the same
# config loads them instead of training again.
teacher_architecture = parse_architecture(args.teacher)
student_architecture = parse_architecture(args.student)
teacher_config = {
    "architecture": teacher_architecture,
    "vocabulary": vocabulary.get_config(),
    "sequence_length": args.sequence_length,
    "batch_size": args.batch_size,
    "steps": args.teacher_steps,
    "learning_rate": args.learning_rate,
    "seed": 0,
    "train_text_sha256": hashlib.sha256(train_ids.tobytes()).hexdigest(),
}
config_path = os.path.join(args.cache_dir, "teacher.json")
weights_path = os.path.join(args.cache_dir, "teacher.weights.h5")
keras_path = os.path.join(args.cache_dir, "teacher.keras")
saved = None
if os.path.exists(config_path):
    with open(config_path) as f:
        saved = json.load(f)
keras.utils.set_random_seed(0)
teacher = build_gpt2(teacher_architecture, "teacher")
teacher_record = {"params": teacher.count_params()}
teacher_loaded = False
if saved is not None and saved.get("config") == teacher_config:
    for path in (weights_path, keras_path):
        if os.path.exists(path):
            if path.endswith(".keras"):
                teacher.set_weights(keras.saving.load_model(path).get_weights())
            else:
                teacher.backbone.load_weights(path)
            teacher_loaded = True
            teacher_record.update(saved["record"], loaded_from=path)
            print(f"teacher: loaded {path} (its config matches; trained in "
                  f"{saved['record']['train_seconds']:.0f} s)")
            break
if not teacher_loaded:
    why = ("no saved teacher" if saved is None else
           "the saved teacher has another config" if saved.get("config") != teacher_config else
           "its weights file is missing")
    print(f"teacher: training {teacher_record['params']:,} parameters for "
          f"{args.teacher_steps} steps ({why} in {args.cache_dir})")
    teacher.compile(optimizer=optimizer(args.teacher_steps), loss=lm_loss(),
                    weighted_metrics=[], jit_compile=teacher_jit)
    build_optimizer(teacher.optimizer, teacher)
    start = time.monotonic()
    teacher.fit(
        text.causal_lm_dataset(train_ids, args.sequence_length, args.batch_size,
                               shuffle=True, seed=0).repeat(),
        steps_per_epoch=args.teacher_steps, epochs=1, shuffle=False, verbose=0)
    teacher_record["train_seconds"] = round(time.monotonic() - start, 1)
    teacher_record["bits_per_character"] = text.bits_per_character(teacher, held_out)
    # The backbone's weights (all of the model's: the LM head is the tied
    # embedding) without the optimizer's state. Weights first, under a
    # temporary name: an interrupted run leaves no config pointing at
    # missing or partial weights.
    partial = os.path.join(args.cache_dir, "teacher-partial.weights.h5")
    teacher.backbone.save_weights(partial)
    os.replace(partial, weights_path)
    with open(config_path, "w") as f:
        json.dump({"config": teacher_config, "record": teacher_record}, f, indent=1)
    print(f"teacher: trained in {teacher_record['train_seconds']:.0f} s, saved to {weights_path}")
teacher_bits = teacher_record["bits_per_character"]
print(f"teacher: {teacher_bits:.3f} bits/char on {HELD_OUT}")

# 3. The top-k cache. The teacher runs once over the training windows in a
# fixed order (unshuffled) and keeps, per character, its k largest logits,
# their ids and the log-normaliser over the whole vocabulary at the
# distillation temperature (TopKKLDivergence(tail="bin") needs exactly that
# temperature). The manifest holds fingerprints of the teacher's weights and
# of the inputs: a cache of another teacher or other windows is refused, so
# reusing one is safe.
windows = text.causal_lm_dataset(train_ids, args.sequence_length, 256, drop_remainder=False)
num_windows = -(-len(train_ids) // (args.sequence_length + 1))
cache_path = os.path.join(args.cache_dir, f"top_k-k{args.k}-T{args.temperature:g}")
start = time.monotonic()
cache_reused = False
if os.path.exists(cache_path):
    try:
        # Refuses another teacher, other inputs or other settings.
        cache = top_k.write_top_k_cache(teacher, windows.map(lambda x, y, w: x), cache_path,
                                        k=args.k, temperature=args.temperature)
        cache_reused = True
    except CacheError as error:
        print(f"top-k cache: rebuilding {cache_path} ({error})")
if not cache_reused:
    cache = top_k.write_top_k_cache(teacher, windows.map(lambda x, y, w: x), cache_path,
                                    k=args.k, temperature=args.temperature, rebuild=True)
cache_seconds = time.monotonic() - start
# How much of the teacher's distribution the k cached characters hold: the
# rest is one "tail" bin, whose shape the student does not learn.
top_mass = [np.exp(shard["values"].astype("float32") / args.temperature
                   - shard["log_normalizer"][..., None]).sum(-1).mean()
            for shard in map(cache.shard, range(cache.num_shards))]
top_mass = float(np.average(top_mass, weights=[s["examples"] for s in cache.manifest["shards"]]))
cache_bytes = sum(os.path.getsize(os.path.join(cache_path, name))
                  for name in os.listdir(cache_path))
print(f"top-k cache: {'reused' if cache_reused else 'wrote'} {cache_path} "
      f"({cache.num_examples:,} windows, k={args.k}, T={args.temperature:g}, "
      f"{cache_bytes / 2**20:.1f} MiB, {cache_seconds:.1f} s); the top {args.k} hold "
      f"{100 * top_mass:.1f}% of the teacher's probability on average")


# 4. The same batches for every method: the windows, zipped with the cache in
# the order it was written, are shuffled with the run's seed. Each method
# keeps what it needs: (x, y, sample_weight) for the LM loss and the online
# teacher, y = keras_kd.targets(labels, teacher_top_k) for the cached one.
def training_batches(seed, with_top_k):
    examples = tf.data.Dataset.zip(windows.unbatch(), top_k.top_k_dataset(cache, verify="none"))

    def as_batch(window, teacher_top_k):
        x, y, weight = window
        weight = tf.cast(weight, tf.float32)
        if with_top_k:
            return x, keras_kd.targets(labels=y, teacher_top_k=teacher_top_k), weight
        return x, y, weight

    return (examples.shuffle(num_windows, seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(args.batch_size, drop_remainder=True)
            .map(as_batch, num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def distillation_loss(method):
    if method == "forward KL":
        return keras_kd.ForwardKL()
    if method == "reverse KL":
        return keras_kd.ReverseKL()
    if method == "GJSD":
        return keras_kd.GeneralizedJSD(beta=0.5)
    # The cache's forward KL over k + 1 bins: the k cached characters and
    # the rest of the vocabulary, whose teacher mass the log-normaliser gives.
    # The batches carry the cache's temperature; the Distiller checks that
    # its own equals it.
    return keras_kd.TopKKLDivergence(tail="bin")


def train_student(method, seed, initial_weights):
    keras.utils.set_random_seed(seed)
    student = build_gpt2(student_architecture, "student")
    student.set_weights(initial_weights)
    if method == "scratch":
        model = student
        model.compile(optimizer=optimizer(args.steps), loss=lm_loss(), weighted_metrics=[],
                      jit_compile=student_jit)
    else:
        # The teacher is frozen and runs with training=False, outside the
        # gradient; with the top-k cache it does not run at all.
        model = keras_kd.Distiller(student=student, teacher=teacher)
        model.compile(optimizer=optimizer(args.steps), student_loss_fn=lm_loss(),
                      distillation_loss_fn=distillation_loss(method), alpha=args.alpha,
                      temperature=args.temperature, weighted_metrics=[],
                      jit_compile=student_jit)
    # The Distiller trains the student's variables (and no others here).
    build_optimizer(model.optimizer, student)
    batches = training_batches(seed, with_top_k=method == "top-k cached")
    start = time.monotonic()
    model.fit(batches, steps_per_epoch=args.steps, epochs=1, shuffle=False, verbose=0)
    seconds = time.monotonic() - start
    return student, text.bits_per_character(student, held_out), seconds


# "Same batches", checked: the order depends on the seed alone, so two
# pipelines built for a seed (with and without the cache) agree.
for (a, _, _), (b, _, _) in zip(training_batches(args.seeds[0], False).take(2),
                                training_batches(args.seeds[0], True).take(2)):
    assert np.array_equal(a["token_ids"], b["token_ids"]), "batches differ between methods"

student_params = build_gpt2(student_architecture, "student").count_params()
print(f"students: {student_params:,} parameters ({teacher_record['params'] / student_params:.1f}x "
      f"fewer than the teacher), {args.steps} steps of {args.batch_size} windows, "
      f"alpha={args.alpha:g}, T={args.temperature:g}, seeds {args.seeds}")
runs = []
untrained = {}
students = {}
for seed in args.seeds:
    keras.utils.set_random_seed(seed)
    reference = build_gpt2(student_architecture, "student")
    initial_weights = reference.get_weights()  # Every method of this seed starts here.
    untrained[seed] = text.bits_per_character(reference, held_out)
    print(f"seed {seed}: untrained student {untrained[seed]:.3f} bits/char")
    for method in args.methods:
        student, bits, seconds = train_student(method, seed, initial_weights)
        runs.append({"method": method, "seed": seed, "bits_per_character": bits,
                     "seconds": round(seconds, 1)})
        students[method, seed] = student
        print(f"  {method:<13} {bits:.3f} bits/char  ({seconds:.0f} s)", flush=True)


# 5. The table: mean +- std over seeds; the gain over scratch is paired by
# seed (same initial weights and batches), mean +- std of the differences.
def per_seed(method, key="bits_per_character"):
    return {run["seed"]: run[key] for run in runs if run["method"] == method}


def mean_std(values):
    values = np.asarray(list(values), dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


summary = {}
for method in args.methods:
    bits = per_seed(method)
    mean, std = mean_std(bits.values())
    row = {"seeds": list(bits), "bits_per_character": list(bits.values()),
           "seconds": list(per_seed(method, "seconds").values()), "mean": mean, "std": std,
           "seconds_mean": mean_std(per_seed(method, "seconds").values())[0]}
    if "scratch" in args.methods:
        scratch = per_seed("scratch")
        row["gains_vs_scratch"] = [scratch[s] - bits[s] for s in bits]
        row["gain_vs_scratch"], row["gain_std"] = mean_std(row["gains_vs_scratch"])
    summary[method] = row

print(f"\nBits per character on {HELD_OUT} (lower is better), mean +- std over seeds "
      f"{args.seeds}; teacher {teacher_bits:.3f}:\n")
print("| method | bits/char | gain vs scratch | s per run |")
print("|---|---|---|---|")
for method, row in summary.items():
    gain = (f"{row['gain_vs_scratch']:+.3f} +- {row['gain_std']:.3f}"
            if "gain_vs_scratch" in row and method != "scratch" else "")
    print(f"| {method} | {row['mean']:.3f} +- {row['std']:.3f} | {gain} | "
          f"{row['seconds_mean']:.0f} |")
print(f"| teacher | {teacher_bits:.3f} | | {teacher_record['train_seconds']:.0f} (once) |")
# The verdicts weigh each method's paired gains against their seed-to-seed
# spread: one seed cannot tell a gain from noise.
print()
for method, row in summary.items():
    if method == "scratch" or "gain_vs_scratch" not in row:
        continue
    # Paired by seed: one seed cannot tell a gain from the seeds' spread.
    print(paired_gain_verdict(method, row["gains_vs_scratch"]))

# A few characters from the teacher and the best student, to read. Without a
# preprocessor, generate() takes padded token ids and a mask of the prompt
# and fills the rest (stop_token_ids=None: no end token in this vocabulary).
prompt = "ROSALIND.\n"
prompt_ids = np.zeros((1, args.sequence_length), "int32")
prompt_ids[0, : len(prompt)] = vocabulary.encode(prompt)
mask = np.zeros((1, args.sequence_length), bool)
mask[0, : len(prompt)] = True
best = min(summary, key=lambda method: summary[method]["mean"])
for name, model in (("teacher", teacher), (f"student ({best}, seed {args.seeds[0]})",
                                           students[best, args.seeds[0]])):
    model.compile(sampler=keras_hub.samplers.TopKSampler(k=5, seed=0))
    generated = model.generate({"token_ids": prompt_ids, "padding_mask": mask},
                               stop_token_ids=None)
    sample = vocabulary.decode(np.asarray(generated["token_ids"])[0])
    print(f"\n{name}:\n{sample}")

wall_seconds = time.monotonic() - wall_start
report = {
    "description": __doc__.split("\n\n")[0],
    "settings": {**vars(args), "teacher_architecture": teacher_architecture,
                 "student_architecture": student_architecture,
                 "student_params": student_params, "num_windows": num_windows,
                 "train_characters": len(train_ids), "held_out_characters": len(held_out_ids),
                 "held_out": HELD_OUT, "generalized_jsd_beta": 0.5,
                 "top_k_tail": "bin"},
    "vocabulary_size": V,
    "log2_vocabulary_size": math.log2(V),
    "teacher": {**teacher_record, "loaded": teacher_loaded},
    "top_k_cache": {"path": cache_path, "reused": cache_reused, "seconds": round(cache_seconds, 1),
                    "bytes": cache_bytes, "k": args.k, "temperature": args.temperature,
                    "mean_top_k_mass": top_mass},
    "untrained_student_bits_per_character": untrained,
    "summary": summary,
    "runs": runs,
    "machine": {"platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpu_count": os.cpu_count(), "python": platform.python_version(),
                "tensorflow": tf.__version__, "keras": keras.__version__,
                "keras_hub": keras_hub.__version__, "keras_kd": keras_kd.__version__},
    "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    "wall_seconds": round(wall_seconds, 1),
}
json_path = os.path.join(args.output, "lm_distillation.json")
with open(json_path, "w") as f:
    json.dump(report, f, indent=1)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

figure, axes = plt.subplots(figsize=(7, 4))
names = list(summary)
positions = np.arange(len(names))
for position, name in zip(positions, names):
    row = summary[name]
    axes.errorbar(position, row["mean"], yerr=row["std"], fmt="o", capsize=6, markersize=7,
                  color="tab:gray" if name == "scratch" else "tab:blue")
    axes.plot([position] * len(row["bits_per_character"]), row["bits_per_character"], ".",
              color="black", alpha=0.4)
axes.axhline(teacher_bits, color="tab:red", linestyle="--",
             label=f"teacher ({teacher_record['params'] / 1e3:.0f}k params)")
axes.set_xticks(positions, names)
axes.set_ylabel(f"bits per character on {HELD_OUT}")
axes.set_title(f"Distilling a char GPT-2: {student_params / 1e3:.0f}k-param student, "
               f"{args.steps} steps, alpha {args.alpha:g}, T {args.temperature:g}, "
               f"{len(args.seeds)} seed{'s' * (len(args.seeds) > 1)}", fontsize=10)
axes.legend()
axes.grid(axis="y", alpha=0.3)
figure.tight_layout()
plot_path = os.path.join(args.output, "lm_distillation.png")
figure.savefig(plot_path, dpi=120)
print(f"\nWrote {json_path} and {plot_path} ({wall_seconds:.0f} s)")
