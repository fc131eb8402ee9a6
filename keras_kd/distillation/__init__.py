"""The distillation core: the `Distiller` and what it is built from.

The batch contract (`batch`), the teacher side (`teacher`, `ensembles`), the
loss terms and their one reduction (`terms`, `reduction`, `labels`), the
losses (`losses`, `logit_methods`, `divergences`, `top_k`), feature hints,
metrics, callbacks and the teacher cache. This package stands on its own:
it imports Keras, TensorFlow and NumPy, never the data loaders, reference
models, studies or command line of `keras_kd` (`tests/test_layout.py`).
"""
