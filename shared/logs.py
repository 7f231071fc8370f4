"""JSON log lines, one object per line, the same for the API, the workers, beat and granian:
`timestamp`, `level`, `logger`, `event` and the event's fields, plus the ids of the request
or task being served (`request_id`, `task_id`, `broadcast_id`, `batch_id`).

Callers keep using the standard `logging` loggers and `log_event`; structlog renders every
record at the handler, so third-party lines (Celery, granian, werkzeug) come out the same.
Secrets never leave this module: keys that name one, configured secret values, passwords
in URLs and API keys are replaced before a line is written."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bind_contextvars, clear_contextvars, merge_contextvars

if TYPE_CHECKING:
    from shared.config import Settings

REDACTED = "[redacted]"
# The record attribute log_event puts its fields in: one attribute, because `extra` may not
# use LogRecord's own names (a field called `name` or `args` would raise).
_FIELDS = "bulksms_fields"
# Marks the root handler configure() installed, so a second call reuses it.
_OURS = "bulksms_json_handler"
# Field names whose values are secrets wherever they appear, nested dicts (headers, a settings
# dump) included. Matched after lower-casing and `-` → `_`, so `X-API-Key` is `x_api_key`.
SECRET_NAMES = frozenset(
    {"authorization", "proxy_authorization", "cookie", "set_cookie", "x_api_key", "api_key",
     "api_keys", "apikey", "password", "passwd", "secret", "token", "auth_token",
     "signature", "x_plivo_signature_v2", "x_plivo_signature_v3", "x_plivo_signature_ma_v3",
     "x_bulksms_signature", "flower_basic_auth"}
)  # fmt: skip
SECRET_SUFFIXES = ("_token", "_password", "_secret", "_api_key", "_api_keys", "_signature")
# user:password@ in any URL (DATABASE_URL, REDIS_URL, a broker URL in Celery's own lines).
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.I)
# Stored API keys carry this prefix (api/auth.py KEY_PREFIX) so that they can be spotted.
_STORED_KEY = re.compile(r"bsk_[A-Za-z0-9_-]{16,}")
# Shorter configured values would match ordinary words; real secrets are longer.
MIN_SECRET_LENGTH = 8

_secret_values: tuple[str, ...] = ()


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields) -> None:
    """One event name plus the fields we chose to show; rendered as one JSON line."""
    logger.log(level, event, extra={_FIELDS: fields}, stacklevel=2)


def configure(level: str | int = "INFO", settings: Settings | None = None, stream=None) -> None:
    """Route every record through the JSON formatter; idempotent (the API app is built
    once per granian worker and many times in tests). `settings` names the secret values
    that must never appear in a line."""
    if settings is not None:
        remember_secrets(secrets_of(settings))
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if getattr(handler, _OURS, False)]
    if not ours:
        handler = logging.StreamHandler(stream) if stream else _StderrHandler()
        setattr(handler, _OURS, True)
        root.addHandler(handler)
        ours = [handler]
    for handler in ours:
        handler.setFormatter(json_formatter())
    root.setLevel(level)
    # granian configures its own loggers with text formats and no propagation; under our
    # handler their lines (the access log included) are JSON like the rest.
    for name in ("_granian", "granian.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a line is logged: a test runner swaps it, and a
    handler holding the old one would write to a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def json_formatter() -> logging.Formatter:
    """The one formatter: stdlib records in, one JSON object per line out."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            merge_contextvars,
            _record_fields,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _timestamp,
            structlog.processors.format_exc_info,
            redact,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _ordered,
            structlog.processors.JSONRenderer(default=str),
        ],
        # granian passes its access-log values as the record's args (a dict).
        pass_foreign_args=True,
    )


def secrets_of(settings: Settings) -> list[str]:
    """Every configured secret value: the SecretStr settings and the bootstrap API keys."""
    from pydantic import SecretStr

    values = list(settings.api_keys)
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
    return values


def remember_secrets(values: Iterable[str]) -> None:
    """Add values that are scrubbed from every string of every line from now on."""
    global _secret_values
    known = set(_secret_values) | {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    # Longest first, so a secret that contains another is replaced whole.
    _secret_values = tuple(sorted(known, key=len, reverse=True))


def is_secret_name(name: str) -> bool:
    key = name.lower().replace("-", "_")
    return key in SECRET_NAMES or key.endswith(SECRET_SUFFIXES)


def scrub(text: str) -> str:
    """`text` with URL passwords, stored API keys and configured secret values replaced."""
    text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
    text = _STORED_KEY.sub(REDACTED, text)
    for secret in _secret_values:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {
            key: REDACTED if is_secret_name(str(key)) else _redact_value(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered with str() by the JSON renderer: scrub that text now.
    return scrub(str(value))


def redact(_logger, _method: str, event_dict: dict) -> dict:
    """structlog processor: no secret in any field, at any depth, under any name."""
    return {
        key: value if key.startswith("_") else
        (REDACTED if is_secret_name(key) else _redact_value(value))
        for key, value in event_dict.items()
    }  # fmt: skip


def _record_fields(_logger, _method: str, event_dict: dict) -> dict:
    """The fields of a log_event call, or granian's access-log values, as JSON keys."""
    record = event_dict.get("_record")
    args = event_dict.pop("positional_args", None)
    fields = getattr(record, _FIELDS, None)
    if fields:
        for key, value in fields.items():
            # A field may not pose as the event or the level; it does override a context id
            # (the caller knows best which batch a line is about).
            event_dict[key if key not in _RESERVED else f"field_{key}"] = value
    elif record is not None and record.name == "granian.access" and isinstance(args, dict):
        event_dict["event"] = "http.access"
        for key in ("method", "path", "status", "dt_ms", "addr", "protocol"):
            if key in args:
                event_dict[key] = args[key]
    return event_dict


_RESERVED = frozenset({"event", "level", "logger", "timestamp", "exception"})
_FIRST = ("timestamp", "level", "logger", "event")


def _timestamp(_logger, _method: str, event_dict: dict) -> dict:
    record = event_dict.get("_record")
    created = record.created if record is not None else datetime.now(UTC).timestamp()
    event_dict["timestamp"] = datetime.fromtimestamp(created, UTC).isoformat(
        timespec="milliseconds"
    )
    return event_dict


def _ordered(_logger, _method: str, event_dict: dict) -> dict:
    # The fixed keys first: a person reading the raw lines finds them in the same place.
    head = {key: event_dict.pop(key) for key in _FIRST if key in event_dict}
    return head | event_dict


def bind(**ids) -> None:
    """Put ids on every line this request or task logs from now on."""
    bind_contextvars(**{key: value for key, value in ids.items() if value is not None})


def clear() -> None:
    clear_contextvars()


# --- Celery: connected in shared/taskqueue.py ---

# Task arguments that identify what a task works on; every line it logs carries them.
TASK_IDS = ("broadcast_id", "batch_id")


def setup_celery_logging(loglevel=None, logfile=None, **_kwargs) -> None:
    """`setup_logging` signal: Celery (worker, beat) skips its own text format and uses ours.
    A receiver on this signal is Celery's documented way to own logging entirely."""
    from shared.config import get_settings

    # --logfile: kept open for the life of the process, like Celery's own handler.
    stream = open(logfile, "a", buffering=1) if logfile else None
    try:
        settings = get_settings()
    except Exception:  # a bad configuration is reported by the worker itself, in JSON
        settings = None
    configure(loglevel or "INFO", settings, stream)


def bind_task(task_id=None, task=None, kwargs=None, **_signal) -> None:
    """`task_prerun`: a fresh context per task (a pool process runs many), with its ids."""
    clear_contextvars()
    ids = {key: (kwargs or {}).get(key) for key in TASK_IDS}
    bind(task_id=task_id, task=getattr(task, "name", None), **ids)


def unbind_task(**_signal) -> None:
    """`task_postrun`: lines the pool process logs between tasks carry no task's ids."""
    clear_contextvars()
