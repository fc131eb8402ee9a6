"""How far a top-k teacher cache is from the dense teacher, on real text.

A character GRU teacher (Embedding 64, GRU 128, Dense) is trained for
`--teacher-steps` steps of 32 x 64 characters on the first nine bundled
Shakespeare plays; the first `--tokens` characters of the tenth (As You Like
It, never trained on) are cut into windows of 64. For each window position
the forward KL `KL(p_T || p_S)` at T = 1 is computed three ways:

  dense        `keras_kd.KLDivergenceWithTemperature` on the full logits
  bin          `top_k_kl_divergence(tail="bin")` from the teacher's top k
               (k + 1 bins: the cached tokens and one tail bin)
  renormalize  `top_k_kl_divergence(tail="renormalize")` (both renormalised
               over the k cached tokens)

against two students: an untrained copy of the teacher's architecture
("random", seed 1) and a bigram model ("bigram": logits = log of add-one
counts of next-character given character, on the nine plays). The error is
`sum |top-k - dense| / sum dense` over all positions (the relative error
of the mean loss a Distiller would see).

    python benchmarks/top_k_error.py                    # ~3 minutes on 2 cores
    python benchmarks/top_k_error.py --teacher-steps 50 --tokens 1024   # smoke test
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SEQUENCE_LENGTH = 64
BATCH_SIZE = 32
KS = (1, 4, 8, 16)


def build_teacher(vocabulary_size, seed):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((SEQUENCE_LENGTH,), dtype="int32"),
        keras.layers.Embedding(vocabulary_size, 64),
        keras.layers.GRU(128, return_sequences=True),
        keras.layers.Dense(vocabulary_size),
    ])


def windows(ids, count):
    """`count * 64` consecutive ids as `(x, y)`: inputs and next characters."""
    import numpy as np

    ids = np.asarray(ids[: count * SEQUENCE_LENGTH + 1], "int32")
    x = ids[:-1].reshape(count, SEQUENCE_LENGTH)
    y = ids[1:].reshape(count, SEQUENCE_LENGTH)
    return x, y


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--tokens", type=int, default=8192)
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    import keras_kd
    from keras_kd.data import text
    from keras_kd.distillation import top_k

    print(f"keras-kd top-k error benchmark, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}")
    plays = text.load_plays()
    vocabulary = text.CharacterVocabulary.from_text([play for _, play in plays])
    size = vocabulary.vocabulary_size
    train_ids = vocabulary.encode("".join(play for _, play in plays[:-1]))
    held_out_title, held_out = plays[-1]
    x_test, _ = windows(vocabulary.encode(held_out), args.tokens // SEQUENCE_LENGTH)

    # The teacher: random 64-character windows of the nine plays.
    teacher = build_teacher(size, seed=0)
    teacher.compile(optimizer=keras.optimizers.Adam(3e-3),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(train_ids) - SEQUENCE_LENGTH - 1,
                          (args.teacher_steps, BATCH_SIZE))
    offsets = np.arange(SEQUENCE_LENGTH)
    start = time.perf_counter()
    for step_starts in starts:
        positions = step_starts[:, None] + offsets
        teacher.train_on_batch(train_ids[positions], train_ids[positions + 1])
    teacher_seconds = time.perf_counter() - start
    teacher_logits = teacher.predict(x_test, batch_size=64, verbose=0)

    # The students.
    random_logits = build_teacher(size, seed=1).predict(x_test, batch_size=64, verbose=0)
    counts = np.ones((size, size))
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
    bigram_logits = np.log(counts / counts.sum(axis=1, keepdims=True))[x_test].astype("float32")
    students = {"random": random_logits, "bigram": bigram_logits}

    dense_loss = keras_kd.KLDivergenceWithTemperature()
    print(f"\nTeacher: {teacher.count_params():,} parameters, {args.teacher_steps} steps of "
          f"{BATCH_SIZE} x {SEQUENCE_LENGTH} ({teacher_seconds:.0f} s). Held out: "
          f"{held_out_title}, {x_test.size:,} positions, vocabulary {size}, T = 1.\n")
    dense = {name: dense_loss.compute_per_sample(teacher_logits, logits, 1.0).numpy()
             for name, logits in students.items()}
    for name in students:
        print(f"mean dense forward KL, {name} student: {dense[name].mean():.4f} nats")
    mass = {}
    print("\n| k | teacher mass in the top k | "
          + " | ".join(f"{tail}, {name} student" for name in students
                       for tail in ("bin", "renormalize")) + " |")
    print("|---|---|" + "---|" * (2 * len(students)))
    for k in KS:
        indices, values, log_normalizer = top_k.top_k_logits(teacher_logits, k, 1.0)
        mass[k] = float(np.exp(values.numpy() - log_normalizer.numpy()[..., None])
                        .sum(-1).mean())
        errors = []
        for name, logits in students.items():
            for tail in ("bin", "renormalize"):
                approximate = top_k.top_k_kl_divergence(
                    indices, values, log_normalizer, logits, 1.0, tail=tail).numpy()
                errors.append(np.abs(approximate - dense[name]).sum() / dense[name].sum())
        print(f"| {k} | {mass[k]:.3f} | " + " | ".join(f"{e:.3f}" for e in errors) + " |")
    print("\nError: sum |top-k - dense| / sum dense over all positions.")


if __name__ == "__main__":
    main()
