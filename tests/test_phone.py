import pytest

from shared.phone import InvalidNumber, normalise


@pytest.mark.parametrize(
    "value, expected",
    [
        ("+14155550100", "+14155550100"),
        ("+1 (415) 555-0100", "+14155550100"),
        ("+1.415.555.0100", "+14155550100"),
        (" +44 20 7946 0958 ", "+442079460958"),
        ("+390612345678", "+390612345678"),  # Italian numbers keep their leading zero
    ],
)
def test_it_normalises_human_formats_to_e164(value, expected):
    assert normalise(value) == expected


def test_it_needs_a_country_code_without_a_default_region():
    with pytest.raises(InvalidNumber, match="country code"):
        normalise("(415) 555-0100")


def test_it_uses_the_default_region_when_configured():
    assert normalise("(415) 555-0100", "US") == "+14155550100"
    assert normalise("020 7946 0958", "GB") == "+442079460958"


@pytest.mark.parametrize(
    "value, reason",
    [
        ("+999123456", "unknown country code"),
        ("+1415", "too short"),
        ("+1415555010099999", "too long"),
        ("hello", "country code"),
        ("", "empty"),
        (14155550100, "must be a string"),
        (None, "must be a string"),
        ("+1" + "5" * 80, "longer than"),
    ],
)
def test_it_explains_why_a_number_is_refused(value, reason):
    with pytest.raises(InvalidNumber, match=reason):
        normalise(value)


def test_the_fast_path_agrees_with_the_parser():
    # The hand-split E.164 path must accept and refuse exactly what phonenumbers does.
    for value in ["+14155550100", "+12", "+1999", "+4420794609", "+861012345678", "+35312345"]:
        spaced = value[:3] + " " + value[3:]
        try:
            fast = normalise(value)
        except InvalidNumber:
            fast = None
        try:
            slow = normalise(spaced)
        except InvalidNumber:
            slow = None
        assert fast == slow, value


@pytest.mark.parametrize(
    "value",
    [
        "+1415555ABCD",  # phonenumbers would text +14155552223
        "+1 800 FLOWERS",
        "+１４１５５５５０１００",  # full-width digits
        "+1４１５５５５０１００",  # full-width after a real country code (the fast path's \d)
        "+1 415 555 0100 ext. 7",
        "+1/415/555/0100",
        "+1\u00a0415 555 0100",  # no-break space
    ],
)
def test_it_refuses_anything_but_ascii_digits_and_plain_separators(value):
    with pytest.raises(InvalidNumber, match="only digits"):
        normalise(value)


def test_letters_are_refused_with_a_default_region_too():
    with pytest.raises(InvalidNumber, match="only digits"):
        normalise("1-800-FLOWERS", "US")
