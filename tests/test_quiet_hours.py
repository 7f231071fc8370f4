"""Quiet hours: windows, a number's zones, and release times on fixed clocks."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta

import phonenumbers
import pytest
from phonenumbers.timezone import time_zones_for_number

from shared.quiet_hours import (
    UNKNOWN_ZONE,
    Window,
    is_quiet,
    parse_window,
    release_at,
    zone_key,
)

NIGHT = Window(time(21, 0), time(8, 0))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# --- windows -------------------------------------------------------------------------


def test_a_window_is_read_from_a_dict_or_a_string():
    assert parse_window({"start": "21:00", "end": "08:00"}) == NIGHT
    assert parse_window("21:00-08:00") == NIGHT
    assert parse_window(" 13:30-14:15 ") == Window(time(13, 30), time(14, 15))


@pytest.mark.parametrize("value", [None, "", "  "])
def test_no_window_means_no_quiet_hours(value):
    assert parse_window(value) is None


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"start": "25:00", "end": "08:00"}, "start"),
        ({"start": "21:00", "end": "8am"}, "end"),
        ({"start": "21:00"}, "end"),
        ({"end": "08:00"}, "start"),
        ({"start": "21:00", "end": 8}, "end"),
        ("21:00", "21:00-08:00"),
        ({"start": "08:00", "end": "08:00"}, "differ"),
        ({"start": "21:00", "end": "08:00", "zone": "UTC"}, "zone"),
        (["21:00", "08:00"], "start"),
    ],
)
def test_a_bad_window_is_refused_naming_the_bound(value, named):
    with pytest.raises(ValueError, match=named):
        parse_window(value)


def test_a_window_that_wraps_midnight_holds_both_sides_of_it():
    assert NIGHT.contains(time(23, 59))
    assert NIGHT.contains(time(0, 0))
    assert NIGHT.contains(time(7, 59))
    assert not NIGHT.contains(time(8, 0))
    assert not NIGHT.contains(time(20, 59))
    lunch = Window(time(12, 0), time(13, 0))
    assert lunch.contains(time(12, 30)) and not lunch.contains(time(13, 0))


# --- zones of a number ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "key"),
    [
        ("+12125550100", "America/New_York"),
        ("+14155550100", "America/Los_Angeles"),
        ("+4915112345678", "Europe/Berlin"),
        ("+493012345678", "Europe/Berlin"),
        ("+33612345678", "Europe/Paris"),
        # Antigua's mobiles are not "geographic" to phonenumbers, which would place them in
        # all 42 NANPA zones; the area code names the island.
        ("+12684641234", "America/Antigua"),
        # A Spanish mobile may be on the Canaries: both zones.
        ("+34612345678", "Atlantic/Canary,Europe/Madrid"),
        ("+80012345678", UNKNOWN_ZONE),
    ],
)
def test_a_number_is_placed_in_its_zones(number, key):
    assert zone_key(number) == key


def test_an_australian_mobile_is_in_every_australian_zone_as_phonenumbers_says():
    number = "+61412345678"
    expected = ",".join(sorted(time_zones_for_number(phonenumbers.parse(number))))
    assert zone_key(number) == expected
    assert "Australia/Perth" in expected and "Australia/Sydney" in expected


def test_geographic_numbers_get_the_zones_phonenumbers_gives_them():
    rng = random.Random(11)
    checked = 0
    for region in ("US", "CA", "DE", "FR", "GB", "ES", "IT", "NL", "AU", "BR", "MX", "IN", "RU"):
        example = phonenumbers.example_number_for_type(
            region, phonenumbers.PhoneNumberType.FIXED_LINE
        )
        national = str(example.national_number)
        for _ in range(200):
            # Vary the subscriber digits, keep the area: the cache must not leak between them.
            tail = "".join(rng.choice("0123456789") for _ in range(3))
            candidate = phonenumbers.PhoneNumber(
                country_code=example.country_code, national_number=int(national[:-3] + tail)
            )
            if not phonenumbers.is_valid_number(candidate):
                continue
            number = phonenumbers.format_number(candidate, phonenumbers.PhoneNumberFormat.E164)
            assert zone_key(number) == ",".join(sorted(time_zones_for_number(candidate))), number
            checked += 1
    assert checked > 1000


# --- release times -------------------------------------------------------------------


def test_new_york_and_berlin_are_each_released_at_their_own_eight():
    # 05:00 UTC on a winter Monday: midnight in New York, 06:00 in Berlin.
    now = at("2025-02-03T05:00:00")
    assert release_at("America/New_York", NIGHT, now) == at("2025-02-03T13:00:00")
    assert release_at("Europe/Berlin", NIGHT, now) == at("2025-02-03T07:00:00")
    # 09:00 UTC: Berlin is awake, New York still asleep.
    assert release_at("Europe/Berlin", NIGHT, at("2025-02-03T09:00:00")) is None
    assert is_quiet("America/New_York", NIGHT, at("2025-02-03T09:00:00"))


def test_the_evening_start_holds_until_the_next_morning():
    # 21:00 in Berlin (CET, UTC+1) is 20:00 UTC.
    assert release_at("Europe/Berlin", NIGHT, at("2025-02-03T19:59:59")) is None
    assert release_at("Europe/Berlin", NIGHT, at("2025-02-03T20:00:00")) == at(
        "2025-02-04T07:00:00"
    )


def test_a_number_in_two_zones_waits_for_the_later_morning():
    # Canaries (UTC+0 in winter) wake an hour after Madrid (UTC+1).
    key = zone_key("+34612345678")
    assert release_at(key, NIGHT, at("2025-02-03T06:30:00")) == at("2025-02-03T08:00:00")
    # Madrid is awake at 07:30 UTC, the Canaries are not: the most restrictive wins.
    assert release_at(key, NIGHT, at("2025-02-03T07:30:00")) == at("2025-02-03T08:00:00")
    assert release_at(key, NIGHT, at("2025-02-03T08:00:00")) is None
    # In the evening Madrid closes first (20:00 UTC), and both open at 08:00 Canary time.
    assert release_at(key, NIGHT, at("2025-02-03T20:30:00")) == at("2025-02-04T08:00:00")


def test_leaving_one_zone_s_window_may_enter_another_s():
    # Berlin's 07:00-08:00 ends at 07:00 UTC, exactly when London's begins.
    breakfast = Window(time(7, 0), time(8, 0))
    key = "Europe/Berlin,Europe/London"
    assert release_at(key, breakfast, at("2025-02-03T06:30:00")) == at("2025-02-03T08:00:00")


def test_the_morning_after_the_us_clock_change_comes_an_hour_earlier_in_utc():
    # 2025-03-09: New York springs forward at 02:00; 08:00 EDT is 12:00 UTC, not 13:00.
    now = at("2025-03-09T04:00:00")  # 23:00 EST on the 8th
    assert release_at("America/New_York", NIGHT, now) == at("2025-03-09T12:00:00")
    # Europe has not changed yet: 08:00 CET in Berlin is 07:00 UTC.
    assert release_at("Europe/Berlin", NIGHT, at("2025-03-09T05:00:00")) == at(
        "2025-03-09T07:00:00"
    )
    # 2025-03-30: Berlin springs forward; 08:00 CEST is 06:00 UTC.
    assert release_at("Europe/Berlin", NIGHT, at("2025-03-30T01:30:00")) == at(
        "2025-03-30T06:00:00"
    )


def test_a_window_ending_in_the_skipped_hour_ends_once_the_clock_passes_it():
    # 02:30 does not exist in New York on 2025-03-09: released at 03:30 EDT (07:30 UTC).
    early = Window(time(21, 0), time(2, 30))
    assert release_at("America/New_York", early, at("2025-03-09T06:00:00")) == at(
        "2025-03-09T07:30:00"
    )


def test_the_autumn_change_releases_at_the_first_eight():
    # 2025-11-02: New York falls back at 02:00; 08:00 EST is 13:00 UTC.
    assert release_at("America/New_York", NIGHT, at("2025-11-02T05:00:00")) == at(
        "2025-11-02T13:00:00"
    )


def test_a_number_placed_nowhere_is_judged_in_utc():
    assert release_at(UNKNOWN_ZONE, NIGHT, at("2025-02-03T22:00:00")) == at("2025-02-04T08:00:00")


def test_no_window_releases_at_once_and_a_naive_clock_is_refused():
    assert release_at("America/New_York", None, at("2025-02-03T05:00:00")) is None
    with pytest.raises(ValueError, match="aware"):
        release_at("America/New_York", NIGHT, datetime(2025, 2, 3, 5))


@pytest.mark.parametrize(
    "key",
    [
        "America/New_York",
        "Europe/Berlin",
        "Atlantic/Canary,Europe/Madrid",
        zone_key("+61412345678"),
        zone_key("+79161234567"),
        zone_key("+18005550100"),  # every NANPA zone: no common morning, judged by the middle
    ],
)
def test_a_release_time_is_never_quiet_and_nothing_earlier_is_free(key):
    rng = random.Random(key)
    start = at("2025-01-01T00:00:00")
    for _ in range(150):
        now = start + timedelta(minutes=rng.randrange(365 * 24 * 60))
        released = release_at(key, NIGHT, now)
        if released is None:
            continue
        assert released > now
        # A worker that re-checks at the release time sends: no batch is held for ever.
        assert release_at(key, NIGHT, released) is None
        # And nothing in between would have been free.
        probe = now + (released - now) * rng.random()
        assert release_at(key, NIGHT, probe) is not None
