"""The pipeline: one thin pykka actor per stage, in the order a task flows, under a supervisor.

poller -> rate_limiter -> dispatcher -> provider_workers (or llm_workers) -> reporter, with the
authenticator beside them; `stage` is their base, `directory` how they reach each other, `parts`
what each is built with, `pipeline` composes them and `app` is the `aitp` command's entry point.
"""

__all__ = ["app", "authenticator", "directory", "dispatcher", "held_tells", "llm_workers", "messages", "parts",
           "patch_sender", "pipeline", "poller", "provider_workers", "rate_limiter", "reporter", "stage", "supervisor",
           "watch"]
