"""The verdict rule of the language-model example (a pure function)."""

import numpy as np
import pytest

from keras_kd.studies.reporting import paired_gain_verdict


def test_one_seed_cannot_tell_however_large_the_gain():
    for gain in (0.005, 1.0, -0.3):
        verdict = paired_gain_verdict("forward KL", [gain])
        assert verdict == f"forward KL: cannot tell (1 seed): {gain:+.3f} bits/char vs scratch."


def test_the_gain_is_weighed_against_its_standard_error():
    gains = [0.148, 0.10, 0.20]
    error = np.std(gains, ddof=1) / np.sqrt(3)  # float64 reference: 0.0289
    assert paired_gain_verdict("forward KL", gains) == (
        f"forward KL: helps, {np.mean(gains):+.3f} +- {error:.3f} bits/char vs scratch "
        "(mean +- standard error, 3 seeds).")
    # The mean is 5.14 standard errors: demanding 5.5 makes it unclear.
    assert paired_gain_verdict("m", gains, standard_errors=5.5).startswith("m: no clear difference")
    assert paired_gain_verdict("m", [0.02, -0.01, 0.005]).startswith("m: no clear difference")
    assert paired_gain_verdict("m", [-0.2, -0.1, -0.15]).startswith("m: hurts, -0.150")
    # Just either side of the threshold: mean 0.1, error 0.05 for (0.05, 0.15).
    assert paired_gain_verdict("m", [0.05, 0.15], standard_errors=1.99).startswith("m: helps")
    assert paired_gain_verdict("m", [0.05, 0.15], standard_errors=2.01).startswith(
        "m: no clear difference")
    assert "vs the teacher" in paired_gain_verdict("m", [0.1, 0.2], baseline="the teacher")


@pytest.mark.parametrize("gains", [[], [0.1, float("nan")], [float("inf")]])
def test_gains_must_be_finite_and_not_empty(gains):
    with pytest.raises(ValueError, match=r"`gains` must hold one finite gain per seed\. Received: gains="):
        paired_gain_verdict("m", gains)
