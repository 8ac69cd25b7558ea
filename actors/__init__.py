"""The pipeline: one thin pykka actor per stage, in the order a task flows, under a supervisor.

poller -> rate_limiter -> dispatcher -> provider_workers -> reporter, with the authenticator
beside them; `pipeline` composes them and `app` is the `aitp` command's entry point.
"""

__all__ = ["app", "authenticator", "dispatcher", "messages", "pipeline", "poller", "provider_workers",
           "rate_limiter", "reporter", "stage", "supervisor"]
