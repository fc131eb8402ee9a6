"""Does `pytest -n 2` (pytest-xdist) pay on this machine? Serial vs two workers.

setup.cfg's addopts run the suite on two xdist workers (`-n 2 --dist
loadfile`: each test file stays on one worker, so module-scoped fixtures are
built once). This script runs the same tests serially (`-n 0`) and on two
workers, interleaved (serial, xdist, serial, xdist, ...: this machine's
speed drifts over minutes), and prints the median wall time of each, their
ratio, and whether both runs passed the same number of tests (a parallel run
that passes a different set is not deterministic).

The default subset is a few of the slowest test files (about 2 minutes
serially here); `--all` times the whole default suite (about 10 minutes
serially). Run it on an otherwise idle machine.

    python benchmarks/suite_workers.py                # subset, 2 rounds
    python benchmarks/suite_workers.py --rounds 3
    python benchmarks/suite_workers.py --all --rounds 1
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Files that train models and trace steps (the suite's weight), from
# different packages so that loadfile scheduling has something to balance.
SUBSET = [
    "tests/distillation/test_distiller_contract.py",
    "tests/distillation/test_top_k.py",
    "tests/distillation/test_ensembles.py",
    "tests/data/test_sequence_kd.py",
    "tests/studies/test_runs.py",
    "tests/cli/test_cli.py",
]
MODES = {"serial": ["-n", "0"], "xdist -n 2": ["-n", "2", "--dist", "loadfile"]}


def run_pytest(files, mode):
    """Runs pytest once; returns (seconds, summary counts, exit code)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", *MODES[mode], *files]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else ""
    counts = dict((word, int(number)) for number, word in re.findall(r"(\d+) (\w+)", summary))
    counts.pop("s", None)  # "in 12.3s" is not a count
    return seconds, counts, completed.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--all", action="store_true", help="the whole default suite")
    args = parser.parse_args()
    files = [] if args.all else SUBSET
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"tests: {'the whole default suite' if args.all else ', '.join(files)}")
    times = {mode: [] for mode in MODES}
    counts = {mode: [] for mode in MODES}
    for round_index in range(args.rounds):
        for mode in MODES:
            seconds, count, code = run_pytest(files, mode)
            print(f"round {round_index + 1}/{args.rounds} {mode:>10}: {seconds:7.1f} s  {count}  exit {code}",
                  flush=True)
            times[mode].append(seconds)
            counts[mode].append((code, tuple(sorted(count.items()))))
    serial, parallel = (statistics.median(times[mode]) for mode in MODES)
    print()
    print(f"{'mode':>12} {'median s':>9}")
    for mode in MODES:
        print(f"{mode:>12} {statistics.median(times[mode]):9.1f}")
    print(f"xdist / serial: {parallel / serial:.2f}x")
    same = len({outcome for mode in MODES for outcome in counts[mode]}) == 1
    print(f"same outcome in every run (exit code and counts): {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
