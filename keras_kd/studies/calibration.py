"""Temperature scaling: the temperature that calibrates a teacher.

Is the best distillation temperature the one that calibrates the teacher
(Guo et al., 2017, "On Calibration of Modern Neural Networks")?
`calibrate_temperature` fits that temperature on held-out data, so a sweep
can report it next to the temperature that distils best.
"""

import numpy as np

from keras_kd.data.datasets import check_labels

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def temperature_nll(logits, labels, temperature):
    """Mean negative log-likelihood of `softmax(logits / temperature)`, float64.

    Args:
        logits: Array `(n, num_classes)`.
        labels: Integer labels `(n,)`.
        temperature: Positive float.

    Returns:
        The mean NLL in nats, a Python float.
    """
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_probabilities = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    return float(-log_probabilities[np.arange(len(labels)), labels].mean())


def fit_temperature(logits, labels, min_temperature=0.05, max_temperature=100.0, tolerance=1e-6):
    """The temperature that minimises the NLL of `softmax(logits / T)`.

    The NLL is convex in `1 / T` (a log-sum-exp minus a linear term), so a
    golden-section search on `1 / T` finds the global minimum in the bounds.

    Args:
        logits: Array `(n, num_classes)` of held-out logits.
        labels: Integer labels `(n,)`.
        min_temperature: Lower bound of the search.
        max_temperature: Upper bound of the search.
        tolerance: Stop when the bracket on `1 / T` is narrower than this.

    Returns:
        The fitted temperature, a Python float.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(
            "`logits` must have shape (n, num_classes) with n > 0. Received "
            f"shape {logits.shape}."
        )
    if not np.isfinite(logits).all():
        raise ValueError("`logits` contain NaN or Inf: the teacher's outputs are broken.")
    check_labels(labels, logits, "`labels`", logits.shape[1])
    if not 0 < min_temperature < max_temperature:
        raise ValueError(
            "Need 0 < min_temperature < max_temperature. Received "
            f"{min_temperature} and {max_temperature}."
        )

    def nll(beta):
        return temperature_nll(logits, labels, 1.0 / beta)

    low, high = 1.0 / max_temperature, 1.0 / min_temperature
    left = high - _GOLDEN * (high - low)
    right = low + _GOLDEN * (high - low)
    left_value, right_value = nll(left), nll(right)
    while high - low > tolerance:
        if left_value <= right_value:
            high, right, right_value = right, left, left_value
            left = high - _GOLDEN * (high - low)
            left_value = nll(left)
        else:
            low, left, left_value = left, right, right_value
            right = low + _GOLDEN * (high - low)
            right_value = nll(right)
    return float(1.0 / ((low + high) / 2.0))


def calibrate_temperature(teacher, validation_data, batch_size=256, **kwargs):
    """Fits the temperature that minimises the teacher's validation NLL.

    Args:
        teacher: A trained `keras.Model` that outputs logits.
        validation_data: `(x, y)` arrays, or a `tf.data.Dataset` of `(x, y)`
            batches, not used for training the teacher.
        batch_size: Batch size of the teacher's forward pass on arrays.
        **kwargs: `min_temperature`, `max_temperature`, `tolerance` of
            `fit_temperature`.

    Returns:
        The calibrated temperature, a Python float. Above 1 the teacher was
        over-confident, below 1 under-confident.

    Example:

    ```python
    temperature = keras_kd.calibrate_temperature(teacher, (x_val, y_val))
    ```
    """
    if isinstance(validation_data, (tuple, list)):
        if len(validation_data) != 2:
            raise ValueError(
                "`validation_data` must be `(x, y)` or a dataset of `(x, y)` "
                f"batches. Received a sequence of length {len(validation_data)}."
            )
        x, labels = validation_data
        logits = teacher.predict(x, batch_size=batch_size, verbose=0)
    else:
        batches = [
            (np.asarray(teacher(x, training=False)), np.asarray(y))
            for x, y, *_ in validation_data
        ]
        if not batches:
            raise ValueError("`validation_data` is an empty dataset.")
        logits = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
    return fit_temperature(logits, labels, **kwargs)
