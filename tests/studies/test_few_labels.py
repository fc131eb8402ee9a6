import keras
import numpy as np
import pytest
from conftest import make_mlp

from keras_kd.studies import few_labels
from keras_kd.studies import reporting


def test_balanced_subset_is_balanced_seeded_and_checked():
    labels = np.repeat(np.arange(4), [30, 10, 50, 20])
    subset = few_labels.balanced_subset(labels, 22, seed=1)
    assert len(subset) == 22 and len(set(subset)) == 22
    counts = np.bincount(labels[subset], minlength=4)
    assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(subset, few_labels.balanced_subset(labels, 22, seed=1))
    assert not np.array_equal(subset, few_labels.balanced_subset(labels, 22, seed=2))
    # A class with fewer examples than its share gives the rest to the others.
    subset = few_labels.balanced_subset(labels, 100, seed=0)
    assert np.bincount(labels[subset], minlength=4)[1] == 10
    np.testing.assert_array_equal(few_labels.balanced_subset(labels, 110, seed=0), np.arange(110))
    for bad in (0, 111, 2.5):
        with pytest.raises(ValueError, match=r"\[1, 110\].*count="):
            few_labels.balanced_subset(labels, bad, seed=0)


@pytest.fixture(scope="module")
def problem():
    """One trained teacher for the module: the tests only read it (predict,
    and `Distiller`s that freeze it), so sharing it keeps them independent."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(4, 6))
    y = rng.integers(0, 4, size=96)
    x = (centres[y] + rng.normal(size=(96, 6))).astype("float32")
    keras.utils.set_random_seed(0)
    teacher = make_mlp([16])
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=20, verbose=0)
    return x[:64], y[:64], x[64:], y[64:], teacher


def test_study_records_every_method_budget_and_seed(problem):
    x, y, x_test, y_test, teacher = problem
    seen = []
    records = few_labels.few_label_study(
        teacher, lambda: make_mlp([8]), x, y, x_test, y_test,
        label_counts=[8, 64], seeds=[0, 1], steps=5, on_result=seen.append,
    )
    assert seen == records
    keys = [(r["seed"], r["labels"], r["method"], r["unlabelled"]) for r in records]
    assert keys == [
        (s, n, m, 56 if m == "transfer_set" else 0)
        for s in (0, 1) for n, methods in ((8, few_labels.METHODS),
                                           (64, ("scratch", "soft_targets"))) for m in methods
    ]
    for record in records:
        expected = np.mean(np.argmax(record["student"].predict(x_test, verbose=0), 1) == y_test)
        assert record["test_accuracy"] == pytest.approx(expected)


def test_students_of_one_seed_start_alike_and_learn_differently(problem):
    """Same initial weights and labelled digits; the three ways differ only
    in what they learn from."""
    x, y, _, _, teacher = problem
    logits = teacher.predict(x, verbose=0)
    labelled = few_labels.balanced_subset(y, 8, seed=0)
    trained = {
        method: few_labels.train_student(
            method, teacher, lambda: make_mlp([8]), x, y, labelled, logits, seed=3,
            steps=0 if method == "none" else 4,
        ) if method != "none" else None
        for method in few_labels.METHODS
    }
    keras.utils.set_random_seed(3)
    initial = make_mlp([8]).get_weights()
    for method, student in trained.items():
        assert any(not np.allclose(a, b) for a, b in zip(initial, student.get_weights())), method
    weights = [trained[m].get_weights()[0] for m in few_labels.METHODS]
    assert not np.allclose(weights[0], weights[1]) and not np.allclose(weights[1], weights[2])


def test_summary_table_and_plot(tmp_path):
    records = [
        {"method": m, "labels": n, "unlabelled": 0, "seed": s, "test_accuracy": a}
        for m, n, s, a in [
            ("scratch", 80, 0, 0.70), ("scratch", 80, 1, 0.80),
            ("soft_targets", 80, 0, 0.85), ("soft_targets", 80, 1, 0.87),
            ("scratch", 800, 0, 0.90), ("soft_targets", 800, 0, 0.91),
        ]
    ]
    rows = few_labels.summarise(records)
    scratch_80 = next(r for r in rows if r["method"] == "scratch" and r["labels"] == 80)
    assert scratch_80["mean"] == pytest.approx(0.75)
    assert scratch_80["std"] == pytest.approx(np.std([0.7, 0.8], ddof=1))
    table = reporting.label_budget_table(rows)
    assert "| 80 | 75.00 +- 7.07 | 86.00 +- 1.41 (+11.00) |" in table
    assert "| 800 | 90.00 | 91.00 (+1.00) |" in table
    path = tmp_path / "plot.png"
    reporting.plot_label_budget(rows, 0.95, path, "test")
    from matplotlib import image

    picture = image.imread(path)
    assert picture.shape[0] > 100 and picture.std() > 0.05
