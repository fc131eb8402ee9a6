"""The language-model distillation example, end to end with --quick.

One module-scoped `--quick` run (one seed, all five methods) trains the tiny
teacher and writes its top-k cache in a temporary directory; a second run
of two seeds and two methods must reuse both (no file of the cache
directory is rewritten) and reproduce the first run's seed-0 students.
Each run's table, gains and verdicts are recomputed from its JSON records.
"""

import json
import math
import os

import numpy as np
import pytest

pytest.importorskip("keras_hub")

from conftest import run_example  # noqa: E402
from keras_kd.studies.reporting import paired_gain_verdict  # noqa: E402

METHODS = {"scratch", "forward KL", "reverse KL", "GJSD", "top-k cached"}


def run_quick(output, cache, cwd, *arguments):
    # In this process, as `python examples/language_model_distillation.py`
    # would run (conftest.run_example): no TensorFlow and KerasHub import per
    # run (about 18 s each on a loaded 2-core machine).
    return run_example("language_model_distillation.py", "--quick", "--output", output,
                       "--cache-dir", cache, *arguments, cwd=cwd)


def file_times(directory):
    return {os.path.relpath(os.path.join(root, name), directory):
            os.stat(os.path.join(root, name)).st_mtime_ns
            for root, _, names in os.walk(directory) for name in names}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    stdout = run_quick(root / "first", root / "cache", root)
    report = json.loads((root / "first" / "lm_distillation.json").read_text())
    return root, stdout, report


def assert_table_and_verdicts(stdout, report):
    """The printed table, the JSON summary and the verdicts all follow from
    the per-seed runs: gain = scratch - method, paired by seed."""
    runs = report["runs"]
    bits = {(run["method"], run["seed"]): run["bits_per_character"] for run in runs}
    seeds = sorted({seed for _, seed in bits})
    for method, row in report["summary"].items():
        values = [bits[method, s] for s in seeds]
        gains = [bits["scratch", s] - bits[method, s] for s in seeds]
        assert row["bits_per_character"] == values and row["seeds"] == seeds
        assert row["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert row["gain_vs_scratch"] == pytest.approx(np.mean(gains), rel=1e-12, abs=1e-15)
        if method != "scratch":
            assert row["gains_vs_scratch"] == pytest.approx(gains, rel=1e-12, abs=1e-15)
        spread = np.std(values, ddof=1) if len(seeds) > 1 else 0.0
        gain_spread = np.std(gains, ddof=1) if len(seeds) > 1 else 0.0
        assert row["std"] == pytest.approx(spread, abs=1e-12)
        assert row["gain_std"] == pytest.approx(gain_spread, abs=1e-12)
        gain = "" if method == "scratch" else f"{np.mean(gains):+.3f} +- {gain_spread:.3f}"
        assert (f"| {method} | {np.mean(values):.3f} +- {spread:.3f} | {gain} | "
                f"{row['seconds_mean']:.0f} |") in stdout.splitlines()
        if method != "scratch":
            verdict = paired_gain_verdict(method, gains)
            assert verdict in stdout.splitlines()
            assert ("cannot tell (1 seed)" in verdict) == (len(seeds) == 1)


def test_quick_run_trains_teacher_cache_and_every_student(first):
    root, stdout, report = first
    cache = root / "cache"
    assert "teacher: training" in stdout and "top-k cache: wrote" in stdout
    assert (cache / "teacher.weights.h5").exists() and (cache / "teacher.json").exists()
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
    for method in METHODS:
        assert bits[method] < log2_v - 0.5, (method, bits[method], log2_v)
    assert math.isfinite(report["teacher"]["bits_per_character"])
    assert not report["teacher"]["loaded"] and not report["top_k_cache"]["reused"]
    assert report["wall_seconds"] > 0 and report["machine"]["cpu_count"] >= 1
    assert "| teacher |" in stdout
    assert_table_and_verdicts(stdout, report)

    from matplotlib import image

    picture = image.imread(root / "first" / "lm_distillation.png")
    assert picture.shape[0] > 100 and picture.std() > 0.05


def test_second_run_reuses_teacher_and_cache(first):
    root, stdout, report = first
    cache = root / "cache"
    before = file_times(cache)
    assert "teacher.weights.h5" in before and any(name.startswith("top_k") for name in before)
    second = run_quick(root / "second", cache, root, "--seeds", "0", "1",
                       "--methods", "scratch", "top-k cached")
    # Loaded and reused, not written again: every file keeps its mtime.
    assert "teacher: loaded" in second and "teacher: training" not in second
    assert "top-k cache: reused" in second
    assert file_times(cache) == before
    again = json.loads((root / "second" / "lm_distillation.json").read_text())
    assert again["teacher"]["loaded"] and again["top_k_cache"]["reused"]
    # Reloaded weights: float32 arithmetic may differ in the last bits.
    assert again["teacher"]["bits_per_character"] == pytest.approx(
        report["teacher"]["bits_per_character"], rel=1e-5)
    # Same seed, initial weights, batches and cache: the seed-0 students are
    # the first run's.
    first_bits = {run["method"]: run["bits_per_character"] for run in report["runs"]}
    for run in again["runs"]:
        if run["seed"] == 0:
            assert run["bits_per_character"] == pytest.approx(first_bits[run["method"]], abs=1e-3)
    assert {(run["method"], run["seed"]) for run in again["runs"]} == {
        (m, s) for m in ("scratch", "top-k cached") for s in (0, 1)}
    assert_table_and_verdicts(second, again)
