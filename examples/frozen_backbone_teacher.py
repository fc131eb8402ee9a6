"""E5: a frozen pretrained backbone as the teacher, ResNet-34 as the student.

The reference used an ImageNet-pretrained ViT-B/16 whose classifier was
replaced by a 10-way layer: only that head trains, the backbone stays
frozen. Keras ships no ViT, so the backbone here is any
`keras.applications` model (default EfficientNetB0) or your own model saved
as a `.keras` file (images in, features out). The student is a ResNet-34
with a CIFAR stem (`--student-blocks 2 2 2 2` makes it a ResNet-18). The
loss is Hinton's: KL between the softened outputs times T**2, plus
cross-entropy on the labels.

Pretrained weights cannot be downloaded offline: pass `--backbone-weights`
(a local `.weights.h5`/`.h5` file, or "imagenet" where there is internet)
and `--student-weights` (a local file) to start from them. Without them the
models start from random weights, which shows the mechanics, not the gain.

    python examples/frozen_backbone_teacher.py --data-dir DIR \\
        --backbone EfficientNetB0 --backbone-weights imagenet --resize 224

Writes `e5/e5.json` and the distilled student `e5/student.keras`.
"""

import argparse
import json
import os

import keras

from keras_kd import Distiller
from keras_kd.data import datasets
from keras_kd import models
from keras_kd.distillation.cache import compute_teacher_logits

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data-dir", default=None, help="CIFAR-10 files")
parser.add_argument("--limit", type=int, default=None, help="training examples")
parser.add_argument("--backbone", default="EfficientNetB0",
                    help="a keras.applications model name, or a .keras file of your own backbone")
parser.add_argument("--backbone-weights", default=None, help='None, "imagenet" or a local file')
parser.add_argument("--student-weights", default=None, help="local ResNet-34 weights file")
parser.add_argument("--student-blocks", type=int, nargs=4, default=[3, 4, 6, 3],
                    help="basic blocks per stage of the ResNet student (3 4 6 3: ResNet-34)")
parser.add_argument("--resize", type=int, default=None, help="resize images for the backbone, e.g. 224")
parser.add_argument("--head-epochs", type=int, default=5)
parser.add_argument("--student-epochs", type=int, default=10)
parser.add_argument("--temperature", type=float, default=4.0)
parser.add_argument("--alpha", type=float, default=0.5, help="weight of the label loss")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--output", default="e5")
args = parser.parse_args()
os.makedirs(args.output, exist_ok=True)
ACCURACY = "sparse_categorical_accuracy"
BATCH_SIZE = 64
keras.utils.set_random_seed(args.seed)

# 1. CIFAR-10 as [0, 255] floats: keras.applications models carry their own
# preprocessing; the student sees the same inputs.
x_train, y_train = datasets.select("cifar10", "train", data_dir=args.data_dir, limit=args.limit)
x_test, y_test = datasets.select("cifar10", "test", data_dir=args.data_dir)
x_train, x_test = x_train.astype("float32"), x_test.astype("float32")
print(f"CIFAR-10: {len(x_train)} training and {len(x_test)} test images")

# 2. The teacher: frozen backbone, new 10-way head. Only the head trains.
backbone = args.backbone
if backbone.endswith(".keras"):
    backbone = keras.saving.load_model(backbone)  # Its own weights; frozen below.
teacher = models.build_frozen_backbone_teacher(
    backbone, (32, 32, 3), num_classes=10, weights=args.backbone_weights,
    resize_to=None if args.resize is None else (args.resize, args.resize),
)
print(f"teacher: {args.backbone}, {teacher.count_params():,} parameters, "
      f"{sum(int(keras.ops.size(w)) for w in teacher.trainable_weights):,} trainable (the head)")
teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[ACCURACY])
teacher.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=args.head_epochs, verbose=2)

# 3. The frozen teacher's logits, once: its backbone is the expensive part.
teacher_logits = compute_teacher_logits(teacher, x_train, batch_size=BATCH_SIZE)


def student_and_data(with_logits):
    keras.utils.set_random_seed(args.seed + 1)  # Both students start alike.
    name = "resnet34" if args.student_blocks == [3, 4, 6, 3] else "resnet"
    student = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(1 / 255.0),
        models.build_resnet(args.student_blocks, weights=args.student_weights, name=name),
    ], name=f"{name}_student")
    data = datasets.make_dataset(x_train, y_train, name=None, scaling=None, batch_size=BATCH_SIZE,
                                 shuffle=True, seed=args.seed,
                                 teacher_logits=teacher_logits if with_logits else None)
    return student, data


# 4. ResNet-34 from scratch, then distilled.
scratch, data = student_and_data(False)
scratch.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[ACCURACY])
scratch.fit(data, epochs=args.student_epochs, verbose=2)

student, data = student_and_data(True)
distiller = Distiller(student=student, teacher=teacher)
distiller.compile("adam", metrics=[ACCURACY], alpha=args.alpha, temperature=args.temperature)
distiller.fit(data, epochs=args.student_epochs, verbose=2)

results = {
    name: 100 * float(model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)[ACCURACY])
    for name, model in [("teacher", teacher), ("student (scratch)", scratch), ("student (distilled)", distiller)]
}
print("\n| model | test accuracy (%) |\n|---|---|")
for name, value in results.items():
    print(f"| {name} | {value:.2f} |")
print("Reference goal (full CIFAR-10, pretrained ViT-B/16 and ResNet-34): beat the student's ~85%.")
student.save(os.path.join(args.output, "student.keras"))
with open(os.path.join(args.output, "e5.json"), "w") as f:
    json.dump({"arguments": vars(args), "test_accuracy": results}, f, indent=2)
print(f"Wrote {args.output}/e5.json and {args.output}/student.keras")
