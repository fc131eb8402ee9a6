"""Sizes and step costs of GPT-2-style character models on the bundled plays.

Measures, for the language-model distillation example, what a teacher and
a student reach in a given step budget on CPU, and what each step costs:

  train    Trains one GPT-2 character model (`keras_hub.models.GPT2Backbone`
           + `GPT2CausalLM(preprocessor=None)`) on nine plays and prints its
           parameters, steps, seconds (wall, compile included), median
           seconds per step and bits per character on the held-out play.
  steps    Median seconds per step of: the teacher's forward pass, a
           student train step alone, and a distillation step (teacher
           forward + student train step on cross-entropy + KL at T=2), the
           same custom train step for both so that the ratio is the
           teacher's cost.

Train on Hamlet ... Twelfth Night, hold out As You Like It (the last play
in the file; a comedy of prose and verse like most of the nine, 125,231
characters, 9.5 % of the text). The vocabulary is every character of the
ten plays (82 ids with padding and unknown), so that the held-out play has
no unknown character.

    python benchmarks/lm_sizes.py train --layers 2 --hidden 128 --steps 600
    python benchmarks/lm_sizes.py train --layers 1 --hidden 64 --ff 256 --heads 2
    python benchmarks/lm_sizes.py steps --teacher 2,128,4,512 --student 1,64,2,256

Each prints one JSON line. Timings on a shared CPU are noisy.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_kd import text  # noqa: E402

HELD_OUT = "As You Like It"


def corpus():
    """`(vocabulary, train_ids, held_out_ids)`."""
    plays = text.load_plays()
    vocabulary = text.CharacterVocabulary.from_text([play for _, play in plays])
    train = "".join(play for title, play in plays if title != HELD_OUT)
    return vocabulary, vocabulary.encode(train), vocabulary.encode(dict(plays)[HELD_OUT])


def build(vocabulary_size, layers, hidden, heads, ff, sequence_length, seed=0):
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=hidden,
        intermediate_dim=ff,
        dropout=0.0,
        max_sequence_length=sequence_length,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def schedule(learning_rate, steps, warmup):
    if warmup <= 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.1)
    return keras.optimizers.schedules.CosineDecay(
        0.0, max(steps - warmup, 1), alpha=0.1, warmup_target=learning_rate, warmup_steps=warmup
    )


class StepTimes(keras.callbacks.Callback):
    """Times each step; every `every` steps, bits/char on the held-out play.

    The checkpoints' evaluation time is left out of the step times and of
    the reported `seconds` (`eval_pause`)."""

    def __init__(self, every=0, held_out=None):
        super().__init__()
        self.times = []
        self.every = every
        self.held_out = held_out
        self.curve = []
        self.eval_pause = 0.0

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())
        if self.every and (batch + 1) % self.every == 0:
            start = time.perf_counter()
            bits = text.bits_per_character(self.model, self.held_out)
            self.eval_pause += time.perf_counter() - start
            seconds = self.times[-1] - self.times[0] - self.eval_pause
            self.curve.append((batch + 1, round(seconds, 1), round(bits, 3)))
            self.times.append(None)  # No step time across the pause.


def train(args):
    vocabulary, train_ids, held_ids = corpus()
    size = vocabulary.vocabulary_size
    model = build(size, args.layers, args.hidden, args.heads, args.ff, args.seq, args.seed)
    warmup = min(args.warmup, args.steps // 5)
    optimizer = keras.optimizers.AdamW(
        schedule(args.lr, args.steps, warmup),
        beta_2=args.beta2,
        weight_decay=args.weight_decay,
        global_clipnorm=1.0,
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        jit_compile=args.jit == "on",
    )
    dataset = text.causal_lm_dataset(train_ids, args.seq, args.batch, shuffle=True, seed=args.seed)
    held_out = text.causal_lm_dataset(held_ids, args.seq, 64, drop_remainder=False)
    times = StepTimes(args.every, held_out)
    fit_start = start = time.perf_counter()
    history = model.fit(
        dataset.repeat(),
        steps_per_epoch=args.steps,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[times],
    )
    seconds = time.perf_counter() - start - times.eval_pause
    start = time.perf_counter()
    bits = text.bits_per_character(model, held_out)
    eval_seconds = time.perf_counter() - start
    if args.save:
        model.save_weights(args.save)
    stamps = times.times[10:]
    steps = [b - a for a, b in zip(stamps, stamps[1:]) if a is not None and b is not None]
    return {
        "mode": "train",
        "layers": args.layers,
        "hidden": args.hidden,
        "heads": args.heads,
        "ff": args.ff,
        "seq": args.seq,
        "batch": args.batch,
        "lr": args.lr,
        "beta2": args.beta2,
        "jit": args.jit,
        "params": model.count_params(),
        "steps": args.steps,
        "train_chars": args.steps * args.batch * args.seq,
        "epochs_of_text": round(args.steps * args.batch * (args.seq + 1) / len(train_ids), 2),
        "seconds": round(seconds, 1),
        "first_step_seconds": round(times.times[0] - fit_start, 1) if times.times else None,
        "median_step_seconds": round(float(np.median(steps)), 4) if len(steps) else None,
        "final_train_loss_bits": round(history.history["loss"][-1] / np.log(2), 3),
        "held_out_bits_per_char": round(bits, 3),
        "eval_seconds": round(eval_seconds, 1),
        "curve_step_seconds_bits": times.curve,
    }


def parse_config(value):
    layers, hidden, heads, ff = (int(v) for v in value.split(","))
    return layers, hidden, heads, ff


def median_seconds(function, arguments, repeats):
    for _ in range(3):
        function(*arguments)  # Compile and warm up.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(*arguments)
        tf.nest.map_structure(lambda t: t.numpy(), result)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def steps(args):
    vocabulary, train_ids, _ = corpus()
    size = vocabulary.vocabulary_size
    teacher = build(size, *parse_config(args.teacher), args.seq)
    student = build(size, *parse_config(args.student), args.seq, seed=1)
    if args.teacher_weights:
        teacher.load_weights(args.teacher_weights)
    x, y, weight = next(iter(text.causal_lm_dataset(train_ids, args.seq, args.batch)))
    weight = tf.cast(weight, tf.float32)
    optimizer = keras.optimizers.AdamW(1e-3)
    optimizer.build(student.trainable_variables)
    jit = args.jit == "on"
    temperature, alpha = 2.0, 0.5

    @tf.function(jit_compile=jit)
    def teacher_forward(x):
        return teacher(x, training=False)

    def student_loss(x, y, weight, teacher_logits):
        logits = student(x, training=True)
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        loss = cross_entropy
        if teacher_logits is not None:
            log_soft = tf.nn.log_softmax(teacher_logits / temperature)
            log_student = tf.nn.log_softmax(logits / temperature)
            kl = tf.reduce_sum(tf.exp(log_soft) * (log_soft - log_student), axis=-1)
            loss = alpha * cross_entropy + (1 - alpha) * temperature**2 * kl
        return tf.reduce_sum(loss * weight) / tf.reduce_sum(weight)

    def train_step(x, y, weight, teacher_logits):
        with tf.GradientTape() as tape:
            loss = student_loss(x, y, weight, teacher_logits)
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply(gradients, student.trainable_variables)
        return loss

    student_step = tf.function(lambda x, y, w: train_step(x, y, w, None), jit_compile=jit)
    distill_step = tf.function(
        lambda x, y, w: train_step(x, y, w, teacher(x, training=False)), jit_compile=jit
    )
    forward = median_seconds(teacher_forward, (x,), args.repeats)
    alone = median_seconds(student_step, (x, y, weight), args.repeats)
    distill = median_seconds(distill_step, (x, y, weight), args.repeats)
    return {
        "mode": "steps",
        "teacher": args.teacher,
        "teacher_params": teacher.count_params(),
        "student": args.student,
        "student_params": student.count_params(),
        "seq": args.seq,
        "batch": args.batch,
        "jit": args.jit,
        "teacher_forward_seconds": round(forward, 4),
        "student_step_seconds": round(alone, 4),
        "distill_step_seconds": round(distill, 4),
        "distill_over_student": round(distill / alone, 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("train", help="train one model, evaluate on the held-out play")
    t.add_argument("--layers", type=int, default=2)
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--ff", type=int, default=None, help="intermediate_dim (default 4 * hidden)")
    t.add_argument("--seq", type=int, default=64)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--beta2", type=float, default=0.99)
    t.add_argument("--every", type=int, default=0, help="held-out bits/char every N steps")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--jit", choices=("on", "off"), default="on")
    t.add_argument("--save", default=None, help="save the weights here (.weights.h5)")
    s = sub.add_parser("steps", help="time teacher forward, student and distillation steps")
    s.add_argument("--teacher", default="2,128,4,512", help="layers,hidden,heads,ff")
    s.add_argument("--student", default="1,64,2,256", help="layers,hidden,heads,ff")
    s.add_argument("--teacher-weights", default=None)
    s.add_argument("--seq", type=int, default=64)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--repeats", type=int, default=15)
    s.add_argument("--jit", choices=("on", "off"), default="on")
    args = parser.parse_args(argv)
    if args.mode == "train":
        args.ff = args.ff or 4 * args.hidden
        result = train(args)
    else:
        result = steps(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
