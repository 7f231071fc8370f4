"""CTIA keywords and their answers: the signed inbound webhook stores the reply and enqueues
the answer; a real worker sends it once, from the number that was texted, through the
sandbox with the real SDK, on that number's pacing timeline."""

from __future__ import annotations

import json
import time

import pytest
import redis
import requests
from sqlalchemy import delete, select

from shared.config import SANDBOX_SENDER
from shared.db import session_scope
from shared.keywords import action_for, answered_by_plivo, reply_text, soft_opt_in
from shared.models import InboundMessage, OptOut
from shared.taskqueue import WEBHOOKS_QUEUE
from shared.timelines import account_timeline, bookings, sender_timeline
from tests.conftest import Worker, make_settings, sandbox_stats, wait_for
from tests.test_webhooks import INBOUND_URL, PUBLIC, signed_headers
from workers.keyword_replies import Later, reply
from workers.pacing import Pacer

PHONE = "+14155550199"
TEXTED = SANDBOX_SENDER  # +14155550000, the number people reply to
# Plivo answers HELP on US and Canadian numbers itself; ours goes out from other numbers.
UK_TEXTED = "+447700900000"


# --- which words are keywords ---------------------------------------------------------------


@pytest.mark.parametrize(
    "word",
    ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE", "UNSUB"]
    + ["stop all", " Stop. ", "quit!", "Opt out"],
)
def test_every_ctia_opt_out_word_opts_out(word):
    assert action_for(word) == "opt_out"


@pytest.mark.parametrize("word", ["START", "unstop", "Start!"])
def test_start_words_opt_back_in(word):
    assert action_for(word) == "opt_in"
    assert not soft_opt_in(word)


@pytest.mark.parametrize("word", ["YES", "resume", "Go!", " yes. "])
def test_yes_resume_and_go_are_no_keyword_by_themselves(word):
    # A campaign that says "reply YES" gets them by the thousand from people never opted out.
    assert action_for(word) is None
    assert soft_opt_in(word)


def test_plivo_answers_help_only_on_us_and_canadian_numbers():
    assert answered_by_plivo("help", TEXTED)
    assert answered_by_plivo("help", "+16135550123")
    assert not answered_by_plivo("help", UK_TEXTED)
    assert not answered_by_plivo("opt_out", TEXTED)
    assert not answered_by_plivo("help", None)


@pytest.mark.parametrize("word", ["HELP", "info", "Help?"])
def test_help_words_ask_for_help(word):
    assert action_for(word) == "help"


@pytest.mark.parametrize(
    "text", ["stop by at 5", "STOPPED", "please stop", "help me find the venue", "", None, "..."]
)
def test_a_keyword_must_be_the_whole_message(text):
    assert action_for(text) is None


def test_plivos_intent_wins_over_the_words():
    assert action_for("no more please", "optout") == "opt_out"
    assert action_for("STOP", "help") == "help"


def test_answers_name_the_service_and_an_empty_one_is_off():
    settings = make_settings(service_name="Acme Shoes", help_reply="", start_reply="{x} hi")

    stop = reply_text(settings, "opt_out")

    assert stop.startswith("Acme Shoes: You are unsubscribed")
    assert "Reply START to resubscribe" in stop
    assert reply_text(settings, "help") is None
    assert reply_text(settings, "opt_in") == "{x} hi"  # braces of its own are left alone
    assert reply_text(settings, None) is None


# --- the webhook, a real worker and the sandbox ---------------------------------------------


@pytest.fixture()
def reply_settings(settings):
    with session_scope(settings.database_url) as session:
        session.execute(delete(InboundMessage))
    return settings.model_copy(
        update={"public_base_url": PUBLIC, "service_name": "Acme", "help_reply": "Acme help: 555"}
    )


@pytest.fixture()
def hooks(reply_settings):
    from api import create_app

    return create_app(reply_settings).test_client()


@pytest.fixture()
def reply_worker(reply_settings, tmp_path):
    """A worker on the webhooks queue, where the answers go."""
    started = Worker(reply_settings, tmp_path / "replies.log", queues="webhooks", name="replies")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def post_inbound(hooks, text, message_uuid, nonce=None, sender=PHONE, to=TEXTED):
    params = {
        "From": sender[1:],
        "To": to[1:],
        "Text": text,
        "Type": "sms",
        "MessageUUID": message_uuid,
    }
    headers = signed_headers(INBOUND_URL, params, nonce=nonce)
    return hooks.post("/webhooks/plivo/inbound", data=params, headers=headers)


def stored(settings, message_uuid) -> InboundMessage:
    with session_scope(settings.database_url) as session:
        return session.scalar(
            select(InboundMessage).where(InboundMessage.message_uuid == message_uuid)
        )


def sent_replies(worker: Worker) -> list[dict]:
    """The worker's `reply.sent` log lines."""
    lines = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "reply.sent":
            lines.append(entry)
    return lines


def message_at_sandbox(sandbox, message_uuid) -> dict:
    response = requests.get(f"{sandbox}/messages/{message_uuid}", timeout=5)
    response.raise_for_status()
    return response.json()


def test_stop_gets_one_confirmation_from_the_number_texted_even_when_delivered_twice(
    hooks, reply_settings, reply_worker, sandbox
):
    assert post_inbound(hooks, "STOP", "in-stop").status_code == 200
    # Plivo delivers the same message again (a new nonce) before and after the answer went.
    assert post_inbound(hooks, "STOP", "in-stop").status_code == 200
    wait_for(
        lambda: stored(reply_settings, "in-stop").replied_at,
        timeout=60,
        message="no confirmation:\n" + reply_worker.log_tail(),
    )
    assert post_inbound(hooks, "STOP", "in-stop").status_code == 200
    time.sleep(2)  # room for a wrongful second answer to show up

    assert sandbox_stats(sandbox)["sends"] == {PHONE[1:]: 1}
    (line,) = sent_replies(reply_worker)
    message = message_at_sandbox(sandbox, line["message_uuid"])
    assert message["src"] == TEXTED[1:]
    assert message["dst"] == PHONE[1:]
    assert message["text"].startswith("Acme: You are unsubscribed")
    with session_scope(reply_settings.database_url) as session:
        assert session.get(OptOut, PHONE) is not None  # the one message allowed to it


def test_help_gets_the_help_text_and_other_replies_get_nothing(
    hooks, reply_settings, reply_worker, sandbox
):
    question = post_inbound(hooks, "What time does it start?", "in-question", to=UK_TEXTED)
    assert question.status_code == 200
    assert post_inbound(hooks, "help", "in-help", to=UK_TEXTED).status_code == 200

    wait_for(lambda: stored(reply_settings, "in-help").replied_at, timeout=60)
    time.sleep(1)

    (line,) = sent_replies(reply_worker)
    message = message_at_sandbox(sandbox, line["message_uuid"])
    assert (message["text"], message["src"]) == ("Acme help: 555", UK_TEXTED[1:])
    assert sandbox_stats(sandbox)["sends"] == {PHONE[1:]: 1}
    question = stored(reply_settings, "in-question")
    assert (question.action, question.replied_at, question.to) == (None, None, UK_TEXTED)


def queued_answers(settings) -> int:
    """Tasks waiting on the webhooks queue: in these tests, only keyword answers."""
    return redis.Redis.from_url(settings.redis_url).llen(WEBHOOKS_QUEUE)


def test_help_to_a_us_number_is_left_to_plivo(hooks, reply_settings, sandbox):
    assert post_inbound(hooks, "HELP", "in-help-us").status_code == 200
    message = stored(reply_settings, "in-help-us")

    assert message.action == "help"
    assert queued_answers(reply_settings) == 0  # not even handed to a worker
    # A task for it from before (or a redelivery) sends nothing either.
    assert reply(reply_settings, message.id)["outcome"] == "answered_by_plivo"
    assert sandbox_stats(sandbox)["requests"] == 0
    assert stored(reply_settings, "in-help-us").replied_at is None


def test_yes_from_a_number_never_opted_out_is_a_reply_to_read(hooks, reply_settings, sandbox):
    other = "+14155550111"
    with session_scope(reply_settings.database_url) as session:
        session.add(OptOut(phone=other, source="api", reason="asked by phone"))

    assert post_inbound(hooks, "YES", "in-yes").status_code == 200
    assert post_inbound(hooks, "go", "in-go").status_code == 200

    assert [stored(reply_settings, uuid).action for uuid in ("in-yes", "in-go")] == [None, None]
    assert queued_answers(reply_settings) == 0  # no START_REPLY to confirm nothing
    with session_scope(reply_settings.database_url) as session:
        assert session.get(OptOut, other).source == "api"
        assert session.get(OptOut, PHONE) is None


def test_yes_from_an_opted_out_number_opts_it_back_in_and_is_confirmed(
    hooks, reply_settings, sandbox
):
    with session_scope(reply_settings.database_url) as session:
        session.add(OptOut(phone=PHONE, source="inbound", reason="STOP"))

    assert post_inbound(hooks, "Yes", "in-yes-back").status_code == 200
    message = stored(reply_settings, "in-yes-back")

    assert message.action == "opt_in"
    with session_scope(reply_settings.database_url) as session:
        assert session.get(OptOut, PHONE) is None
    assert queued_answers(reply_settings) == 1
    outcome = reply(reply_settings, message.id)
    text = message_at_sandbox(sandbox, outcome["message_uuid"])["text"]
    assert text.startswith("Acme: You are resubscribed")


def test_yes_does_not_undo_an_opt_out_an_operator_recorded(hooks, reply_settings, sandbox):
    with session_scope(reply_settings.database_url) as session:
        session.add(OptOut(phone=PHONE, source="api", reason="asked by phone"))

    assert post_inbound(hooks, "YES", "in-yes-operator").status_code == 200

    assert stored(reply_settings, "in-yes-operator").action is None
    assert queued_answers(reply_settings) == 0
    with session_scope(reply_settings.database_url) as session:
        assert session.get(OptOut, PHONE).source == "api"


def test_start_from_a_number_not_opted_out_changes_nothing_and_gets_no_answer(
    hooks, reply_settings, sandbox
):
    assert post_inbound(hooks, "START", "in-start-idle").status_code == 200

    assert stored(reply_settings, "in-start-idle").action == "opt_in"  # still a keyword
    assert queued_answers(reply_settings) == 0


# --- the answer itself, in process --------------------------------------------------------


def test_a_second_run_for_the_same_message_sends_nothing(hooks, reply_settings, sandbox):
    with session_scope(reply_settings.database_url) as session:
        session.add(OptOut(phone=PHONE, source="inbound"))
    post_inbound(hooks, "START", "in-start")
    inbound_id = stored(reply_settings, "in-start").id

    first = reply(reply_settings, inbound_id)
    second = reply(reply_settings, inbound_id)

    assert first["outcome"] == "sent"
    assert second["outcome"] == "already_replied"
    text = message_at_sandbox(sandbox, first["message_uuid"])["text"]
    assert text.startswith("Acme: You are resubscribed")
    assert sandbox_stats(sandbox)["sends"] == {PHONE[1:]: 1}


def test_the_answer_books_its_slot_on_the_account_and_the_texted_numbers_timelines(
    hooks, reply_settings, sandbox
):
    paced = reply_settings.model_copy(update={"sender_mps": {TEXTED: 50.0}})
    post_inbound(hooks, "STOP", "in-paced")
    inbound_id = stored(paced, "in-paced").id

    assert reply(paced, inbound_id)["outcome"] == "sent"

    client = redis.Redis.from_url(paced.redis_url)
    for timeline in (account_timeline("sms"), sender_timeline("sms", TEXTED)):
        booked = client.zrange(bookings(timeline), 0, -1)
        assert [member.decode().split(":")[0] for member in booked] == [f"reply-{inbound_id}"]


def test_an_opted_out_number_gets_no_help_text(hooks, reply_settings, sandbox):
    post_inbound(hooks, "HELP", "in-help-out", to=UK_TEXTED)
    with session_scope(reply_settings.database_url) as session:
        session.add(OptOut(phone=PHONE, source="api"))

    outcome = reply(reply_settings, stored(reply_settings, "in-help-out").id)

    assert outcome["outcome"] == "opted_out"
    assert sandbox_stats(sandbox)["requests"] == 0


def test_an_empty_reply_setting_sends_no_answer(reply_settings, sandbox):
    from api import create_app

    quiet = reply_settings.model_copy(update={"stop_reply": ""})
    post_inbound(create_app(quiet).test_client(), "STOP", "in-quiet")

    assert reply(quiet, stored(quiet, "in-quiet").id)["outcome"] == "no_reply"
    assert sandbox_stats(sandbox)["requests"] == 0
    assert stored(quiet, "in-quiet").replied_at is None


def test_an_answer_plivo_turned_away_is_owed_again_and_retried(hooks, reply_settings, sandbox):
    post_inbound(hooks, "HELP", "in-429", to=UK_TEXTED)
    inbound_id = stored(reply_settings, "in-429").id
    config = f"{sandbox}/sandbox/config"
    requests.post(config, json={"fail_429": 1.0}, timeout=5).raise_for_status()
    try:
        with pytest.raises(Later) as later:
            reply(reply_settings, inbound_id)
    finally:
        requests.post(config, json={"fail_429": 0.0}, timeout=5).raise_for_status()

    assert later.value.failed
    assert stored(reply_settings, "in-429").replied_at is None
    assert reply(reply_settings, inbound_id)["outcome"] == "sent"
    assert sandbox_stats(sandbox)["sends"] == {PHONE[1:]: 1}


def test_an_answer_whose_slot_is_not_due_comes_back_later_instead_of_sleeping(
    hooks, reply_settings, sandbox
):
    # One message a second from the texted number: the second answer's slot is a second off.
    paced = reply_settings.model_copy(update={"sender_mps": {UK_TEXTED: 1.0}})
    post_inbound(hooks, "HELP", "in-first", to=UK_TEXTED)
    post_inbound(hooks, "HELP", "in-second", to=UK_TEXTED)
    first, second = (stored(paced, uuid).id for uuid in ("in-first", "in-second"))
    assert reply(paced, first)["outcome"] == "sent"

    with pytest.raises(Later) as later:
        reply(paced, second)

    # Back to the queue holding its slot, with nothing sent and nothing claimed.
    assert later.value.after > 0 and later.value.booking and not later.value.failed
    assert stored(paced, "in-second").replied_at is None
    assert sandbox_stats(sandbox)["sends"] == {PHONE[1:]: 1}
    timeline = sender_timeline("sms", UK_TEXTED)
    client = redis.Redis.from_url(paced.redis_url)
    booked = client.zrange(bookings(timeline), 0, -1)
    time.sleep(later.value.after + 0.1)  # the Redis clock is this machine's
    outcome = reply(paced, second, slot=later.value.slot, booking=later.value.booking)
    assert outcome["outcome"] == "sent"
    assert client.zrange(bookings(timeline), 0, -1) == booked  # the same slot, not a new one


def test_an_answer_over_the_request_limit_comes_back_with_its_grant(hooks, reply_settings, sandbox):
    limited = reply_settings.model_copy(
        update={"request_limit": 1, "request_window": 1.0, "request_margin": 0.0}
    )
    post_inbound(hooks, "HELP", "in-limited", to=UK_TEXTED)
    inbound_id = stored(limited, "in-limited").id
    Pacer.for_settings(limited).request_grant()  # another send took the window's request

    with pytest.raises(Later) as later:
        reply(limited, inbound_id)

    assert later.value.request_at is not None and later.value.after > 0
    assert sandbox_stats(sandbox)["requests"] == 0
    time.sleep(later.value.after + 0.1)  # the Redis clock is this machine's
    outcome = reply(
        limited,
        inbound_id,
        slot=later.value.slot,
        booking=later.value.booking,
        request_at=later.value.request_at,
    )
    assert outcome["outcome"] == "sent"
