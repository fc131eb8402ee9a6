"""Which output of a model holds the logits, told, never guessed.

A model with one output needs nothing. A model with several (a list, a
tuple or a dict of outputs) must be told which one to distil:
`Distiller(teacher_output=..., student_output=...)` with a dict key, an
output (layer) name or a position. Without it the Distiller refuses and lists
the outputs it found, instead of taking the first.
"""

import keras

from keras_kd.distillation import compat


def output_names(model, outputs):
    """Names of a list of outputs: the model's output names where known."""
    names = None
    try:
        names = list(model.output_names)
    except (AttributeError, TypeError, ValueError):
        pass
    if names is None or len(names) != len(outputs):
        return [str(i) for i in range(len(outputs))]
    return names


def select_output(outputs, selector, role, model=None, keyword=None, function="Distiller"):
    """The logits among a model's outputs.

    Args:
        outputs: What the model returned: a tensor, a list/tuple or a dict.
        selector: `None` (the model has one output), a dict key, an output
            name or an integer position.
        role: `"teacher"` or `"student"`, for the messages.
        model: The model, for its output names.
        keyword: The argument that holds `selector`, for the messages
            (default `f"{role}_output"`).
        function: The function that takes `keyword`, for the messages.

    Returns:
        One tensor.

    Raises:
        ValueError: for several outputs and no (or an unknown) selector,
            listing the outputs.
    """
    argument = keyword or f"{role}_output"
    if isinstance(outputs, dict):
        if selector in outputs:
            return outputs[selector]
        found = sorted(outputs, key=str)
        if len(outputs) == 1 and selector is None:
            return next(iter(outputs.values()))
        raise ValueError(_choose(role, argument, selector, found, function))
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1 and selector in (None, 0):
            return outputs[0]
        names = output_names(model, outputs) if model is not None else [
            str(i) for i in range(len(outputs))
        ]
        if isinstance(selector, int) and not isinstance(selector, bool):
            if -len(outputs) <= selector < len(outputs):
                return outputs[selector]
        elif selector in names:
            return outputs[names.index(selector)]
        raise ValueError(_choose(role, argument, selector, names, function))
    if selector not in (None, 0):
        raise ValueError(
            f"`{argument}={selector!r}` names an output, but the {role} has "
            f"one output. Pass `{argument}=None`."
        )
    return outputs


def _choose(role, argument, selector, found, function="Distiller"):
    if selector is None:
        return (
            f"The {role} has several outputs: {found}. Say which one holds "
            f"the logits with `{function}({argument}=...)` (a name or a "
            "position)."
        )
    return (
        f"`{argument}={selector!r}` is not one of the {role}'s outputs: "
        f"{found}. Pass one of them (a name or a position)."
    )


def symbolic_outputs(model):
    """A Functional/Sequential model's symbolic outputs in their structure
    (a tensor, list or dict), or `None` for a subclassed model."""
    if not getattr(model, "inputs", None):
        return None
    try:
        return model.output
    except (AttributeError, ValueError):  # A Sequential never called.
        outputs = getattr(model, "outputs", None) or []
        return outputs[0] if len(outputs) == 1 else (outputs or None)


def selected_layer(model, selector, role, **naming):
    """The layer that produces a Functional/Sequential model's selected
    output, or `None` for a subclassed model. `naming`: `select_output`'s
    `keyword` and `function`."""
    symbolic = symbolic_outputs(model)
    if symbolic is None:
        return None
    return compat.producing_layer(select_output(symbolic, selector, role, model, **naming))


def ends_in_softmax(model, selector=None, role="teacher", **naming):
    """True if the layer producing the selected output applies a softmax.

    Subclassed models, whose outputs are not a graph of layers, are taken
    not to (the Distiller then checks the first batch's values).
    """
    layer = selected_layer(model, selector, role, **naming)
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    return activation is keras.activations.softmax or getattr(
        activation, "__name__", ""
    ) == "softmax"


def static_num_classes(model, selector=None, role="teacher"):
    """The number of logits of a model with static outputs, else `None`."""
    symbolic = symbolic_outputs(model)
    if symbolic is None:
        return None
    return select_output(symbolic, selector, role, model).shape[-1]
