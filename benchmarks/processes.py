"""One configuration per child process, for peak-memory benchmarks.

A process's peak RSS (`ru_maxrss`) only grows, so each configuration runs
in its own child, which prints one JSON line; the parent collects them.
"""

import json
import os
import resource
import subprocess
import sys


def peak_rss_gib():
    """The process's peak RSS so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib():
    """The process's RSS now (`VmRSS`), GiB: building a model may peak
    above it (initialisers' temporaries), which the peak would hide."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return peak_rss_gib()


def volunteer_for_oom_killer():
    """A dense run past the machine's RAM should be the one the kernel's OOM
    killer picks, not a neighbouring job."""
    try:
        with open("/proc/self/oom_score_adj", "w") as file:
            file.write("1000")
    except OSError:
        pass


def run_child(script, arguments):
    """Runs `script --child arguments...` quietly; returns its last JSON
    line as a dict, or `{"error": ...}` with its exit code and last stderr
    line."""
    command = [sys.executable, os.path.abspath(script), "--child"] + [str(a) for a in arguments]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {result.returncode}: {tail[:90]}"}
    return json.loads(lines[-1])
