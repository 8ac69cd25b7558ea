import json
import subprocess
import sys
import tomllib

import msgspec
import pytest

from aitp.config import ENV_NAMES, LEAF_TYPES, Settings, load_config, redacted_items
from aitp.errors import ConfigError
from conftest import ROOT

TOML = ROOT / "config" / "aitp.toml"


def test_shipped_toml_mirrors_the_built_in_defaults():
    assert load_config(TOML, environ={}).settings == Settings()


def test_shipped_toml_lists_every_key_with_a_comment():
    text = TOML.read_text()
    flat = {}

    def walk(tree, prefix=""):
        for name, value in tree.items():
            key = prefix + name
            if isinstance(value, dict) and key not in LEAF_TYPES:
                walk(value, key + ".")
            else:
                flat[key] = value

    walk(tomllib.loads(text))
    assert set(flat) == set(LEAF_TYPES)
    for key in LEAF_TYPES:
        if key.startswith("supervision."):
            continue
        if key in ("models.dimensions", "models.chat"):       # tables: the comment is on their header
            line = next(line for line in text.splitlines() if line.startswith(f"[{key}]"))
        else:
            line = next(line for line in text.splitlines() if line.startswith(key.rsplit(".", 1)[1] + " "))
        assert "#" in line, f"{key} has no comment in config/aitp.toml"


def test_every_original_env_name_is_honoured():
    originals = ["API_BASE_URL", "ORY_PROJECT_SLUG", "OAUTH2_CLIENT_ID", "OAUTH2_CLIENT_SECRET", "OAUTH2_SCOPE",
                 "PROCESSING_MODE", "OPENAI_API_KEY", "OPENAI_TIMEOUT", "OLLAMA_BASE_URL", "OLLAMA_TIMEOUT",
                 "OLLAMA_MAX_RETRIES", "OLLAMA_MODEL_DOWNLOAD_TIMEOUT", "SUPPORTED_MODELS",
                 "POLLING_INTERVAL_SECONDS", "CONCURRENCY_LIMIT", "MAX_RETRIES", "REQUEST_TIMEOUT",
                 "RETRY_BACKOFF_FACTOR", "CIRCUIT_BREAKER_THRESHOLD", "METRICS_PORT", "LOG_LEVEL",
                 "RATE_LIMIT_ENABLED", "RATE_LIMIT_PER_MINUTE", "RATE_LIMIT_PER_HOUR", "RATE_LIMIT_PER_DAY",
                 "RATE_LIMIT_PER_WEEK", "RATE_LIMIT_PER_MONTH", "RATE_LIMIT_STRATEGY", "RATE_LIMIT_STORAGE_PATH",
                 "OAUTH2_TOKEN_URL", "OPENAI_BASE_URL", "AITP_DATA_DIR"]
    assert set(originals) <= set(ENV_NAMES)
    loaded = load_config(environ={"CONCURRENCY_LIMIT": "7", "RATE_LIMIT_ENABLED": "false",
                                  "POLLING_INTERVAL_SECONDS": "2.5", "OLLAMA_TIMEOUT": "9"}, dotenv_dir="/nonexistent")
    s = loaded.settings
    assert (s.processing.concurrency_limit, s.rate_limit.enabled, s.polling.interval_seconds, s.ollama.timeout) \
        == (7, False, 2.5, 9.0)
    assert loaded.sources["processing.concurrency_limit"] == "environment CONCURRENCY_LIMIT"


def test_precedence_defaults_then_file_then_dotenv_then_environment(tmp_path):
    config = tmp_path / "aitp.toml"
    config.write_text('[processing]\nconcurrency_limit = 3\nmax_in_flight = 50\n[polling]\ninterval_seconds = 4.0\n')
    (tmp_path / ".env").write_text('# comment\nexport CONCURRENCY_LIMIT=5\nPOLLING_INTERVAL_SECONDS="6"\n')
    loaded = load_config(config, environ={"POLLING_INTERVAL_SECONDS": "8"}, dotenv_dir=tmp_path)
    s = loaded.settings
    assert s.processing.max_in_flight == 50            # file over default
    assert s.processing.concurrency_limit == 5         # .env over file
    assert s.polling.interval_seconds == 8.0           # environment over .env
    assert s.batching.max_items == 15                  # default
    assert loaded.sources["processing.max_in_flight"].startswith("file ")
    assert loaded.sources["processing.concurrency_limit"] == ".env CONCURRENCY_LIMIT"


def test_aitp_config_env_names_the_file(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text("[batching]\nmax_items = 4\n")
    assert load_config(environ={"AITP_CONFIG": str(config)}, dotenv_dir=tmp_path).settings.batching.max_items == 4


@pytest.mark.parametrize("supported, expected", [
    ('["a", "b:7b"]', ["a", "b:7b"]), ("a, b", ["a", "b"]), ("nomic-embed-text", ["nomic-embed-text"])])
def test_supported_models_json_or_comma_separated(supported, expected):
    assert load_config(environ={"SUPPORTED_MODELS": supported}, dotenv_dir="/x").settings.processing.supported_models \
        == expected


@pytest.mark.parametrize("env, key, expected", [
    ({"CONCURRENCY_LIMIT": "0"}, "processing.concurrency_limit", ">= 1"),
    ({"CONCURRENCY_LIMIT": "many"}, "processing.concurrency_limit", "a number"),
    ({"PROCESSING_MODE": "gpu"}, "processing.mode", "one of 'openai', 'ollama', 'hybrid'"),
    ({"RATE_LIMIT_ENABLED": "maybe"}, "rate_limit.enabled", "true or false"),
    ({"API_BASE_URL": "localhost:3000"}, "api.base_url", "http:// or https://"),
    ({"METRICS_PORT": "70000"}, "monitoring.metrics_port", "<= 65535"),
    ({"OAUTH2_CLIENT_ID": "id"}, "auth.client_id", "set together"),
])
def test_a_bad_value_names_key_value_and_expectation(env, key, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(environ=env, dotenv_dir="/x")
    message = str(caught.value)
    assert key in message and expected in message
    assert repr(next(iter(env.values()))) in message


def test_unknown_toml_key_is_refused(tmp_path):
    config = tmp_path / "a.toml"
    config.write_text("[batching]\nmax_itemz = 4\n")
    with pytest.raises(ConfigError, match="batching.max_itemz"):
        load_config(config, environ={}, dotenv_dir=tmp_path)


def test_cli_exits_2_with_one_message_on_a_bad_value(tmp_path):
    result = subprocess.run([sys.executable, "-m", "actors", "run"], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "", "CONCURRENCY_LIMIT": "-1", "AITP_DATA_DIR": str(tmp_path)}, timeout=60)
    assert result.returncode == 2
    assert "processing.concurrency_limit='-1'" in result.stderr and "CONCURRENCY_LIMIT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", ["openai", "hybrid"])
def test_no_openai_key_stops_aitp_run_with_exit_2_naming_it(tmp_path, mode):
    # Before, the missing key fell back to the mock: random vectors reported as results.
    result = subprocess.run([sys.executable, "-m", "actors", "run"], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "", "PROCESSING_MODE": mode, "AITP_DATA_DIR": str(tmp_path),
                                 "METRICS_PORT": "0", "OLLAMA_BASE_URL": "http://127.0.0.1:9"}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "OPENAI_API_KEY" in result.stderr and "PROCESSING_MODE=mock" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_show_redacts_secrets_and_names_sources(tmp_path):
    env = {"PATH": "", "OAUTH2_CLIENT_ID": "client", "OAUTH2_CLIENT_SECRET": "s3cret-value",
           "OAUTH2_TOKEN_URL": "http://127.0.0.1:1/token", "OPENAI_API_KEY": "sk-real-key-123"}
    result = subprocess.run([sys.executable, "-m", "actors", "config", "show", "--json"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "s3cret-value" not in result.stdout and "sk-real-key-123" not in result.stdout
    shown = json.loads(result.stdout)
    assert shown["auth.client_secret"] == {"value": "***", "source": "environment OAUTH2_CLIENT_SECRET",
                                           "env": "OAUTH2_CLIENT_SECRET"}
    assert shown["auth.client_id"]["value"] == "client"
    assert shown["batching.max_items"]["source"] == "default"


def test_redacted_items_cover_every_key():
    rows = redacted_items(load_config(environ={}, dotenv_dir="/x"))
    assert [key for key, _, _ in rows] == list(LEAF_TYPES)
    assert msgspec.json.encode([value for _, value, _ in rows])   # all printable


def test_token_url_is_oauth2_token_url_or_derived_from_the_ory_slug():
    def token_url(**env):
        return load_config(environ=env, dotenv_dir="/nonexistent").settings.token_url

    assert token_url(ORY_PROJECT_SLUG="brave-pike-42") == "https://brave-pike-42.projects.oryapis.com/oauth2/token"
    assert token_url(ORY_PROJECT_SLUG="brave-pike-42", OAUTH2_TOKEN_URL="http://127.0.0.1:4444/oauth2/token") \
        == "http://127.0.0.1:4444/oauth2/token"
    assert token_url() == ""
    default = load_config(environ={}, dotenv_dir="/nonexistent").settings.auth.client_auth_method
    assert default == "client_secret_basic"     # what an Ory client uses unless told otherwise


@pytest.mark.parametrize("env, key", [
    ({"OAUTH2_TOKEN_URL": "http://auth.example.com/oauth2/token"}, "auth.token_url"),     # the secret in clear
    ({"ORY_PROJECT_SLUG": "evil.example#"}, "auth.ory_project_slug"),                      # another host
    ({"ORY_PROJECT_SLUG": "a/b"}, "auth.ory_project_slug"),
])
def test_a_token_url_that_would_expose_the_secret_stops_startup(env, key):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"OAUTH2_CLIENT_ID": "c", "OAUTH2_CLIENT_SECRET": "s", **env}, dotenv_dir="/x")
    assert caught.value.key == key


@pytest.mark.parametrize("env", [
    {"OAUTH2_TOKEN_URL": "http://127.0.0.1:4444/oauth2/token"},
    {"OAUTH2_TOKEN_URL": "http://localhost:4444/oauth2/token"},
    {"OAUTH2_TOKEN_URL": "http://[::1]:4444/oauth2/token"},
    {"OAUTH2_TOKEN_URL": "http://hydra:4444/oauth2/token", "AITP_AUTH__ALLOW_PLAIN_HTTP_TOKEN_URL": "true"},
    {"ORY_PROJECT_SLUG": "my-project-123"},
])
def test_loopback_http_an_explicit_allowance_or_https_is_accepted(env):
    settings = load_config(environ={"OAUTH2_CLIENT_ID": "c", "OAUTH2_CLIENT_SECRET": "s", **env},
                           dotenv_dir="/x").settings
    assert settings.token_url


def test_a_remote_plain_http_token_url_makes_aitp_run_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "actors", "run"], capture_output=True, text=True, cwd=tmp_path,
                            env={"PATH": "", "OAUTH2_CLIENT_ID": "c", "OAUTH2_CLIENT_SECRET": "s",
                                 "OAUTH2_TOKEN_URL": "http://auth.example.com/token", "AITP_DATA_DIR": str(tmp_path)},
                            timeout=60)
    assert result.returncode == 2 and "auth.token_url" in result.stderr and "https" in result.stderr


def test_the_generic_name_works_for_every_key_and_the_original_name_wins(tmp_path):
    alone = load_config(environ={"AITP_API__BASE_URL": "http://api.example:3000"}, dotenv_dir=tmp_path)
    assert alone.settings.api.base_url == "http://api.example:3000"
    assert alone.sources["api.base_url"] == "environment AITP_API__BASE_URL"
    both = load_config(environ={"AITP_API__BASE_URL": "http://generic:1", "API_BASE_URL": "http://original:2"},
                       dotenv_dir=tmp_path)
    assert both.settings.api.base_url == "http://original:2"
    assert both.sources["api.base_url"] == "environment API_BASE_URL"


def test_dotenv_is_read_as_python_dotenv_reads_it(tmp_path):
    (tmp_path / ".env").write_text('API_BASE_URL="http://quoted:3000" # a note after the quotes\n'
                                   "export LOG_LEVEL='DEBUG'\n"
                                   'OAUTH2_SCOPE="a b"\n'
                                   "OPENAI_API_KEY=sk-with-#-inside\n")
    settings = load_config(environ={}, dotenv_dir=tmp_path).settings
    assert settings.api.base_url == "http://quoted:3000"          # the quotes were kept before
    assert settings.monitoring.log_level == "DEBUG" and settings.auth.scope == "a b"
    assert settings.openai.api_key == "sk-with-#-inside"
