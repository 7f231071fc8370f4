"""The API over HTTP: one session carrying the key, and every failure turned into one message
an operator can act on (exit status 2)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

import click
import requests

USAGE_OR_API_ERROR = 2
# Connecting is quick or it is not happening; reading may legitimately take a while
# (a 100k-recipient POST is validated and written before the API answers).
CONNECT_TIMEOUT = 5.0
STREAM_CHUNK = 64 * 1024
DETAILS_SHOWN = 5
# Gateways and overload answers: worth asking again while watching a long broadcast.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
# Werkzeug's wording for a route the server does not have at all (as opposed to an unknown
# broadcast on a route it has): an API older than this CLI.
_NO_ROUTE = "The requested URL was not found on the server"
_ERRNO_REASON = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


class CliError(click.ClickException):
    """A failure the operator must act on; click prints it and exits with status 2."""

    exit_code = USAGE_OR_API_ERROR

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def shown_url(url: str) -> str:
    """The URL without any user:password part, so credentials never reach the terminal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def check_base_url(url: str) -> str:
    """The API's base URL without a trailing slash; refuses what requests could not use."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{shown_url(url)!r} is not an http(s) URL such as http://127.0.0.1:8000",
            param_hint="--url/BULKSMS_URL",
        )
    return url.rstrip("/")


def _connection_reason(error: Exception) -> str:
    """'connection refused' rather than urllib3's three nested exception reprs."""
    text = str(error)
    found = _ERRNO_REASON.search(text)
    if found:
        return found.group(1).strip().lower()
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    if isinstance(error, requests.ConnectTimeout):
        return f"no answer within {CONNECT_TIMEOUT:g}s"
    return type(error).__name__


def _error_body(response: requests.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) and "message" in error else None


def describe_details(details: Any) -> list[str]:
    """The API's error details as indented lines: the first few invalid numbers, or the
    scalar fields (a conflicting broadcast id, say)."""
    lines: list[str] = []
    if not isinstance(details, dict):
        return lines
    invalid = details.get("invalid")
    if isinstance(invalid, list):
        for item in invalid[:DETAILS_SHOWN]:
            if isinstance(item, dict):
                where = f"#{item['index']} " if "index" in item else ""
                lines.append(f"  {where}{item.get('value')!r}: {item.get('reason')}")
        total = details.get("invalid_total", len(invalid))
        if isinstance(total, int) and total > len(lines):
            lines.append(f"  ... and {total - len(lines)} more")
    for key, value in details.items():
        if key not in ("invalid", "invalid_total") and isinstance(value, str | int | float):
            lines.append(f"  {key}: {value}")
    return lines


class ApiClient:
    """The `/v1` API at `url`, authenticated with `api_key` (asked for only when a command
    actually calls the API, so `--help` works without one)."""

    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.url = url
        self._api_key = api_key
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "bulksms-cli"

    @property
    def shown_url(self) -> str:
        return shown_url(self.url)

    def request(
        self,
        method: str,
        path: str,
        *,
        broadcast_id: str | None = None,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request; any answer of 400 or more, or none at all, raises CliError."""
        if not self._api_key:
            raise CliError("no API key: set --api-key or BULKSMS_API_KEY")
        try:
            response = self._session.request(
                method,
                self.url + path,
                headers={"X-API-Key": self._api_key, **(headers or {})},
                timeout=(CONNECT_TIMEOUT, self.timeout),
                stream=stream,
                **kwargs,
            )
        except requests.ConnectionError as error:
            raise CliError(
                f"cannot reach the API at {self.shown_url}: {_connection_reason(error)} "
                "(is it running? set --url/BULKSMS_URL)",
                transient=True,
            ) from None
        except requests.Timeout:
            raise CliError(
                f"the API at {self.shown_url} did not answer within {self.timeout:g}s "
                "(raise --timeout/BULKSMS_TIMEOUT)",
                transient=True,
            ) from None
        except requests.RequestException as error:
            raise CliError(f"request to the API at {self.shown_url} failed: {error}") from None
        if response.status_code >= 400:
            try:
                raise self._failure(response, method, path, broadcast_id)
            finally:
                response.close()
        return response

    def _failure(
        self, response: requests.Response, method: str, path: str, broadcast_id: str | None
    ) -> CliError:
        status = response.status_code
        error = _error_body(response)
        if status == 401:
            return CliError("the API refused the key (set --api-key/BULKSMS_API_KEY)")
        route_missing = status == 405 or (
            status == 404 and (error is None or str(error["message"]).startswith(_NO_ROUTE))
        )
        if route_missing:
            return CliError(
                f"the API at {self.shown_url} has no {method} {path.split('?')[0]} "
                "(is it older than this CLI?)"
            )
        if status == 404 and broadcast_id is not None:
            return CliError(f"no broadcast {broadcast_id}")
        transient = status in TRANSIENT_STATUSES
        if error is None:
            return CliError(
                f"the API at {self.shown_url} answered HTTP {status} {response.reason}",
                transient=transient,
            )
        lines = [str(error["message"]), *describe_details(error.get("details"))]
        return CliError("\n".join(lines), transient=transient)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A JSON request answered with JSON."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the API at {self.shown_url} answered {method} {path} with something "
                f"other than JSON ({response.headers.get('Content-Type', 'no Content-Type')})"
            ) from None

    def broadcast_path(self, broadcast_id: str, action: str = "") -> str:
        # Quoted so an id like "../limits" cannot address another route.
        path = f"/v1/broadcasts/{quote(broadcast_id, safe='')}"
        return f"{path}/{action}" if action else path

    @contextmanager
    def csv_download(
        self, path: str, params: dict | None = None, broadcast_id: str | None = None
    ) -> Iterator[Iterator[bytes]]:
        """The body of a streamed `Accept: text/csv` answer, chunk by chunk, never whole."""
        response = self.request(
            "GET",
            path,
            params=params,
            headers={"Accept": "text/csv"},
            stream=True,
            broadcast_id=broadcast_id,
        )
        with response:
            kind = response.headers.get("Content-Type", "")
            if not kind.startswith("text/csv"):
                raise CliError(
                    f"the API at {self.shown_url} answered GET {path} with {kind or 'no type'}, "
                    "not CSV (is it older than this CLI?)"
                )
            yield self._chunks(response)

    def _chunks(self, response: requests.Response) -> Iterator[bytes]:
        received = 0
        try:
            for chunk in response.iter_content(chunk_size=STREAM_CHUNK):
                received += len(chunk)
                yield chunk
        except requests.RequestException as error:
            raise CliError(
                f"the download from {self.shown_url} broke off after {received:,} bytes: "
                f"{_connection_reason(error)}; the output is incomplete"
            ) from None


def copy_stream(chunks: Iterator[bytes], out: IO[bytes]) -> tuple[int, int]:
    """Write every chunk as it arrives; (bytes, lines) written."""
    written = lines = 0
    for chunk in chunks:
        out.write(chunk)
        out.flush()
        written += len(chunk)
        lines += chunk.count(b"\n")
    return written, lines


pass_client = click.make_pass_decorator(ApiClient)
