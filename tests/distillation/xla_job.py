"""XLA check for tests/test_distiller.py, run in its own process.

    python tests/xla_job.py

Prints one JSON line: how `jit_compile="auto"` resolves in several settings
(Keras' rule: off on CPU-only machines), and how far a student trained with
`jit_compile=True` ends from one trained without.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
import keras_kd.distillation.cache  # noqa: E402
import keras_kd.distillation.xla  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)


def mlp(units, name):
    return keras.Sequential(
        # No Dropout: XLA may pick another stateless RNG algorithm, so
        # dropout masks (not the arithmetic) would differ.
        [keras.Input((6,)), keras.layers.Dense(units, activation="relu"),
         keras.layers.Dense(4)],
        name=name,
    )


def distiller(seed=0, **compile_kwargs):
    keras.utils.set_random_seed(seed)
    model = keras_kd.Distiller(student=mlp(8, "student"), teacher=mlp(16, "teacher"))
    model.compile(optimizer=keras.optimizers.SGD(0.1), **compile_kwargs)
    return model


rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6)).astype("float32")
y = rng.integers(0, 4, size=64)
report = {}

trained = {}
report["auto"] = bool(distiller(seed=1).jit_compile)
for jit_compile in (True, False):
    model = distiller(seed=1, jit_compile=jit_compile)
    report["on_when_asked" if jit_compile else "off_when_asked"] = bool(model.jit_compile)
    if jit_compile:
        initial = [w.numpy() for w in model.student.weights]
    keras.utils.set_random_seed(2)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    trained[jit_compile] = [w.numpy() for w in model.student.weights]
report["max_weight_difference"] = max(
    float(np.max(np.abs(a - b))) for a, b in zip(trained[True], trained[False])
)
report["max_weight_change"] = max(
    float(np.max(np.abs(a - b))) for a, b in zip(trained[True], initial)
)

teacher = model.teacher
x_odd = rng.normal(size=(50, 6)).astype("float32")  # A short last batch.
report["cache_max_difference"] = float(np.max(np.abs(
    keras_kd.distillation.cache.compute_teacher_logits(teacher, x_odd, batch_size=16, jit_compile=True)
    - keras_kd.distillation.cache.compute_teacher_logits(teacher, x_odd, batch_size=16, jit_compile=False)
)))
report["cache_auto_xla"] = keras_kd.distillation.xla.auto_jit_compile(teacher)

student = mlp(8, "alone")
student.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
report["student_alone_auto"] = bool(student.jit_compile)

with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    report["under_mirrored_strategy"] = bool(distiller().jit_compile)

tf.config.experimental.enable_op_determinism()
report["under_op_determinism"] = bool(distiller(jit_compile=True).jit_compile)
print(json.dumps(report))
