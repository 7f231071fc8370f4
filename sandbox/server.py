"""The sandbox's HTTP side: Plivo's Message API plus local control endpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable

import requests
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox.callbacks import CallbackSender, callback_session
from sandbox.config import SandboxConfig
from sandbox.delivery import Outcome, choose_outcomes
from sandbox.inbound import INTENTS, inbound_form
from sandbox.lookups import InvalidQuery, list_page, message_record, parse_list_query
from sandbox.messages import (
    InvalidMessageRequest,
    MessageRequest,
    new_message_uuids,
    parse_message_request,
)
from sandbox.signature import signature_headers
from sandbox.state import SandboxState
from sandbox.traffic import AFTER_ACCEPT_ERRORS, SERVER_ERRORS, Faults, RequestLimit

API_PREFIX = "/v1/Account"
_PHONE = re.compile(r"\+?\d{3,15}", re.ASCII)


class Sandbox:
    """What one app instance serves from; reachable as app.extensions["sandbox"]."""

    def __init__(self, config: SandboxConfig) -> None:
        # Replaced, never changed in place: a request reads it once and sees one consistent config.
        self.config = config
        # What DELETE /sandbox/config goes back to: the config the sandbox was started with.
        self.start_config = config
        self.state = SandboxState()
        self.request_limit = RequestLimit()
        # The Message list's own limit, on top of the account's.
        self.list_limit = RequestLimit()
        self.faults = Faults(config.fault_seed)
        self.callbacks = CallbackSender(lambda: self.config, config.fault_seed)
        self._outcome_rng = random.Random(config.fault_seed)
        self._lock = threading.Lock()
        # Set on shutdown: cuts short the answers held back by the `slow` fault.
        self.closing = threading.Event()

    def reconfigure(self, changes: dict) -> SandboxConfig:
        with self._lock:
            self.config = self.config.updated(changes)
            if "fault_seed" in changes:
                self._reseed()
            return self.config

    def restore_config(self) -> SandboxConfig:
        with self._lock:
            self.config = self.start_config
            self._reseed()
            return self.config

    def reset(self) -> None:
        with self._lock:
            self.state.reset()
            self.request_limit.reset()
            self.list_limit.reset()
            self.callbacks.reset()
            self._reseed()

    def choose_outcomes(
        self, message: MessageRequest, config: SandboxConfig
    ) -> list[Outcome] | None:
        with self._lock:  # the RNG's sequence must not interleave, or a seed would mean nothing
            return choose_outcomes(message, config, self._outcome_rng)

    def close(self) -> None:
        self.closing.set()
        self.callbacks.close()

    def _reseed(self) -> None:
        seed = self.config.fault_seed
        self.faults.reseed(seed)
        self._outcome_rng.seed(seed)
        self.callbacks.reseed(seed)


def create_app(config: SandboxConfig | None = None) -> Flask:
    # A private copy: nothing the caller does to its config later can reach the sandbox.
    config = SandboxConfig.from_env() if config is None else dataclasses.replace(config)
    sandbox = Sandbox(config)

    app = Flask(__name__)
    # Keep Plivo's field order, and spare sorting a /stats with a million numbers.
    app.json.sort_keys = False
    app.extensions["sandbox"] = sandbox

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return _plivo_error(error.code or 500, f"{error.name}: {request.method} {request.path}")

    @app.post(f"{API_PREFIX}/<auth_id>/Message/", strict_slashes=False)
    def send_message(auth_id: str):
        config = sandbox.config  # one config for the whole request, even if changed meanwhile
        fault = sandbox.faults.draw(config)
        if fault:
            sandbox.state.record_fault(fault)
        if fault == "drop_before":
            return _drop_connection()
        if fault == "5xx":
            status = sandbox.faults.server_error()
            return _plivo_error(status, SERVER_ERRORS[status])
        if fault == "429":
            return _too_many_requests()
        response = _create_messages(sandbox, config, auth_id)
        if fault == "slow":
            # Plivo has processed the request; the client has likely given up on the answer.
            sandbox.closing.wait(config.slow_seconds)
        elif fault == "drop_after":
            return _drop_connection()
        elif fault == "fail_after_accept" and response[1] == 202:
            # Plivo queued the messages, but the answer that says so never reaches the client.
            # A request Plivo refused (400, 401, 429) keeps its own answer.
            status = sandbox.faults.after_accept_error()
            return _plivo_error(status, AFTER_ACCEPT_ERRORS[status])
        return response

    @app.get(f"{API_PREFIX}/<auth_id>/Message/<message_uuid>/", strict_slashes=False)
    def get_message(auth_id: str, message_uuid: str):
        config = sandbox.config
        refusal = _refuse_lookup(sandbox, config, auth_id)
        if refusal:
            return refusal
        sandbox.state.record_lookup("gets")
        entry = sandbox.state.entry(message_uuid)
        if entry is None:
            sandbox.state.record_lookup("gets_not_found")
            return _plivo_error(404, "not found")
        run, index = entry
        record = message_record(run, index, time.time(), config.auth_id, config.message_time_offset)
        return jsonify({"api_id": _api_id(), **record})

    @app.get(f"{API_PREFIX}/<auth_id>/Message/", strict_slashes=False)
    def list_messages(auth_id: str):
        config = sandbox.config
        refusal = _refuse_lookup(sandbox, config, auth_id)
        if refusal:
            return refusal
        now = time.time()
        if not sandbox.list_limit.admit(config.list_request_limit, config.list_request_window, now):
            sandbox.state.record_lookup("list_too_many_requests")
            return _too_many_requests()
        try:
            query = parse_list_query(request.args, now)
        except InvalidQuery as error:
            sandbox.state.record_lookup("bad_requests")
            return _plivo_error(400, str(error))
        sandbox.state.record_lookup("lists")
        runs = sandbox.state.runs_between(query.earliest, query.latest)
        page = list_page(query, runs, now, config.auth_id, config.message_time_offset)
        return jsonify({"api_id": _api_id(), **page})

    @app.post(f"{API_PREFIX}/<auth_id>/Media/", strict_slashes=False)
    def upload_media(auth_id: str):
        # Plivo's media store: multipart field(s) `file`, up to 10, 2 MB each.
        if not _authenticated(sandbox.config, auth_id):
            return _plivo_error(401, "authentication failed")
        files = request.files.getlist("file")
        if not 1 <= len(files) <= 10:
            return _plivo_error(400, "upload 1 to 10 files in the field 'file'")
        objects = []
        for upload in files:
            data = upload.read()
            if len(data) > 2 * 1024 * 1024:
                return _plivo_error(400, f"{upload.filename} is over 2 MB")
            media_id = _api_id()
            objects.append(
                {
                    "media_id": media_id,
                    "media_url": f"{request.host_url}media/{media_id}",
                    "content_type": upload.mimetype,
                    "file_name": upload.filename,
                    "size": len(data),
                    "status": "Success",
                    "status_code": 201,
                }
            )
        return jsonify({"api_id": _api_id(), "objects": objects}), 202

    @app.get("/messages/<message_uuid>")
    def show_message(message_uuid: str):
        record = sandbox.state.message(message_uuid)
        if record is None:
            return _plivo_error(404, f"no message {message_uuid}")
        return jsonify(
            message_uuid=record.uuid,
            dst=record.dst,
            src=record.src,
            powerpack_uuid=record.powerpack_uuid,
            type=record.type,
            text=record.text,
            media=record.media_urls + record.media_ids,
            status=record.status,
            error_code=record.error_code,
            url=record.url,
            method=record.method,
            queued_time=record.time,
            send_time=record.send_time,
        )

    @app.get("/health")
    def health():
        return jsonify(ok=True)

    @app.get("/stats")
    def stats():
        return jsonify({**sandbox.state.stats(), "callbacks": sandbox.callbacks.counts()})

    @app.get("/stats/requests")
    def request_log():
        return jsonify(sandbox.state.request_log())

    @app.post("/stats/reset")
    def reset_stats():
        sandbox.reset()
        return jsonify(ok=True)

    @app.get("/sandbox/config")
    def show_config():
        return jsonify(sandbox.config.public())

    @app.post("/sandbox/config")
    def change_config():
        body = request.get_json(force=True, silent=True)
        if not isinstance(body, dict):
            return _plivo_error(400, "request body must be a JSON object")
        try:
            return jsonify(sandbox.reconfigure(body).public())
        except (TypeError, ValueError) as error:
            return _plivo_error(400, str(error))

    @app.delete("/sandbox/config")
    def restore_config():
        """Every run-time change undone: the config the sandbox was started with."""
        return jsonify(sandbox.restore_config().public())

    @app.post("/sandbox/inbound")
    def simulate_inbound():
        return _simulate_inbound(sandbox.config)

    return app


def _create_messages(sandbox: Sandbox, config: SandboxConfig, auth_id: str):
    if not _authenticated(config, auth_id):
        sandbox.state.record_auth_failure()
        return _plivo_error(401, "authentication credentials invalid")
    if not sandbox.request_limit.admit(config.request_limit, config.request_window, time.time()):
        sandbox.state.record_too_many_requests()
        return _too_many_requests()
    body = request.get_json(force=True, silent=True)
    try:
        message = parse_message_request(body, config.invalid_prefixes)
    except InvalidMessageRequest as error:
        sandbox.state.record_bad_request(len(error.extra.get("invalid_number", ())))
        return _plivo_error(400, error.message, **error.extra)

    uuids = new_message_uuids(len(message.destinations))
    outcomes = sandbox.choose_outcomes(message, config)
    run = sandbox.state.record_accepted(message, uuids, config, outcomes)
    if message.url:
        sandbox.callbacks.schedule(run)
    response = {"api_id": _api_id(), "message": "message(s) queued", "message_uuid": uuids}
    if message.invalid_numbers:
        response["invalid_number"] = message.invalid_numbers
    return jsonify(response), 202


def _refuse_lookup(sandbox: Sandbox, config: SandboxConfig, auth_id: str):
    """The answer to a Get or List that fails auth or the account's request limit, or None.

    Lookups share the account's request limit with sends, as at Plivo; no fault applies.
    """
    if not _authenticated(config, auth_id):
        sandbox.state.record_lookup("auth_failures")
        return _plivo_error(401, "authentication credentials invalid")
    if not sandbox.request_limit.admit(config.request_limit, config.request_window, time.time()):
        sandbox.state.record_lookup("too_many_requests")
        return _too_many_requests()
    return None


def _simulate_inbound(config: SandboxConfig):
    body = request.get_json(force=True, silent=True)
    if not isinstance(body, dict):
        return _plivo_error(400, "request body must be a JSON object")
    sender, recipient, text = body.get("from"), body.get("to"), body.get("text")
    url = body.get("url") or config.inbound_url
    intent = body.get("intent")
    if not all(
        isinstance(number, str) and _PHONE.fullmatch(number) for number in (sender, recipient)
    ):
        return _plivo_error(400, "from and to must be phone numbers")
    if not isinstance(text, str):
        return _plivo_error(400, "text must be a string")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return _plivo_error(400, "url (or the inbound_url setting) must be an http(s) URL")
    if intent is not None and intent not in (*INTENTS, ""):
        return _plivo_error(400, f"intent must be one of {', '.join(INTENTS)}")

    message_uuid = new_message_uuids(1)[0]
    form = inbound_form(sender, recipient, text, message_uuid, intent)
    headers = signature_headers(config.auth_token, "POST", url, form)
    try:
        with callback_session() as session:
            answer = session.post(url, data=form, headers=headers, timeout=config.callback_timeout)
    except requests.RequestException as error:
        return jsonify(error=f"receiver unreachable: {error}", message_uuid=message_uuid), 502
    return jsonify(status=answer.status_code, message_uuid=message_uuid)


def _drop_connection() -> Response:
    """Ends the TCP connection with no HTTP answer: the client sees a connection error."""
    connection = request.environ.get("werkzeug.socket")
    if connection is not None:
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
    # Writing this answer then fails with a broken pipe, which werkzeug takes for a client that
    # went away: nothing reaches the client and nothing is logged. Without a socket (a test
    # client, another WSGI server) the client gets this empty 500 instead.
    return Response(status=500)


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


def _too_many_requests():
    return _plivo_error(429, "too many requests")


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

    Returns the base URL (no trailing slash) and a callable that stops the server and its
    callback threads.
    """
    app = create_app(config)
    server = make_sandbox_server(app, host, port)
    # A short poll interval makes shutdown() return quickly between tests.
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="plivo-sandbox",
        daemon=True,
    )
    thread.start()

    def shutdown() -> None:
        app.extensions["sandbox"].close()
        server.shutdown()
        server.server_close()
        thread.join()

    return f"http://{host}:{server.port}", shutdown
