"""URLs the service will make someone fetch (client callbacks, MMS media): absolute, http(s),
and never an internal address, so the service cannot be used to reach inside a network."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeUrl(ValueError):
    """The URL breaks a rule; the message names it."""


def _internal(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


def check_url(url: object, *, allow_http: bool, allow_internal: bool) -> str:
    """Check the form of `url` and a literal IP host; return it or raise UnsafeUrl."""
    if not isinstance(url, str) or len(url) > 2048:
        raise UnsafeUrl("must be a URL string of at most 2048 characters")
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname:
        raise UnsafeUrl(f"must be an absolute {' or '.join(schemes)} URL")
    if allow_internal:
        return url
    host = parts.hostname
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        raise UnsafeUrl("points at an internal host")
    try:
        internal = _internal(host)
    except ValueError:
        internal = False  # a name, not an IP literal: resolved and checked when fetched
    if internal:
        raise UnsafeUrl("points at a loopback, private or link-local address")
    return url


def check_resolved(url: str, *, allow_internal: bool) -> None:
    """Resolve the host and refuse internal addresses (a public name can point inside)."""
    if allow_internal:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as error:
        raise UnsafeUrl(f"host {host!r} does not resolve: {error}") from None
    if any(_internal(info[4][0]) for info in infos):
        raise UnsafeUrl("resolves to a loopback, private or link-local address")
