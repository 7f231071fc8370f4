"""Requests to URLs that clients gave us (completion notices, MMS media checks).

Each request checks the URL, resolves its host once, refuses internal addresses, and then
connects to exactly the address it checked, sending the name only as the Host header and the
TLS server name (SNI and certificate check). A resolver is never asked twice, so a DNS answer
that changes between the check and the connection (rebinding) cannot point it inside.
Redirects are never followed here: a caller that wants them asks again for the new URL, which
is checked like the first."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Mapping
from dataclasses import dataclass

import certifi
import urllib3
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import NewConnectionError

from shared.urls import Target, UnsafeUrl, parse_url, resolve

__all__ = ["Answer", "Unreachable", "UnsafeUrl", "request"]

REDIRECTS = (301, 302, 303, 307, 308)


class Unreachable(Exception):
    """No answer from the host (refused, timed out, TLS failed); the message says which."""


@dataclass(frozen=True)
class Answer:
    """Status and headers only: nobody here needs a body, so none is read (a hostile server
    could send an endless one)."""

    status: int
    headers: urllib3.HTTPHeaderDict

    @property
    def redirect_to(self) -> str | None:
        return self.headers.get("Location") if self.status in REDIRECTS else None


def _pool(target: Target, address: str, timeout: urllib3.Timeout, ca_certs: str | None):
    if target.scheme == "http":
        return urllib3.HTTPConnectionPool(address, target.port, timeout=timeout, retries=False)
    return urllib3.HTTPSConnectionPool(
        address,
        target.port,
        timeout=timeout,
        retries=False,
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca_certs or certifi.where(),  # the bundle requests used before
        server_hostname=target.host,
        assert_hostname=target.host,
    )


def request(
    method: str,
    url: str,
    *,
    allow_http: bool,
    allow_internal: bool,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: tuple[float, float] = (2.0, 3.0),
    ca_certs: str | None = None,
) -> Answer:
    """One request, never redirected. Raises UnsafeUrl (the URL or an address it resolves to
    breaks a rule) or Unreachable. `timeout` is (connect, read) seconds; `ca_certs` a CA file
    to trust instead of certifi's bundle."""
    target = parse_url(url, allow_http=allow_http, allow_internal=allow_internal)
    addresses = resolve(target, allow_internal=allow_internal)
    sent = {"Host": target.host_header, "User-Agent": "bulksms", **(headers or {})}
    if target.username is not None:
        credentials = f"{target.username}:{target.password or ''}".encode()
        sent["Authorization"] = "Basic " + b64encode(credentials).decode()
    limits = urllib3.Timeout(connect=timeout[0], read=timeout[1])
    failure: Exception | None = None
    for address in addresses:
        pool = _pool(target, address, limits, ca_certs)
        try:
            response = pool.urlopen(
                method,
                target.path,
                body=body,
                headers=sent,
                redirect=False,
                retries=False,
                preload_content=False,
                assert_same_host=False,
            )
            response.close()
            return Answer(response.status, urllib3.HTTPHeaderDict(response.headers))
        except NewConnectionError as error:
            failure = error  # this address refused or is unreachable: try the next one
        except (TransportError, OSError) as error:
            raise Unreachable(_reason(error)) from error
        finally:
            pool.close()
    raise Unreachable(_reason(failure)) from failure


def _reason(error: Exception | None) -> str:
    if isinstance(error, NewConnectionError):
        return "connection refused or failed"
    return type(error).__name__
