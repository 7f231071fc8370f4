"""A local Plivo-compatible API server; imports nothing from the rest of the project."""

from sandbox.config import SandboxConfig
from sandbox.server import create_app, serve_in_thread

__all__ = ["SandboxConfig", "create_app", "serve_in_thread"]
