"""URLs the service will make someone fetch (client callbacks, MMS media): absolute, http(s),
and never an internal address, so the service cannot be used to reach inside a network.

Checked twice. At intake: the URL's form, and a literal address in every spelling a resolver
accepts (`2130706433`, `0x7f000001`, `127.1`, `0`, `[::ffff:127.0.0.1]` all mean an internal
host). When fetched: every address the name resolves to, once, and shared/safe_http.py then
connects to exactly that address, so a second DNS answer cannot swap in an internal one."""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL = 2048
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal")
# Letters, digits and hyphens (IDNs arrive here as punycode): anything else in a host name is
# a spelling that some other parser (the resolver, Plivo's fetcher) may read differently.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# Backslashes, whitespace and control characters make parsers disagree on where the host ends.
_AMBIGUOUS = re.compile(r"[\\\s\x00-\x1f\x7f]")
# NAT64 prefixes carry an IPv4 address in their last 32 bits.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class UnsafeUrl(ValueError):
    """The URL breaks a rule; the message names it."""


@dataclass(frozen=True)
class Target:
    """A checked URL, split the way it will be requested."""

    scheme: str
    host: str  # ASCII name without a trailing dot, or an IP address in its canonical form
    port: int
    path: str  # what goes on the request line: path and query
    username: str | None
    password: str | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def is_internal(ip: IpAddress) -> bool:
    """Loopback, private, link-local, unspecified, reserved or multicast, including IPv4
    addresses carried inside IPv6 ones (mapped, 6to4, Teredo, NAT64, IPv4-compatible)."""
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return is_internal(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_internal(ip.sixtofour)
        if ip.teredo is not None:
            return any(is_internal(inner) for inner in ip.teredo)
        if any(ip in network for network in _NAT64):
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if int(ip) >> 32 == 0:
            return True  # ::a.b.c.d, deprecated IPv4-compatible form (and :: and ::1)
    return not ip.is_global or ip.is_multicast


def _literal_ip(host: str) -> tuple[IpAddress | None, bool]:
    """(the address `host` spells, whether it spells it canonically), or (None, True) for
    a name. `127.1`, `2130706433` and `0x7f000001` are read as the C resolver reads them."""
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host), True
        except ValueError:
            raise UnsafeUrl("host is not a valid IPv6 address") from None
    try:
        return ipaddress.IPv4Address(host), True
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None, True
    return ipaddress.IPv4Address(packed), False


def _ascii_host(host: str) -> str:
    host = host[:-1] if host.endswith(".") else host  # "localhost." is localhost
    if not host.isascii():
        try:
            # What the resolver would do with it; this also folds full-width digits and dots.
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise UnsafeUrl("host is not a valid domain name") from None
    return host.lower()


def parse_url(url: object, *, allow_http: bool, allow_internal: bool) -> Target:
    """Split `url` and check its form and a literal host; raise UnsafeUrl naming the rule."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        raise UnsafeUrl(f"must be a URL string of at most {MAX_URL} characters")
    schemes = ("https", "http") if allow_http else ("https",)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"is not a valid URL ({error})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise UnsafeUrl(f"must be an absolute {' or '.join(schemes)} URL")
    if _AMBIGUOUS.search(url):
        raise UnsafeUrl("must not contain spaces, control characters or backslashes")
    host = _ascii_host(parts.hostname)
    ip, canonical = _literal_ip(host)
    if ip is None and not _HOST_NAME.fullmatch(host):
        raise UnsafeUrl("host is not a valid domain name")
    if not allow_internal:
        if ip is None and (host == "localhost" or host.endswith(_INTERNAL_SUFFIXES)):
            raise UnsafeUrl("points at an internal host")
        if ip is not None and is_internal(ip):
            raise UnsafeUrl(
                f"points at a loopback, private, link-local or unspecified address ({ip})"
            )
    if not canonical:
        # Public or not, a resolver-only spelling is read differently by different parsers.
        raise UnsafeUrl(f"write an IPv4 host as four decimal numbers ({ip})")
    if port == 0:
        raise UnsafeUrl("port must be 1-65535")
    return Target(
        scheme=parts.scheme,
        host=str(ip) if ip is not None else host,
        port=port or (443 if parts.scheme == "https" else 80),
        path=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def check_url(url: object, *, allow_http: bool, allow_internal: bool) -> str:
    """`url` unchanged if its form and any literal host pass; else UnsafeUrl. A host name is
    resolved and checked when the URL is fetched (see resolve)."""
    parse_url(url, allow_http=allow_http, allow_internal=allow_internal)
    return url  # type: ignore[return-value]


def resolve(target: Target, *, allow_internal: bool) -> list[str]:
    """The addresses to connect to, looked up once; UnsafeUrl if any of them is internal
    (a public name can point inside)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as error:
        raise UnsafeUrl(f"host {target.host!r} does not resolve: {error}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not allow_internal and any(is_internal(ipaddress.ip_address(a)) for a in addresses):
        raise UnsafeUrl("resolves to a loopback, private or link-local address")
    return addresses
