"""Input-pipeline benchmark: can the tf.data pipelines ever bound training?

Measures images per second of each keras_kd pipeline (MNIST from the bundled
sample; CIFAR-10 from random uint8 images of the real shape, since no
CIFAR-10 is available offline), with and without augmentation, and the rate
at which a `keras_kd.Distiller` consumes batches on the E1 pair (teacher
online, and on cached teacher logits, the faster consumer). A pipeline must
be at least 10x faster than the consumer so that it never bounds training.
Each pipeline is also measured built the usual tf.data way (`cache`,
`Dataset.shuffle`, augmentation image by image with `tf.image` ops), which
gives another order each run and cannot resume at an epoch.

    python benchmarks/pipeline.py
"""

import argparse
import os
import statistics
import time

import numpy as np

BATCH_SIZE = 64


def pipeline_rate(dataset, repeats):
    """Median images/s over full epochs, after one warm-up epoch."""
    for _ in dataset:  # Warm-up: fills the cache, traces the maps.
        pass
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        count = sum(int(batch[0].shape[0]) for batch in dataset)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def usual_pipeline(x, y, name, scaling="unit", layout="image", augment=False):
    """The usual tf.data recipe, for comparison: cache, `Dataset.shuffle`,
    augment image by image with `tf.image` ops, batch, scale, prefetch."""
    import tensorflow as tf

    from keras_kd.data import datasets

    padding = 2 if name == "mnist" else 4

    def augment_image(image, label):
        padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
        image = tf.image.random_crop(padded, image.shape)
        if name == "cifar10":
            image = tf.image.random_flip_left_right(image)
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).cache().shuffle(len(x), seed=0)
    if augment:
        dataset = dataset.map(augment_image, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(BATCH_SIZE).map(
        lambda images, labels: (datasets.preprocess(images, name, scaling, layout), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def consumer_rate(x, y, cached, epochs):
    """Images/s that a Distiller trains on, E1 pair, after a warm-up epoch."""
    import keras

    import keras_kd
    from keras_kd.distillation import cache
    from keras_kd.data import datasets
    from keras_kd import models

    keras.utils.set_random_seed(0)
    teacher = models.build_keras_io_teacher()
    distiller = keras_kd.Distiller(student=models.build_keras_io_student(), teacher=teacher)
    distiller.compile(optimizer="adam", metrics=["sparse_categorical_accuracy"])
    logits = cache.compute_teacher_logits(teacher, x) if cached else None
    dataset = datasets.make_dataset(
        x, y, name=None, scaling=None, batch_size=BATCH_SIZE, shuffle=True,
        teacher_logits=logits,
    )
    durations = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            durations.append(time.perf_counter() - self.start)

    distiller.fit(dataset, epochs=epochs + 1, verbose=0, callbacks=[EpochTimer()])
    return len(x) / statistics.median(durations[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline")
    parser.add_argument("--consumer-epochs", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from keras_kd.data import datasets

    (mnist_x, mnist_y), _ = datasets.load_arrays("mnist", source="sample")
    rng = np.random.default_rng(0)
    cifar_x = rng.integers(0, 256, (10000, 32, 32, 3), dtype=np.uint8)
    cifar_y = rng.integers(0, 10, 10000)

    pipelines = {
        "mnist, image": (mnist_x, mnist_y, "mnist", dict()),
        "mnist, image, jitter 2 px": (mnist_x, mnist_y, "mnist", dict(augment=True)),
        "mnist, flat 784, jitter 2 px": (
            mnist_x, mnist_y, "mnist", dict(layout="flat", augment=True)
        ),
        "cifar10, standardize": (cifar_x, cifar_y, "cifar10", dict(scaling="standardize")),
        "cifar10, standardize, crop+flip": (
            cifar_x, cifar_y, "cifar10", dict(scaling="standardize", augment=True)
        ),
    }
    rates, usual_rates = {}, {}
    for name, (x, y, dataset_name, options) in pipelines.items():
        dataset = datasets.make_dataset(
            x, y, name=dataset_name, batch_size=BATCH_SIZE, shuffle=True, **options
        )
        rates[name] = pipeline_rate(dataset, args.repeats)
        # The same pipeline the usual way, side by side in the same run.
        usual = usual_pipeline(x, y, dataset_name, **options)
        usual_rates[name] = pipeline_rate(usual, args.repeats)
        print(
            f"{name}: keras_kd {rates[name]:,.0f} images/s, usual recipe "
            f"{usual_rates[name]:,.0f}", flush=True,
        )

    x = datasets.preprocess(mnist_x, "mnist").numpy()
    online = consumer_rate(x, mnist_y, cached=False, epochs=args.consumer_epochs)
    cached = consumer_rate(x, mnist_y, cached=True, epochs=args.consumer_epochs)

    print(
        f"\nInput pipelines against a Distiller, {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores, TF {tf.__version__}, batch {BATCH_SIZE}"
    )
    print(f"E1 Distiller consumes {online:,.0f} images/s online, {cached:,.0f} cached")
    print(
        "| pipeline | images/s | x online consumer | x cached consumer "
        "| usual recipe, images/s | keras_kd / usual |"
    )
    print("|---|---|---|---|---|---|")
    for name, rate in rates.items():
        usual = usual_rates[name]
        print(
            f"| {name} | {rate:,.0f} | {rate / online:.1f} | {rate / cached:.1f} "
            f"| {usual:,.0f} | {rate / usual:.2f} |"
        )


if __name__ == "__main__":
    main()
