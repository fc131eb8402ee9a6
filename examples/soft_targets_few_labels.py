"""Soft targets with few labels: where distillation helps, measured over seeds.

Hinton et al. (2015, section 5): soft targets carry far more information per
example than hard labels, so a student with few labels gains most from a
teacher. On the bundled MNIST sample (8,000 training digits, 2,000 test) a
teacher CNN (the keras.io architecture at 64/128 filters, 137k parameters)
learns from all labels; then for each label budget and seed the keras.io
student (16/32 filters, 7x smaller) trains from the same initial weights for
the same number of steps, three ways:

  scratch        the labelled digits alone
  soft targets   the same digits, with the teacher's soft targets
  transfer set   the same labelled digits plus every other training digit
                 without its label, which the teacher labels (label -1)

    python examples/soft_targets_few_labels.py                 # 1/3/10/100%, 3 seeds
    python examples/soft_targets_few_labels.py --labels 240 --seeds 0

Prints a Markdown table (mean +- std over seeds, gain over scratch), writes
the records to --json and the picture to --plot.
"""

import argparse
import json
import time

from keras_kd.data import datasets
from keras_kd.studies import few_labels
from keras_kd import models
from keras_kd.studies import reporting

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--labels", type=int, nargs="+", default=[80, 240, 800, 8000],
                    help="label budgets (default: 1, 3, 10, 100%% of 8,000)")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
parser.add_argument("--teacher-epochs", type=int, default=4)
parser.add_argument("--steps", type=int, default=600, help="optimizer steps per student")
parser.add_argument("--temperature", type=float, default=4.0)
parser.add_argument("--alpha", type=float, default=0.1, help="weight of the label loss")
parser.add_argument("--limit", type=int, default=None, help="training digits (default: all 8,000)")
parser.add_argument("--json", default="few_labels.json")
parser.add_argument("--plot", default="few_labels.png")
args = parser.parse_args()
start = time.monotonic()

# 1. The real digits bundled with keras-kd, scaled to [0, 1].
(x_train, y_train), (x_test, y_test) = datasets.load_preprocessed(limit=args.limit)

# 2. The teacher learns from every label (one teacher for all seeds).
teacher = few_labels.train_teacher(x_train, y_train, epochs=args.teacher_epochs, seed=0)
teacher_accuracy = few_labels.top1_accuracy(teacher, x_test, y_test)
print(f"teacher: {100 * teacher_accuracy:.2f}% on {len(x_test):,} test digits "
      f"({args.teacher_epochs} epochs on {len(x_train):,} labelled digits)")


# 3. The students: every budget x method x seed, one line each as it ends.
def report(record):
    print(f"  seed {record['seed']}, {record['labels']:>5,} labels, "
          f"{record['method']:<12} {100 * record['test_accuracy']:6.2f}%")


records = few_labels.few_label_study(
    teacher, models.build_keras_io_student, x_train, y_train, x_test, y_test,
    label_counts=[min(n, len(x_train)) for n in args.labels], seeds=args.seeds,
    steps=args.steps, temperature=args.temperature, alpha=args.alpha,
    on_result=report,
)
for record in records:
    del record["student"]
rows = few_labels.summarise(records)

# 4. The table, the records and the picture.
print(f"\nTest accuracy (%), mean +- std over seeds {args.seeds}; "
      f"T={args.temperature}, alpha={args.alpha}, {args.steps} steps per student:\n")
print(reporting.label_budget_table(rows))
reporting.plot_label_budget(
    rows, teacher_accuracy, args.plot,
    f"Soft targets with few labels (MNIST sample, {len(args.seeds)} seeds)",
)
with open(args.json, "w") as f:
    json.dump({"teacher_accuracy": teacher_accuracy, "records": records, "summary": rows,
               "arguments": vars(args), "seconds": time.monotonic() - start}, f, indent=2)
print(f"\nWrote {args.json} and {args.plot} ({time.monotonic() - start:.0f} s)")
