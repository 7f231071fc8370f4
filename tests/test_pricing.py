"""The price table and the per-country quote: Decimal money, clear errors naming the line."""

from __future__ import annotations

import random
from decimal import Decimal

import phonenumbers
import pytest

from shared.pricing import (
    DEFAULT_PRICE_TABLE,
    PriceTableError,
    country_of,
    load_price_table,
    money,
    parse_price_table,
    price_countries,
)

TABLE = """# date: 2026-11-01
# currency: usd
country,sms,mms
US,0.00790,0.02400
DE,0.09000,
"""


def test_the_shipped_table_is_dated_and_prices_the_common_countries():
    table = load_price_table()
    assert table.date == "2026-11-01"
    assert table.currency == "USD"
    for country in ("US", "CA", "GB", "DE", "FR", "ES", "IT", "NL", "IE", "AU", "IN", "BR", "MX"):
        assert table.price(country, "sms") > 0, country
    assert table.price("US", "mms") > table.price("US", "sms")
    # Plivo sends MMS to the US and Canada only.
    assert table.price("GB", "mms") is None
    assert "Plivo public pricing page" in DEFAULT_PRICE_TABLE.read_text()


def test_a_replacement_table_is_read_from_its_path_and_reread_when_it_changes(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text(TABLE)
    table = load_price_table(path)
    assert table.price("US", "sms") == Decimal("0.00790")
    assert table.price("DE", "mms") is None
    assert table.price("FR", "sms") is None
    assert load_price_table(str(path)) is table
    path.write_text(TABLE.replace("0.00790", "0.00800").replace("2026-11-01", "2026-12-01"))
    import os

    os.utime(path, (1, 1))
    changed = load_price_table(path)
    assert (changed.date, changed.price("US", "sms")) == ("2026-12-01", Decimal("0.00800"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("country,sms,mms\nUS,1,2\n", "needs a '# date: YYYY-MM-DD' line"),
        ("# date: 1 Nov 2026\ncountry,sms\nUS,1\n", "date '1 Nov 2026'"),
        ("# date: 2026-11-01\n# currency: dollars\ncountry,sms\n", "currency 'DOLLARS'"),
        ("# date: 2026-11-01\n", "no header row"),
        ("# date: 2026-11-01\nnation,price\nUS,1\n", "line 2: header must name country"),
        ("# date: 2026-11-01\ncountry,sms\nUS,0.0079\nXX,0.01\n", "line 4: country 'XX'"),
        ("# date: 2026-11-01\ncountry,sms\nUS,0.0079\nus,0.01\n", "line 4: US is listed twice"),
        ("# date: 2026-11-01\ncountry,sms\n\nUS,0,0079\n", "line 4: 3 cells"),
        ("# date: 2026-11-01\ncountry,sms,mms\nUS,abc,\n", "line 3: sms price 'abc'"),
        ("# date: 2026-11-01\ncountry,sms,mms\nUS,0.1,-1\n", "line 3: mms price '-1'"),
        ("# date: 2026-11-01\ncountry,sms,mms\nUS,NaN,\n", "line 3: sms price 'NaN'"),
    ],
)
def test_a_bad_table_is_refused_naming_the_line(text, message):
    with pytest.raises(PriceTableError, match=message.replace("(", r"\(")):
        parse_price_table(text, "custom.csv")


def test_a_missing_file_is_refused_naming_it(tmp_path):
    with pytest.raises(PriceTableError, match="nowhere.csv: cannot be read"):
        load_price_table(tmp_path / "nowhere.csv")


@pytest.mark.parametrize(
    ("number", "country"),
    [
        ("+12125550100", "US"),
        ("+14165550100", "CA"),
        ("+12684641234", "AG"),
        ("+447400123456", "GB"),
        ("+447797712345", "JE"),
        ("+77012345678", "KZ"),
        ("+79161234567", "RU"),
        ("+4915112345678", "DE"),
        ("+80012345678", "ZZ"),
    ],
)
def test_a_number_s_country_is_its_iso_region(number, country):
    assert country_of(number) == country


def test_the_prefix_cache_answers_what_phonenumbers_answers_for_shared_codes():
    rng = random.Random(5)
    checked = 0
    shared = [
        code
        for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items()
        if len(regions) > 1
    ]
    for code in shared:
        for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]:
            for kind in (
                phonenumbers.PhoneNumberType.FIXED_LINE,
                phonenumbers.PhoneNumberType.MOBILE,
            ):
                example = phonenumbers.example_number_for_type(region, kind)
                if example is None:
                    continue
                national = str(example.national_number)
                for _ in range(20):
                    tail = "".join(rng.choice("0123456789") for _ in range(2))
                    candidate = phonenumbers.PhoneNumber(
                        country_code=code, national_number=int(national[:-2] + tail)
                    )
                    if not phonenumbers.is_valid_number(candidate):
                        continue
                    e164 = phonenumbers.format_number(
                        candidate, phonenumbers.PhoneNumberFormat.E164
                    )
                    assert country_of(e164) == phonenumbers.region_code_for_number(candidate), e164
                    checked += 1
    assert checked > 500


def test_the_quote_counts_recipients_and_segments_per_country_and_costs_them():
    table = parse_price_table(TABLE)
    countries, total, unpriced = price_countries(
        [
            ("+12125550100", 1),
            ("+14155550101", 2),
            ("+4915112345678", 3),
            ("+33612345678", 1),
        ],
        "sms",
        table,
    )
    assert countries == [
        {"country": "US", "recipients": 2, "segments": 3, "price": "0.00790", "cost": "0.02370"},
        {"country": "DE", "recipients": 1, "segments": 3, "price": "0.09000", "cost": "0.27000"},
        {"country": "FR", "recipients": 1, "segments": 1, "price": None, "cost": None},
    ]
    assert total == Decimal("0.29370")
    assert isinstance(total, Decimal)
    assert unpriced == ["FR"]


def test_mms_is_priced_per_message_from_the_mms_column():
    table = parse_price_table(TABLE)
    countries, total, unpriced = price_countries(
        [("+12125550100", 1), ("+4915112345678", 1)], "mms", table
    )
    assert [(c["country"], c["cost"]) for c in countries] == [("DE", None), ("US", "0.02400")]
    assert (total, unpriced) == (Decimal("0.02400"), ["DE"])


def test_money_keeps_every_digit_and_never_floats():
    assert money(Decimal("0.0079") * 3) == "0.02370"
    assert money(Decimal("0.001234567")) == "0.001234567"
    assert money(Decimal(0)) == "0.00000"
    with pytest.raises(ValueError, match="kind"):
        price_countries([], "fax", parse_price_table(TABLE))
