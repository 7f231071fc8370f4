"""The one place the service calls Plivo: the real SDK, with its traps handled and errors mapped."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import plivo
import plivo.rest.client
import requests
from plivo import exceptions as plivo_errors

from shared.config import Settings

_T = TypeVar("_T")


class ErrorKind(StrEnum):
    TRANSIENT = "transient"  # nothing was sent; safe to retry with backoff
    AMBIGUOUS = "ambiguous"  # the request may have reached Plivo; never re-send automatically
    PERMANENT = "permanent"  # this request will never succeed as it is
    ACCOUNT = "account"  # the account cannot send (auth, credit, permission): pause


# HTTP status → what it means for a batch. The SDK raises a bare PlivoRestError for
# 402/429/502/503, so the status is read off the response, not the exception type.
# 500 and 504 are ambiguous: a gateway timeout or a server error can come after Plivo
# accepted (and queued) the batch, so a retry could text everyone twice.
STATUS_KINDS: dict[int, ErrorKind] = {
    400: ErrorKind.PERMANENT,
    401: ErrorKind.ACCOUNT,
    402: ErrorKind.ACCOUNT,
    403: ErrorKind.ACCOUNT,
    404: ErrorKind.PERMANENT,
    405: ErrorKind.PERMANENT,
    409: ErrorKind.PERMANENT,
    422: ErrorKind.PERMANENT,
    429: ErrorKind.TRANSIENT,
    500: ErrorKind.AMBIGUOUS,
    502: ErrorKind.TRANSIENT,
    503: ErrorKind.TRANSIENT,
    504: ErrorKind.AMBIGUOUS,
}

# Plivo's Message list refuses a larger page (and the SDK checks it before sending).
LIST_PAGE_SIZE = 20


class PlivoError(Exception):
    """A failed call to Plivo, classified once here so callers never parse messages."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}: " if self.status else ""
        return f"{prefix}{self.args[0]}"


class MessageNotFound(PlivoError):
    """Message Get answered 404: Plivo has no message with this uuid."""

    def __init__(self, message: str):
        super().__init__(ErrorKind.PERMANENT, message, 404)


@dataclass
class SendResult:
    api_id: str
    uuids: dict[str, str] = field(default_factory=dict)  # E.164 → message_uuid
    invalid: list[str] = field(default_factory=list)  # E.164 numbers Plivo refused


@dataclass(frozen=True)
class MessageRecord:
    """One message as Plivo's Message Get and Message list describe it."""

    uuid: str
    to: str  # E.164
    from_number: str
    state: str  # queued, sent, delivered, undelivered, failed, rejected, read
    error_code: str | None
    units: int | None
    message_time: datetime | None  # when Plivo accepted it, UTC


@dataclass(frozen=True)
class MessagePage:
    """One page of Message list (newest first): its records, and whether more follow."""

    records: list[MessageRecord]
    has_next: bool
    next_offset: int | None
    total_count: int | None


def plivo_address(number: str) -> str:
    """Plivo's form of a number: E.164 digits without '+'; alphanumeric senders as they are."""
    return number[1:] if number.startswith("+") else number


def classify_transport_error(error: requests.RequestException) -> ErrorKind:
    """Was the request delivered? Only a failure to connect proves it was not."""
    if isinstance(error, requests.ConnectTimeout):
        return ErrorKind.TRANSIENT
    if isinstance(error, requests.ConnectionError) and not isinstance(error, requests.ReadTimeout):
        text = str(error)
        if "NewConnectionError" in text or "Connection refused" in text:
            return ErrorKind.TRANSIENT
    return ErrorKind.AMBIGUOUS


class PlivoClient:
    """Sends messages through the official SDK; one instance per thread (the SDK is stateful)."""

    def __init__(self, auth_id: str, auth_token: str, base_url: str, timeout: float):
        # The SDK re-reads this module constant on every message call; base_uri on the
        # client is ignored for messages.
        plivo.rest.client.PLIVO_API_BASE_URI = f"{base_url}/v1/Account"
        self._sdk = plivo.RestClient(auth_id, auth_token, timeout=timeout)
        self._sdk.session.hooks["response"].append(self._observe)
        self._sdk.multipart_session.hooks["response"].append(self._observe)
        self._last_status: int | None = None
        self._last_error: str | None = None

    def _observe(self, response: requests.Response, *_args, **_kwargs) -> None:
        # The SDK's exceptions carry neither the status nor, for 402/429/502/503, Plivo's
        # own words ("insufficient credit"): both are taken off the response here.
        self._last_status = response.status_code
        self._last_error = _error_text(response) if response.status_code >= 400 else None

    def _call(self, request: Callable[[], _T], *, read_only: bool = False) -> _T:
        """Make one SDK call; every failure comes out as a classified PlivoError. A
        read-only call (a lookup) changes nothing at Plivo, so none of its failures is
        ambiguous: they only mean "ask again later"."""
        self._last_status = self._last_error = None
        try:
            return request()
        except requests.RequestException as error:
            kind = ErrorKind.TRANSIENT if read_only else classify_transport_error(error)
            raise PlivoError(kind, _describe(error)) from error
        except plivo_errors.PlivoRestError as error:
            raise self._failure(error, read_only) from error
        except (AttributeError, TypeError, ValueError) as error:
            # SDK trap: an error answer to Message list (no `objects`) makes the SDK itself
            # fail with a TypeError before it looks at the status.
            if self._last_status is not None and self._last_status >= 400:
                raise self._failure(error, read_only) from error
            kind = ErrorKind.TRANSIENT if read_only else ErrorKind.AMBIGUOUS
            raise PlivoError(kind, f"unreadable response: {error}") from error

    def _failure(self, error: Exception, read_only: bool) -> PlivoError:
        status = self._last_status
        kind = STATUS_KINDS.get(status, ErrorKind.PERMANENT)
        if read_only and kind is ErrorKind.AMBIGUOUS:
            kind = ErrorKind.TRANSIENT
        return PlivoError(kind, self._last_error or str(error), status)

    def send(
        self,
        sender: str,
        numbers: list[str],
        text: str | None,
        *,
        callback_url: str | None = None,
        message_type: str = "sms",
        media_urls: list[str] | None = None,
        media_ids: list[str] | None = None,
    ) -> SendResult:
        """One Plivo call for up to 1000 E.164 numbers; raises PlivoError, classified."""
        by_address = {plivo_address(n): n for n in numbers}
        response = self._call(
            lambda: self._sdk.messages.create(
                src=plivo_address(sender),
                # A Python list would be sent as its str(); Plivo wants '<'-joined.
                dst="<".join(by_address),
                text=text,
                type_=message_type,
                url=callback_url,
                media_urls=media_urls,
                media_ids=media_ids,
            )
        )
        return _read_result(response, by_address)

    def get_message(self, message_uuid: str) -> MessageRecord:
        """Message Get; raises MessageNotFound when Plivo has no such message."""
        try:
            response = self._call(lambda: self._sdk.messages.get(message_uuid), read_only=True)
        except PlivoError as error:
            if error.status == 404:
                raise MessageNotFound(error.args[0]) from error
            raise
        return _read_record(response)

    def list_messages(
        self,
        from_number: str,
        time_gte: datetime,
        time_lte: datetime,
        to_number: str | None = None,
        offset: int = 0,
    ) -> MessagePage:
        """One page of the outbound messages sent from `from_number` (and to `to_number`)
        that Plivo accepted within [time_gte, time_lte]. Plivo allows only 20 of these
        requests a minute: the caller paces them."""
        params = {
            "message_direction": "outbound",
            "from_number": plivo_address(from_number),
            "message_time__gte": _plivo_time(time_gte),
            "message_time__lte": _plivo_time(time_lte),
            "limit": LIST_PAGE_SIZE,
            "offset": offset,
        }
        if to_number:
            params["to_number"] = plivo_address(to_number)
        response = self._call(lambda: self._sdk.messages.list(**params), read_only=True)
        records = [_read_record(item) for item in (response.objects or [])]
        meta = getattr(response, "meta", None)
        next_url = _field(meta, "next")
        total = _field(meta, "total_count")
        return MessagePage(
            records=records,
            has_next=bool(next_url),
            next_offset=_next_offset(next_url, offset + len(records)) if next_url else None,
            total_count=int(total) if str(total).isdigit() else None,
        )

    def upload_media(self, filename: str, data: bytes, content_type: str) -> dict:
        """Upload one file to Plivo's media store; returns its media_id and details."""
        # Through the SDK's own multipart request (auth, base URL, error mapping); its
        # media.upload() wants a path and leaves that file open.
        files = [("file", (filename, io.BytesIO(data), content_type))]
        response = self._call(lambda: self._sdk.request("POST", ("Media",), {}, files=files))
        try:
            item = response.objects[0]
            return {
                "media_id": item.media_id,
                "media_url": getattr(item, "media_url", None),
                "content_type": getattr(item, "content_type", None),
                "size": getattr(item, "size", None),
            }
        except (AttributeError, IndexError, TypeError) as error:
            raise PlivoError(ErrorKind.AMBIGUOUS, f"unreadable response: {error}") from error


def _describe(error: requests.RequestException) -> str:
    return f"{type(error).__name__}: {error}"[:500]


def _error_text(response: requests.Response) -> str | None:
    """Plivo's own explanation from an error body `{"api_id", "error": "..."}`."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or None
    error = body.get("error") if isinstance(body, dict) else None
    if error is None or error == "":
        return None
    return (error if isinstance(error, str) else json.dumps(error))[:500]


def _field(item, name: str):
    # SDK responses are ResponseObjects (attributes) whose nested parts may be plain dicts.
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _plivo_time(moment: datetime) -> str:
    """Message list's time filter format, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _parse_plivo_time(value) -> datetime | None:
    # Plivo writes e.g. "2022-11-28 09:37:24+05:30" (the account's zone), sometimes with
    # microseconds; a time without a zone is UTC.
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _next_offset(next_url, fallback: int) -> int:
    """The offset meta.next asks for; Plivo's next URL carries it as a query parameter."""
    values = parse_qs(urlsplit(str(next_url)).query).get("offset")
    return int(values[0]) if values and values[0].isdigit() else fallback


def _error_code(value) -> str | None:
    # Plivo reports "000" (or nothing) for a message without an error.
    text = "" if value is None else str(value).strip()
    return text if text.strip("0") else None


def _read_record(item) -> MessageRecord:
    try:
        to = str(_field(item, "to_number")).strip()
        units = _field(item, "units")
        return MessageRecord(
            uuid=str(_field(item, "message_uuid")),
            to=to if to.startswith("+") else f"+{to}",
            from_number=str(_field(item, "from_number") or ""),
            state=str(_field(item, "message_state")).lower(),
            error_code=_error_code(_field(item, "error_code")),
            units=int(units) if str(units).isdigit() else None,
            message_time=_parse_plivo_time(_field(item, "message_time")),
        )
    except (AttributeError, TypeError, ValueError) as error:
        raise PlivoError(ErrorKind.TRANSIENT, f"unreadable message record: {error}") from error


def _read_result(response, by_address: dict[str, str]) -> SendResult:
    try:
        uuids = list(response.message_uuid)
        invalid_addresses = list(getattr(response, "invalid_number", None) or [])
        api_id = str(response.api_id)
    except (AttributeError, TypeError) as error:
        # Accepted (2xx) but unreadable: Plivo may have queued them, so never re-send.
        raise PlivoError(ErrorKind.AMBIGUOUS, f"unreadable response: {error}") from error
    invalid = {by_address.get(plivo_address(a), a) for a in invalid_addresses}
    accepted = [number for number in by_address.values() if number not in invalid]
    if len(accepted) != len(uuids):
        raise PlivoError(
            ErrorKind.AMBIGUOUS,
            f"{len(uuids)} uuids for {len(accepted)} accepted numbers; cannot match them",
        )
    return SendResult(
        api_id=api_id, uuids=dict(zip(accepted, uuids, strict=True)), invalid=sorted(invalid)
    )


_local = threading.local()


def client_for(settings: Settings) -> PlivoClient:
    """This thread's client for the configured account (or the sandbox)."""
    client = getattr(_local, "client", None)
    key = (settings.plivo_credentials, settings.plivo_base_url, settings.plivo_timeout)
    if client is None or getattr(_local, "key", None) != key:
        auth_id, auth_token = settings.plivo_credentials
        client = PlivoClient(auth_id, auth_token, settings.plivo_base_url, settings.plivo_timeout)
        _local.client, _local.key = client, key
    return client
