"""The sandbox's HTTP side: Plivo's Message API plus local control endpoints."""

from __future__ import annotations

import dataclasses
import hmac
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox.config import SandboxConfig, normalize_prefixes
from sandbox.messages import InvalidMessageRequest, new_message_uuids, parse_message_request
from sandbox.state import SandboxState

API_PREFIX = "/v1/Account"


@dataclass
class Sandbox:
    """What one app instance serves from; reachable as app.extensions["sandbox"]."""

    config: SandboxConfig
    state: SandboxState


def create_app(config: SandboxConfig | None = None) -> Flask:
    if config is None:
        config = SandboxConfig.from_env()
    else:
        # A private copy: run-time changes via /sandbox/config must not leak into the caller's.
        config = dataclasses.replace(config, invalid_prefixes=list(config.invalid_prefixes))
    sandbox = Sandbox(config=config, state=SandboxState())

    app = Flask(__name__)
    # Keep Plivo's field order, and spare sorting a /stats with a million numbers.
    app.json.sort_keys = False
    app.extensions["sandbox"] = sandbox

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _plivo_error(error.code or 500, f"{error.name}: {request.method} {request.path}")

    @app.post(f"{API_PREFIX}/<auth_id>/Message/", strict_slashes=False)
    def send_message(auth_id: str):
        if not _authenticated(config, auth_id):
            sandbox.state.record_auth_failure()
            return _plivo_error(401, "authentication credentials invalid")
        body = request.get_json(force=True, silent=True)
        try:
            message = parse_message_request(body, config.invalid_prefixes)
        except InvalidMessageRequest as error:
            sandbox.state.record_bad_request(len(error.extra.get("invalid_number", ())))
            return _plivo_error(400, error.message, **error.extra)

        uuids = new_message_uuids(len(message.destinations))
        sandbox.state.record_accepted(message, uuids)
        response = {"api_id": _api_id(), "message": "message(s) queued", "message_uuid": uuids}
        if message.invalid_numbers:
            response["invalid_number"] = message.invalid_numbers
        return jsonify(response), 202

    @app.get("/health")
    def health():
        return jsonify(ok=True)

    @app.get("/stats")
    def stats():
        return jsonify(sandbox.state.stats())

    @app.post("/stats/reset")
    def reset_stats():
        sandbox.state.reset()
        return jsonify(ok=True)

    @app.get("/sandbox/config")
    def show_config():
        return jsonify(config.public())

    @app.post("/sandbox/config")
    def change_config():
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return _plivo_error(400, "request body must be a JSON object")
        unknown = sorted(set(body) - {"invalid_prefixes"})
        if unknown:
            return _plivo_error(400, f"unknown config keys: {', '.join(unknown)}")
        if "invalid_prefixes" in body:
            try:
                # One assignment, so a request in flight sees the old or the new list, never half.
                config.invalid_prefixes = normalize_prefixes(body["invalid_prefixes"])
            except (TypeError, ValueError) as error:
                return _plivo_error(400, str(error))
        return jsonify(config.public())

    return app


def _authenticated(config: SandboxConfig, path_auth_id: str) -> bool:
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    # Constant-time, like any credential check; bytes because compare_digest rejects non-ASCII str.
    return (
        hmac.compare_digest((auth.username or "").encode(), config.auth_id.encode())
        & hmac.compare_digest((auth.password or "").encode(), config.auth_token.encode())
        & hmac.compare_digest(path_auth_id.encode(), config.auth_id.encode())
    )


def _api_id() -> str:
    return str(uuid.uuid4())


def _plivo_error(status: int, message: str, **extra):
    return jsonify({"api_id": _api_id(), "error": message, **extra}), status


class _QuietRequestHandler(WSGIRequestHandler):
    # One access-log line per request would dominate a benchmark's output and its time.
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def make_sandbox_server(app: Flask, host: str = "127.0.0.1", port: int = 0) -> BaseWSGIServer:
    """A threaded server: the SDK's callers send concurrently, as they would to Plivo."""
    return make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)


def serve_in_thread(
    config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve a fresh sandbox in a daemon thread; port 0 picks a free one.

    Returns the base URL (no trailing slash) and a callable that stops the server.
    """
    server = make_sandbox_server(create_app(config), host, port)
    # A short poll interval makes shutdown() return quickly between tests.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="plivo-sandbox",
        daemon=True,
    )
    thread.start()

    def shutdown() -> None:
        server.shutdown()
        server.server_close()
        thread.join()

    return f"http://{host}:{server.port}", shutdown
