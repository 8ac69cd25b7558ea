"""Docker and compose, kept correct by reading (no Docker engine runs here): the services, ports,
volumes and healthchecks hang together, Prometheus scrapes the processor, the dashboard asks only
for metrics the service exposes, and .env.example lists every setting with its default."""

import json
import re
from pathlib import Path

import pytest
import yaml

from aitp.config import ENV_NAMES, KEY_TO_ENV, LEAF_TYPES, env_example, load_config, parse_dotenv
from aitp.observability.metrics import Metrics, StatusCollector

ROOT = Path(__file__).resolve().parent.parent


def load(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def test_compose_services_ports_volumes_and_healthchecks_hang_together():
    compose = load("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"processor", "ollama", "prometheus", "grafana"}
    declared_volumes = set(compose["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in declared_volumes, f"{name} uses volume {source} that is not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in services

    processor = services["processor"]
    assert processor["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert processor["ports"] == ["127.0.0.1:8001:8001"] and processor["environment"]["METRICS_PORT"] == "8001"
    assert processor["environment"]["METRICS_HOST"] == "0.0.0.0"      # inside the container only
    assert processor["env_file"] == ".env"     # the form Compose 1.29 reads too (not path/required)
    assert any(v.endswith(":/data") for v in processor["volumes"])
    assert processor["environment"]["AITP_DATA_DIR"] == "/data"
    probe = " ".join(processor["healthcheck"]["test"])
    assert "/health" in probe and "8001" in probe
    assert processor["environment"]["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert "ports" not in services["ollama"]      # on the compose network only: its API can delete models
    for name, service in services.items():       # published on 127.0.0.1 only
        assert all(port.startswith("127.0.0.1:") for port in service.get("ports", [])), name
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert password.startswith("${GRAFANA_ADMIN_PASSWORD:?"), password       # required, no default
    assert processor["depends_on"]["ollama"]["condition"] == "service_healthy" and "healthcheck" in services["ollama"]
    assert processor["restart"] == "unless-stopped"       # exit 1 after a fatal error: Docker restarts it
    assert not any(key in json.dumps(processor) for key in ("OPENAI_API_KEY", "OAUTH2_CLIENT_SECRET"))  # from .env

    # The GPU is one override file away, and the override only touches Ollama.
    gpu = load("docker-compose.gpu.yml")["services"]
    assert set(gpu) == {"ollama"}
    devices = gpu["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_prometheus_scrapes_the_processor_where_it_listens():
    prometheus = load("deploy/prometheus/prometheus.yml")
    targets = [t for job in prometheus["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    assert targets == ["processor:8001"]
    assert prometheus["scrape_configs"][0]["metrics_path"] == "/metrics"
    mount = load("docker-compose.yml")["services"]["prometheus"]["volumes"][0]
    assert mount.startswith("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml")


def exposed() -> Metrics:
    """A real registry that has seen every kind of event, and a status with every part."""
    metrics = Metrics()
    metrics.task_decided("text_embedding", "succeeded", 0.1)
    metrics.api_request("/api/ai-tasks/pending", "GET", "200", 0.01)
    for provider in ("openai", "ollama"):
        metrics.provider_call(provider, "m", "success", 4, 0.1, tokens=10)
    metrics.vector_work.observe(0.01)
    metrics.rate_limit_check.observe(0.001)
    status = {"stages": {"poller": {"in_flight": 1, "credit": 2, "window": 256, "left_alone": {"x": 1},
                                    "leased_elsewhere": 0, "adopted": 0}, "dispatcher": {"queued": 1}},
              "coordination": {"available": True, "held": 0},
              "restarts": {"poller": 0}, "process_worker_restarts": 0, "outbox": 0,
              "breakers": {"ollama": {"state": "closed"}},
              "rate_limits": {"tiers": [{"period": "minute", "limit": 5, "used": 1, "remaining": 4}],
                              "exceeded": {"minute": 0}}}
    metrics.registry.register(StatusCollector(lambda: status))
    return metrics


def exposed_names() -> set[str]:
    return {sample.name for family in exposed().registry.collect() for sample in family.samples}


def test_each_legend_names_labels_its_metrics_have():
    """The "Tasks left alone" legend read {{task_type}}, a label that metric does not have (issue 31)."""
    labels: dict[str, set[str]] = {}
    for family in exposed().registry.collect():
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/aitp.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = [name for name in re.findall(r"\b[a-z_]+\b", target["expr"]) if name in labels]
            grouped = {label.strip() for by in re.findall(r"by \(([^)]*)\)", target["expr"]) for label in by.split(",")}
            have = (grouped or set().union(*(labels[name] for name in names))) | {"instance", "job"}   # Prometheus adds
            wanted = set(re.findall(r"{{(\w+)}}", target.get("legendFormat", "")))
            assert wanted <= have, (panel["title"], target["expr"], wanted - have)


def test_the_dashboard_asks_only_for_exposed_metrics_and_covers_the_original_names():
    provisioning = load("deploy/grafana/provisioning/dashboards/aitp.yml")
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = load("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/aitp.json").read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions
            for name in re.findall(r"\b(?:ai|api|openai|ollama|circuit|rate_limit|aitp)_[a-z_]+\b", expr)}
    exposed = exposed_names()
    assert used <= exposed, used - exposed
    original = {"ai_tasks_processed_total", "ai_task_processing_duration_seconds_bucket", "ai_tasks_in_flight",
                "api_requests_total", "api_request_duration_seconds_bucket", "openai_requests_total",
                "openai_tokens_used_total", "ollama_requests_total", "ollama_tokens_used_total",
                "circuit_breaker_state", "rate_limit_current_usage", "rate_limit_max_allowed",
                "rate_limit_exceeded_total", "rate_limit_check_duration_seconds_bucket", "rate_limit_remaining"}
    assert original <= exposed and original <= used
    assert all(panel["datasource"]["uid"] == datasource["uid"] for panel in dashboard["panels"])


def test_the_dockerfile_runs_as_a_user_keeps_data_on_a_volume_and_bakes_in_no_secret():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages and all(image.startswith("python:3.11-slim") for image in stages)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'VOLUME ["/data"]' in text and "AITP_DATA_DIR=/data" in text
    assert re.search(r"^HEALTHCHECK .*\n?.*/health", text, re.M)
    assert "EXPOSE 8001" in text
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    for secret_name in ("OPENAI_API_KEY", "CLIENT_SECRET", "TOKEN"):
        assert secret_name not in instructions
    for copied in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / copied).exists(), copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and "tests" in ignored


def test_env_example_lists_every_setting_with_its_default(tmp_path):
    text = (ROOT / ".env.example").read_text()
    assert text == env_example(), "regenerate it: aitp config env-example > .env.example"
    values = parse_dotenv(ROOT / ".env.example")
    assert set(values) - {"GRAFANA_ADMIN_PASSWORD", "REDIS_PASSWORD"} == set(ENV_NAMES)
    assert set(KEY_TO_ENV) == set(LEAF_TYPES)
    # Read back as a .env, it changes nothing: every line is the default.
    (tmp_path / ".env").write_text(text)
    assert load_config(environ={}, dotenv_dir=tmp_path).settings == load_config(environ={}, dotenv_dir="/x").settings


def test_every_setting_can_come_from_the_environment():
    settings = load_config(environ={"AITP_BATCHING__MAX_ITEMS": "32", "AITP_SUPERVISION__POLLER__INTENSITY": "9",
                                    "AITP_MODELS__DIMENSIONS": '{"m": 12}'}, dotenv_dir="/x").settings
    assert settings.batching.max_items == 32 and settings.supervision.poller.intensity == 9
    assert settings.models.dimensions == {"m": 12}


def _compose_project(tmp_path, password: str) -> Path:
    """A copy of what docker-compose reads, with a .env made from .env.example."""
    import shutil
    tmp_path.mkdir()
    for name in ("docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.scale.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    env = (ROOT / ".env.example").read_text().replace("GRAFANA_ADMIN_PASSWORD=", f"GRAFANA_ADMIN_PASSWORD={password}")
    env = env.replace("REDIS_PASSWORD=", "REDIS_PASSWORD=redispassword1" if password else "REDIS_PASSWORD=")
    (tmp_path / ".env").write_text(env)
    return tmp_path


def _compose_config(project: Path, *files: str):
    """`docker-compose [-f file ...] config` in `project`, as Debian's Compose 1.29 renders it."""
    import shutil
    import subprocess
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (tests/install-peers.sh installs it as root)")
    options = [option for name in files for option in ("-f", name)]
    return subprocess.run([compose, *options, "config"], cwd=project, capture_output=True, text=True, timeout=60)


def test_compose_files_load_in_docker_compose_1_29_and_need_a_grafana_password(tmp_path):
    done = _compose_config(_compose_project(tmp_path / "with", "a-real-password"),
                           "docker-compose.yml", "docker-compose.gpu.yml")
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)
    assert rendered["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "a-real-password"
    refused = _compose_config(_compose_project(tmp_path / "without", ""))
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr


def test_the_scale_out_file_adds_redis_with_aof_and_a_second_processor_with_its_own_ollama():
    scale = load("docker-compose.scale.yml")["services"]
    base = load("docker-compose.yml")["services"]
    redis = scale["redis"]["command"]
    assert redis[redis.index("--appendonly") + 1] == "yes" and redis[redis.index("--appendfsync") + 1] == "always"
    assert "redis-data:/data" in scale["redis"]["volumes"] and "ports" not in scale["redis"]   # unpublished
    second = scale["processor-2"]
    url = "redis://:${REDIS_PASSWORD:?set REDIS_PASSWORD in .env}@redis:6379/0"    # a password, required
    assert scale["processor"]["environment"]["REDIS_URL"] == second["environment"]["REDIS_URL"] == url
    assert redis[redis.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert second["environment"]["OLLAMA_BASE_URL"] == "http://ollama-2:11434" != base["processor"]["environment"][
        "OLLAMA_BASE_URL"]
    assert second["volumes"] == ["aitp-data-2:/data"] and second["ports"] == ["127.0.0.1:8002:8001"]
    for key in ("env_file", "healthcheck", "stop_grace_period", "restart"):
        assert second[key] == base["processor"][key]
    assert "ports" not in scale["ollama-2"]
    mount = scale["prometheus"]["volumes"][0]
    targets = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())["scrape_configs"][0]["static_configs"][0]
    assert targets["targets"] == ["processor:8001", "processor-2:8001"]


def test_the_scale_out_file_loads_in_docker_compose_1_29(tmp_path):
    done = _compose_config(_compose_project(tmp_path / "scale", "a-real-password"),
                           "docker-compose.yml", "docker-compose.scale.yml")
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)["services"]
    assert rendered["processor"]["environment"]["REDIS_URL"] == "redis://:redispassword1@redis:6379/0"
    assert rendered["redis"]["environment"]["REDISCLI_AUTH"] == "redispassword1"     # the health check's
    assert set(rendered["processor"]["depends_on"]) == {"ollama", "redis"}
    sources = [volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
               for volume in rendered["prometheus"]["volumes"]]
    assert any(source.endswith("prometheus.scale.yml") for source in sources)
    assert not any(source.endswith("prometheus/prometheus.yml") for source in sources)   # replaced, not added
    project = _compose_project(tmp_path / "no-redis-password", "a-real-password")
    (project / ".env").write_text((project / ".env").read_text().replace("REDIS_PASSWORD=redispassword1",
                                                                          "REDIS_PASSWORD="))
    refused = _compose_config(project, "docker-compose.yml", "docker-compose.scale.yml")
    assert refused.returncode != 0 and "REDIS_PASSWORD" in refused.stderr
