"""What an inbound reply asks for: opt out, opt back in, or help (PLIVO.md's keyword lists)."""

from __future__ import annotations

OPT_OUT = frozenset(
    {"STOP", "END", "QUIT", "CANCEL", "UNSUB", "STOP ALL", "STOPALL", "UNSUBSCRIBE"}
)
OPT_IN = frozenset({"START", "YES", "UNSTOP", "RESUME", "GO"})
HELP = frozenset({"HELP", "INFO"})

INTENTS = {"optout": "opt_out", "optin": "opt_in", "help": "help"}


def action_for(text: str | None, intent: str | None = None) -> str | None:
    """`opt_out`, `opt_in`, `help` or None. Plivo's MessageIntent wins; otherwise the whole
    message must be a keyword (any case, surrounding whitespace ignored), so "stop by at 5"
    is not an opt-out."""
    if intent and intent.lower() in INTENTS:
        return INTENTS[intent.lower()]
    word = " ".join((text or "").split()).upper()
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None
