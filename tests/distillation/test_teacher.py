"""The teacher side of a Distiller (`keras_kd.teachers`): checks of the
teachers and of the logits they give. Logit values, ensembles and teacher
views are tested in test_distiller.py, test_ensembles.py and
test_distiller_paths.py."""

import warnings

import keras
import numpy as np
import pytest
from conftest import make_mlp
from test_distiller_paths import MODEL_KINDS
from test_distiller_paths import make_labels
from test_distiller_paths import make_models
from test_distiller_paths import make_x

from keras_kd import Distiller
from keras_kd.distillation import cache


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


@pytest.mark.parametrize("model_kind", sorted(MODEL_KINDS))
def test_saved_distiller_with_a_compiled_teacher_loads_without_skipping(
    library_defaults, tmp_path, model_kind
):
    """A trained teacher keeps its compile state; saved inside a distiller
    it is frozen, and its optimizer is not part of the save, so loading
    skips nothing and the distiller's own optimizer comes back whole. For
    every model kind, with the library's default compile."""
    student, teacher = make_models(model_kind, seed=4)
    x, y = make_x(model_kind), make_labels("labelled")
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, batch_size=16, epochs=1, verbose=0)
    distiller = Distiller(student=student, teacher=teacher)
    distiller.compile()
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    assert teacher.compiled  # The user's teacher is left as it was.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(tmp_path / "distiller.keras")
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    assert len(loaded.optimizer.variables) == len(distiller.optimizer.variables)
    for a, b in zip(loaded.optimizer.variables, distiller.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(loaded.teacher.get_weights(), teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
