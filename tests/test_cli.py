import subprocess
import sys

import requests

from aitp import __version__


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "actors", *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"aitp {__version__}"
    help_text = run_cli("--help").stdout
    for command in ("run", "demo", "sandbox", "config"):
        assert command in help_text


def test_sandbox_command_serves_generated_tasks(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "actors", "sandbox", "--port", "0", "--tasks", "7"],
                               stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        first = process.stdout.readline()
        url = first.split(" at ", 1)[1].split(" ", 1)[0]
        listed = requests.get(f"{url}/api/ai-tasks/pending", timeout=5).json()
        assert len(listed) == 7 + 4 + 11     # the good ones, one of each LLM type, the malformed and foreign
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_sandbox_command_serves_a_task_file(tmp_path):
    tasks = tmp_path / "tasks.json"
    tasks.write_text('[{"_id": "68b89107952364b0aad89c1d", "type": "text_embedding", "state": "pending",'
                     ' "content": {"text": "t", "model": "m"}}]')
    process = subprocess.Popen([sys.executable, "-m", "actors", "sandbox", "--port", "0", "--tasks-file", str(tasks)],
                               stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        url = process.stdout.readline().split(" at ", 1)[1].split(" ", 1)[0]
        assert [t["_id"] for t in requests.get(f"{url}/api/ai-tasks/pending", timeout=5).json()] == \
            ["68b89107952364b0aad89c1d"]
    finally:
        process.terminate()
        process.wait(timeout=10)

