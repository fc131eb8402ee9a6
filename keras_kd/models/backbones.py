"""E5's models: ResNets and a frozen pretrained backbone as teacher.

`build_resnet` builds ResNets of basic blocks (ResNet-34 is E5's student);
`build_frozen_backbone_teacher` puts a new trainable head on any
`keras.applications` backbone or Keras model, frozen. Pretrained weights
cannot be downloaded offline, so both also take a local weights file.
`keras_kd.models` re-exports these builders with the others.
"""

import os

import keras
from keras import layers

from keras_kd.distillation.validation import validate_fraction
from keras_kd.distillation.validation import validate_positive_ints


def _residual_block(x, filters, stride, name):
    shortcut = x
    x = layers.Conv2D(
        filters, 3, strides=stride, padding="same", use_bias=False,
        name=f"{name}_conv1",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = layers.ReLU(name=f"{name}_relu1")(x)
    x = layers.Conv2D(
        filters, 3, padding="same", use_bias=False, name=f"{name}_conv2"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn2")(x)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(
            filters, 1, strides=stride, use_bias=False, name=f"{name}_proj"
        )(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.ReLU(name=f"{name}_out")(x)


def build_resnet(
    blocks_per_stage=(3, 4, 6, 3),
    input_shape=(32, 32, 3),
    num_classes=10,
    stem="cifar",
    weights=None,
    name="resnet",
):
    """A ResNet of basic blocks (functional: the blocks have skip links).

    `(3, 4, 6, 3)` is ResNet-34, the student of E5; `(2, 2, 2, 2)` is
    ResNet-18. Stages have 64, 128, 256 and 512 filters.

    Args:
        blocks_per_stage: Basic blocks in each of the four stages.
        input_shape: Shape of one image.
        num_classes: Number of output logits.
        stem: `"cifar"` (3x3 convolution, no pooling, for 32x32 images) or
            `"imagenet"` (7x7 stride-2 convolution and max pooling).
        weights: `None`, or the path of a local `.weights.h5` file saved from
            the same architecture (pretrained weights cannot be downloaded
            here).
        name: Name of the model.

    Returns:
        A functional `keras.Model` that outputs logits.
    """
    blocks_per_stage = validate_positive_ints(blocks_per_stage, "blocks_per_stage")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(
            "`stem` must be 'cifar' or 'imagenet'. Received: "
            f"stem={stem!r}."
        )
    inputs = keras.Input(shape=input_shape)
    if stem == "imagenet":
        x = layers.Conv2D(
            64, 7, strides=2, padding="same", use_bias=False, name="stem_conv"
        )(inputs)
    else:
        x = layers.Conv2D(
            64, 3, padding="same", use_bias=False, name="stem_conv"
        )(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if stem == "imagenet":
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(
            x
        )
    for stage, (filters, blocks) in enumerate(
        zip((64, 128, 256, 512), blocks_per_stage)
    ):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(x, filters, stride, f"stage{stage}_block{block}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        _load_local_weights(model, weights)
    return model


def build_resnet34_student(input_shape=(32, 32, 3), num_classes=10, weights=None):
    """E5 student: ResNet-34 with a CIFAR stem."""
    return build_resnet(
        (3, 4, 6, 3), input_shape, num_classes, "cifar", weights, "resnet34"
    )


def _load_local_weights(model, path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"`weights` must be None or the path of a local weights file. "
            f"Received: weights={path!r}, which does not exist. Pretrained "
            "weights cannot be downloaded on an offline machine: save them "
            "with `model.save_weights(...)` where they are available."
        )
    model.load_weights(path)


def build_frozen_backbone_teacher(
    backbone,
    input_shape=(32, 32, 3),
    num_classes=10,
    weights=None,
    resize_to=None,
    head_dropout=0.0,
    name="frozen_backbone_teacher",
):
    """A frozen pretrained backbone with a new trainable head (E5).

    Only the head (global pooling, optional dropout, dense logits) trains;
    the backbone stays frozen and runs in inference mode, so its BatchNorm
    statistics do not drift.

    Args:
        backbone: The name of a `keras.applications` model (e.g.
            `"ResNet50"`, `"EfficientNetB0"`) or a `keras.Model` that maps
            images to features.
        input_shape: Shape of one input image.
        num_classes: Number of output logits.
        weights: For an application name: `None` (random), `"imagenet"`
            (needs internet), or the path of a local weights file. Ignored
            for a `keras.Model` backbone, which keeps its own weights.
        resize_to: Optional `(height, width)` to resize inputs to before the
            backbone, e.g. `(224, 224)` for ImageNet models.
        head_dropout: Dropout rate before the dense head.
        name: Name of the model.

    Returns:
        A functional `keras.Model` that outputs logits, whose backbone
        layer is frozen.

    Example:

    >>> teacher = build_frozen_backbone_teacher("MobileNetV2", (32, 32, 3))
    >>> teacher.get_layer("backbone").trainable
    False
    """
    head_dropout = validate_fraction(head_dropout, "head_dropout")
    inputs = keras.Input(shape=input_shape)
    x = inputs
    if resize_to is not None:
        x = layers.Resizing(*resize_to, name="resize")(x)
    if isinstance(backbone, str):
        application = getattr(keras.applications, backbone, None)
        if application is None or not callable(application):
            raise ValueError(
                "`backbone` must be the name of a `keras.applications` model "
                f"or a `keras.Model`. Received: backbone={backbone!r}. "
                "Examples: 'ResNet50', 'EfficientNetB0', 'MobileNetV2'."
            )
        local_file = weights not in (None, "imagenet")
        backbone_model = application(
            include_top=False,
            weights=None if local_file else weights,
            input_shape=tuple(x.shape[1:]),
        )
        if local_file:
            _load_local_weights(backbone_model, weights)
    elif isinstance(backbone, keras.Model):
        backbone_model = backbone
    else:
        raise ValueError(
            "`backbone` must be the name of a `keras.applications` model or "
            f"a `keras.Model`. Received: backbone={backbone!r}."
        )
    backbone_model.trainable = False
    backbone_model.name = "backbone"
    x = backbone_model(x, training=False)
    if len(x.shape) == 4:
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    if head_dropout:
        x = layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name=name)
