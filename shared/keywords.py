"""What an inbound reply asks for (opt out, opt back in, or help) and what we answer.

The keywords are the CTIA's (the US carriers' rule book, which Plivo's own lists in
PLIVO.md follow), plus the older words numbers already used. The answers are configured
(STOP_REPLY, START_REPLY, HELP_REPLY); workers/keyword_replies.py sends each once, except
HELP to a US or Canadian number, which Plivo answers itself, and START to a number that was
not opted out, which has nothing to confirm."""

from __future__ import annotations

from shared.config import Settings

# The task that answers one inbound keyword message (enqueued by the API's inbound webhook,
# run by workers/keyword_replies.py).
SEND_KEYWORD_REPLY = "send_keyword_reply"

OPT_OUT = frozenset(
    {
        # CTIA's opt-out words.
        "STOP",
        "STOPALL",
        "UNSUBSCRIBE",
        "CANCEL",
        "END",
        "QUIT",
        "OPTOUT",
        "REVOKE",
        # Plivo's (PLIVO.md) and what people type anyway.
        "UNSUB",
        "STOP ALL",
        "OPT OUT",
        "OPT-OUT",
    }
)
# Always an opt-in: nobody answers a campaign with START or UNSTOP.
OPT_IN = frozenset({"START", "UNSTOP"})
# Opt back in only a number that is opted out: to anyone else (and a campaign that says
# "reply YES" gets many) they are an answer to read, not a keyword.
SOFT_OPT_IN = frozenset({"YES", "RESUME", "GO"})
HELP = frozenset({"HELP", "INFO"})

INTENTS = {"optout": "opt_out", "optin": "opt_in", "help": "help"}
ACTIONS = ("opt_out", "opt_in", "help")

# "Stop." and "STOP!" are still a STOP: carriers expect them honoured; words around the
# keyword ("stop by at 5") are not.
_PUNCTUATION = ".!?,;:'\"()"


def _word(text: str | None) -> str:
    return " ".join((text or "").split()).strip(_PUNCTUATION).strip().upper()


def action_for(text: str | None, intent: str | None = None) -> str | None:
    """`opt_out`, `opt_in`, `help` or None. Plivo's MessageIntent wins; otherwise the whole
    message must be a keyword (any case, surrounding whitespace and punctuation ignored), so
    "stop by at 5" is not an opt-out. The SOFT_OPT_IN words are None here: whether they opt
    in depends on the number (see `soft_opt_in`)."""
    if intent and intent.lower() in INTENTS:
        return INTENTS[intent.lower()]
    word = _word(text)
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None


def soft_opt_in(text: str | None) -> bool:
    """YES, RESUME, GO: an opt-in only from a number that is opted out."""
    return _word(text) in SOFT_OPT_IN


def answered_by_plivo(action: str | None, texted: str | None) -> bool:
    """Plivo itself answers HELP and INFO sent to US and Canadian numbers (PLIVO.md); a
    second answer of ours would only be noise (and a second billed message)."""
    return action == "help" and bool(texted) and texted.startswith("+1")


def reply_text(settings: Settings, action: str | None) -> str | None:
    """The answer to a keyword message, or None when none is configured (an empty
    STOP_REPLY, START_REPLY or HELP_REPLY turns that answer off)."""
    template = {
        "opt_out": settings.stop_reply,
        "opt_in": settings.start_reply,
        "help": settings.help_reply,
    }.get(action or "")
    if not template or not template.strip():
        return None
    # str.replace, not str.format: an operator's text may hold braces of its own.
    return template.replace("{service}", settings.service_name).strip()
