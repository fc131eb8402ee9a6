"""Multi-host training as one host can run it: two processes joined by
`keras.distribution.initialize` (JAX's distributed runtime on CPU, gloo
collectives), 2 devices each, against one process of 4 devices, under
`DataParallel` (tests/distribution/multi_host_worker.py is each process)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multi_host_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    """Same fit and validation losses (within 1e-6) and student weights
    (within 1e-5) as one process. Failed before: the Distiller's first-batch
    checks wrap the dataset in a `map`, which hides the batch size Keras
    shards it by ("The batch size of the input dataset is unknown")."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(WORKER)))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [root, os.environ.get("PYTHONPATH", "")])}
    environment.pop("XLA_FLAGS", None)  # Each process sets its own device count.
    port = str(_free_port())
    runs = [(0, 1, "one"), (0, 2, "p0"), (1, 2, "p1")]
    children = [subprocess.Popen(
        [sys.executable, WORKER, str(process), str(count), port, str(tmp_path / f"{name}.json")],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for process, count, name in runs]
    results = {}
    for child, (_, _, name) in zip(children, runs):
        _, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, (name, stderr[-3000:])
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    one, p0, p1 = results["one"], results["p0"], results["p1"]
    assert (one["devices"], one["local_devices"]) == (4, 4)
    assert (p0["devices"], p0["local_devices"]) == (p1["devices"], p1["local_devices"]) == (4, 2)
    for key in ("loss", "student_loss", "distillation_loss", "val_loss"):
        np.testing.assert_allclose(p0["history"][key], one["history"][key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(p1["history"][key], one["history"][key], rtol=1e-6, err_msg=key)
    for process in (p0, p1):
        for got, want in zip(process["weights"], one["weights"]):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The distribution is the user's as it was, during fit (a callback's
    # own evaluate shards as Keras does) and after it.
    for process in (one, p0, p1):
        assert process["auto_shard_during_fit"] == [True, True]
        assert process["distribute_dataset_patched_after"] is False
    # It trained: the loss fell.
    assert one["history"]["loss"][1] < one["history"]["loss"][0]
