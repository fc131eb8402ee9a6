"""The Distiller's steps, one file per backend, over one objective.

Keras builds its trainers this way (`keras/src/backend/{tensorflow,jax,
torch}/trainer.py` over one `compute_loss`): each backend file holds only
what differs, the gradient and the state (the tape; JAX's stateless step;
torch's eager autograd). The arithmetic of a step lives in
`keras_kd.distillation.objective`, in `keras.ops`.

`steps_for_backend()` picks the class whose `train_step` / `test_step` the
Distiller inherits, for the backend Keras runs on (chosen at import, as
Keras chooses its own `Trainer`).
"""

SUPPORTED_BACKENDS = ("tensorflow", "jax", "torch")


def steps_for_backend(backend):
    """The steps class for `backend` (`"tensorflow"`, `"jax"` or `"torch"`).

    Another backend gets the TensorFlow steps, never used: the Distiller
    refuses to be built there (`distiller.check_backend`), with the message
    that names the supported backends.
    """
    if backend == "jax":
        from keras_kd.distillation.backend.jax import JAXSteps

        return JAXSteps
    if backend == "torch":
        from keras_kd.distillation.backend.torch import TorchSteps

        return TorchSteps
    from keras_kd.distillation.backend.tensorflow import TensorFlowSteps

    return TensorFlowSteps


def runtime():
    """The module of the running backend's run-time checks (`static_value`,
    `assert_near`, `assert_equal`, `after`, `as_tensor`), for backend-neutral losses.
    Imported when called: the backend modules import the objective."""
    import keras

    if keras.backend.backend() == "jax":
        from keras_kd.distillation.backend import jax as module
    else:
        from keras_kd.distillation.backend import tensorflow as module
    return module
