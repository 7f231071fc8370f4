"""Plivo's validation of a send-message request, as the Message API applies it."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_DESTINATIONS = 1000
MAX_MEDIA = 10
MIN_NUMBER_DIGITS = 7
MAX_NUMBER_DIGITS = 15
MESSAGE_EXPIRY_RANGE = (5, 10799)
MESSAGE_TYPES = ("sms", "mms")

# One regex over the whole `dst` keeps a 1000-number request at microseconds of validation.
# re.ASCII because a bare \d also matches digits of other scripts, which are no phone number.
_DST_SHAPE = re.compile(r"\+?\d+(?:<\+?\d+)*", re.ASCII)
_DST_PART = re.compile(r"\+?\d+", re.ASCII)
_PHONE_SENDER = re.compile(r"\+?\d{3,15}", re.ASCII)
_ALPHANUMERIC_SENDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ]{0,10}", re.ASCII)


class InvalidMessageRequest(ValueError):
    """A request Plivo answers with 400; `extra` goes into the error body beside `error`."""

    def __init__(self, message: str, extra: dict | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}


@dataclass(frozen=True)
class MessageRequest:
    src: str | None
    powerpack_uuid: str | None
    # Digits without '+', deduplicated, in the order given: one message each.
    destinations: list[str]
    # As the client wrote them, the way Plivo echoes them back in `invalid_number`.
    invalid_numbers: list[str]
    type: str
    text: str
    url: str | None
    method: str
    media_urls: list[str] = field(default_factory=list)
    media_ids: list[str] = field(default_factory=list)
    message_expiry: int | None = None


def parse_message_request(body: object, invalid_prefixes: Sequence[str] = ()) -> MessageRequest:
    if not isinstance(body, dict):
        raise InvalidMessageRequest("request body must be a JSON object")

    src = _optional_string(body, "src")
    powerpack_uuid = _optional_string(body, "powerpack_uuid")
    if src is None and powerpack_uuid is None:
        raise InvalidMessageRequest(
            "specify either powerpack_uuid or src in request params to send a message"
        )
    if src is not None and powerpack_uuid is not None:
        raise InvalidMessageRequest(
            "both powerpack_uuid and src cannot be specified; specify either one"
        )
    if src is not None and not (
        _PHONE_SENDER.fullmatch(src) or _ALPHANUMERIC_SENDER.fullmatch(src)
    ):
        raise InvalidMessageRequest(
            f"src {src!r} is invalid: use a phone number, a short code or an alphanumeric "
            "sender of at most 11 characters"
        )

    destinations, invalid_numbers = _parse_destinations(body.get("dst"), invalid_prefixes)

    type_ = body.get("type", "sms")
    if type_ not in MESSAGE_TYPES:
        raise InvalidMessageRequest(f"type must be sms or mms, not {type_!r}")

    text = body.get("text")
    if text is not None and not isinstance(text, str):
        raise InvalidMessageRequest("text must be a string")
    if type_ == "sms" and not text:
        raise InvalidMessageRequest("text is required for sms and must not be empty")

    media_urls = _optional_string_list(body, "media_urls")
    media_ids = _optional_string_list(body, "media_ids")
    if type_ == "mms":
        media_count = len(media_urls) + len(media_ids)
        if media_count == 0:
            raise InvalidMessageRequest("mms needs media_urls or media_ids")
        if media_count > MAX_MEDIA:
            raise InvalidMessageRequest(f"mms allows at most {MAX_MEDIA} media, got {media_count}")

    url = _optional_string(body, "url")
    if url is not None and not url.startswith(("http://", "https://")):
        raise InvalidMessageRequest(f"url {url!r} is not an http(s) URL")
    method = (_optional_string(body, "method") or "POST").upper()
    if method not in ("GET", "POST"):
        raise InvalidMessageRequest("method must be GET or POST")

    log = body.get("log")
    if log is not None and not isinstance(log, bool) and log not in ("true", "false"):
        raise InvalidMessageRequest('log must be "true" or "false"')
    trackable = body.get("trackable")
    if trackable is not None and not isinstance(trackable, bool):
        raise InvalidMessageRequest("trackable must be a boolean")

    message_expiry = body.get("message_expiry")
    if message_expiry is not None:
        low, high = MESSAGE_EXPIRY_RANGE
        # bool is an int in Python but never a valid expiry.
        if (
            not isinstance(message_expiry, int)
            or isinstance(message_expiry, bool)
            or not low <= message_expiry <= high
        ):
            raise InvalidMessageRequest(
                f"message_expiry must be an integer number of seconds from {low} to {high}"
            )

    return MessageRequest(
        src=src,
        powerpack_uuid=powerpack_uuid,
        destinations=destinations,
        invalid_numbers=invalid_numbers,
        type=type_,
        text=text or "",
        url=url,
        method=method,
        media_urls=media_urls,
        media_ids=media_ids,
        message_expiry=message_expiry,
    )


def _parse_destinations(
    dst: object, invalid_prefixes: Sequence[str]
) -> tuple[list[str], list[str]]:
    if dst is None or dst == "":
        raise InvalidMessageRequest("dst is required")
    if not isinstance(dst, str):
        raise InvalidMessageRequest("dst must be a string of numbers joined by '<'")
    if dst.lstrip().startswith(("[", "(")):
        # The classic client bug: str() of a Python list sent as dst.
        raise InvalidMessageRequest(
            f"dst {_clip(dst)!r} looks like a Python list; join the numbers with '<' "
            "(for example '14155550001<14155550002')"
        )
    if not _DST_SHAPE.fullmatch(dst):
        bad = next((part for part in dst.split("<") if not _DST_PART.fullmatch(part)), dst)
        raise InvalidMessageRequest(
            f"dst contains {_clip(bad)!r}: destinations must be digits with an optional "
            "leading '+', joined by '<'"
        )

    prefixes = tuple(invalid_prefixes)
    seen: set[str] = set()
    valid: list[str] = []
    invalid: list[str] = []
    for number in dst.split("<"):
        digits = number.removeprefix("+")
        if digits in seen:
            continue
        seen.add(digits)
        if MIN_NUMBER_DIGITS <= len(digits) <= MAX_NUMBER_DIGITS and not (
            prefixes and digits.startswith(prefixes)
        ):
            valid.append(digits)
        else:
            invalid.append(number)

    if len(seen) > MAX_DESTINATIONS:
        raise InvalidMessageRequest(
            f"too many destinations: {len(seen)} unique numbers, at most {MAX_DESTINATIONS} "
            "per request"
        )
    if not valid:
        raise InvalidMessageRequest(
            "no valid destination number in dst", extra={"invalid_number": invalid}
        )
    return valid, invalid


def _optional_string(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidMessageRequest(f"{name} must be a non-empty string")
    return value


def _optional_string_list(body: dict, name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidMessageRequest(f"{name} must be a list of strings")
    return value


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# The variant nibble of an RFC 4122 uuid is 10xx: map any hex digit onto 8, 9, a or b.
_VARIANT_NIBBLE = "89ab" * 4


def new_message_uuids(count: int) -> list[str]:
    """`count` random version-4 uuid strings, as uuid4() gives, in a third of the time.

    str(uuid.uuid4()) costs about 2 µs, which alone would be 2 ms of a 1000-number request.
    """
    hex_ = os.urandom(16 * count).hex()
    return [
        f"{hex_[i : i + 8]}-{hex_[i + 8 : i + 12]}-4{hex_[i + 13 : i + 16]}-"
        f"{_VARIANT_NIBBLE[int(hex_[i + 16], 16)]}{hex_[i + 17 : i + 20]}-{hex_[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]
