"""A request id on every API request: the caller's `X-Request-ID` when it is a sane token
(a proxy's or a client's id then follows the request through our logs), else a new one. It
is on every log line the request writes and echoed in the answer's `X-Request-ID`."""

from __future__ import annotations

import re
import uuid

from flask import Flask
from werkzeug.wsgi import ClosingIterator

from shared import logs

HEADER = "X-Request-ID"
# Letters, digits and a little punctuation, as UUIDs and tracing ids are written: anything
# else (spaces, quotes, control characters, a novel) is replaced, not echoed or logged.
_SANE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def request_id(presented: str | None) -> str:
    """The presented id if it is sane, else a fresh one."""
    if presented and _SANE.fullmatch(presented):
        return presented
    return uuid.uuid4().hex


class RequestIds:
    """WSGI middleware, outermost, so the delivery-report fast path has ids too."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        rid = request_id(environ.get("HTTP_X_REQUEST_ID"))
        # A fresh context: granian reuses its threads, and the previous request's ids must
        # not leak into this one's lines.
        logs.clear()
        logs.bind(request_id=rid)

        def with_id(status, headers, exc_info=None):
            headers = [(k, v) for k, v in headers if k.lower() != HEADER.lower()]
            headers.append((HEADER, rid))
            return start_response(status, headers, exc_info)

        # Cleared again once the answer is sent: the next work on this thread (a test's
        # own code, with Flask's test client) is not this request's.
        return ClosingIterator(self.app(environ, with_id), logs.clear)


def init_app(app: Flask) -> None:
    """Wrap the app; call last, after every other WSGI wrapper."""
    app.wsgi_app = RequestIds(app.wsgi_app)
