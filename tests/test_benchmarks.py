"""The benchmark runs end to end on a tiny backlog: it must not rot between the times someone
measures with it. Nothing here looks at the figures it prints, only that it prints them."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(180)


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "drain.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_drain_benchmark_compares_aitp_with_the_minimal_loop():
    out = run("--tasks", "60")
    for label in ("minimal loop", "aitp run"):
        line = next(line for line in out.splitlines() if line.startswith(label))
        assert re.search(r"tasks/s .*busy .*cpu .*µs/task .*peak RSS .*polled .*batch", line), line
    assert re.search(r"ratio: aitp run drains at \d+% of the minimal loop's rate, with [\d.]+ times its CPU", out)
    assert re.search(r"idle latency \(polling every 2 s\): \d+\.\d+ s", out)


def test_the_memory_benchmark_reports_each_backlog():
    out = run("--memory", "100", "300", "--memory-seconds", "1")
    assert re.findall(r"peak RSS with ([\d,]+) pending: \d+ MB", out) == ["100", "300"]


def test_settings_for_aitp_run_are_passed_on_and_named():
    # A setting that aitp run refuses at startup makes the benchmark fail: it did reach the service.
    out = run("--memory", "100", "--memory-seconds", "1", "--set", "AITP_WORKERS__PROCESS_WORKERS=0")
    assert "aitp run with AITP_WORKERS__PROCESS_WORKERS=0" in out
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "drain.py"), "--tasks", "20",
                              "--set", "AITP_WORKERS__PROCESS_WORKERS=-1"], cwd=ROOT, capture_output=True,
                             text=True, timeout=150)
    assert refused.returncode != 0 and "exited with" in refused.stderr
