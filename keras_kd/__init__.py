"""keras-kd: knowledge distillation for Keras 3 on TensorFlow."""

from keras_kd.distiller import Distiller as Distiller
from keras_kd.losses import DistillationLoss as DistillationLoss
from keras_kd.losses import (
    DistillationMeanSquaredError as DistillationMeanSquaredError,
)
from keras_kd.losses import (
    KLDivergenceWithTemperature as KLDivergenceWithTemperature,
)
from keras_kd.losses import SoftTargetCrossEntropy as SoftTargetCrossEntropy
from keras_kd.version import __version__ as __version__

__all__ = [
    "Distiller",
    "DistillationLoss",
    "DistillationMeanSquaredError",
    "KLDivergenceWithTemperature",
    "SoftTargetCrossEntropy",
    "__version__",
]
