"""/health: what an operator reads from the pipeline's status (Pipeline.status), and its HTTP code."""

from __future__ import annotations

from aitp import __version__
from aitp.config import Settings


def health_body(status: dict, settings: Settings, phase: str, uptime_s: float,
                fatal_reason: str | None, dependencies: dict | None = None) -> tuple[int, dict]:
    """The body and code of /health: 503 once failing or stopping; 200 otherwise, `degraded` while
    a dependency is not ok (a restart would not mend it; /ready says whether to send work)."""
    dependencies = dependencies or {}
    restarts = status.get("restarts", {})
    stages = {name: {"state": stage.get("state") if stage.get("state") in ("down", "busy") else "running",
                     "restarts": restarts.get(name, 0)} for name, stage in status["stages"].items()}
    authenticator = status["stages"].get("authenticator", {})
    poller = status["stages"].get("poller", {})
    failing = fatal_reason is not None
    running = "degraded" if any(d["state"] != "ok" for d in dependencies.values()) else "ok"
    body = {
        "status": "failing" if failing else ("stopping" if phase == "stopping" else
                                             running if phase == "running" else "starting"),
        "version": __version__, "mode": settings.processing.mode, "phase": phase,
        "mock": settings.uses_mock_provider,
        "uptime_s": round(uptime_s, 1),
        "stages": stages,
        "breakers": {name: breaker["state"] for name, breaker in status.get("breakers", {}).items()},
        "token": {"configured": settings.uses_oauth2,
                  "held": bool(authenticator.get("token_held")),
                  "expires_at": authenticator.get("expires_at"), "last_error": authenticator.get("last_error")},
        "rate_limits": status.get("rate_limits", {}),
        "in_flight": poller.get("in_flight", 0),
        "window": poller.get("window"),     # tasks it may hold in flight
        "outbox": status.get("outbox", 0),
        "coordination": status.get("coordination"),
        "process_worker_restarts": status.get("process_worker_restarts", 0),
        "dependencies": dependencies,
    }
    if failing:
        body["reason"] = fatal_reason
    return (503 if failing or phase == "stopping" else 200), body
