"""One task of the multi-worker test (run by tests/test_multi_worker.py).

    python tests/multi_worker_job.py OUTPUT_DIR

With TF_CONFIG set, it joins the cluster under MultiWorkerMirroredStrategy;
without it, it trains alone on the same global batches. It distils a small
MLP pair with `keras_kd.studies.runs.fit_resumable` and writes the student's final
weights to OUTPUT_DIR/weights-<task>.npz.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import datasets  # noqa: E402
from keras_kd import runs  # noqa: E402

output = sys.argv[1]
cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
task = cluster.get("task", {}).get("index", "alone")
if cluster:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()

GLOBAL_BATCH = 32
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 6)).astype("float32")
y = rng.integers(0, 4, size=256)

runs.set_determinism(1)
with strategy.scope():
    student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(4)])
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(4)])
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0)

options = tf.data.Options()
# Each worker takes its share of every global batch.
options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA


def train_dataset(start_epoch):
    return datasets.make_dataset(
        x, y, name=None, scaling=None, batch_size=GLOBAL_BATCH, shuffle=True, seed=3,
        num_classes=4, start_epoch=start_epoch,
    ).with_options(options)


history = runs.fit_resumable(
    distiller, train_dataset, datasets.steps_per_epoch(len(x), GLOBAL_BATCH), epochs=3,
    path=os.path.join(output, "run"), seed=1, tensorboard=False, verbose=0,
)
np.savez(os.path.join(output, f"weights-{task}.npz"), *student.get_weights(),
         loss=np.array(history.history["loss"]))
