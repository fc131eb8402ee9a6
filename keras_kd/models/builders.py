"""Teacher and student builders for the reference experiments E1-E5.

Every builder returns a built `keras.Model` (its input is declared)
that outputs logits: no softmax, as the `Distiller` expects. Builders take
`input_shape` and `num_classes`; the architecture-specific ones are thin
wrappers that pass the reference widths to one generic builder. The E5
models (ResNets, frozen pretrained backbones) are built in
`keras_kd.backbones` and re-exported here.
"""

import math

import keras
from keras import layers

from keras_kd.distillation import compat
from keras_kd.models.backbones import build_frozen_backbone_teacher as build_frozen_backbone_teacher
from keras_kd.models.backbones import build_resnet as build_resnet
from keras_kd.models.backbones import build_resnet34_student as build_resnet34_student
from keras_kd.distillation.validation import validate_fraction
from keras_kd.distillation.validation import validate_positive_ints


def build_strided_cnn(
    filters=(256, 512),
    input_shape=(28, 28, 1),
    num_classes=10,
    name="strided_cnn",
):
    """The keras.io distillation CNN (E1): two strided convolutions.

    Conv2D(filters[0], 3, strides 2, same) -> LeakyReLU(0.2) ->
    MaxPooling2D(2, strides 1, same) -> Conv2D(filters[1], 3, strides 2,
    same) -> Flatten -> Dense(num_classes).

    Args:
        filters: Filters of the two convolutions; `(256, 512)` is the
            teacher (1,433,610 parameters), `(16, 32)` the student.
        input_shape: Shape of one image.
        num_classes: Number of output logits.
        name: Name of the model.

    Returns:
        A `keras.Sequential` model that outputs logits.

    Example:

    >>> build_strided_cnn((256, 512)).count_params()
    1433610
    """
    filters = validate_positive_ints(filters, "filters")
    if len(filters) != 2:
        raise ValueError(
            "`filters` must hold the filters of the two convolutions. "
            f"Received: filters={filters!r}. Example: (16, 32)."
        )
    first, second = filters
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Conv2D(first, 3, strides=2, padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.MaxPooling2D(pool_size=2, strides=1, padding="same"),
            layers.Conv2D(second, 3, strides=2, padding="same"),
            layers.Flatten(),
            layers.Dense(num_classes),
        ],
        name=name,
    )


def build_keras_io_teacher(input_shape=(28, 28, 1), num_classes=10):
    """E1 teacher: `build_strided_cnn((256, 512))`, 1,433,610 parameters."""
    return build_strided_cnn(
        (256, 512), input_shape, num_classes, name="keras_io_teacher"
    )


def build_keras_io_student(input_shape=(28, 28, 1), num_classes=10):
    """E1 student: `build_strided_cnn((16, 32))`."""
    return build_strided_cnn(
        (16, 32), input_shape, num_classes, name="keras_io_student"
    )


def build_batchnorm_cnn(
    conv_filters=(16, 32, 64),
    dense_units=(512, 256, 128, 64),
    input_shape=(28, 28, 1),
    num_classes=10,
    name="batchnorm_cnn",
):
    """The BatchNorm CNN of the MNIST temperature sweep (E2).

    3x3 valid convolutions, the first with stride 1 and the rest with
    stride 2; every convolution but the last is followed by ReLU and
    BatchNorm. Then dense layers, of which the 1st, 3rd, ... are followed by
    ReLU and BatchNorm and the others are linear, as in the reference.

    Args:
        conv_filters: Filters of each convolution.
        dense_units: Units of each hidden dense layer.
        input_shape: Shape of one image.
        num_classes: Number of output logits.
        name: Name of the model.

    Returns:
        A `keras.Sequential` model that outputs logits.

    Example:

    >>> model = build_batchnorm_cnn((2, 4), (32,))
    >>> model.output_shape
    (None, 10)
    """
    conv_filters = validate_positive_ints(conv_filters, "conv_filters")
    dense_units = validate_positive_ints(dense_units, "dense_units")
    model = keras.Sequential([keras.Input(shape=input_shape)], name=name)
    for index, filters in enumerate(conv_filters):
        model.add(layers.Conv2D(filters, 3, strides=1 if index == 0 else 2))
        if index < len(conv_filters) - 1:
            model.add(layers.ReLU())
            model.add(layers.BatchNormalization())
    model.add(layers.Flatten())
    for index, units in enumerate(dense_units):
        model.add(layers.Dense(units))
        if index % 2 == 0:
            model.add(layers.ReLU())
            model.add(layers.BatchNormalization())
    model.add(layers.Dense(num_classes))
    return model


def build_batchnorm_cnn_teacher(input_shape=(28, 28, 1), num_classes=10):
    """E2 teacher: convolutions 16-32-64, dense 512-256-128-64."""
    return build_batchnorm_cnn(
        (16, 32, 64),
        (512, 256, 128, 64),
        input_shape,
        num_classes,
        name="batchnorm_cnn_teacher",
    )


def build_batchnorm_cnn_student(input_shape=(28, 28, 1), num_classes=10):
    """E2 student: convolutions 2-4, dense 32."""
    return build_batchnorm_cnn(
        (2, 4), (32,), input_shape, num_classes, name="batchnorm_cnn_student"
    )


def build_mlp(
    hidden_units=(1200, 1200),
    input_dropout=0.0,
    hidden_dropout=0.0,
    input_shape=(784,),
    num_classes=10,
    name="mlp",
):
    """A ReLU multilayer perceptron (Hinton et al.'s MNIST nets, E3).

    Args:
        hidden_units: Units of each hidden layer.
        input_dropout: Dropout rate on the (flattened) input.
        hidden_dropout: Dropout rate after each hidden layer.
        input_shape: Shape of one input; flattened first if not 1-D.
        num_classes: Number of output logits.
        name: Name of the model.

    Returns:
        A `keras.Sequential` model that outputs logits.

    Example:

    >>> build_mlp((800, 800)).count_params()
    1276810
    """
    hidden_units = validate_positive_ints(hidden_units, "hidden_units")
    input_dropout = validate_fraction(input_dropout, "input_dropout")
    hidden_dropout = validate_fraction(hidden_dropout, "hidden_dropout")
    model = keras.Sequential([keras.Input(shape=input_shape)], name=name)
    if len(input_shape) != 1:
        model.add(layers.Flatten())
    if input_dropout:
        model.add(layers.Dropout(input_dropout))
    for units in hidden_units:
        model.add(layers.Dense(units, activation="relu"))
        if hidden_dropout:
            model.add(layers.Dropout(hidden_dropout))
    model.add(layers.Dense(num_classes))
    return model


def build_hinton_teacher(input_shape=(784,), num_classes=10):
    """E3 teacher: 1200-1200 ReLU, dropout 0.2 on inputs and 0.5 hidden."""
    return build_mlp(
        (1200, 1200), 0.2, 0.5, input_shape, num_classes, name="hinton_teacher"
    )


def build_hinton_student(input_shape=(784,), num_classes=10):
    """E3 student: 800-800 ReLU, no regularisation."""
    return build_mlp(
        (800, 800), 0.0, 0.0, input_shape, num_classes, name="hinton_student"
    )


VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M")
VGG16_CONFIG += (512, 512, 512, "M", 512, 512, 512, "M")


def build_vgg(
    config=VGG16_CONFIG,
    input_shape=(32, 32, 3),
    num_classes=10,
    name="vgg",
):
    """A CIFAR-style VGG: 3x3 Conv-BN-ReLU blocks, max pooling at `"M"`.

    With the default `VGG16_CONFIG` this is the CIFAR VGG16 teacher of E4:
    13 convolutions, five poolings down to 1x1x512, then one dense layer.

    Args:
        config: Sequence of filter counts and `"M"` (2x2 max pooling).
        input_shape: Shape of one image.
        num_classes: Number of output logits.
        name: Name of the model.

    Returns:
        A `keras.Sequential` model that outputs logits.
    """
    model = keras.Sequential([keras.Input(shape=input_shape)], name=name)
    for item in config:
        if item == "M":
            model.add(layers.MaxPooling2D(2))
            continue
        validate_positive_ints((item,), "config")
        model.add(layers.Conv2D(item, 3, padding="same", use_bias=False))
        model.add(layers.BatchNormalization())
        model.add(layers.ReLU())
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dense(num_classes))
    return model


def build_vgg16_teacher(input_shape=(32, 32, 3), num_classes=10):
    """E4 teacher: CIFAR VGG16 with BatchNorm."""
    return build_vgg(VGG16_CONFIG, input_shape, num_classes, name="vgg16")


def build_conv_blocks_cnn(
    filters=(32, 64, 128),
    convs_per_block=2,
    dropout=0.0,
    input_shape=(32, 32, 3),
    num_classes=10,
    name="conv_blocks_cnn",
):
    """A CNN of convolutional blocks; three blocks make the E4 student.

    Each block is `convs_per_block` x (3x3 Conv-BN-ReLU) then 2x2 max
    pooling (and dropout if given); global average pooling and one dense
    layer follow.

    Args:
        filters: Filters of each block.
        convs_per_block: Convolutions in each block.
        dropout: Dropout rate after each block.
        input_shape: Shape of one image.
        num_classes: Number of output logits.
        name: Name of the model.

    Returns:
        A `keras.Sequential` model that outputs logits.
    """
    filters = validate_positive_ints(filters, "filters")
    (convs_per_block,) = validate_positive_ints(
        (convs_per_block,), "convs_per_block"
    )
    dropout = validate_fraction(dropout, "dropout")
    model = keras.Sequential([keras.Input(shape=input_shape)], name=name)
    for block_filters in filters:
        for _ in range(convs_per_block):
            model.add(
                layers.Conv2D(block_filters, 3, padding="same", use_bias=False)
            )
            model.add(layers.BatchNormalization())
            model.add(layers.ReLU())
        model.add(layers.MaxPooling2D(2))
        if dropout:
            model.add(layers.Dropout(dropout))
    model.add(layers.GlobalAveragePooling2D())
    model.add(layers.Dense(num_classes))
    return model


def build_cifar_student(input_shape=(32, 32, 3), num_classes=10):
    """E4 student: three blocks of 32, 64 and 128 filters."""
    return build_conv_blocks_cnn(
        (32, 64, 128), 2, 0.0, input_shape, num_classes, name="cifar_student"
    )


# Builders by name, for the command line and configuration files, with the
# input layout each expects ("image" with a channel axis, or "flat" vectors).
MODEL_BUILDERS = {
    "keras-io-teacher": (build_keras_io_teacher, "image"),
    "keras-io-student": (build_keras_io_student, "image"),
    "batchnorm-teacher": (build_batchnorm_cnn_teacher, "image"),
    "batchnorm-student": (build_batchnorm_cnn_student, "image"),
    "hinton-teacher": (build_hinton_teacher, "flat"),
    "hinton-student": (build_hinton_student, "flat"),
    "vgg16-teacher": (build_vgg16_teacher, "image"),
    "cifar-student": (build_cifar_student, "image"),
    "resnet34-student": (build_resnet34_student, "image"),
}


def copy_model(model):
    """A new model of the same architecture holding `model`'s current weights.

    Comparisons start every variant from one initialisation this way: build
    the student once, then train copies of it.

    Args:
        model: A built Sequential or Functional model.

    Returns:
        The copy, with variables of its own.

    Example:

    >>> student = build_keras_io_student()
    >>> copy = copy_model(student)
    >>> all((a == b).all() for a, b in zip(copy.get_weights(), student.get_weights()))
    True
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def build_model(name, image_shape, num_classes=10):
    """Builds a named reference model for images of `image_shape`.

    Args:
        name: One of `MODEL_BUILDERS` (e.g. `"keras-io-student"`).
        image_shape: `(height, width, channels)` of the images; models with
            a `"flat"` layout get vectors of their product.
        num_classes: Number of classes.

    Returns:
        `(model, layout)`: the built model and the input layout that
        `datasets.preprocess` must produce for it.

    Example:

    >>> model, layout = build_model("hinton-student", (28, 28, 1))
    >>> model.input_shape, layout
    ((None, 784), 'flat')
    """
    layout = model_layout(name)
    builder = MODEL_BUILDERS[name][0]
    input_shape = tuple(image_shape)
    if layout == "flat":
        input_shape = (math.prod(input_shape),)
    return builder(input_shape=input_shape, num_classes=num_classes), layout


def model_layout(name):
    """The input layout (`"image"` or `"flat"`) of a named reference model."""
    if name not in MODEL_BUILDERS:
        raise ValueError(
            f"Unknown model {name!r}. Choose one of: "
            f"{', '.join(sorted(MODEL_BUILDERS))}; or build your own Keras "
            "model in Python."
        )
    return MODEL_BUILDERS[name][1]


def input_layout(model):
    """`"flat"` for a model that takes vectors, else `"image"`.

    Args:
        model: A built Keras model of any kind (a subclassed model knows its
            input shape once it has been called or trained).

    Raises:
        ValueError: for a subclassed model that was never built.
    """
    shape = compat.built_input_shape(model)
    if shape is None:
        raise ValueError(
            f"Cannot tell the input layout of {type(model).__name__} "
            f"'{model.name}': it is a subclassed model that was never built. "
            "Call it once on a batch (or train it) before saving it."
        )
    return "flat" if len(shape) == 2 else "image"
