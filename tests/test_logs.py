"""Logs never show a secret, in any form it takes, and cannot be forged by the values they carry."""

import io
import json
import logging
import subprocess
import sys

import pytest

from aitp.observability import logs
from conftest import wait_until

SECRET = 'p@ss"wo\\rd/with:odd&chars=1'        # a quote and a backslash change its JSON form


@pytest.fixture
def captured():
    stream = io.StringIO()

    def configure(fmt: str = "json"):
        logs.configure("DEBUG", fmt, [SECRET], stream=stream)
        return stream
    yield configure
    logs.configure("INFO", "json", [], stream=sys.stderr)


def test_a_secret_is_blanked_in_every_form_before_the_line_is_encoded(captured):
    stream = captured("json")
    log = logging.getLogger("aitp.test")
    log.warning(f"token endpoint said: {SECRET}", extra={"fields": {
        "detail": {"nested": [SECRET]}, "escaped": json.dumps(SECRET), "url": f"https://u:{SECRET}@h/x",
        "cut": f"error text {SECRET}"[:20]}})          # a [:20] cut leaves the secret's start at the end
    line = stream.getvalue()
    entry = json.loads(line)
    for form in (SECRET, json.dumps(SECRET)[1:-1], SECRET[:6]):
        assert form not in line and form not in json.dumps(entry, ensure_ascii=False)
    assert entry["event"] == "token endpoint said: ***" and entry["detail"] == {"nested": ["***"]}
    assert entry["cut"].endswith("***")


def test_a_password_in_any_url_is_blanked(captured):
    stream = captured("json")
    logging.getLogger("aitp.test").info("pipeline started", extra={"fields": {
        "api": "http://aitp:not-a-known-secret@tasks.example:3000"}})
    assert "not-a-known-secret" not in stream.getvalue()
    assert json.loads(stream.getvalue())["api"] == "http://aitp:***@tasks.example:3000"


def test_fields_cannot_overwrite_the_core_keys(captured):
    stream = captured("json")
    logging.getLogger("aitp.test").info("the real event", extra={"fields": {
        "event": "forged", "level": "debug", "ts": "1970", "logger": "x", "task_id": "t1"}})
    entry = json.loads(stream.getvalue())
    assert (entry["event"], entry["level"], entry["logger"]) == ("the real event", "info", "aitp.test")
    assert entry["event_"] == "forged" and entry["task_id"] == "t1"


def test_text_lines_escape_control_characters_so_a_value_cannot_forge_a_line(captured):
    stream = captured("text")
    logging.getLogger("aitp.test").warning("task failed\n2026-01-01 00:00:00 INFO forged: all good",
                                           extra={"fields": {"reason": "bad\r\nINFO forged"}})
    text = stream.getvalue()
    assert text.count("\n") == 1 and "\\n2026" in text and "bad\\r\\nINFO" in text


def test_config_show_and_the_service_log_never_show_a_url_password(tmp_path):
    env = {"PATH": "", "API_BASE_URL": "http://aitp:url-pa55word@127.0.0.1:9", "AITP_DATA_DIR": str(tmp_path),
           "PROCESSING_MODE": "mock", "METRICS_PORT": "0", "POLLING_INTERVAL_SECONDS": "60"}
    shown = subprocess.run([sys.executable, "-m", "actors", "config", "show"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "url-pa55word" not in shown.stdout and "http://aitp:***@127.0.0.1:9" in shown.stdout
    log_path = tmp_path / "service.log"
    with open(log_path, "wb") as log_file:      # a file, not a pipe: a pipe nobody reads can block the service
        service = subprocess.Popen([sys.executable, "-m", "actors", "run"], cwd=tmp_path, env=env,
                                   stderr=log_file)
        try:
            wait_until(lambda: "pipeline started" in log_path.read_text(), message="the line that names the API")
        finally:
            service.terminate()
            assert service.wait(60) == 0
    assert "url-pa55word" not in log_path.read_text()


def test_a_redis_password_is_blanked_in_config_show_and_in_a_bad_value_error(tmp_path):
    env = {"PATH": "", "AITP_DATA_DIR": str(tmp_path), "PROCESSING_MODE": "mock",
           "REDIS_URL": "redis://:redis-pa55word@10.0.0.5:6379/0"}
    shown = subprocess.run([sys.executable, "-m", "actors", "config", "show"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "redis-pa55word" not in shown.stdout and "redis://:***@10.0.0.5:6379/0" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "actors", "config", "show"], capture_output=True, text=True,
                             cwd=tmp_path, env={**env, "REDIS_URL": "http://:redis-pa55word@10.0.0.5/"}, timeout=60)
    assert refused.returncode == 2 and "coordination.redis_url" in refused.stderr
    assert "redis-pa55word" not in refused.stderr and "redis://, rediss:// or unix://" in refused.stderr


def test_every_ollama_hosts_password_is_blanked_in_config_show_and_known_to_the_redactor(tmp_path):
    from aitp.config import load_config, secret_values

    urls = "http://a:host-one-pw@gpu-1:11434,http://b:host-two-pw@gpu-2:11434"
    env = {"PATH": "", "AITP_DATA_DIR": str(tmp_path), "PROCESSING_MODE": "mock", "OLLAMA_BASE_URL": urls}
    shown = subprocess.run([sys.executable, "-m", "actors", "config", "show"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "host-one-pw" not in shown.stdout and "host-two-pw" not in shown.stdout
    assert "http://a:***@gpu-1:11434,http://b:***@gpu-2:11434" in shown.stdout
    settings = load_config(environ={"OLLAMA_BASE_URL": urls}, dotenv_dir=tmp_path).settings
    assert {"host-one-pw", "host-two-pw"} <= set(secret_values(settings))


REQUEST_LINE = 'HTTP Request: POST https://api.openai.com/v1/embeddings "HTTP/1.1 200 OK"'


@pytest.mark.parametrize("level, shown", [("INFO", False), ("DEBUG", True)])
def test_the_libraries_request_lines_are_shown_only_at_debug(level, shown):
    """Issue 31: in openai mode httpx logged a line per request at INFO: 150 of a drain's 309 lines."""
    stream = io.StringIO()
    try:
        logs.configure(level, "json", [], stream=stream)
        logging.getLogger("httpx").info(REQUEST_LINE)
        logging.getLogger("openai._base_client").info("Retrying request")
        logging.getLogger("httpx").warning("a library's warning")
    finally:
        logs.configure("INFO", "json", [], stream=sys.stderr)
    lines = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert (REQUEST_LINE in lines) is shown
    assert ("Retrying request" in lines) is shown
    assert "a library's warning" in lines
