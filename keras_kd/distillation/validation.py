"""Argument checks shared by the losses, the Distiller and the data loaders:
numbers, choices, the models a Distiller is given and the inputs of `fit`.

Each check raises a `ValueError` that names the argument, repeats the value
received and says what to pass instead, so that the first thing a user sees
is the fix rather than a traceback from deep inside TensorFlow.
"""

import inspect
import math
import numbers

import keras
import numpy as np
import tensorflow as tf


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
            f"`{name}` must be one of {sorted(choices, key=str)}. Received: "
            f"{name}={value!r}."
        )
    return value


def validate_positive_ints(values, name):
    """Returns `values` as a tuple of positive ints, or raises a clear error.

    Args:
        values: A sequence such as the filters of each convolution.
        name: The argument name used in the error message.
    """
    values = tuple(values)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values
    ):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive integers. "
            f"Received: {name}={values!r}."
        )
    return values


def check_models(student, teachers, teacher_outputs, teacher_output=None, student_output=None,
                 align_vocabulary=None):
    """Raises a clear error for models a Distiller cannot pair.

    Args:
        student: The student, which must output logits.
        teachers: The list of teachers.
        teacher_outputs: `"logits"` or `"probabilities"`.
        teacher_output: Which teacher output holds the logits.
        student_output: Which student output holds the logits.
        align_vocabulary: `"prefix"` lets a teacher output more classes.

    Raises:
        ValueError: for a non-model, a student that ends in a softmax, a
            teacher that does with `teacher_outputs="logits"`, or models
            with different numbers of classes.
    """
    from keras_kd.distillation import outputs

    for argument, model in [("student", student)] + [("teacher", t) for t in teachers]:
        if not isinstance(model, keras.Model):
            raise ValueError(
                f"`{argument}` must be a `keras.Model`. Received: "
                f"{argument}={model!r} of type {type(model).__name__}."
            )
    if outputs.ends_in_softmax(student, student_output, "student"):
        layer = outputs.selected_layer(student, student_output, "student")
        raise ValueError(
            "The student must output logits, but its layer "
            f"`{layer.name}` applies a softmax. Build the "
            "student's last layer with `activation=None`; apply "
            "`keras.ops.softmax` to its outputs after training if you "
            "need probabilities."
        )
    student_classes = outputs.static_num_classes(student, student_output, "student")
    for teacher in teachers:
        if teacher_outputs == "logits" and outputs.ends_in_softmax(teacher, teacher_output):
            layer = outputs.selected_layer(teacher, teacher_output, "teacher")
            raise ValueError(
                f"The teacher's layer `{layer.name}` applies "
                "a softmax, but teacher_outputs='logits'. Pass "
                "`teacher_outputs='probabilities'` (or leave it unset) to "
                "distil from its probabilities, or rebuild it with a linear "
                "last layer."
            )
        teacher_classes = outputs.static_num_classes(teacher, teacher_output)
        if align_vocabulary == "prefix":
            if None not in (teacher_classes, student_classes) and teacher_classes < student_classes:
                raise ValueError(
                    f"`align_vocabulary='prefix'` needs a teacher with at least the "
                    f"student's {student_classes} classes. Received: teacher outputs "
                    f"{teacher_classes}."
                )
            continue
        check_same_classes(
            teacher_classes, student_classes,
            "Build both with the same `num_classes`, or pass `align_vocabulary="
            "'prefix'` for a teacher whose vocabulary is padded past the student's.",
        )


def check_same_classes(teacher_classes, student_classes, fix):
    """Raises if both class counts are known and differ; `fix` ends the message."""
    if None not in (teacher_classes, student_classes) and teacher_classes != student_classes:
        raise ValueError(
            "The teacher and the student must output the same number of "
            f"classes. Received: teacher outputs {teacher_classes}, student "
            f"outputs {student_classes}. {fix}"
        )


def check_inputs(student, x, argument):
    """Raises a clear error for inputs a single-input student cannot take.

    Only where Keras would fail too, with a message from deep inside the
    model: a dtype of another kind than the student's input (numbers for a
    numeric input, text for a `keras.Input(dtype="string")`), or a shape that
    Keras' unit-axis rule does not reconcile with the student's input.
    Subclassed students, several or dict inputs, unknown ranks, PyDatasets
    and generators are left to Keras.
    """
    inputs = getattr(student, "inputs", None)
    if not inputs or len(inputs) != 1:
        return  # Subclassed or several inputs: left to Keras.
    if isinstance(x, tf.data.Dataset):
        spec = x.element_spec
        spec = spec[0] if isinstance(spec, tuple) else spec
        if not isinstance(spec, tf.TensorSpec) or spec.shape.rank is None:
            return
        shape, dtype = tuple(spec.shape), spec.dtype.name
        kind = "text" if spec.dtype == tf.string else (
            "numeric" if spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool
            else "other")
    elif isinstance(x, np.ndarray):
        shape, dtype = (None,) + x.shape[1:], str(x.dtype)
        kind = "numeric" if x.dtype.kind in "biuf" else (
            "text" if x.dtype.kind in "OSU" else "other")
    else:
        return
    # The student's own input decides what it takes.
    expects_text = str(getattr(inputs[0], "dtype", "")) == "string"
    if expects_text and kind != "text":
        raise ValueError(
            f"`{argument}` has dtype {dtype}, but the student's input takes "
            "strings (`keras.Input(dtype='string')`). Pass the texts, e.g. a "
            "NumPy array of str."
        )
    if not expects_text and kind != "numeric":
        raise ValueError(
            f"`{argument}` has dtype {dtype}; the student needs numeric "
            f"inputs. Convert them, e.g. `{argument}.astype('float32')`, or "
            "build the student with `keras.Input(dtype='string')` and a "
            "`TextVectorization` layer to take text."
        )
    expected = tuple(inputs[0].shape)
    if not shapes_compatible(shape, expected):
        raise ValueError(
            f"`{argument}` has examples of shape {shape[1:]}, but the "
            f"student takes inputs of shape {expected[1:]}. Reshape the "
            "inputs (e.g. flatten images for an MLP, or add the channel "
            "axis for a CNN) or build the student for this shape."
        )


def orders_itself(x):
    """True for inputs that fix their own order: datasets, PyDatasets,
    generators (Keras ignores `shuffle` for them)."""
    return isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)) or inspect.isgenerator(x)


def shapes_compatible(shape, expected):
    """Keras' rule for a Functional input: equal ranks, or one more or one
    fewer trailing axis of size 1 (`(n, 28, 28)` for `Input((28, 28, 1))`)."""
    if len(shape) == len(expected) + 1 and shape[-1] == 1:
        shape = shape[:-1]
    elif len(shape) == len(expected) - 1 and expected[-1] == 1:
        expected = expected[:-1]
    return len(shape) == len(expected) and all(
        e is None or g is None or e == g for e, g in zip(expected[1:], shape[1:])
    )
