"""The reference models of experiments E1-E5: one builder per family with
width arguments (`builders`), and the ResNet backbones of E5 (`backbones`).
"""

from keras_kd.models.builders import MODEL_BUILDERS as MODEL_BUILDERS
from keras_kd.models.builders import build_batchnorm_cnn as build_batchnorm_cnn
from keras_kd.models.builders import build_batchnorm_cnn_student as build_batchnorm_cnn_student
from keras_kd.models.builders import build_batchnorm_cnn_teacher as build_batchnorm_cnn_teacher
from keras_kd.models.builders import build_cifar_student as build_cifar_student
from keras_kd.models.builders import build_conv_blocks_cnn as build_conv_blocks_cnn
from keras_kd.models.backbones import build_frozen_backbone_teacher as build_frozen_backbone_teacher
from keras_kd.models.builders import build_hinton_student as build_hinton_student
from keras_kd.models.builders import build_hinton_teacher as build_hinton_teacher
from keras_kd.models.builders import build_keras_io_student as build_keras_io_student
from keras_kd.models.builders import build_keras_io_teacher as build_keras_io_teacher
from keras_kd.models.builders import build_mlp as build_mlp
from keras_kd.models.builders import build_model as build_model
from keras_kd.models.backbones import build_resnet as build_resnet
from keras_kd.models.backbones import build_resnet34_student as build_resnet34_student
from keras_kd.models.builders import build_strided_cnn as build_strided_cnn
from keras_kd.models.builders import build_vgg as build_vgg
from keras_kd.models.builders import build_vgg16_teacher as build_vgg16_teacher
from keras_kd.models.builders import copy_model as copy_model
from keras_kd.models.builders import input_layout as input_layout
from keras_kd.models.builders import model_layout as model_layout
