"""Quiet hours in each recipient's local time: the window, a number's time zones, and the
moment a batch may go.

A *zone key* names every IANA zone a number may be in, sorted and joined by "," (the
`batches.zone` column). A batch waits while the window is open in any of its zones (the most
restrictive wins) and is released at the earliest moment it is closed in all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE, PhoneNumber, PhoneNumberType, number_type
from phonenumbers.phonenumberutil import is_number_type_geographical
from phonenumbers.tzdata import TIMEZONE_DATA, TIMEZONE_LONGEST_PREFIX

# Numbers phonenumbers places nowhere (+800 freephone, +881 satellite, +882/+883 networks):
# they have no local time. The window is applied in UTC for them: the only choice that
# lets them go at all (every zone on earth at once would never be outside a window).
UNKNOWN_ZONE = "Etc/Unknown"
_UTC_FOR_UNKNOWN = "UTC"

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
# Each step of the release search passes at least one zone's window end, so a key that can
# be released at all needs about one step per zone (NANPA's country level has 42).
_MAX_STEPS = 64


@dataclass(frozen=True)
class Window:
    """Local times during which nobody is texted; `start > end` wraps midnight."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def _clock(name: str, value: object) -> time:
    if not isinstance(value, str) or not _CLOCK.match(value.strip()):
        raise ValueError(f"{name} must be a local time HH:MM (00:00-23:59), got {value!r}")
    hours, minutes = value.strip().split(":")
    return time(int(hours), int(minutes))


def parse_window(value: object) -> Window | None:
    """{"start": "21:00", "end": "08:00"} or "21:00-08:00" → Window; None or "" → None.

    Raises ValueError naming `start` or `end` when a bound is missing or not HH:MM.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        start, sep, end = value.strip().partition("-")
        if not sep:
            raise ValueError(f"quiet hours must look like 21:00-08:00, got {value!r}")
        value = {"start": start, "end": end}
    if not isinstance(value, dict):
        raise ValueError('quiet hours must be {"start": "HH:MM", "end": "HH:MM"}')
    unknown = sorted(set(value) - {"start", "end"})
    if unknown:
        raise ValueError(f"quiet hours take only start and end, not {', '.join(unknown)}")
    for name in ("start", "end"):
        if name not in value:
            raise ValueError(f"{name} is required (HH:MM)")
    start, end = _clock("start", value["start"]), _clock("end", value["end"])
    if start == end:
        raise ValueError("start and end must differ (an empty or all-day window means nothing)")
    return Window(start, end)


_CODES = {str(code): code for code in COUNTRY_CODE_TO_REGION_CODE}
# Per country code, the longest key of phonenumbers' prefix table under it (NANPA: 7, e.g.
# 1-212-5xx; Germany: 2). The longest-prefix match reads no digit beyond that, so a cache
# keyed on those digits is exact, and it stays small (a million US numbers share a few
# thousand area code + exchange prefixes) where the table's global longest (9) would make
# almost every number its own entry.
_DEPTH = {
    code: max((len(key) for key in TIMEZONE_DATA if key.startswith(str(code))), default=0)
    for code in COUNTRY_CODE_TO_REGION_CODE
}


def _country_code(digits: str) -> int | None:
    return _CODES.get(digits[:1]) or _CODES.get(digits[:2]) or _CODES.get(digits[:3])


@cache
def _country_zones(code: int) -> tuple[str, ...] | None:
    return TIMEZONE_DATA.get(str(code))


@cache
def _needs_type_check(code: int) -> bool:
    # Where a country's mobiles are not geographic, phonenumbers places a mobile in the
    # whole country, but its prefix table may still name one zone for the mobile range
    # (Australia's 04 → Sydney, Russia's 9 → Moscow). That matters only when the country
    # spans several UTC offsets. NANPA (+1) is left out: every area code belongs to one
    # territory, so its entry is right for mobiles too, and phonenumbers' country level
    # (42 zones from Guam to Adak) would never leave any quiet window.
    if code == 1 or is_number_type_geographical(PhoneNumberType.MOBILE, code):
        return False
    zones = [ZoneInfo(name) for name in _country_zones(code) or ()]
    # Winter and summer: zones that agree in one season may differ in the other.
    seasons = (datetime(2025, 1, 15, tzinfo=UTC), datetime(2025, 7, 15, tzinfo=UTC))
    return any(
        len({moment.astimezone(zone).utcoffset() for zone in zones}) > 1 for moment in seasons
    )


@lru_cache(maxsize=1 << 18)
def _prefix_key(prefix: str) -> tuple[str, tuple[str, ...]]:
    for size in range(min(len(prefix), TIMEZONE_LONGEST_PREFIX), 0, -1):
        zones = TIMEZONE_DATA.get(prefix[:size])
        if zones is not None:
            return ",".join(sorted(zones)), zones
    return UNKNOWN_ZONE, ()


def zone_key(number: str) -> str:
    """The IANA zones of an E.164 number, sorted and joined by ","; see the module doc.

    The zones come from phonenumbers' prefix table (what `time_zones_for_number` answers
    for geographic numbers); where it says nothing beyond the country code, that is the
    country's zones (most restrictive). A country with no zones at all (+800, +881, …)
    gives "Etc/Unknown", judged in UTC. Mobiles of countries whose mobiles are not
    geographic and that span several offsets get the country's zones, as phonenumbers
    gives them; NANPA numbers keep their area code's zone (see `_needs_type_check`).
    """
    digits = number[1:] if number.startswith("+") else number
    code = _country_code(digits)
    if code is None:
        return UNKNOWN_ZONE
    key, zones = _prefix_key(digits[: _DEPTH[code]])
    if _needs_type_check(code):
        country = _country_zones(code)
        if country is not None and zones != country:
            national = int(digits[len(str(code)) :] or 0)
            kind = number_type(PhoneNumber(country_code=code, national_number=national))
            if kind != PhoneNumberType.UNKNOWN and not is_number_type_geographical(kind, code):
                return _prefix_key(str(code))[0]
    return key


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(_UTC_FOR_UNKNOWN if name == UNKNOWN_ZONE else name)


@cache
def zones_of(key: str) -> tuple[ZoneInfo, ...]:
    """ZoneInfo objects of a zone key ("" or an unknown key → UTC)."""
    return tuple(_zone(name) for name in key.split(",") if name) or (_zone(UNKNOWN_ZONE),)


def _window_end_after(zone: ZoneInfo, window: Window, moment: datetime) -> datetime:
    """The first local `window.end` strictly after `moment`, in UTC."""
    local = moment.astimezone(zone)
    for days in (0, 1, 2):
        end = datetime.combine(local.date() + timedelta(days=days), window.end, tzinfo=zone)
        # A wall time in a spring-forward gap resolves (fold=0) to the offset before the
        # change; in UTC that is still one real instant, just an hour later on the clock.
        end_utc = end.astimezone(UTC)
        if end_utc > moment:
            return end_utc
    raise AssertionError("a window end is always within two days")


def _open_in(zones: tuple[ZoneInfo, ...], window: Window, moment: datetime) -> list[ZoneInfo]:
    return [zone for zone in zones if window.contains(moment.astimezone(zone).time())]


def release_at(key: str, window: Window | None, now: datetime) -> datetime | None:
    """None when `now` is outside the window in every zone of `key`; else the earliest UTC
    moment at which it is outside in all of them.

    A key whose zones span so many offsets that the window is always open in one of them
    (more than 24 h minus the window's length) is judged by its middle zone instead: the
    alternative is a batch that never goes.
    """
    if window is None:
        return None
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    zones = zones_of(key)
    moment = now
    for _ in range(_MAX_STEPS):
        blocking = _open_in(zones, window, moment)
        if not blocking:
            return None if moment == now else moment
        # Each blocking zone stays inside until its own window ends, so no free moment
        # comes before the latest of those ends; from there, look again.
        moment = max(_window_end_after(zone, window, moment) for zone in blocking)
        if moment - now > timedelta(days=2):
            break
    middle = sorted(zones, key=lambda zone: now.astimezone(zone).utcoffset())[len(zones) // 2]
    return release_at(middle.key, window, now)


def is_quiet(key: str, window: Window | None, now: datetime) -> bool:
    """True while the window is open somewhere in `key` (the batch must wait)."""
    return release_at(key, window, now) is not None
