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


def test_the_drain_benchmark_compares_aitp_with_the_minimal_loop_and_passes_settings_on():
    # One tiny run: the figures are not looked at, only that each is printed, and that a setting
    # reaches aitp run (process_workers = 0 runs the vector checks in the service).
    out = run("--tasks", "60", "--set", "AITP_WORKERS__PROCESS_WORKERS=0")
    assert "aitp run with AITP_WORKERS__PROCESS_WORKERS=0" in out
    for label in ("minimal loop", "aitp run"):
        line = next(line for line in out.splitlines() if line.startswith(label) and "tasks/s" in line)
        assert re.search(r"tasks/s .*busy .*cpu .*µs/task .*peak RSS .*polled .*batch", line), line
    assert re.search(r"ratio: aitp run drains at \d+% of the minimal loop's rate, with [\d.]+ times its CPU", out)
    assert re.search(r"idle latency \(polling every 2 s\): \d+\.\d+ s", out)


def test_a_setting_that_aitp_run_refuses_fails_the_benchmark():
    # Refused at startup, so this costs no benchmark run: it shows the setting did reach the service.
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "drain.py"), "--tasks", "20",
                              "--set", "AITP_WORKERS__PROCESS_WORKERS=-1"], cwd=ROOT, capture_output=True,
                             text=True, timeout=150)
    assert refused.returncode != 0 and "exited with" in refused.stderr


def test_the_wan_case_compares_a_far_task_api_with_loopback():
    out = run("--tasks", "60", "--rtt", "20")
    for label in ("aitp run, loopback", "aitp run, 20 ms away"):
        assert any(line.startswith(label) and "tasks/s" in line for line in out.splitlines()), label
    assert re.search(r"WAN: with the task API 20 ms away, aitp drains at \d+% of its loopback rate", out)


def test_the_fault_benchmark_measures_each_case_against_the_same_run_without_it():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "faults.py"), "--small"], cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.search(r"the outage cost [+-]\d+\.\d s beyond its own 2 s", done.stdout), done.stdout
    for fault in ("wikidata", "chat"):
        assert re.search(rf"with {fault} failing the embeddings drained at \d+% of their rate", done.stdout)
        assert re.search(rf"{fault}: \d+ embeddings in .* chat calls \d+ for 32 LLM tasks", done.stdout)
