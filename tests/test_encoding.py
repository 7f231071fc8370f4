import pytest

from shared.encoding import measure, too_long


@pytest.mark.parametrize(
    "text, encoding, segments",
    [
        ("hello", "GSM", 1),
        ("a" * 160, "GSM", 1),
        ("a" * 161, "GSM", 2),
        ("a" * 306, "GSM", 2),
        ("a" * 307, "GSM", 3),
        ("[" * 80, "GSM", 1),  # extension characters count double: 160 septets
        ("[" * 81, "GSM", 2),
        ("€uro", "GSM", 1),
        ("héllo", "GSM", 1),  # é is in the GSM basic set
        ("naïve", "UCS-2", 1),  # ï is not
        ("你" * 70, "UCS-2", 1),
        ("你" * 71, "UCS-2", 2),
        ("😀" * 35, "UCS-2", 1),  # each emoji is two UTF-16 units
        ("😀" * 36, "UCS-2", 2),
    ],
)
def test_it_detects_encoding_and_counts_segments(text, encoding, segments):
    cost = measure(text)
    assert (cost.encoding, cost.segments) == (encoding, segments)


def test_it_refuses_texts_over_plivos_limits():
    assert too_long(measure("a" * 1600)) is None
    assert "GSM maximum of 1600" in too_long(measure("a" * 1601))
    assert too_long(measure("ж" * 737)) is None
    assert "UCS-2 maximum of 737" in too_long(measure("ж" * 738))
    assert "GSM maximum" in too_long(measure("{" * 801))
