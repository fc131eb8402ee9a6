"""The teacher side of a Distiller (`keras_kd.teachers`): checks of the
teachers and of the logits they give. Logit values, ensembles and teacher
views are tested in test_distiller.py, test_ensembles.py and
test_distiller_paths.py."""

import numpy as np
import pytest
from conftest import make_mlp

from keras_kd import Distiller
from keras_kd import cache


def test_every_member_of_an_ensemble_is_checked():
    with pytest.raises(ValueError, match="teacher outputs 3, student outputs 4"):
        Distiller(student=make_mlp([8]), teacher=[make_mlp([16]), make_mlp([16], num_classes=3)])
    with pytest.raises(ValueError, match="non-empty list"):
        Distiller(student=make_mlp([8]), teacher=[])


def test_teachers_are_frozen_and_listed():
    members = [make_mlp([16]), make_mlp([12])]
    distiller = Distiller(student=make_mlp([8]), teacher=members)
    assert distiller.teachers == members
    assert not any(member.trainable for member in members)
    single = make_mlp([16])
    assert Distiller(student=make_mlp([8]), teacher=single).teachers == [single]


def test_cached_logits_of_another_width_are_refused(tiny_data):
    """The check the constructor cannot make: logits from a cache."""
    x, y = tiny_data
    distiller = Distiller(student=make_mlp([8]), teacher=make_mlp([16]))
    distiller.compile(optimizer="sgd")
    targets = {cache.LABELS_KEY: y, cache.TEACHER_LOGITS_KEY: np.zeros((len(x), 5), "float32")}
    with pytest.raises(ValueError, match="teacher outputs 5, student outputs 4.*cached"):
        distiller.fit(x, targets, batch_size=16, epochs=1, verbose=0)
