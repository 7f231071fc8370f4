"""GET /metrics for Prometheus, and the count and timing of every API request.

/metrics is outside /v1: API keys, scopes and the per-key request limits do not apply to it
(api/auth.py, api/request_limits.py). It needs METRICS_TOKEN as a Bearer token instead, and
while that is unset it answers 404 like any unknown path."""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Flask, Response, abort, current_app, request
from werkzeug.wsgi import ClosingIterator

from api.errors import error_response
from api.status_intake import PATH as STATUS_PATH
from shared import metrics

bp = Blueprint("metrics", __name__)

# Where Flask leaves the matched URL rule for the timing middleware (which sits outside
# Flask and so cannot see it).
ROUTE_KEY = "bulksms.route"
# Any path no route matched: scanners must not mint one time series per path they try.
UNMATCHED = "unmatched"


@bp.get("/metrics")
def scrape():
    settings = current_app.config["SETTINGS"]
    token = settings.metrics_token.get_secret_value()
    if not token:
        abort(404)
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), token.encode()):
        response, status = error_response(
            401, "unauthorized", "send METRICS_TOKEN as `Authorization: Bearer <token>`"
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response, status
    body = metrics.exposition(settings.redis_url, settings.database_url)
    return Response(body, mimetype=None, content_type=metrics.CONTENT_TYPE)


def _remember_route(response: Response) -> Response:
    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED
    return response


class RequestMetrics:
    """WSGI middleware around everything, the delivery-report fast path included: counts
    each answer by route template and status, and times it until its body is sent."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        answered = {}

        def recording_start_response(status, headers, exc_info=None):
            answered["status"] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        def done() -> None:
            route = environ.get(ROUTE_KEY)
            if route is None:
                # Answered before Flask routed it: the delivery-report path, or an error.
                route = STATUS_PATH if environ.get("PATH_INFO") == STATUS_PATH else UNMATCHED
            metrics.observe_request(
                environ.get("REQUEST_METHOD", ""),
                route,
                answered.get("status", 500),
                time.perf_counter() - started,
            )

        try:
            body = self.app(environ, recording_start_response)
        except BaseException:
            answered.setdefault("status", 500)
            done()
            raise
        return ClosingIterator(body, done)


def init_app(app: Flask) -> None:
    """Register /metrics and wrap the app; call after every other WSGI wrapper is in place."""
    app.register_blueprint(bp)
    app.after_request(_remember_route)
    app.wsgi_app = RequestMetrics(app.wsgi_app)
