"""Output selection: told, never guessed."""

import keras
import numpy as np
import pytest

from keras_kd.distillation import outputs


@pytest.mark.parametrize(
    "values, selector, expected",
    [
        (np.ones(1), None, 1.0),
        ([np.ones(1)], None, 1.0),
        ({"logits": np.ones(1)}, None, 1.0),
        ({"aux": np.zeros(1), "logits": np.ones(1)}, "logits", 1.0),
        ([np.zeros(1), np.ones(1)], 1, 1.0),
        ([np.zeros(1), np.ones(1)], -1, 1.0),
    ],
)
def test_select_output(values, selector, expected):
    assert float(outputs.select_output(values, selector, "teacher")[0]) == expected


@pytest.mark.parametrize(
    "values, selector, match",
    [
        ({"aux": 0, "logits": 1}, None, r"several outputs: \['aux', 'logits'\]"),
        ([0, 1], None, r"several outputs: \['0', '1'\]"),
        ([0, 1], 2, r"`teacher_output=2` is not one"),
        (np.ones(1), "logits", "has one output"),
    ],
)
def test_missing_or_unknown_selectors_list_the_outputs(values, selector, match):
    with pytest.raises(ValueError, match=match):
        outputs.select_output(values, selector, "teacher")


def test_output_names_of_a_functional_model_select_by_name():
    inputs = keras.Input((3,))
    aux = keras.layers.Dense(2, name="aux")(inputs)
    logits = keras.layers.Dense(4, name="logits", activation="softmax")(inputs)
    model = keras.Model(inputs, [aux, logits])
    assert outputs.static_num_classes(model, "logits") == 4
    assert outputs.ends_in_softmax(model, "logits") is True
    assert outputs.ends_in_softmax(model, "aux") is False
