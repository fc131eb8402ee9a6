"""Deploying a distilled student: SavedModel and TFLite files.

The student is a plain Keras model; these helpers write it in the formats
that serving stacks and phones read, using Keras' and TensorFlow's own
exporters (`Model.export`, `tf.lite.TFLiteConverter`).
"""

import os

import numpy as np
import tensorflow as tf

FORMATS = ("saved_model", "tflite", "tflite_int8")


def export_student(
    student, directory, formats=("saved_model", "tflite"), representative_data=None
):
    """Writes a student as a SavedModel and/or TFLite files.

    Args:
        student: The trained student `keras.Model` (for a `Distiller`, pass
            `distiller.student`).
        directory: Output directory; created if missing.
        formats: Any of `"saved_model"` (the `serve` endpoint, for
            `tf.saved_model.load` and TF Serving), `"tflite"` (float32) and
            `"tflite_int8"` (full-integer quantisation; needs
            `representative_data`).
        representative_data: A float32 array of typical inputs (a few hundred
            training examples), to calibrate the int8 ranges.

    Returns:
        A dict from format to the path written.

    Example:

    ```python
    paths = export_student(distiller.student, "export", ["saved_model", "tflite"])
    served = tf.saved_model.load(paths["saved_model"])
    logits = served.serve(x)
    ```
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(
            f"Unknown export formats {unknown or formats!r}. Choose from {FORMATS}."
        )
    if "tflite_int8" in formats and representative_data is None:
        raise ValueError(
            "formats='tflite_int8' needs `representative_data`: a float32 "
            "array of a few hundred typical inputs, to calibrate the int8 "
            "ranges."
        )
    os.makedirs(directory, exist_ok=True)
    saved_model = os.path.join(directory, "saved_model")
    # Keras' exporter gives a `serve` signature with the model's input spec;
    # the TFLite converter reads the same SavedModel.
    student.export(saved_model, format="tf_saved_model", verbose=False)
    paths = {}
    if "saved_model" in formats:
        paths["saved_model"] = saved_model
    for name in ("tflite", "tflite_int8"):
        if name not in formats:
            continue
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        if name == "tflite_int8":
            samples = np.asarray(representative_data, dtype=np.float32)

            def representative_dataset():
                for sample in samples[:500]:
                    yield [sample[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            # Integer kernels inside, float32 inputs and outputs outside.
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        path = os.path.join(directory, f"student{'_int8' if name == 'tflite_int8' else ''}.tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        paths[name] = path
    return paths


def tflite_predict(path, x, batch_size=1, use_xnnpack=True):
    """Runs a TFLite model on `x` with the TFLite interpreter.

    Args:
        path: A `.tflite` file.
        x: Float32 inputs `(n, ...)`.
        batch_size: Batch size the interpreter runs (its input is resized).
        use_xnnpack: Use the default XNNPACK CPU delegate (fast; its float
            kernels round differently, ~1e-5 relative). `False` runs
            TFLite's reference kernels.

    Returns:
        A float32 array of outputs `(n, num_outputs)`.
    """
    resolver = tf.lite.experimental.OpResolverType
    interpreter = tf.lite.Interpreter(
        model_path=os.fspath(path),
        experimental_op_resolver_type=(
            resolver.AUTO if use_xnnpack else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        ),
    )
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    x = np.asarray(x, dtype=np.float32)
    outputs = []
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        interpreter.resize_tensor_input(input_index, batch.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(output_index).copy())
    return np.concatenate(outputs)


def verify_export(model, paths, x, y, batch_size=256):
    """Checks each exported file against the Keras model on `(x, y)`.

    Args:
        model: The Keras student that was exported.
        paths: What `export_student` returned: `{"saved_model": dir,
            "tflite": file, "tflite_int8": file}` (any subset).
        x: Inputs, preprocessed as the model takes them.
        y: Integer labels.
        batch_size: Batch size of the predictions.

    Returns:
        `{"files": paths, "test_examples": n, "formats": {name: {"accuracy",
        "max_abs_difference"}}}`, with `"keras"` as the reference row.

    Example:

    ```python
    paths = export_student(student, "export", ["saved_model", "tflite"])
    report = verify_export(student, paths, x_test, y_test)
    ```
    """
    reference = model.predict(x, batch_size=batch_size, verbose=0)
    predictions = {"keras": reference}
    if "saved_model" in paths:
        served = tf.saved_model.load(paths["saved_model"])
        predictions["saved_model"] = np.concatenate([
            served.serve(x[i : i + batch_size]).numpy() for i in range(0, len(x), batch_size)
        ])
    for name in ("tflite", "tflite_int8"):
        if name in paths:
            predictions[name] = tflite_predict(
                paths[name], x, batch_size=batch_size, use_xnnpack=False
            )
    y = np.asarray(y)
    formats = {
        name: {
            "accuracy": float((outputs.argmax(axis=1) == y).mean()),
            "max_abs_difference": float(np.abs(outputs - reference).max()),
        }
        for name, outputs in predictions.items()
    }
    return {"files": paths, "test_examples": len(y), "formats": formats}
