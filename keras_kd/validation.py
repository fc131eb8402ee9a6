"""Argument checks shared by the losses, the Distiller and the data loaders.

Each check raises a `ValueError` that names the argument, repeats the value
received and says what to pass instead, so that the first thing a user sees
is the fix rather than a traceback from deep inside TensorFlow.
"""

import math
import numbers


def validate_temperature(temperature, name="temperature"):
    """Returns `temperature` as a Python float, or raises a clear error.

    Args:
        temperature: The softmax temperature to check.
        name: The argument name used in the error message.

    Returns:
        The temperature as a `float`.

    Raises:
        ValueError: if `temperature` is not a positive finite number.
    """
    if isinstance(temperature, bool) or not isinstance(
        temperature, numbers.Real
    ):
        raise ValueError(
            f"`{name}` must be a positive finite number. Received: "
            f"{name}={temperature!r} of type {type(temperature).__name__}. "
            "Use a value such as 2.0-20.0."
        )
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0.0:
        raise ValueError(
            f"`{name}` must be a positive finite number. Received: "
            f"{name}={temperature!r}. Use a value such as 2.0-20.0."
        )
    return temperature


def validate_fraction(value, name):
    """Returns `value` as a float in `[0, 1]`, or raises a clear error.

    Args:
        value: The number to check.
        name: The argument name used in the error message.

    Returns:
        The value as a `float`.

    Raises:
        ValueError: if `value` is not a number in `[0, 1]`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{name}` must be a number in [0, 1]. Received: "
            f"{name}={value!r} of type {type(value).__name__}."
        )
    value = float(value)
    if not 0.0 <= value <= 1.0:  # Also rejects NaN.
        raise ValueError(
            f"`{name}` must be a number in [0, 1]. Received: {name}={value!r}."
        )
    return value


def validate_choice(value, name, choices):
    """Returns `value` if it is one of `choices`, or raises a clear error."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {sorted(choices)}. Received: "
            f"{name}={value!r}."
        )
    return value
