"""The one place the service calls Plivo: the real SDK, with its traps handled and errors mapped."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from enum import StrEnum

import plivo
import plivo.rest.client
import requests
from plivo import exceptions as plivo_errors

from shared.config import Settings


class ErrorKind(StrEnum):
    TRANSIENT = "transient"  # nothing was sent; safe to retry with backoff
    AMBIGUOUS = "ambiguous"  # the request may have reached Plivo; never re-send automatically
    PERMANENT = "permanent"  # this request will never succeed as it is
    ACCOUNT = "account"  # the account cannot send (auth, credit, permission): pause


# HTTP status → what it means for a batch. The SDK raises a bare PlivoRestError for
# 402/429/502/503, so the status is read off the response, not the exception type.
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
    500: ErrorKind.TRANSIENT,
    502: ErrorKind.TRANSIENT,
    503: ErrorKind.TRANSIENT,
    504: ErrorKind.TRANSIENT,
}


class PlivoError(Exception):
    """A failed call to Plivo, classified once here so callers never parse messages."""

    def __init__(self, kind: ErrorKind, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status

    def __str__(self) -> str:
        prefix = f"HTTP {self.status}: " if self.status else ""
        return f"{prefix}{self.args[0]}"


@dataclass
class SendResult:
    api_id: str
    uuids: dict[str, str] = field(default_factory=dict)  # E.164 → message_uuid
    invalid: list[str] = field(default_factory=list)  # E.164 numbers Plivo refused


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

    def _observe(self, response: requests.Response, *_args, **_kwargs) -> None:
        self._last_status = response.status_code

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
        self._last_status = None
        try:
            response = self._sdk.messages.create(
                src=plivo_address(sender),
                # A Python list would be sent as its str(); Plivo wants '<'-joined.
                dst="<".join(by_address),
                text=text,
                type_=message_type,
                url=callback_url,
                media_urls=media_urls,
                media_ids=media_ids,
            )
        except requests.RequestException as error:
            raise PlivoError(classify_transport_error(error), _describe(error)) from error
        except plivo_errors.PlivoRestError as error:
            status = self._last_status
            kind = STATUS_KINDS.get(status, ErrorKind.PERMANENT)
            raise PlivoError(kind, str(error), status) from error
        return _read_result(response, by_address)

    def upload_media(self, filename: str, data: bytes, content_type: str) -> dict:
        """Upload one file to Plivo's media store; returns its media_id and details."""
        self._last_status = None
        # Through the SDK's own multipart request (auth, base URL, error mapping); its
        # media.upload() wants a path and leaves that file open.
        files = [("file", (filename, io.BytesIO(data), content_type))]
        try:
            response = self._sdk.request("POST", ("Media",), {}, files=files)
        except requests.RequestException as error:
            raise PlivoError(classify_transport_error(error), _describe(error)) from error
        except plivo_errors.PlivoRestError as error:
            kind = STATUS_KINDS.get(self._last_status, ErrorKind.PERMANENT)
            raise PlivoError(kind, str(error), self._last_status) from error
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
