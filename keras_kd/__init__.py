"""keras-kd: knowledge distillation for Keras 3 on TensorFlow."""

from keras_kd.calibration import calibrate_temperature as calibrate_temperature
from keras_kd.callbacks import AlphaScheduler as AlphaScheduler
from keras_kd.callbacks import EpochSeeds as EpochSeeds
from keras_kd.callbacks import NonFiniteLossError as NonFiniteLossError
from keras_kd.callbacks import StopOnNonFiniteLoss as StopOnNonFiniteLoss
from keras_kd.callbacks import TemperatureScheduler as TemperatureScheduler
from keras_kd.batch import UNLABELLED as UNLABELLED
from keras_kd.batch import targets as targets
from keras_kd.distiller import Distiller as Distiller
from keras_kd.export import export_student as export_student
from keras_kd.export import verify_export as verify_export
from keras_kd.few_labels import few_label_study as few_label_study
from keras_kd.hints import FeatureHint as FeatureHint
from keras_kd.logit_methods import DIST as DIST
from keras_kd.logit_methods import DecoupledKD as DecoupledKD
from keras_kd.logit_methods import LogitStandardizedKD as LogitStandardizedKD
from keras_kd.logit_methods import NormalizedKD as NormalizedKD
from keras_kd.logit_methods import dkd_warmup as dkd_warmup
from keras_kd.losses import (
    BinaryKLDivergenceWithTemperature as BinaryKLDivergenceWithTemperature,
)
from keras_kd.losses import DistillationLoss as DistillationLoss
from keras_kd.losses import (
    DistillationMeanSquaredError as DistillationMeanSquaredError,
)
from keras_kd.losses import (
    KLDivergenceWithTemperature as KLDivergenceWithTemperature,
)
from keras_kd.losses import SoftTargetCrossEntropy as SoftTargetCrossEntropy
from keras_kd.metrics import ExpectedCalibrationError as ExpectedCalibrationError
from keras_kd.metrics import TeacherAgreement as TeacherAgreement
from keras_kd.metrics import TeacherKL as TeacherKL
from keras_kd.runs import fit_resumable as fit_resumable
from keras_kd.runs import set_determinism as set_determinism
from keras_kd.sweeps import sweep as sweep
from keras_kd.version import __version__ as __version__

__all__ = [
    "AlphaScheduler",
    "BinaryKLDivergenceWithTemperature",
    "DIST",
    "DecoupledKD",
    "Distiller",
    "DistillationLoss",
    "DistillationMeanSquaredError",
    "EpochSeeds",
    "ExpectedCalibrationError",
    "FeatureHint",
    "KLDivergenceWithTemperature",
    "LogitStandardizedKD",
    "NormalizedKD",
    "NonFiniteLossError",
    "SoftTargetCrossEntropy",
    "StopOnNonFiniteLoss",
    "TeacherAgreement",
    "TeacherKL",
    "TemperatureScheduler",
    "UNLABELLED",
    "calibrate_temperature",
    "dkd_warmup",
    "export_student",
    "few_label_study",
    "fit_resumable",
    "set_determinism",
    "sweep",
    "targets",
    "verify_export",
    "__version__",
]
