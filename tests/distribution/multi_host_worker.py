"""One process of tests/distribution/test_multi_host.py's runs (not a test).

    python multi_host_worker.py PROCESS_ID NUM_PROCESSES PORT OUTPUT.json

A Distiller under `keras.distribution.DataParallel` over 4 CPU devices in
all: one process of 4, or `NUM_PROCESSES` processes joined by
`keras.distribution.initialize` (JAX's distributed runtime, gloo
collectives on CPU), each with its share of the devices. Writes the fit
history and the student's weights.
"""

import json
import os
import sys

process_id, num_processes, port, output = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                           sys.argv[4])
os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={4 // num_processes}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

if num_processes > 1:
    keras.distribution.initialize(job_addresses=f"localhost:{port}",
                                  num_processes=num_processes, process_id=process_id)
keras.distribution.set_distribution(keras.distribution.DataParallel())

import keras_kd  # noqa: E402


def mlp(units, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(units, activation="relu"),
                             keras.layers.Dense(4)])


teacher, student = mlp(16, 1), mlp(8, 2)
rng = np.random.default_rng(0)
x = rng.normal(size=(48, 6)).astype("float32")
y = rng.integers(0, 4, size=48)
distiller = keras_kd.Distiller(student=student, teacher=teacher)
distiller.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.5, temperature=2.0)
# Global batches of 8: each of 2 processes reads 4 of them (Keras shards the
# dataset per process).
train = tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(8)
validation = tf.data.Dataset.from_tensor_slices((x[32:], y[32:])).batch(8)
seen = []


class Seen(keras.callbacks.Callback):
    """What a callback sees of the distribution during fit."""

    def on_epoch_end(self, epoch, logs=None):
        seen.append(keras.distribution.distribution().auto_shard_dataset)


history = distiller.fit(train, validation_data=validation, epochs=2, verbose=0,
                        callbacks=[Seen()]).history
with open(output, "w") as f:
    json.dump({"devices": len(jax.devices()), "local_devices": len(jax.local_devices()),
               "history": history, "auto_shard_during_fit": seen,
               "distribute_dataset_patched_after": "distribute_dataset" in vars(
                   keras.distribution.distribution()),
               "weights": [np.asarray(w).tolist() for w in student.get_weights()]}, f)
