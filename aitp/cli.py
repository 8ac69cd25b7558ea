"""The `aitp` command line: run, demo, sandbox, config show, --version."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import msgspec

from aitp import __version__

from aitp.observability import logs
from aitp.config import KEY_TO_ENV, LoadedConfig, env_example, load_config, redacted_items, secret_values
from aitp.errors import ConfigError
from aitp.service import ServiceFactory

log = logging.getLogger("aitp.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aitp", description="AI Task Processor: embeds pending tasks "
                                     "of a task API with Ollama, OpenAI or a mock, and reports every result.")
    parser.add_argument("--version", action="version", version=f"aitp {__version__}")
    parser.add_argument("--config", metavar="FILE", help="TOML file (default: $AITP_CONFIG; see config/aitp.toml)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    commands.add_parser("run", help="run the service until SIGTERM or SIGINT")

    demo = commands.add_parser("demo", help="drain a sandbox task API with the mock provider and print a summary")
    demo.add_argument("--tasks", type=int, default=200, help="good tasks to seed (default 200)")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the drain (default 120)")

    sandbox = commands.add_parser("sandbox", help="serve a local task API (and token endpoint) to try aitp by hand")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=3000)
    source = sandbox.add_mutually_exclusive_group()
    source.add_argument("--tasks", type=int, default=100, help="generate N good tasks plus malformed ones")
    source.add_argument("--tasks-file", type=Path, help="a JSON array of tasks to serve")
    sandbox.add_argument("--client-id", help="require OAuth2 client credentials with this id")
    sandbox.add_argument("--client-secret", help="the secret that goes with --client-id")
    sandbox.add_argument("--token-lifetime", type=float, default=3600.0)

    config = commands.add_parser("config", help="configuration commands")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    show = config_commands.add_parser("show", help="the effective configuration and where each value came from")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML-like text")
    config_commands.add_parser("env-example", help="print every setting by its environment name, with its default "
                               "(the text of .env.example)")
    return parser


def main(argv: list[str] | None, make_service: ServiceFactory) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "sandbox":
            return _sandbox(args)
        if args.command == "demo":
            from aitp.demo import run_demo
            logs.configure("WARNING", "text")
            return run_demo(make_service, tasks=args.tasks, timeout=args.timeout)
        if args.command == "config" and args.config_command == "env-example":
            print(env_example(), end="")
            return EXIT_OK
        loaded = load_config(args.config)
        if args.command == "config":
            return _config_show(loaded, as_json=args.json)
        return _run(loaded, make_service)
    except ConfigError as exc:
        print(f"aitp: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _run(loaded: LoadedConfig, make_service: ServiceFactory) -> int:
    settings = loaded.settings
    logs.configure(settings.monitoring.log_level, settings.monitoring.log_format, secret_values(settings))
    stop = threading.Event()
    signals_seen = []

    def on_signal(signum, _frame) -> None:
        signals_seen.append(signum)
        if len(signals_seen) > 1:   # a second signal means "now"; the journal makes that safe
            os._exit(128 + signum)
        log.info("stopping", extra={"fields": {"signal": signal.Signals(signum).name}})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = make_service(settings, stop, sources=loaded.sources)
    try:
        if service.start():
            service.wait()
    finally:
        service.shutdown()
    if service.fatal_reason:
        log.critical("exiting after a fatal error", extra={"fields": {"reason": service.fatal_reason}})
        return EXIT_FAILED
    return EXIT_OK


def _config_show(loaded: LoadedConfig, *, as_json: bool) -> int:
    rows = redacted_items(loaded)
    if as_json:
        shown = {key: {"value": value, "source": source, "env": KEY_TO_ENV.get(key)} for key, value, source in rows}
        for model, dimension in _learned_dimensions(loaded.settings).items():
            shown[f"models.dimensions.{model}"] = {"value": dimension, "source": "journal (first vector)", "env": None}
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    section = None
    for key, value, source in rows:
        head, _, name = key.rpartition(".")
        if head != section:
            print(f"\n[{head}]")
            section = head
        env = f" ({KEY_TO_ENV[key]})" if key in KEY_TO_ENV else ""
        print(f"{name} = {msgspec.json.encode(value).decode()}  # {source}{env}")
    settings = loaded.settings
    learned = _learned_dimensions(settings)
    if learned:
        print("\n# dimensions pinned by the first vector of each model (journal), checked from then on:")
        for model, dimension in sorted(learned.items()):
            print(f"#   {model} = {dimension}")
    print(_token_line(settings))
    for line in _rate_limit_lines(settings):
        print(line)
    print(f"\n# derived: data_dir = {settings.data_dir}; token_url = {settings.token_url or '(no OAuth2)'}; "
          f"providers = {_provider_names(settings)}")
    return EXIT_OK


def _rate_limit_lines(settings) -> list[str]:
    """Each tier's limit, usage and remaining units, read from the shared storage file."""
    from aitp.storage.rate_limits import TieredLimits, rate_limits_for

    if not settings.rate_limit_path.exists():
        return []
    backend = rate_limits_for(settings)
    if not isinstance(backend, TieredLimits):
        return []
    try:
        lines = [f"\n# rate limits ({settings.rate_limit.strategy}, {settings.rate_limit_path}):"]
        for tier in backend.usage():
            frees = (f", next unit free at {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(tier.resets_at))}"
                     if tier.resets_at else "")
            lines.append(f"#   per {tier.period}: {tier.used} of {tier.limit} used, {tier.remaining} left{frees}")
        return lines
    finally:
        backend.close()


def _token_line(settings) -> str:
    """Whether the running (or last) service holds a token and until when; never the token."""
    if not settings.uses_oauth2:
        return "\n# token: none needed (no OAuth2 client configured)"
    from aitp.transport.auth import read_auth_status

    status = read_auth_status(settings.auth_status_path)
    if status is None:
        return "\n# token: unknown (the service has not fetched one with this data directory)"
    as_of = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status.updated_at))
    if status.token_held and status.expires_at:
        expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(status.expires_at))
        held = f"held, expires {expires}" + (" (expired)" if status.expires_at < time.time() else "")
    else:
        held = "not held" + (f": {status.last_error}" if status.last_error else "")
    return f"\n# token: {held} (as of {as_of}, from {status.token_url})"


def _provider_names(settings) -> str:
    remote = "mock" if settings.uses_mock_provider else "openai"
    return {"openai": remote, "ollama": "ollama", "hybrid": f"ollama, then {remote}",
            "mock": "mock"}[settings.processing.mode]


def _learned_dimensions(settings) -> dict[str, int]:
    """Model dimensions the journal pinned that the settings do not list."""
    if not settings.journal_path.exists():
        return {}
    from aitp.storage.journal import Journal

    journal = Journal(settings.journal_path)
    try:
        pinned = journal.pinned_dimensions()
    finally:
        journal.close()
    return {model: dim for model, dim in pinned.items() if model not in settings.models.dimensions}


def _sandbox(args) -> int:
    from aitp.sandbox import SandboxServer, demo_tasks

    from aitp.sandbox.wikidata_stub import WikidataStub

    tasks = json.loads(args.tasks_file.read_text()) if args.tasks_file else \
        demo_tasks(args.tasks, llm_count=max(1, args.tasks // 5))
    if bool(args.client_id) != bool(args.client_secret):
        raise ConfigError("--client-id", args.client_id or "", "--client-id and --client-secret together")
    server = SandboxServer(tasks, host=args.host, port=args.port, client_id=args.client_id,
                           client_secret=args.client_secret, token_lifetime=args.token_lifetime)
    server.start()
    wikidata = WikidataStub(host=args.host)      # the LLM task types' look-ups, answered locally
    wikidata.start()
    print(f"sandbox task API at {server.url} with {len(tasks)} tasks; point aitp at it with:")
    local_wikidata = " ".join(f"{name}={value}" for name, value in wikidata.settings_env().items())
    print(f"  API_BASE_URL={server.url} {local_wikidata}")
    if args.client_id:
        print(f"  OAUTH2_TOKEN_URL={server.token_url} OAUTH2_CLIENT_ID={args.client_id} OAUTH2_CLIENT_SECRET=...")
    print(f"state: {server.url}/_sandbox/stats  tasks: {server.url}/_sandbox/tasks  (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.25):   # a timed wait, so that a signal on another thread is seen
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    wikidata.stop()
    return EXIT_OK
