"""The language-model distillation example, end to end with --quick.

Runs `examples/language_model_distillation.py --quick` twice in subprocesses
with temporary output and cache directories: the first run trains the tiny
teacher and writes its top-k cache, the second reuses both.
"""

import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("keras_hub")

EXAMPLE = os.path.join(
    os.path.dirname(__file__), os.pardir, "examples", "language_model_distillation.py")
METHODS = {"scratch", "forward KL", "reverse KL", "GJSD", "top-k cached"}


def run_quick(output, cache, cwd):
    completed = subprocess.run(
        [sys.executable, EXAMPLE, "--quick", "--output", str(output), "--cache-dir", str(cache)],
        capture_output=True, text=True, cwd=cwd, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_quick_run_then_reuse(tmp_path):
    cache = tmp_path / "cache"
    stdout = run_quick(tmp_path / "first", cache, tmp_path)
    assert "teacher: training" in stdout and "top-k cache: wrote" in stdout
    assert (cache / "teacher.weights.h5").exists() and (cache / "teacher.json").exists()

    report = json.loads((tmp_path / "first" / "lm_distillation.json").read_text())
    runs = report["runs"]
    assert {run["method"] for run in runs} == METHODS and len(runs) == 5
    assert {run["seed"] for run in runs} == {0}
    assert set(report["summary"]) == METHODS
    bits = {run["method"]: run["bits_per_character"] for run in runs}
    assert all(math.isfinite(value) and value > 0 for value in bits.values())
    # An untrained student spreads its mass over the vocabulary: ~log2(V)
    # bits per character. Every trained student must be clearly better.
    log2_v = math.log2(report["vocabulary_size"])
    assert abs(report["untrained_student_bits_per_character"]["0"] - log2_v) < 0.3
    for method in METHODS - {"scratch"}:
        assert bits[method] < log2_v - 0.5, (method, bits[method], log2_v)
    assert math.isfinite(report["teacher"]["bits_per_character"])
    assert report["wall_seconds"] > 0 and report["machine"]["cpu_count"] >= 1
    assert "| top-k cached |" in stdout and "| teacher |" in stdout
    # The gains are the per-seed differences from scratch, and one seed
    # cannot tell a gain from the seeds' spread (the verdict says so).
    for method in METHODS - {"scratch"}:
        row = report["summary"][method]
        assert row["gains_vs_scratch"] == pytest.approx([bits["scratch"] - bits[method]])
        assert f"{method}: cannot tell (1 seed)" in stdout
    assert ": helps" not in stdout

    from matplotlib import image

    picture = image.imread(tmp_path / "first" / "lm_distillation.png")
    assert picture.shape[0] > 100 and picture.std() > 0.05

    # The second run loads the teacher and reuses the cache (fingerprints
    # match): no teacher training, no teacher pass over the windows.
    stdout = run_quick(tmp_path / "second", cache, tmp_path)
    assert "teacher: loaded" in stdout and "teacher: training" not in stdout
    assert "top-k cache: reused" in stdout
    second = json.loads((tmp_path / "second" / "lm_distillation.json").read_text())
    assert second["teacher"]["loaded"] and second["top_k_cache"]["reused"]
    # Across processes: float32 arithmetic may differ in the last bits.
    assert second["teacher"]["bits_per_character"] == pytest.approx(
        report["teacher"]["bits_per_character"], rel=1e-5)
    # Same seed, initial weights and batches: the scratch student is the same.
    assert second["runs"][0]["bits_per_character"] == pytest.approx(bits["scratch"], abs=1e-3)
