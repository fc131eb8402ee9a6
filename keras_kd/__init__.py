"""keras-kd: knowledge distillation for Keras 3 on TensorFlow."""

from keras_kd.calibration import calibrate_temperature as calibrate_temperature
from keras_kd.callbacks import AlphaScheduler as AlphaScheduler
from keras_kd.callbacks import EpochSeeds as EpochSeeds
from keras_kd.callbacks import NonFiniteLossError as NonFiniteLossError
from keras_kd.callbacks import StopOnNonFiniteLoss as StopOnNonFiniteLoss
from keras_kd.callbacks import TemperatureScheduler as TemperatureScheduler
from keras_kd.distiller import UNLABELLED as UNLABELLED
from keras_kd.distiller import Distiller as Distiller
from keras_kd.export import export_student as export_student
from keras_kd.losses import DistillationLoss as DistillationLoss
from keras_kd.losses import (
    DistillationMeanSquaredError as DistillationMeanSquaredError,
)
from keras_kd.losses import (
    KLDivergenceWithTemperature as KLDivergenceWithTemperature,
)
from keras_kd.losses import SoftTargetCrossEntropy as SoftTargetCrossEntropy
from keras_kd.runs import fit_resumable as fit_resumable
from keras_kd.runs import set_determinism as set_determinism
from keras_kd.version import __version__ as __version__

__all__ = [
    "AlphaScheduler",
    "Distiller",
    "DistillationLoss",
    "DistillationMeanSquaredError",
    "EpochSeeds",
    "KLDivergenceWithTemperature",
    "NonFiniteLossError",
    "SoftTargetCrossEntropy",
    "StopOnNonFiniteLoss",
    "TemperatureScheduler",
    "UNLABELLED",
    "calibrate_temperature",
    "export_student",
    "fit_resumable",
    "set_determinism",
    "__version__",
]
