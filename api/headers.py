"""Security headers on every answer. Flask adds them after each request (api/__init__.py);
api/status_intake.py, which answers before Flask, sends SECURITY_HEADERS itself."""

from __future__ import annotations

from flask import Response

# JSON and CSV answers load nothing and belong in no frame.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# HTML (/docs): scripts, styles and requests from this origin only, never inline, never a
# CDN; so an interactive docs page must serve its own files (see tests/test_hardening.py).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),  # for browsers that predate frame-ancestors
    ("Content-Security-Policy", API_CSP),
]


def add_security_headers(response: Response) -> Response:
    """Flask's after_request hook; a view that sets its own CSP keeps it."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    page = response.mimetype == "text/html"
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP if page else API_CSP)
    response.headers.pop("Server", None)  # a version is a hint for attackers, nothing more
    return response
