"""Plivo's delivery-report error codes: what each means and whether a retry can help."""

from __future__ import annotations

# code → (meaning, retry advice). Unknown codes are stored as they come.
ERROR_CODES: dict[str, tuple[str, str]] = {
    "10": ("invalid message", "no: fix the text"),
    "20": ("network error (temporary)", "yes"),
    "30": ("spam detected", "no: review content and sender registration"),
    "40": ("invalid source number", "no: fix the sender"),
    "50": ("invalid destination number", "no"),
    "60": ("loop detected", "no"),
    "70": ("destination permanently unavailable", "no"),
    "80": ("destination temporarily unavailable", "yes, later"),
    "90": ("no route to destination", "no: check coverage and geo permissions"),
    "100": ("prohibited by carrier", "no"),
    "110": ("message too long", "no: shorten the text"),
    "120": ("MMS media over 5 MB", "no: smaller media"),
    "200": ("destination opted out (STOP)", "never: the number is now on the opt-out list"),
    "201": ("US toll-free to Canada blocked", "no"),
    "420": ("expired in Plivo's queue", "yes, at a lower rate"),
    "450": ("country barred by geo permissions", "no: enable the country in the console"),
    "900": ("insufficient credit", "yes, after topping up"),
    "960": ("toll-free weekly limit reached", "yes, next week or after verification"),
    "1000": ("unknown error", "maybe"),
}

OPTED_OUT = "200"


def meaning(code: str | None) -> str | None:
    if not code:
        return None
    known = ERROR_CODES.get(code)
    return known[0] if known else f"Plivo error {code}"
