"""The demo's study: where distillation helps, on the bundled MNIST sample.

A teacher learns from every training label; students 7x smaller learn from a
few labels alone, with the teacher's soft targets, and with the other digits
as an unlabelled transfer set; and from all labels. `keras-kd demo` runs
`demo_study` and prints `demo_table`; nothing here prints.
"""

from keras_kd import models
from keras_kd.data import datasets
from keras_kd.distillation.cache import compute_teacher_logits
from keras_kd.studies import few_labels


def demo_study(label_budgets, teacher_epochs, steps, seed=0, limit=None, on_stage=None,
               on_result=None, verbose=0):
    """Runs the demo's teacher and students.

    Args:
        label_budgets: The few-label budgets, e.g. `[80, 240, 800]`; all
            training labels are added as the last budget.
        teacher_epochs: Epochs of the teacher on all labels.
        steps: Optimizer steps of each student.
        seed: The seed of the teacher and the students.
        limit: Use only this many training digits (`None`: all 8,000).
        on_stage: Called with a line of progress text, or `None`.
        on_result: Called with each student's record, or `None`.
        verbose: Keras verbosity of the teacher's `fit`.

    Returns:
        A dict: `teacher`, `teacher_accuracy`, `records` (the study's, each
        with its trained `student`), `scenarios` (`demo_scenarios`),
        `num_train`, `num_test`, `student_parameters`.

    Raises:
        ValueError: for a budget not below the number of training digits.
    """
    stage = on_stage or (lambda text: None)
    (x_train, y_train), (x_test, y_test) = datasets.load_preprocessed(limit=limit)
    if max(label_budgets) >= len(x_train):
        raise ValueError(
            f"The label budgets must be below the {len(x_train):,} training digits. "
            f"Received: labels={max(label_budgets)}."
        )
    stage(f"MNIST sample: {len(x_train):,} training and {len(x_test):,} test digits")
    student_parameters = models.build_keras_io_student().count_params()
    teacher_parameters = models.build_strided_cnn((64, 128)).count_params()
    stage(f"1/3 teacher ({teacher_parameters:,} parameters): {teacher_epochs} epochs on "
          f"{len(x_train):,} labels")
    teacher = few_labels.train_teacher(x_train, y_train, teacher_epochs, seed=seed,
                                       verbose=verbose)
    teacher_accuracy = few_labels.top1_accuracy(teacher, x_test, y_test)
    teacher_logits = compute_teacher_logits(teacher, x_train)
    stage(f"    teacher {100 * teacher_accuracy:.2f}%; its logits on the training "
          "digits computed once")
    budgets = sorted(set(label_budgets))
    stage(f"2/3 students ({student_parameters:,} parameters): "
          f"{', '.join(f'{n:,}' for n in budgets)} and {len(x_train):,} labels")
    records = few_labels.few_label_study(
        teacher, models.build_keras_io_student, x_train, y_train, x_test, y_test,
        label_counts=budgets + [len(x_train)], seeds=[seed], steps=steps,
        teacher_logits=teacher_logits, on_result=on_result,
    )
    return {
        "teacher": teacher,
        "teacher_accuracy": teacher_accuracy,
        "records": records,
        "scenarios": demo_scenarios(records, teacher_accuracy, len(x_train)),
        "num_train": len(x_train),
        "num_test": len(x_test),
        "student_parameters": student_parameters,
    }

def demo_scenarios(records, teacher_accuracy, num_train):
    """The demo's scenarios from the study's records, in table order.

    Each label budget gives two scenarios, the soft targets and the transfer
    set (both against the same student alone); all labels gives one.
    """
    accuracy = {(r["labels"], r["method"]): r["test_accuracy"] for r in records}
    scenarios = []
    for labels in sorted({r["labels"] for r in records}):
        for method, name in (("soft_targets", "soft targets"), ("transfer_set", "+ transfer set")):
            if (labels, method) not in accuracy:
                continue
            scenarios.append({
                "scenario": name if labels < num_train else "all labels, soft targets",
                "labels": labels,
                "unlabelled": num_train - labels if method == "transfer_set" else 0,
                "teacher": teacher_accuracy,
                "scratch": accuracy[labels, "scratch"],
                "distilled": accuracy[labels, method],
            })
    return scenarios


def demo_table(scenarios):
    """The demo's results as a table that fits an 80-column terminal."""
    lines = [f"  {'scenario':<26}{'labels':>7}{'unlabelled':>11}{'scratch':>9}"
             f"{'distilled':>10}{'gain':>8}"]
    for row in scenarios:
        unlabelled = f"{row['unlabelled']:,}" if row["unlabelled"] else "-"
        lines.append(
            f"  {row['scenario']:<26}{row['labels']:>7,}{unlabelled:>11}"
            f"{100 * row['scratch']:>8.2f}%{100 * row['distilled']:>9.2f}%"
            f"{100 * (row['distilled'] - row['scratch']):>+8.2f}"
        )
    return "\n".join(lines)
