"""keras-kd: knowledge distillation for Keras 3 on TensorFlow.

The public face. The layers live in folders: `keras_kd.distillation` (the
core: Distiller, losses, teacher cache), `keras_kd.data`, `keras_kd.models`
(the E1-E5 reference models), `keras_kd.studies` and `keras_kd.cli`.
"""

import sys as _sys

if _sys.argv[:1] == ["-m"]:
    # `python -m keras_kd`: Python imports this package (and TensorFlow)
    # before __main__ runs; the command line's quiet import goes first.
    import keras_kd_cli as _cli

    _cli.start_module_run()
    del _cli
del _sys

from keras_kd import _deprecated
from keras_kd.distillation.batch import UNLABELLED as UNLABELLED
from keras_kd.distillation.batch import targets as targets
from keras_kd.distillation.callbacks import AlphaScheduler as AlphaScheduler
from keras_kd.distillation.callbacks import EpochSeeds as EpochSeeds
from keras_kd.distillation.callbacks import NonFiniteLossError as NonFiniteLossError
from keras_kd.distillation.callbacks import StopOnNonFiniteLoss as StopOnNonFiniteLoss
from keras_kd.distillation.callbacks import TemperatureScheduler as TemperatureScheduler
from keras_kd.distillation.distiller import Distiller as Distiller
from keras_kd.distillation.divergences import ForwardKL as ForwardKL
from keras_kd.distillation.divergences import GeneralizedJSD as GeneralizedJSD
from keras_kd.distillation.divergences import ReverseKL as ReverseKL
from keras_kd.distillation.divergences import SkewKL as SkewKL
from keras_kd.distillation.divergences import SkewReverseKL as SkewReverseKL
from keras_kd.distillation.hints import FeatureHint as FeatureHint
from keras_kd.distillation.logit_methods import DIST as DIST
from keras_kd.distillation.logit_methods import DecoupledKD as DecoupledKD
from keras_kd.distillation.logit_methods import LogitStandardizedKD as LogitStandardizedKD
from keras_kd.distillation.logit_methods import NormalizedKD as NormalizedKD
from keras_kd.distillation.logit_methods import dkd_warmup as dkd_warmup
from keras_kd.distillation.losses import (
    BinaryKLDivergenceWithTemperature as BinaryKLDivergenceWithTemperature,
)
from keras_kd.distillation.losses import DistillationLoss as DistillationLoss
from keras_kd.distillation.losses import (
    DistillationMeanSquaredError as DistillationMeanSquaredError,
)
from keras_kd.distillation.losses import (
    KLDivergenceWithTemperature as KLDivergenceWithTemperature,
)
from keras_kd.distillation.losses import SoftTargetCrossEntropy as SoftTargetCrossEntropy
from keras_kd.distillation.metrics import ExpectedCalibrationError as ExpectedCalibrationError
from keras_kd.distillation.metrics import TeacherAgreement as TeacherAgreement
from keras_kd.distillation.metrics import TeacherKL as TeacherKL
from keras_kd.distillation.top_k import TopKKLDivergence as TopKKLDivergence
from keras_kd.studies.calibration import calibrate_temperature as calibrate_temperature
from keras_kd.studies.export import export_student as export_student
from keras_kd.studies.export import verify_export as verify_export
from keras_kd.studies.few_labels import few_label_study as few_label_study
from keras_kd.studies.runs import fit_resumable as fit_resumable
from keras_kd.studies.runs import set_determinism as set_determinism
from keras_kd.studies.sweeps import sweep as sweep
from keras_kd.version import __version__ as __version__

_deprecated.install()

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
    "ForwardKL",
    "GeneralizedJSD",
    "KLDivergenceWithTemperature",
    "LogitStandardizedKD",
    "NormalizedKD",
    "NonFiniteLossError",
    "ReverseKL",
    "SkewKL",
    "SkewReverseKL",
    "SoftTargetCrossEntropy",
    "StopOnNonFiniteLoss",
    "TeacherAgreement",
    "TeacherKL",
    "TemperatureScheduler",
    "TopKKLDivergence",
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


def __getattr__(name):
    # `keras_kd.cache` and the other module paths of 0.1, for one release.
    module = _deprecated.moved_attribute(name)
    if module is None:
        raise AttributeError(f"module 'keras_kd' has no attribute {name!r}")
    globals()[name] = module  # Warned once.
    return module
