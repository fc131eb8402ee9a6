"""Distillation across two worker processes on 127.0.0.1 (TF_CONFIG), under
MultiWorkerMirroredStrategy, against one process with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
from conftest import tensorflow_only

JOB = os.path.join(os.path.dirname(__file__), "multi_worker_job.py")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@tensorflow_only("MultiWorkerMirroredStrategy (tf.distribute, TF_CONFIG); multi-host JAX runs "
                 "keras.distribution.initialize() (README), which one host cannot test")
def test_two_workers_match_one_process(tmp_path):
    alone = tmp_path / "alone"
    cluster = tmp_path / "cluster"
    alone.mkdir()
    cluster.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    # The single-process reference runs beside the workers, not before them:
    # most of each process's time is importing TensorFlow.
    reference = subprocess.Popen(
        [sys.executable, JOB, str(alone)], env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )

    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        workers.append(subprocess.Popen(
            [sys.executable, JOB, str(cluster)],
            env={**environment, "TF_CONFIG": json.dumps(config)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    for process in [reference] + workers:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-3000:]

    expected = np.load(alone / "weights-alone.npz")
    for index in range(2):
        got = np.load(cluster / f"weights-{index}.npz")
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-5)
        for key in expected.files:
            np.testing.assert_allclose(got[key], expected[key], atol=1e-5)
    # Only the chief (worker 0) writes the run's checkpoint and log.
    run = cluster / "run"
    assert (run / "checkpoint.keras").exists() and (run / "log.csv").exists()
    assert (run / "backup").is_dir() and (run / "backup-worker-1").is_dir()
