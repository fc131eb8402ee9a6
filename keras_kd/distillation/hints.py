"""Feature hints: match intermediate features of teacher and student.

A `FeatureHint` names a student layer, a teacher layer and a method; the
`Distiller(hints=[...])` computes the student's logits and features in one
forward pass and adds `weight * method(student_feature, teacher_feature)`
to the loss. Methods, with their authors' default weights (mdistiller's
conventions, github.com/megvii-research/mdistiller):

- `"fitnet"` (Romero et al. 2015), weight 100: MSE between a trainable
  connector applied to the student's feature and the teacher's feature. The
  connector (conv or dense + BatchNorm (+ ReLU), as in mdistiller) belongs to
  the distiller: trained with the student, saved with the distiller, absent
  from `distiller.student`. Features of equal shape need none.
- `"attention"` (Zagoruyko & Komodakis 2017), weight 1000: the channel mean
  of `f**2`, flattened and L2-normalised; mean squared difference; spatial
  sizes matched by average pooling.
- `"similarity"` (Tung & Mori 2019), weight 3000: row-normalised Gram
  matrices of the batch, `||G_t - G_s||_F**2 / b**2`.
- `"rkd"` (Park et al. 2019), weight 1: 25 x distance term + 50 x angle
  term, both smooth L1 on relations within the batch.
- `"pkt"` (Passalis & Tefas 2018), weight 30000: cosine similarities
  rescaled to [0, 1], rows normalised to distributions, mean KL.

All but FitNets compare relations or maps, so widths may differ without a
connector.
"""

import keras
from keras import ops

from keras_kd.distillation.logit_methods import sqrt_zero_gradient_at_zero
from keras_kd.distillation.outputs import select_output
from keras_kd.distillation.outputs import symbolic_outputs
from keras_kd.distillation.reduction import gather_batch

DEFAULT_WEIGHTS = {
    "fitnet": 100.0, "attention": 1000.0, "similarity": 3000.0, "rkd": 1.0, "pkt": 30000.0,
}


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureHint:
    """One feature to match: where it is in each model, and how.

    Args:
        student_layer: Name of the student layer whose output is matched
            (Sequential/Functional students; a subclassed student returns
            its features from `Distiller.student_features`).
        teacher_layer: Name of the teacher layer.
        method: One of `"fitnet"`, `"attention"`, `"similarity"`, `"rkd"`,
            `"pkt"`.
        weight: Weight of the term; `None` takes the authors' default
            (`DEFAULT_WEIGHTS`).

    Example:

    >>> hint = FeatureHint("conv_1", "conv_3", method="attention")
    >>> hint.weight
    1000.0
    """

    def __init__(self, student_layer, teacher_layer, method="fitnet", weight=None):
        if method not in DEFAULT_WEIGHTS:
            raise ValueError(
                f"`method` must be one of {sorted(DEFAULT_WEIGHTS)}. Received: method={method!r}."
            )
        self.student_layer = student_layer
        self.teacher_layer = teacher_layer
        self.method = method
        self.weight = float(DEFAULT_WEIGHTS[method] if weight is None else weight)

    @property
    def name(self):
        return f"{self.method}_loss"

    def get_config(self):
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer,
                "method": self.method, "weight": self.weight}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def loss(self, student_feature, teacher_feature):
        """The method's value for one batch (a scalar, float32)."""
        student_feature = ops.cast(student_feature, "float32")
        teacher_feature = ops.cast(teacher_feature, "float32")
        return _METHODS[self.method](student_feature, teacher_feature)


def build_connector(student_shape, teacher_shape, name):
    """A trainable map from the student's feature shape to the teacher's.

    As mdistiller's `ConvReg` for images `(h, w, c)`: a 3x3 convolution of
    stride 2 when the student's map is twice the teacher's size, a 4x4
    transposed convolution of stride 2 when it is half, else a valid
    convolution of kernel `1 + h_s - h_t`; then BatchNorm and ReLU. For
    vectors: Dense + BatchNorm.

    Args:
        student_shape: The student feature's shape without the batch axis.
        teacher_shape: The teacher feature's shape without the batch axis.
        name: Name of the connector.

    Returns:
        A `keras.Sequential`, or `None` when the shapes are equal.

    Raises:
        ValueError: for shapes no connector above maps.
    """
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    if student_shape == teacher_shape:
        return None
    layers = [keras.Input(student_shape)]
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        (h_s, w_s, _), (h_t, w_t, channels) = student_shape, teacher_shape
        if h_s == 2 * h_t:
            layers.append(keras.layers.Conv2D(channels, 3, strides=2, padding="same"))
        elif 2 * h_s == h_t:
            layers.append(keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same"))
        elif h_s >= h_t and w_s >= w_t:
            layers.append(keras.layers.Conv2D(channels, (1 + h_s - h_t, 1 + w_s - w_t)))
        else:
            raise ValueError(_connector_error(student_shape, teacher_shape))
        layers += [keras.layers.BatchNormalization(), keras.layers.ReLU()]
    elif len(student_shape) == 1 and len(teacher_shape) == 1:
        layers += [keras.layers.Dense(teacher_shape[0]), keras.layers.BatchNormalization()]
    else:
        raise ValueError(_connector_error(student_shape, teacher_shape))
    return keras.Sequential(layers, name=name)


def _connector_error(student_shape, teacher_shape):
    return (
        f"No FitNets connector maps a student feature of shape {student_shape} to a "
        f"teacher feature of shape {teacher_shape}. Pick layers of the same rank whose "
        "spatial size is the teacher's, twice it or half it (or larger), or a relational "
        "method ('attention', 'similarity', 'rkd', 'pkt')."
    )


def _flat(feature):
    return ops.reshape(feature, (ops.shape(feature)[0], -1))


def _l2_normalize(x, axis=-1, eps=1e-12):
    # torch.nn.functional.normalize: x / max(||x||, eps), written as
    # x / sqrt(max(||x||**2, eps**2)) (the same value): the square root never
    # sees 0, whose infinite derivative times max's zero is NaN on JAX (the
    # zero vectors of RKD's differences of a sample with itself).
    return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=axis, keepdims=True), eps * eps))


def fitnet_loss(student_feature, teacher_feature):
    """Mean squared error over every element (the connector applied)."""
    return ops.mean(ops.square(student_feature - teacher_feature))


def _attention_map(feature):
    return _l2_normalize(_flat(ops.mean(feature**2, axis=-1)))


def attention_loss(student_feature, teacher_feature):
    """Attention transfer with p = 2, spatial sizes matched by pooling."""
    h_s, h_t = student_feature.shape[1], teacher_feature.shape[1]
    if h_s > h_t:
        student_feature = _average_pool_to(student_feature, teacher_feature.shape[1:3])
    elif h_s < h_t:
        teacher_feature = _average_pool_to(teacher_feature, student_feature.shape[1:3])
    return ops.mean(ops.square(_attention_map(student_feature) - _attention_map(teacher_feature)))


def _average_pool_to(feature, size):
    # Adaptive average pooling for sizes that divide evenly.
    (h, w), (h_to, w_to) = feature.shape[1:3], size
    return ops.average_pool(feature, (h // h_to, w // w_to), strides=(h // h_to, w // w_to))


def similarity_loss(student_feature, teacher_feature):
    """Similarity-preserving: `||G_t - G_s||_F**2 / b**2`."""
    def gram(feature):
        flat = _flat(feature)
        return _l2_normalize(ops.matmul(flat, ops.transpose(flat)))

    batch = ops.cast(ops.shape(student_feature)[0], "float32")
    return ops.sum(ops.square(gram(teacher_feature) - gram(student_feature))) / batch**2


def _smooth_l1(a, b):
    difference = ops.abs(a - b)
    return ops.mean(ops.where(difference < 1.0, 0.5 * difference**2, difference - 0.5))


def _pairwise_distances(e, eps=1e-12):
    squared = ops.sum(e * e, axis=1)
    distances = squared[:, None] + squared[None, :] - 2.0 * ops.matmul(e, ops.transpose(e))
    distances = ops.sqrt(ops.maximum(distances, eps))
    return distances * (1.0 - ops.eye(ops.shape(e)[0], dtype=distances.dtype))


def _normalised_distances(e):
    distances = _pairwise_distances(e)
    positive = ops.cast(distances > 0, distances.dtype)
    # Divided by the mean positive distance; a batch of one sample has none
    # (no relation to match): zeros, not 0 / 0 = NaN. A safe denominator,
    # not `divide_no_nan`, whose gradient is NaN there on JAX.
    mean = ops.sum(distances) / ops.maximum(ops.sum(positive), 1.0)
    return distances / ops.where(mean > 0, mean, 1.0)


def _angles(e):
    differences = _l2_normalize(e[None, :, :] - e[:, None, :], axis=2)
    return ops.reshape(ops.matmul(differences, ops.transpose(differences, (0, 2, 1))), (-1,))


def rkd_loss(student_feature, teacher_feature, distance_weight=25.0, angle_weight=50.0):
    """Relational KD: distance and angle terms, smooth L1 each."""
    student, teacher = _flat(student_feature), ops.stop_gradient(_flat(teacher_feature))
    distance = _smooth_l1(_normalised_distances(student), _normalised_distances(teacher))
    angle = _smooth_l1(_angles(student), _angles(teacher))
    return distance_weight * distance + angle_weight * angle


def pkt_loss(student_feature, teacher_feature, eps=1e-7):
    """Probabilistic knowledge transfer: KL of cosine-similarity kernels."""
    def kernel(feature):
        flat = _flat(feature)
        # The square root's gradient is 0, not NaN, at a zero row (a sample
        # whose ReLUs are all off) on JAX too.
        flat = flat / (sqrt_zero_gradient_at_zero(ops.sum(flat * flat, axis=1, keepdims=True))
                       + eps)
        similarity = (ops.matmul(flat, ops.transpose(flat)) + 1.0) / 2.0
        return similarity / ops.sum(similarity, axis=1, keepdims=True)

    model, target = kernel(student_feature), kernel(teacher_feature)
    return ops.mean(target * ops.log((target + eps) / (model + eps)))


_METHODS = {
    "fitnet": fitnet_loss, "attention": attention_loss, "similarity": similarity_loss,
    "rkd": rkd_loss, "pkt": pkt_loss,
}


def feature_model(model, layer_names, role, output=None):
    """A model sharing `model`'s weights that returns `[logits, *features]`.

    Args:
        model: A Sequential or Functional model.
        layer_names: Names of its layers whose outputs are the features.
        role: `"student"` or `"teacher"`, for the error message.
        output: Which output holds the logits (`keras_kd.outputs`).

    Returns:
        A Functional `keras.Model`: one forward pass gives both.

    Raises:
        ValueError: for a subclassed model or an unknown layer name.
    """
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            f"The {role} is a subclassed model: its layers' outputs cannot be named. "
            f"Override `Distiller.{role}_features(x)` to return its features."
        )
    outputs = [select_output(symbolic_outputs(model), output, role, model)]
    for name in layer_names:
        try:
            outputs.append(model.get_layer(name).output)
        except ValueError:
            names = [layer.name for layer in model.layers]
            raise ValueError(
                f"The {role} has no layer {name!r}. Its layers: {names}."
            ) from None
    try:
        structure = model.input  # A Functional model's own structure (dicts too).
    except AttributeError:  # A Sequential that was never called.
        structure = inputs[0] if len(inputs) == 1 else inputs
    return keras.Model(structure, outputs, name=f"{model.name}_features")


class FeatureHints:
    """The hint terms of a `Distiller`: feature models and connectors.

    Args:
        hints: A list of `FeatureHint` (or their configs).
        student: The student model.
        teacher: The teacher model (one; hints take no ensemble).
        student_output: Which student output holds the logits.
        teacher_output: Which teacher output holds the logits.

    Attributes:
        hints: The `FeatureHint`s.
        connectors: The FitNets connectors (trainable Keras models; the
            Distiller tracks, trains and saves them).
        names: One unique log name per hint (`"fitnet_loss"`, ...).
    """

    def __init__(self, hints, student, teacher, student_output=None, teacher_output=None):
        self.hints = [
            h if isinstance(h, FeatureHint) else FeatureHint.from_config(h) for h in hints or []
        ]
        self.connectors = []
        self._connector_of = {}
        self.student_model = self.teacher_model = None
        names = [h.name for h in self.hints]
        self.names = [n if names.count(n) == 1 else f"{n}_{i}" for i, n in enumerate(names)]
        if not self.hints:
            return
        if isinstance(teacher, (list, tuple)):
            raise ValueError("`hints` take one teacher. Received a list of "
                             f"{len(teacher)} teachers; distil the ensemble's logits instead.")
        if getattr(student, "inputs", None):
            self.student_model = feature_model(
                student, [h.student_layer for h in self.hints], "student", student_output)
        if getattr(teacher, "inputs", None):
            self.teacher_model = feature_model(
                teacher, [h.teacher_layer for h in self.hints], "teacher", teacher_output)
        for index, hint in enumerate(self.hints):
            if hint.method != "fitnet":
                continue
            if self.student_model is None or self.teacher_model is None:
                raise ValueError(
                    "A FitNets hint needs the features' shapes to build its connector: use "
                    "Sequential/Functional models, or the relational methods ('attention', "
                    "'similarity', 'rkd', 'pkt') with a subclassed model."
                )
            connector = build_connector(
                self.student_model.outputs[index + 1].shape[1:],
                self.teacher_model.outputs[index + 1].shape[1:],
                name=f"connector_{index}",
            )
            if connector is not None:
                self._connector_of[index] = len(self.connectors)
                self.connectors.append(connector)

    def __bool__(self):
        return bool(self.hints)

    def losses(self, student_features, teacher_features):
        """The weighted hint terms, one float32 scalar per hint.

        Each term is over the global batch: under `tf.distribute` the
        features of every replica are gathered first (`reduction.
        gather_batch`), so relations within the batch and means over it are
        one device's, also for a last batch split unevenly (or a replica
        left empty). The connectors' BatchNorm still normalises each
        replica's share, as Keras' own BatchNorm does under replicas.
        """
        losses = []
        for index, hint in enumerate(self.hints):
            feature = student_features[index]
            if index in self._connector_of:
                feature = self.connectors[self._connector_of[index]](feature, training=True)
            teacher_feature = ops.stop_gradient(teacher_features[index])
            losses.append(hint.weight * hint.loss(
                gather_batch(feature), gather_batch(teacher_feature)))
        return losses

    def trainable_weights(self):
        """The connectors' trainable weights."""
        return [w for connector in self.connectors for w in connector.trainable_weights]
