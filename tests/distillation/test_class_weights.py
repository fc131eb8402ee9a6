"""Class weights as sample weights of one call's data."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd.distillation import class_weights


@pytest.mark.parametrize(
    "labels, class_axis, expected",
    [
        (np.array([0, 1, 2, -1]), False, [10.0, 1.0, 2.0, 1.0]),
        (np.array([[0], [2]]), False, [10.0, 2.0]),
        (np.array([[0, 1], [2, -1]]), False, [[10.0, 1.0], [2.0, 1.0]]),  # Per position.
        (np.eye(3)[[2, 0]], True, [2.0, 10.0]),
        (np.array([7, 1]), False, [1.0, 1.0]),  # A class beyond the table.
    ],
)
def test_weights_for_each_label_layout(labels, class_axis, expected):
    table = class_weights.class_weight_table({0: 10.0, 2: 2.0})
    np.testing.assert_allclose(class_weights.weights_for(labels, table, class_axis), expected)


def test_dataset_and_cached_targets_gain_weights():
    y = np.array([0, 1, 2, -1])
    targets = keras_kd.targets(labels=y, teacher_logits=np.zeros((4, 3), "float32"))
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2)), targets)).batch(4)
    weighted, _, _ = class_weights.apply_class_weight(
        dataset, None, None, {0: 5.0}, lambda labels: False)
    (_, _, weights), = list(weighted)
    np.testing.assert_allclose(weights, [5.0, 1.0, 1.0, 1.0])


def test_py_dataset_gains_weights():
    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return np.zeros((2, 2)), np.array([0, index])

    weighted, _, _ = class_weights.apply_class_weight(
        Batches(), None, None, {1: 3.0}, lambda labels: False)
    assert len(weighted) == 2
    np.testing.assert_allclose(weighted[1][2], [1.0, 3.0])


@pytest.mark.parametrize(
    "class_weight, sample_weight, y, match",
    [
        ({}, None, np.zeros(2), "non-empty dict"),
        ({"a": 1.0}, None, np.zeros(2), "class indices"),
        ({0: 1.0}, np.ones(2), np.zeros(2), "at the same time"),
        ({0: 1.0}, None, None, "needs labels"),
    ],
)
def test_bad_class_weights_are_refused(class_weight, sample_weight, y, match):
    with pytest.raises(ValueError, match=match):
        class_weights.apply_class_weight(
            np.zeros((2, 2)), y, sample_weight, class_weight, lambda labels: False)
