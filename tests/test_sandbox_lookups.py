"""Message Get and Message List in the sandbox, and the faults that make a client need them:
status reports that never come, and answers lost after Plivo accepted a request. Driven over
real HTTP by the real plivo SDK."""

from __future__ import annotations

import re
import time
import types
from datetime import UTC, datetime, timedelta

import plivo
import plivo.rest.client
import pytest
import requests
from plivo.exceptions import (
    AuthenticationError,
    PlivoRestError,
    PlivoServerError,
    ResourceNotFoundError,
    ValidationError,
)

import sandbox.server
from sandbox import SandboxConfig, create_app, serve_in_thread
from sandbox.__main__ import build_config, parse_args
from tests.test_sandbox_realism import (
    AUTH_ID,
    AUTH_TOKEN,
    BASELINE,
    SRC,
    Receiver,
    by_message,
    configure,
    numbers,
    stats,
    statuses,
    wait_until,
)

OTHER_SRC = "14155559999"
# What the records show: Plivo's 'YYYY-MM-DD HH:MM:SS.ffffff+HH:MM'.
MESSAGE_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}[+-]\d{2}:\d{2}")


@pytest.fixture(scope="module")
def base_url():
    url, shutdown = serve_in_thread(SandboxConfig())
    yield url
    shutdown()


@pytest.fixture(autouse=True)
def fresh_sandbox(base_url):
    configure(base_url, **BASELINE)
    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()


@pytest.fixture
def client(base_url, monkeypatch):
    # The SDK re-reads this module constant on every call; monkeypatch restores it afterwards.
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{base_url}/v1/Account")
    with plivo.RestClient(AUTH_ID, AUTH_TOKEN) as rest_client:
        yield rest_client


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def utc(record_time: str) -> datetime:
    return datetime.fromisoformat(record_time).astimezone(UTC)


def filter_time(moment: datetime) -> str:
    """A list filter's time: UTC, 'YYYY-MM-DD HH:MM:SS.ffffff'."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def list_all(client, **filters) -> list:
    """Every page, following meta.next as a resolver would."""
    found, offset = [], 0
    while True:
        page = client.messages.list(limit=20, offset=offset, **filters)
        found += page.objects
        if page.meta.next is None:
            return found
        offset += 20


def failed_list_status(client, **filters) -> int:
    """The HTTP status of a list request the server refused, as the SDK cannot tell it.

    plivo 4.63: ListMessagesResponseObject sets `objects` to None when the body has none (an
    error body never has), and process_response then iterates it, so every non-2xx answer to
    messages.list raises TypeError before its status is looked at. Only a response hook on
    client.session sees the real answer.
    """
    seen: list[int] = []

    def hook(response, *args, **kwargs):
        seen.append(response.status_code)

    client.session.hooks["response"].append(hook)
    try:
        with pytest.raises(TypeError):
            client.messages.list(**filters)
    finally:
        client.session.hooks["response"].remove(hook)
    return seen[-1]


def raw_list(base_url, **params) -> requests.Response:
    return requests.get(
        f"{base_url}/v1/Account/{AUTH_ID}/Message/",
        params=params,
        auth=(AUTH_ID, AUTH_TOKEN),
        timeout=5,
    )


# Message Get


def test_get_returns_plivos_message_record(client, base_url):
    before = datetime.now(UTC)
    sent = client.messages.create(src=SRC, dst="14155550001<+14155550002", text="hi")
    after = datetime.now(UTC)
    wait_until(lambda: client.messages.get(sent.message_uuid[1]).message_state == "delivered")

    record = client.messages.get(sent.message_uuid[1])

    assert isinstance(record, plivo.resources.messages.Message)
    assert record.message_uuid == sent.message_uuid[1]
    assert record.api_id and record.api_id != sent.api_id
    assert (record.from_number, record.to_number) == ("14155550000", "14155550002")
    assert (record.message_direction, record.message_type) == ("outbound", "sms")
    assert (record.message_state, record.error_code) == ("delivered", "000")
    assert (record.units, record.total_rate, record.total_amount) == (1, "0.00500", "0.00500")
    assert record.resource_uri == f"/v1/Account/{AUTH_ID}/Message/{sent.message_uuid[1]}/"
    assert MESSAGE_TIME.fullmatch(record.message_time)
    assert record.message_time.endswith("+00:00")
    assert before <= utc(record.message_time) <= after
    # One request, one acceptance time.
    assert client.messages.get(sent.message_uuid[0]).message_time == record.message_time
    assert stats(base_url)["lookups"]["gets"] >= 3


def test_get_follows_the_message_through_its_states(client, base_url):
    # The second message waits a second for its slot at 1 message per second.
    configure(base_url, sms_mps=1, delivery_delay=0.3)
    sent = client.messages.create(src=SRC, dst="14155550001<14155550002", text="hi")

    assert client.messages.get(sent.message_uuid[1]).message_state == "queued"
    assert client.messages.get(sent.message_uuid[1]).error_code == ""
    assert client.messages.get(sent.message_uuid[1]).total_amount == "0.00000"
    wait_until(lambda: client.messages.get(sent.message_uuid[1]).message_state == "sent")
    wait_until(lambda: client.messages.get(sent.message_uuid[1]).message_state == "delivered")


def test_get_reports_failures_with_their_code_and_no_charge(client, base_url):
    configure(base_url, outcomes={"14155550001": "failed:450", "14155550002": "undelivered:30"})
    sent = client.messages.create(src=SRC, dst="14155550001<14155550002", text="ж" * 80)

    wait_until(lambda: client.messages.get(sent.message_uuid[1]).message_state == "undelivered")
    failed, undelivered = (client.messages.get(uuid) for uuid in sent.message_uuid)

    assert (failed.message_state, failed.error_code, failed.total_amount) == (
        "failed",
        "450",
        "0.00000",
    )
    # 80 UCS-2 characters are two parts, both billed though the carrier lost the message.
    assert (undelivered.message_state, undelivered.error_code, undelivered.units) == (
        "undelivered",
        "30",
        2,
    )
    assert undelivered.total_amount == "0.01000"


def test_get_of_an_unknown_uuid_is_404_with_plivos_error_body(client, base_url):
    with pytest.raises(ResourceNotFoundError):
        client.messages.get("00000000-0000-4000-8000-000000000000")

    raw = requests.get(
        f"{base_url}/v1/Account/{AUTH_ID}/Message/00000000-0000-4000-8000-000000000000/",
        auth=(AUTH_ID, AUTH_TOKEN),
        timeout=5,
    )
    assert raw.status_code == 404
    assert set(raw.json()) == {"api_id", "error"}
    assert stats(base_url)["lookups"]["gets_not_found"] == 2


def test_lookups_need_the_accounts_credentials(base_url, monkeypatch):
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{base_url}/v1/Account")
    with plivo.RestClient(AUTH_ID, "wrong-token") as intruder:
        with pytest.raises(AuthenticationError):
            intruder.messages.get("00000000-0000-4000-8000-000000000000")
        assert failed_list_status(intruder, limit=20) == 401
    assert stats(base_url)["lookups"]["auth_failures"] == 2


def test_message_time_can_carry_the_accounts_offset(client, base_url):
    configure(base_url, message_time_offset=330)
    sent = client.messages.create(src=SRC, dst="14155550001", text="hi")

    shown = client.messages.get(sent.message_uuid[0]).message_time

    assert shown.endswith("+05:30")
    # Converted to UTC it is an exact filter value that finds the message again.
    found = client.messages.list(message_time=filter_time(utc(shown)), limit=20)
    assert [record.message_uuid for record in found] == sent.message_uuid


# Message List


def test_list_answers_in_plivos_shape_newest_first(client, base_url):
    first = client.messages.create(src=SRC, dst="14155550001", text="one")
    second = client.messages.create(src=SRC, dst="14155550002<14155550003", text="two")

    raw = raw_list(base_url, message_direction="outbound")
    body = raw.json()
    page = client.messages.list(message_direction="outbound", limit=20)

    assert raw.status_code == 200
    assert set(body) == {"api_id", "meta", "objects"}
    assert body["meta"] == {
        "limit": 20,
        "next": None,
        "offset": 0,
        "previous": None,
        "total_count": 3,
    }
    assert "api_id" not in body["objects"][0]
    assert [record.message_uuid for record in page] == [
        *reversed(second.message_uuid),
        *first.message_uuid,
    ]
    assert all(isinstance(record, plivo.resources.messages.Message) for record in page)
    assert {record.from_number for record in page} == {"14155550000"}
    assert stats(base_url)["lookups"]["lists"] == 2


def test_list_filters_by_sender_recipient_type_state_and_error_code(client, base_url):
    configure(base_url, outcomes={"14155550002": "failed:900"})
    ours = client.messages.create(src=SRC, dst="<".join(numbers(3)), text="ours")
    theirs = client.messages.create(src=OTHER_SRC, dst="<".join(numbers(3)), text="theirs")
    mms = client.messages.create(
        src=SRC, dst="14155550001", type_="mms", media_urls=["https://example.com/a.png"]
    )

    def uuids(**filters) -> set[str]:
        return {record.message_uuid for record in client.messages.list(limit=20, **filters)}

    assert uuids(from_number="14155550000") == {*ours.message_uuid, *mms.message_uuid}
    assert uuids(from_number=OTHER_SRC) == set(theirs.message_uuid)
    # Plivo stores numbers without '+': a filter with one matches nothing.
    assert uuids(from_number="+14155559999") == set()
    assert uuids(to_number="14155550001") == {
        ours.message_uuid[0],
        theirs.message_uuid[0],
        *mms.message_uuid,
    }
    assert uuids(from_number=OTHER_SRC, to_number="14155550003") == {theirs.message_uuid[2]}
    assert uuids(message_type="mms") == set(mms.message_uuid)
    assert uuids(message_state="failed") == {ours.message_uuid[1], theirs.message_uuid[1]}
    assert uuids(error_code="900", from_number=OTHER_SRC) == {theirs.message_uuid[1]}
    assert uuids(message_direction="inbound") == set()


def test_list_filters_by_a_time_window_at_microsecond_precision(client, base_url):
    early = client.messages.create(src=SRC, dst="<".join(numbers(2)), text="early")
    time.sleep(0.05)
    middle = client.messages.create(src=SRC, dst="<".join(numbers(3, 14155550101)), text="mid")
    time.sleep(0.05)
    late = client.messages.create(src=SRC, dst="14155550201", text="late")
    at = utc(client.messages.get(middle.message_uuid[0]).message_time)

    def uuids(**window) -> set[str]:
        found = list_all(client, from_number="14155550000", **window)
        return {record.message_uuid for record in found}

    exactly = filter_time(at)
    assert uuids(message_time__gte=exactly, message_time__lte=exactly) == set(middle.message_uuid)
    assert uuids(message_time=exactly) == set(middle.message_uuid)
    assert uuids(message_time__gt=exactly) == set(late.message_uuid)
    assert uuids(message_time__lt=exactly) == set(early.message_uuid)
    assert uuids(
        message_time__gte=filter_time(at - timedelta(seconds=1)),
        message_time__lte=filter_time(at + timedelta(seconds=1)),
    ) == {*early.message_uuid, *middle.message_uuid, *late.message_uuid}
    # Minutes alone are a valid filter too.
    minute = at.replace(second=0, microsecond=0)
    assert set(middle.message_uuid) <= uuids(message_time__gte=minute.strftime("%Y-%m-%d %H:%M"))


def test_list_pages_with_offset_until_next_is_null(client, base_url):
    older = client.messages.create(src=SRC, dst="<".join(numbers(30)), text="first")
    newer = client.messages.create(src=SRC, dst="<".join(numbers(15, 14155560001)), text="next")
    since = filter_time(utc(client.messages.get(older.message_uuid[0]).message_time))

    pages, offset = [], 0
    while True:
        page = client.messages.list(
            from_number="14155550000", message_time__gte=since, limit=20, offset=offset
        )
        pages.append(page)
        if page.meta.next is None:
            break
        offset += 20

    assert [len(page) for page in pages] == [20, 20, 5]
    assert [page.meta.total_count for page in pages] == [45, 45, 45]
    assert [page.meta.offset for page in pages] == [0, 20, 40]
    assert pages[0].meta.previous is None
    # The links keep the filters, so a client may follow them as they are.
    assert "from_number=14155550000" in pages[0].meta.next
    assert "limit=20&offset=20" in pages[0].meta.next
    assert "offset=0" in pages[1].meta.previous
    listed = [record.message_uuid for page in pages for record in page]
    assert listed == [*reversed(newer.message_uuid), *reversed(older.message_uuid)]
    # A page past the end is empty, not an error.
    beyond = client.messages.list(from_number="14155550000", message_time__gte=since, offset=60)
    assert (len(beyond), beyond.meta.next) == (0, None)


def test_list_refuses_more_than_20_a_page_and_bad_filters(client, base_url):
    with pytest.raises(ValidationError):  # the SDK itself refuses, before any request
        client.messages.list(limit=21)

    answers = [
        raw_list(base_url, limit=21),
        raw_list(base_url, limit=0),
        raw_list(base_url, offset=-1),
        raw_list(base_url, limit="ten"),
        raw_list(base_url, message_time__gte="2026-12-01T10:00:00Z"),
        raw_list(base_url, message_time__lt="2026-13-01 10:00"),
        raw_list(base_url, message_state="lost"),
        raw_list(base_url, message_direction="sideways"),
    ]

    assert [answer.status_code for answer in answers] == [400] * len(answers)
    assert all(set(answer.json()) == {"api_id", "error"} for answer in answers)
    assert "limit" in answers[0].json()["error"]
    # The SDK checks only that a time filter is a string: Plivo refuses it.
    assert failed_list_status(client, message_time__gte="yesterday", limit=20) == 400
    assert stats(base_url)["lookups"]["bad_requests"] == len(answers) + 1


def test_without_a_time_filter_the_list_covers_the_last_24_hours(monkeypatch):
    app = create_app(SandboxConfig(request_limit=0, list_request_limit=0))
    http = app.test_client()
    auth = (AUTH_ID, AUTH_TOKEN)
    sent = http.post(
        f"/v1/Account/{AUTH_ID}/Message/",
        json={"src": SRC, "dst": "14155550001", "text": "hi"},
        auth=auth,
    ).json["message_uuid"]
    accepted = time.time()

    def listed(at: float, **filters) -> list[str]:
        monkeypatch.setattr(sandbox.server, "time", types.SimpleNamespace(time=lambda: at))
        answer = http.get(f"/v1/Account/{AUTH_ID}/Message/", query_string=filters, auth=auth)
        return [record["message_uuid"] for record in answer.json["objects"]]

    since = filter_time(datetime.fromtimestamp(accepted - 60, UTC))
    try:
        assert listed(accepted + 23 * 3600) == sent
        assert listed(accepted + 25 * 3600) == []
        assert listed(accepted + 25 * 3600, message_time__gte=since) == sent
        # Plivo keeps 90 days of records, whatever the filter.
        assert listed(accepted + 91 * 86400, message_time__gte=since) == []
    finally:
        app.extensions["sandbox"].close()


def test_the_21st_list_request_in_a_minute_is_refused(client, base_url):
    for _ in range(20):
        client.messages.list(limit=20)
    assert failed_list_status(client, limit=20) == 429

    refused = raw_list(base_url)
    assert (refused.status_code, refused.json()["error"]) == (429, "too many requests")
    # Message Get has no such limit.
    with pytest.raises(ResourceNotFoundError):
        client.messages.get("00000000-0000-4000-8000-000000000000")
    lookups = stats(base_url)["lookups"]
    assert (lookups["lists"], lookups["list_too_many_requests"]) == (20, 2)


def test_the_list_window_slides_and_can_be_switched_off(client, base_url):
    configure(base_url, list_request_limit=2, list_request_window=0.5)
    client.messages.list(limit=20)
    client.messages.list(limit=20)
    assert raw_list(base_url).status_code == 429
    time.sleep(0.6)
    assert raw_list(base_url).status_code == 200

    configure(base_url, list_request_limit=0)
    assert {raw_list(base_url).status_code for _ in range(30)} == {200}


def test_lookups_count_against_the_accounts_request_limit(client, base_url):
    configure(base_url, request_limit=3, request_window=60)
    sent = client.messages.create(src=SRC, dst="14155550001", text="hi")
    client.messages.get(sent.message_uuid[0])
    client.messages.list(limit=20)

    with pytest.raises(PlivoRestError, match="429"):
        client.messages.get(sent.message_uuid[0])
    assert failed_list_status(client, limit=20) == 429
    with pytest.raises(PlivoRestError, match="429"):
        client.messages.create(src=SRC, dst="14155550002", text="hi")
    counters = stats(base_url)
    assert counters["lookups"]["too_many_requests"] == 2
    assert counters["too_many_requests"] == 1  # the refused send
    # A list refused by the account's limit does not use up the list's own.
    assert counters["lookups"]["list_too_many_requests"] == 0


# Status reports that never come


def test_no_final_report_leaves_the_outcome_to_message_get(client, base_url, receiver):
    configure(base_url, share_no_final_report=1, outcomes={"14155550002": "undelivered:30"})
    sent = client.messages.create(src=SRC, dst="<".join(numbers(3)), text="hi", url=receiver.url)

    wait_until(lambda: stats(base_url)["callbacks"]["sent"] == 6)
    time.sleep(0.3)  # past delivery_delay: a final report, had one been due, would be here

    grouped = by_message(receiver.received)
    assert all(
        statuses(grouped[uuid]) == [("queued", "1"), ("sent", "2")] for uuid in sent.message_uuid
    )
    states = [client.messages.get(uuid).message_state for uuid in sent.message_uuid]
    assert states == ["delivered", "undelivered", "delivered"]
    assert stats(base_url)["callbacks"] == {"sent": 6, "failed": 0, "pending": 0, "withheld": 3}


def test_a_share_of_final_reports_goes_missing(client, base_url, receiver):
    configure(base_url, share_no_final_report=0.5, fault_seed=11)
    sent = client.messages.create(src=SRC, dst="<".join(numbers(40)), text="hi", url=receiver.url)

    wait_until(lambda: stats(base_url)["callbacks"]["pending"] == 0)

    counts = stats(base_url)["callbacks"]
    grouped = by_message(receiver.received)
    finals = {uuid for uuid, callbacks in grouped.items() if callbacks[-1]["Status"] == "delivered"}
    assert 8 < counts["withheld"] < 32
    assert counts["sent"] == 3 * 40 - counts["withheld"]
    assert len(finals) == 40 - counts["withheld"]
    assert set(grouped) == set(sent.message_uuid)  # queued and sent came for every message
    missing = [uuid for uuid in sent.message_uuid if uuid not in finals]
    assert {client.messages.get(uuid).message_state for uuid in missing} == {"delivered"}


def test_no_callbacks_at_all_for_a_share(client, base_url, receiver):
    configure(base_url, share_no_callbacks=1)
    sent = client.messages.create(src=SRC, dst="<".join(numbers(5)), text="hi", url=receiver.url)

    wait_until(lambda: stats(base_url)["callbacks"]["withheld"] == 15)
    time.sleep(0.3)

    assert receiver.received == []
    assert stats(base_url)["callbacks"]["pending"] == 0
    assert {client.messages.get(uuid).message_state for uuid in sent.message_uuid} == {"delivered"}


def test_a_message_the_carrier_never_reports_on_stays_sent(client, base_url, receiver):
    configure(base_url, outcomes={"14155550001": "sent"})
    sent = client.messages.create(
        src=SRC, dst="14155550001<14155550002", text="hi", url=receiver.url
    )

    grouped = by_message(receiver.wait_for(5))
    time.sleep(0.3)

    silent, reported = sent.message_uuid
    assert statuses(grouped[silent]) == [("queued", "1"), ("sent", "2")]
    assert statuses(grouped[reported])[-1] == ("delivered", "3")
    record = client.messages.get(silent)
    assert (record.message_state, record.error_code) == ("sent", "")
    assert [r.message_uuid for r in client.messages.list(message_state="sent", limit=20)] == [
        silent
    ]
    counters = stats(base_url)
    assert counters["outcomes"] == {"delivered": 1, "undelivered": 0, "failed": 0, "sent": 1}
    assert counters["callbacks"]["withheld"] == 0  # never due, not withheld


def test_a_share_stays_sent(client, base_url):
    configure(base_url, share_stays_sent=0.25, fault_seed=5, delivery_delay=0)
    client.messages.create(src=SRC, dst="<".join(numbers(400)), text="hi")

    assert 60 < stats(base_url)["outcomes"]["sent"] < 140


# Answers lost after Plivo accepted the request


def test_fail_after_accept_answers_an_error_but_sends(client, base_url):
    configure(base_url, fail_after_accept=1)

    with pytest.raises((PlivoServerError, PlivoRestError)):
        client.messages.create(src=SRC, dst="14155550001<14155550002", text="hi")

    counters = stats(base_url)
    assert counters["faults"]["fail_after_accept"] == 1
    assert (counters["requests"], counters["messages"]) == (1, 2)
    assert counters["sends"] == {"14155550001": 1, "14155550002": 1}
    # The client never saw the uuids; the list is how it learns what went out.
    listed = client.messages.list(from_number="14155550000", limit=20)
    assert sorted(record.to_number for record in listed) == ["14155550001", "14155550002"]
    assert {client.messages.get(r.message_uuid).message_state for r in listed} <= {
        "queued",
        "sent",
        "delivered",
    }


def test_fail_after_accept_answers_500_or_504_reproducibly(base_url):
    def run() -> list[tuple[int, object]]:
        answers = []
        for attempt in range(30):
            answer = requests.post(
                f"{base_url}/v1/Account/{AUTH_ID}/Message/",
                json={"src": SRC, "dst": str(14155550001 + attempt), "text": "hi"},
                auth=(AUTH_ID, AUTH_TOKEN),
                timeout=5,
            )
            answers.append((answer.status_code, set(answer.json())))
        return answers

    configure(base_url, fail_after_accept=0.5, fault_seed=3)
    first = run()
    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()
    second = run()

    assert first == second
    assert {status for status, _ in first} == {202, 500, 504}
    assert all(keys == {"api_id", "error"} for status, keys in first if status != 202)
    # Every request was accepted and sent, whatever its answer said.
    assert stats(base_url)["messages"] == 30


def test_a_refused_request_keeps_its_own_answer_under_fail_after_accept(base_url):
    configure(base_url, fail_after_accept=1)
    answer = requests.post(
        f"{base_url}/v1/Account/{AUTH_ID}/Message/",
        json={"src": SRC, "dst": "123", "text": "hi"},
        auth=(AUTH_ID, AUTH_TOKEN),
        timeout=5,
    )
    assert answer.status_code == 400
    assert stats(base_url)["messages"] == 0


# Settings


def test_the_new_settings_are_validated_and_come_from_the_environment(base_url, monkeypatch):
    shown = configure(
        base_url,
        list_request_limit=5,
        list_request_window=10,
        fail_after_accept=0.1,
        share_no_final_report=0.2,
        share_no_callbacks=0.3,
        share_stays_sent=0.4,
        message_time_offset=-300,
    )
    assert shown["list_request_limit"] == 5
    assert shown["message_time_offset"] == -300
    for bad in (
        {"list_request_limit": -1},
        {"list_request_window": "soon"},
        {"fail_after_accept": 1.5},
        {"share_no_final_report": -0.1},
        {"share_no_callbacks": 2},
        {"message_time_offset": 900},
        {"outcomes": {"14155550001": "sent:30"}},
    ):
        refused = requests.post(f"{base_url}/sandbox/config", json=bad, timeout=5)
        assert refused.status_code == 400, bad
        assert next(iter(bad)) in refused.json()["error"]

    monkeypatch.setenv("SANDBOX_LIST_REQUEST_LIMIT", "7")
    monkeypatch.setenv("SANDBOX_SHARE_NO_FINAL_REPORT", "0.5")
    monkeypatch.setenv("SANDBOX_MESSAGE_TIME_OFFSET", "330")
    config = build_config(parse_args(["--fail-after-accept", "0.25"]))
    assert (config.list_request_limit, config.share_no_final_report) == (7, 0.5)
    assert (config.message_time_offset, config.fail_after_accept) == (330, 0.25)
