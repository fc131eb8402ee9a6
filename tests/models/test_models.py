import keras
import numpy as np
import pytest

from keras_kd import models

BUILDERS = [
    (models.build_keras_io_teacher, (28, 28, 1), 1_433_610),
    (models.build_keras_io_student, (28, 28, 1), None),
    (models.build_batchnorm_cnn_teacher, (28, 28, 1), None),
    (models.build_batchnorm_cnn_student, (28, 28, 1), None),
    (models.build_hinton_teacher, (784,), 2_395_210),
    (models.build_hinton_student, (784,), 1_276_810),
    (models.build_cifar_student, (32, 32, 3), None),
]


@pytest.mark.parametrize("builder, input_shape, params", BUILDERS)
def test_builders_output_logits_of_num_classes(builder, input_shape, params):
    model = builder(input_shape=input_shape, num_classes=7)
    x = np.random.default_rng(0).uniform(size=(3, *input_shape)).astype("float32")
    logits = model(x, training=False).numpy()
    assert logits.shape == (3, 7)
    # Logits, not probabilities: rows do not sum to 1 and may be negative.
    assert not np.allclose(logits.sum(axis=1), 1.0)
    if params is not None:
        assert builder().count_params() == params


def test_keras_io_student_is_the_teacher_at_small_width():
    teacher = models.build_keras_io_teacher()
    student = models.build_keras_io_student()
    assert [type(l) for l in teacher.layers] == [type(l) for l in student.layers]
    assert student.layers[0].filters == 16 and student.layers[3].filters == 32


def test_batchnorm_cnn_follows_the_reference_shapes():
    teacher = models.build_batchnorm_cnn_teacher()
    flatten = next(l for l in teacher.layers if isinstance(l, keras.layers.Flatten))
    assert flatten.output.shape[-1] == 64 * 5 * 5
    student = models.build_batchnorm_cnn_student()
    flatten = next(l for l in student.layers if isinstance(l, keras.layers.Flatten))
    assert flatten.output.shape[-1] == 4 * 12 * 12
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in student.layers) == 2


def test_hinton_teacher_dropout_rates():
    rates = [l.rate for l in models.build_hinton_teacher().layers if isinstance(l, keras.layers.Dropout)]
    assert rates == [0.2, 0.5, 0.5]
    assert not any(isinstance(l, keras.layers.Dropout) for l in models.build_hinton_student().layers)


def test_vgg16_has_thirteen_convolutions():
    model = models.build_vgg16_teacher()
    assert sum(isinstance(l, keras.layers.Conv2D) for l in model.layers) == 13
    assert model.output_shape == (None, 10)


def test_resnet34_matches_the_reference_parameter_count():
    # torchvision's resnet34 has 21,797,672 parameters; Keras counts BatchNorm
    # moving statistics as non-trainable weights, so compare trainable ones.
    model = models.build_resnet((3, 4, 6, 3), (224, 224, 3), 1000, stem="imagenet")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 21_797_672
    student = models.build_resnet34_student()
    assert student.output_shape == (None, 10)


def test_resnet_loads_a_local_weights_file(tmp_path):
    small = models.build_resnet((1, 1, 1, 1), (32, 32, 3), 10)
    path = tmp_path / "resnet.weights.h5"
    small.save_weights(path)
    loaded = models.build_resnet((1, 1, 1, 1), (32, 32, 3), 10, weights=path)
    x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(small.predict(x, verbose=0), loaded.predict(x, verbose=0))
    with pytest.raises(ValueError, match="does not exist"):
        models.build_resnet((1, 1, 1, 1), weights=tmp_path / "missing.h5")


@pytest.mark.parametrize("backbone", ["application", "model"])
def test_frozen_backbone_teacher_trains_only_its_head(backbone):
    if backbone == "application":
        spec = "MobileNetV2"
    else:
        spec = keras.Sequential(
            [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3), keras.layers.ReLU()]
        )
    teacher = models.build_frozen_backbone_teacher(spec, (32, 32, 3), num_classes=10)
    assert teacher.get_layer("backbone").trainable is False
    assert {w.path.split("/")[0] for w in teacher.trainable_weights} == {"head"}
    x = np.random.default_rng(2).uniform(size=(8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 10
    frozen = [w.numpy().copy() for w in teacher.get_layer("backbone").weights]
    teacher.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    teacher.fit(x, y, epochs=1, verbose=0)
    for old, new in zip(frozen, teacher.get_layer("backbone").weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_frozen_backbone_bad_name():
    with pytest.raises(ValueError, match="backbone='ViT'"):
        models.build_frozen_backbone_teacher("ViT")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: models.build_strided_cnn((16,)), "filters"),
        (lambda: models.build_mlp((0, 5)), "hidden_units"),
        (lambda: models.build_mlp((5,), input_dropout=1.5), "input_dropout"),
        (lambda: models.build_resnet(stem="tiny"), "stem"),
    ],
)
def test_bad_builder_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name", sorted(models.MODEL_BUILDERS))
def test_registry_builds_each_model_for_its_layout(name):
    if name in ("vgg16-teacher", "resnet34-student"):
        pytest.skip("large: built in the architecture tests")
    model, layout = models.build_model(name, (28, 28, 1))
    assert layout == models.input_layout(model)
    expected = (None, 784) if layout == "flat" else (None, 28, 28, 1)
    assert model.input_shape == expected and model.output_shape == (None, 10)


def test_registry_rejects_unknown_names():
    with pytest.raises(ValueError, match="Unknown model 'resnet-1000'.*keras-io-student"):
        models.build_model("resnet-1000", (28, 28, 1))


def test_input_layout_of_a_subclassed_model():
    from keras_kd import models

    class Flat(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, inputs):
            return self.dense(inputs)

    model = Flat()
    with pytest.raises(ValueError, match="never built"):
        models.input_layout(model)
    model(np.zeros((1, 784), "float32"))
    assert models.input_layout(model) == "flat"


@pytest.mark.parametrize(
    "build", [models.build_keras_io_student, models.build_batchnorm_cnn_student]
)
def test_copy_model_starts_equal_and_trains_apart(build):
    original = build()
    before = [w.copy() for w in original.get_weights()]
    copy = models.copy_model(original)
    for a, b in zip(copy.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    copy.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).uniform(size=(8, 28, 28, 1)).astype("float32")
    copy.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    # Its own variables: training the copy leaves the original as it was.
    for a, b in zip(original.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(copy.get_weights(), before))
