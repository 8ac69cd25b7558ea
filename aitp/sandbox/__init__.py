"""A local stand-in for the NestJS task API (and its token endpoint), for the demo, tests and trying
the service by hand. It behaves as ../shared/CONTRACT.md says the real one does."""

from aitp.sandbox.seed import demo_tasks, generated_tasks, object_id
from aitp.sandbox.server import SandboxServer

__all__ = ["SandboxServer", "demo_tasks", "generated_tasks", "object_id"]
