"""The operator console: server-rendered pages under /console on the JSON API.

Sign in with an API key; a session cookie then stands for that key, and every action is
the API's own route called in-process as that key (api/console/calls.py). Pages load only
this blueprint's own static files, so the API's page CSP (no inline script or style, this
origin only) holds as it is."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.wrappers import Response
from werkzeug.exceptions import HTTPException

from api.auth import ADMIN, READ, SEND
from api.console import sessions
from api.console.calls import call

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# Pages anyone may open without a session.
OPEN_ENDPOINTS = frozenset({"console.sign_in", "console.static"})


def can(scope: str) -> bool:
    """Whether the session's key has `scope` (admin has every one), as api.auth decides."""
    scopes = g.console_caller.scopes
    return ADMIN in scopes or scope in scopes


@bp.before_request
def _load_session() -> Response | None:
    """`before_request` of the blueprint: the session (or a redirect to sign in) and, on
    every POST, its CSRF token."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    found = sessions.current()
    if found is None:
        if request.method == "GET" and not request.path.endswith("/live"):
            return redirect(url_for("console.sign_in", next=request.full_path.rstrip("?")))
        abort(401)
    g.console_caller, g.csrf_token = found
    if request.method == "POST" and not sessions.csrf_matches(
        g.csrf_token, request.form.get("csrf_token", "")
    ):
        abort(400, "the form is out of date (CSRF token): reload the page and try again")
    return None


@bp.after_request
def _no_store(response: Response) -> Response:
    # Pages show recipients' numbers and what a key may do: never kept by a cache.
    response.headers["Cache-Control"] = "no-store"
    return response


@cache
def _version() -> str:
    # Read from the installed metadata once: every page shows it, and a lookup costs ms.
    try:
        return version("bulksms")
    except PackageNotFoundError:
        return "unknown"


@bp.app_template_global()
def console_globals() -> dict:
    settings = current_app.config["SETTINGS"]
    caller = g.get("console_caller")
    return {
        "sandbox_mode": settings.sandbox_mode,
        "caller": caller,
        "csrf_token": g.get("csrf_token", ""),
        "can_send": caller is not None and can(SEND),
        "can_read": caller is not None and can(READ),
        "is_admin": caller is not None and ADMIN in caller.scopes,
        "version": _version(),
    }


def _safe_next(target: str | None) -> str:
    """Only a path of the console itself, so the sign-in form is no open redirect."""
    if target and target.startswith("/console/") and not target.startswith("//"):
        return target
    return url_for("console.broadcasts")


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    """Exchange an API key for a session. The key is checked by the API itself (an
    in-process GET /v1/broadcasts), so failures count against AUTH_FAILURE_LIMIT."""
    error = None
    status = 200
    if request.method == "POST":
        key = request.form.get("api_key", "").strip()
        if not sessions.signin_token_matches(request.form.get("csrf_token", "")):
            error, status = "The form is out of date: reload the page and try again.", 400
        elif not key:
            error, status = "Enter an API key.", 400
        else:
            answer = call(
                "GET",
                "/v1/broadcasts",
                query={"limit": "1"},
                headers={"X-API-Key": key},
                anonymous=True,
                capture_caller=True,
            )
            caller = (answer.body or {}).get("caller") if answer.status != 429 else None
            if caller is not None:
                response = redirect(_safe_next(request.form.get("next")), code=303)
                sessions.start(response, caller)
                return response
            if answer.status == 429:
                error, status = "Too many failed sign-ins from this address: wait a minute.", 429
            else:
                error, status = "That is not a valid API key (or it was revoked).", 401
    response = make_response()
    token = sessions.signin_token(response)
    response.set_data(
        render_template(
            "console/sign_in.html",
            error=error,
            signin_token=token,
            next=_safe_next(request.values.get("next")),
        )
    )
    response.status_code = status
    return response


@bp.post("/sign-out")
def sign_out():
    response = redirect(url_for("console.sign_in"), code=303)
    sessions.end(response)
    return response


@bp.get("/")
def index():
    return redirect(url_for("console.broadcasts"))


@bp.errorhandler(HTTPException)
def _error_page(error: HTTPException):
    """Errors of console pages as a page (the API's JSON error is for programs)."""
    if request.path.endswith("/live"):
        return error.description or error.name, error.code
    page = render_template("console/error.html", error=error)
    return page, error.code or 500


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


# The pages register their routes on `bp` when imported (last: they import `bp`).
from api.console import (  # noqa: E402, F401
    broadcast_detail,
    broadcast_list,
    compose,
    formatting,
    operations,
)
