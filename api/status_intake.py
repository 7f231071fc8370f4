"""POST /webhooks/plivo/status as a plain WSGI handler in front of Flask.

A large broadcast brings one to three delivery reports per message, thousands a second.
The work per report is small (check the signature, commit the report with the others of
the same few milliseconds, answer 200), so Flask's request machinery would be most of its
cost; this path skips it. Everything else goes on to the Flask app."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl
from wsgiref.util import request_uri

from api.report_store import REPLAYED, STORED, Arrival, report_store
from api.signatures import public_url, verified_nonce
from shared.config import Settings
from shared.logs import log_event

PATH = "/webhooks/plivo/status"
MAX_BODY = 64 * 1024  # a report is a few hundred bytes
# The columns' sizes: one oversized value would fail the whole group it is committed with.
MAX_NONCE = 128
MAX_MESSAGE_UUID = 64
log = logging.getLogger(__name__)


class StatusIntake:
    def __init__(self, app, settings: Settings):
        self.app = app
        self.settings = settings
        # Shared by every app of the process on this database; it opens nothing until the
        # first report, so building the app in a parent process before a fork is fine.
        self.store = report_store(settings.database_url)

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        # Announced before the (slow) signature check, so that a writer of the group commit
        # can wait a moment for this report instead of committing without it.
        with self.store.arriving() as arrival:
            status, error = self._handle(environ, arrival)
        if error is None:
            start_response(status, [("Content-Length", "0")])
            return [b""]
        code, message = error
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(status, headers)
        return [body]

    def _handle(self, environ, arrival: Arrival) -> tuple[str, tuple[str, str] | None]:
        """Verify, commit, 200; 503 if the database did not take it, so that Plivo retries."""
        if environ["REQUEST_METHOD"] != "POST":
            return "405 METHOD NOT ALLOWED", ("method_not_allowed", "POST only")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return "413 REQUEST ENTITY TOO LARGE", ("request_entity_too_large", "body too large")
        body = environ["wsgi.input"].read(length).decode("utf-8", "replace")
        params = dict(parse_qsl(body, keep_blank_values=True))
        url = public_url(self.settings, PATH, environ.get("QUERY_STRING", ""), request_uri(environ))
        nonce = verified_nonce(
            self.settings,
            "POST",
            url,
            params,
            lambda name: environ.get("HTTP_" + name.upper().replace("-", "_")),
        )
        if nonce is None:
            log_event(log, "webhook.bad_signature", logging.WARNING, path=PATH)
            return "403 FORBIDDEN", ("forbidden", "missing or invalid Plivo signature")
        message_uuid = params.get("MessageUUID", "")
        if not message_uuid or not params.get("Status"):
            return "400 BAD REQUEST", ("invalid_request", "MessageUUID and Status are required")
        if (
            len(message_uuid) > MAX_MESSAGE_UUID
            or len(nonce) > MAX_NONCE
            or "\x00" in message_uuid + nonce
        ):
            return "400 BAD REQUEST", ("invalid_request", "MessageUUID or nonce malformed")
        outcome = self.store.store(nonce, message_uuid, params, arrival)
        if outcome == STORED:
            return "200 OK", None
        if outcome == REPLAYED:
            log_event(log, "webhook.replayed", logging.WARNING, nonce=nonce)
            return "403 FORBIDDEN", ("forbidden", "this signed request was already received")
        return "503 SERVICE UNAVAILABLE", ("unavailable", "delivery reports cannot be stored now")
