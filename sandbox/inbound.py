"""A simulated inbound message (a reply such as STOP), posted signed to a number's message URL."""

from __future__ import annotations

from sandbox.encoding import message_units

INTENTS = ("optout", "optin", "help")
# Whole message, case-insensitive, surrounding whitespace ignored.
_KEYWORDS = {
    "optout": {"STOP", "END", "QUIT", "CANCEL", "UNSUB", "STOP ALL", "STOPALL", "UNSUBSCRIBE"},
    "optin": {"START", "YES", "UNSTOP", "RESUME", "GO"},
    "help": {"HELP", "INFO"},
}
INBOUND_RATE = "0.00000"  # receiving is free in this sandbox


def message_intent(text: str) -> str:
    """Plivo's MessageIntent for an inbound text: optout, optin, help or ''."""
    keyword = text.strip().upper()
    return next((intent for intent, words in _KEYWORDS.items() if keyword in words), "")


def inbound_form(
    sender: str, recipient: str, text: str, message_uuid: str, intent: str | None = None
) -> dict[str, str]:
    return {
        "From": sender.removeprefix("+"),
        "To": recipient.removeprefix("+"),
        "Text": text,
        "Type": "sms",
        "MessageUUID": message_uuid,
        "MessageIntent": message_intent(text) if intent is None else intent,
        "Units": str(message_units(text)),
        "TotalRate": INBOUND_RATE,
        "TotalAmount": INBOUND_RATE,
    }
