"""The optional media check: before accepting an MMS, ask each URL what it serves, with a
short timeout and without downloading it, so a broken link fails now with a clear 400
instead of later as a Plivo error on every recipient."""

from __future__ import annotations

from urllib.parse import urljoin

from shared.media import ALLOWED_TYPES, MAX_BYTES_EACH, MAX_BYTES_TOTAL, base_type
from shared.safe_http import Answer, Unreachable, UnsafeUrl, request

TIMEOUT = (2.0, 3.0)  # connect, read
MAX_REDIRECTS = 3


class MediaProblem(ValueError):
    """A media URL breaks a rule; the message names the URL and the rule."""


def _probe(url: str, allow_internal: bool, allow_http: bool) -> Answer:
    """HEAD (falling back to a one-byte ranged GET), following a few redirects by hand:
    each hop is a new request, so its URL and addresses are checked like the first."""
    rules = {"allow_http": allow_http, "allow_internal": allow_internal, "timeout": TIMEOUT}
    for _ in range(MAX_REDIRECTS + 1):
        try:
            answer = request("HEAD", url, **rules)
            if answer.status in (405, 501):
                answer = request("GET", url, headers={"Range": "bytes=0-0"}, **rules)
        except UnsafeUrl as error:
            raise MediaProblem(f"{url}: {error}") from None
        except Unreachable as error:
            raise MediaProblem(f"{url}: not reachable ({error})") from None
        if answer.redirect_to is None:
            return answer
        url = urljoin(url, answer.redirect_to)
    raise MediaProblem(f"{url}: more than {MAX_REDIRECTS} redirects")


def _size(response: Answer) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and content_range.rsplit("/", 1)[1].isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def check_media(urls: list[str], *, allow_internal: bool, allow_http: bool) -> None:
    """Raise MediaProblem for the first URL that breaks a rule."""
    total = 0
    for url in urls:
        response = _probe(url, allow_internal, allow_http)
        if not 200 <= response.status < 300:
            raise MediaProblem(f"{url}: answered HTTP {response.status}")
        content_type = base_type(response.headers.get("Content-Type"))
        if content_type not in ALLOWED_TYPES:
            raise MediaProblem(
                f"{url}: Content-Type {content_type or 'missing'} is not one Plivo sends"
            )
        size = _size(response)
        if size is None:
            raise MediaProblem(f"{url}: no Content-Length (Plivo needs it)")
        if size > MAX_BYTES_EACH:
            raise MediaProblem(f"{url}: {size} bytes is over the 2 MB limit per file")
        total += size
    if total >= MAX_BYTES_TOTAL:
        raise MediaProblem(f"media_urls: {total} bytes together; the limit is under 5 MB")
