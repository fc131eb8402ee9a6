"""The batch contract: `parse_batch` and `targets`."""

import numpy as np
import pytest

import keras_kd
from keras_kd.distillation import batch
from keras_kd.distillation.batch import parse_batch


@pytest.mark.parametrize(
    "data, parts",
    [
        (np.ones(2), {"inputs": 1}),
        ((np.ones(2), np.zeros(2)), {"inputs": 1, "labels": 0}),
        ((np.ones(2), np.zeros(2), np.full(2, 3.0)),
         {"inputs": 1, "labels": 0, "sample_weight": 3}),
        ((np.ones(2), keras_kd.targets(labels=np.zeros(2), teacher_logits=np.full(2, 5.0))),
         {"inputs": 1, "labels": 0, "teacher_outputs": 5}),
        ((np.ones(2), keras_kd.targets(teacher_logits=np.full(2, 5.0))),
         {"inputs": 1, "teacher_outputs": 5}),
        ((np.ones(2), keras_kd.targets(labels=np.zeros(2), label_mask=np.full(2, 7.0))),
         {"inputs": 1, "labels": 0, "label_mask": 7}),
    ],
)
def test_parts_are_named(data, parts):
    batch = parse_batch(data)
    for field in batch._fields:
        value = getattr(batch, field)
        if field in parts:
            assert np.all(np.asarray(value) == parts[field]), field
        else:
            assert value is None, field


def test_a_multi_output_target_dict_is_left_alone():
    y = {"aux": np.zeros(2), "logits": np.ones(2)}
    assert parse_batch((np.ones(2), y)).labels is y


def test_reserved_keys_mixed_with_others_are_refused():
    with pytest.raises(ValueError, match=r"reserved keys.*\['other'\]"):
        parse_batch((np.ones(2), {"labels": np.zeros(2), "other": np.zeros(2)}))


def test_a_sample_weight_repeated_over_a_targets_dict_is_read_as_one():
    """What Keras' array adapter makes of `fit(x, targets(...), sample_weight=w)`:
    `w` repeated per key of `y` (`replicate_sample_weight` does the same for
    any shape). Before this round the dict reached the terms as it was."""
    w = np.array([1.0, 2.0])
    y = batch.targets(labels=np.array([0, 1]), teacher_logits=np.zeros((2, 3)))
    replicated = batch.replicate_sample_weight(y, w)
    assert set(replicated) == set(y) and all(v is w for v in replicated.values())
    assert batch.parse_batch((np.zeros((2, 4)), y, replicated)).sample_weight is w
    assert batch.replicate_sample_weight(np.array([0, 1]), w) is w
    assert batch.replicate_sample_weight(y, None) is None
