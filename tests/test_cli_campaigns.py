"""The `bulksms` commands for campaigns and replies (issue 11), run as the installed console
script against the API over real HTTP: names in `list`, the campaign options of `send`, the
quote of `send --dry-run`, `mms`, `opt-outs remove`, `retry --wait` and `inbox`."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest
import requests
from sqlalchemy import delete, select

from shared.db import session_scope
from shared.models import Broadcast, InboundMessage
from tests import services
from tests.conftest import sandbox_stats
from tests.test_cli import (
    BULKSMS,
    NUMBERS,
    RUN_TIMEOUT,
    _fail_recipients,
    api_get,
    cli_env,
    created_id,
    run,
    table_in,
)
from tests.test_webhooks import signed_headers


@pytest.fixture()
def bulksms(live_api):
    """`bulksms(*args)` against the live API with the test key."""
    return lambda *args, **kwargs: run(live_api, *args, **kwargs)


# --- list -----------------------------------------------------------------------------------


def test_list_shows_each_broadcasts_name_and_a_dash_for_none(bulksms):
    named = created_id(bulksms, NUMBERS[0], extra=("--name", "Spring sale"))
    unnamed = created_id(bulksms, NUMBERS[1])

    result = bulksms("list")

    assert result.returncode == 0, result.stderr
    rows = table_in(result.stdout, "id")
    assert rows[named][:3] == ["Spring sale", "sms", "queued"]
    assert rows[unnamed][:3] == ["-", "sms", "queued"]


# --- send: campaign options -----------------------------------------------------------------


def test_send_passes_every_campaign_option_to_the_api(bulksms, live_api):
    result = bulksms(
        "send", "--to", NUMBERS[0], "--to", NUMBERS[1],
        "--text", "Hi {first_name}, doors open at 9", "--field", "first_name=friend",
        "--name", "Open day", "--senders", "+14155550010, +14155550011",
        "--quiet-hours", "21:00-8:00", "--append-opt-out-text", "--max-cost", "100", "-q",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    body = api_get(live_api, f"/v1/broadcasts/{result.stdout.strip()}")
    assert body["name"] == "Open day"
    assert body["senders"] == ["+14155550010", "+14155550011"]
    assert body["quiet_hours"] == {"start": "21:00", "end": "08:00"}
    assert body["counts"]["accepted"] == 2


def test_quiet_hours_off_turns_them_off_for_this_broadcast(bulksms, live_api):
    broadcast_id = created_id(bulksms, NUMBERS[0], extra=("--quiet-hours", "off"))

    assert api_get(live_api, f"/v1/broadcasts/{broadcast_id}")["quiet_hours"] is None


def test_a_cost_over_max_cost_is_refused_by_the_api(bulksms, live_api):
    result = bulksms("send", "--to", NUMBERS[0], "--text", "Hi", "--max-cost", "0.0000001")

    assert result.returncode == 2
    assert "max_cost" in result.stderr
    assert api_get(live_api, "/v1/broadcasts")["items"] == []


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--quiet-hours", "25:00-08:00"], "is not START-END"),
        (["--quiet-hours", "late"], "is not START-END"),
        (["--field", "first_name"], "is not NAME=VALUE"),
        (["--max-cost", "cheap"], "is not an amount"),
        (["--max-cost", "-1"], "is not an amount"),
        (["--sender", "+14155550010", "--senders", "+14155550011"], "one of --sender"),
        (["--sender-pool", "alerts", "--senders", "+14155550011"], "one of --sender"),
        (["--dry-run", "--wait"], "nothing to --wait for"),
        (["--template", str(uuid.uuid4())], "--template or the message"),
    ],
)
def test_bad_campaign_options_are_refused_before_calling_the_api(args, complaint):
    url = f"http://127.0.0.1:{services.free_port()}"

    result = run(url, "send", "--to", NUMBERS[0], "--text", "Hi", *args)

    assert result.returncode == 2
    assert complaint in result.stderr
    assert "cannot reach" not in result.stderr


def test_a_list_alone_is_an_audience(bulksms):
    missing = str(uuid.uuid4())

    result = bulksms("send", "--list", missing, "--text", "Hi")

    # The API was asked (it names the list); the CLI did not stop at "no recipients".
    assert result.returncode == 2
    assert "no recipients" not in result.stderr
    assert "list" in result.stderr.lower()


# --- send --dry-run -------------------------------------------------------------------------


def test_dry_run_prints_the_quote_and_sends_nothing(bulksms, live_api, settings):
    text = "It\u2019s on: doors open at 9"  # a curly apostrophe: UCS-2
    args = ["send", "--to", NUMBERS[0], "--to", NUMBERS[1], "--to", "+442071838750"]
    args += ["--text", text, "--dry-run"]

    shown = bulksms(*args)
    raw = bulksms(*args, "--json")

    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "dry run: nothing was saved or sent" in out
    assert "UCS-2, forced by \u2019 (U+2019 RIGHT SINGLE QUOTATION MARK)" in out
    assert "3 accepted" in out
    quote = json.loads(raw.stdout)
    assert quote["dry_run"] is True and quote["ucs2_characters"] == ["\u2019"]
    countries = table_in(out, "country")
    for row in quote["countries"]:
        price, cost = row["price"] or "-", row["cost"] or "-"
        assert countries[row["country"]] == [
            str(row["recipients"]),
            str(row["segments"]),
            price,
            cost,
        ]
    assert countries["total"] == ["3", str(quote["segments"]["total"]), "-", quote["cost"]["total"]]
    assert set(countries) == {"US", "GB", "total"}
    assert api_get(live_api, "/v1/broadcasts")["items"] == []
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(Broadcast.id)) is None


# --- mms ------------------------------------------------------------------------------------


def test_mms_sends_media_by_url_and_uploads_a_local_file(bulksms, live_api, settings, tmp_path):
    picture = tmp_path / "poster.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)

    by_url = bulksms(
        "mms", "--to", NUMBERS[0], "--text", "Poster",
        "--media-url", "https://example.com/poster.jpg", "-q",
    )  # fmt: skip
    uploaded = bulksms("mms", "--to", NUMBERS[1], "--media", str(picture), "--json")

    assert by_url.returncode == 0, by_url.stderr
    assert uploaded.returncode == 0, uploaded.stderr
    assert api_get(live_api, f"/v1/broadcasts/{by_url.stdout.strip()}")["kind"] == "mms"
    upload_id = json.loads(uploaded.stdout)["id"]
    with session_scope(settings.database_url) as session:
        media = session.get(Broadcast, uuid.UUID(upload_id)).media
    assert media["media_urls"] == [] and len(media["media_ids"]) == 1


def test_mms_without_media_is_a_usage_error():
    result = run(f"http://127.0.0.1:{services.free_port()}", "mms", "--to", NUMBERS[0])

    assert result.returncode == 2
    assert "no media" in result.stderr


# --- opt-outs remove ------------------------------------------------------------------------


def test_opt_outs_remove_takes_a_number_off_and_is_audited(bulksms, live_api, tmp_path):
    upload = tmp_path / "stop.csv"
    upload.write_text("+14155550101\n", encoding="utf-8")
    assert bulksms("opt-outs", "import", str(upload)).returncode == 0

    removed = bulksms("opt-outs", "remove", "+1 415 555 0101")
    again = bulksms("opt-outs", "remove", "+14155550101")
    sent = bulksms("send", "--text", "Hi", "--to", "+14155550101")

    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "removed +1 415 555 0101 from the opt-out list"
    assert again.returncode == 2
    assert "+14155550101 is not on the opt-out list" in again.stderr
    assert "1 accepted, 0 invalid, 0 duplicates, 0 skipped" in sent.stdout
    events = api_get(live_api, "/v1/audit?action=opt_out.delete")["items"]
    assert [event["target"] for event in events] == ["+14155550101"]


# --- retry --wait ---------------------------------------------------------------------------


def test_retry_wait_follows_the_resend_and_exits_0_once_all_went(
    bulksms, settings, worker, sandbox
):
    broadcast_id = created_id(
        bulksms, *NUMBERS[:3], extra=("--wait", "--interval", "0.2", "--max-wait", "90")
    )
    # As if Plivo had refused two of them; then count only what the retry sends.
    _fail_recipients(settings.database_url, broadcast_id, NUMBERS[:2])
    requests.post(f"{sandbox}/stats/reset", timeout=5).raise_for_status()

    result = bulksms("retry", broadcast_id, "--wait", "--interval", "0.2", "--max-wait", "90")

    assert result.returncode == 0, result.stderr + worker.log_tail()
    assert "retrying 2 recipient(s) (failed) in 1 batch(es)" in result.stdout
    assert "status     completed" in result.stdout
    assert sandbox_stats(sandbox)["sends"] == {n[1:]: 1 for n in NUMBERS[:2]}


def test_retry_wait_exits_1_when_failures_remain(bulksms, settings):
    broadcast_id = created_id(bulksms, *NUMBERS[:2])
    _fail_recipients(settings.database_url, broadcast_id, NUMBERS[:1])

    # Only `unknown` asked for: the failed one stays failed.
    result = bulksms("retry", broadcast_id, "--status", "unknown", "--wait", "--max-wait", "30")

    assert result.returncode == 1, result.stderr
    assert "status     completed_with_failures" in result.stdout


# --- inbox ----------------------------------------------------------------------------------


@pytest.fixture()
def replies(live_api, settings):
    """`reply(text, sender)`: a signed inbound message posted to the live API."""
    with session_scope(settings.database_url) as session:
        session.execute(delete(InboundMessage))
    url = f"{live_api}/webhooks/plivo/inbound"

    def reply(text: str, sender: str = "+14155550199") -> None:
        params = {
            "From": sender[1:],
            "To": "14155550000",
            "Text": text,
            "MessageUUID": uuid.uuid4().hex,
        }
        response = requests.post(url, data=params, headers=signed_headers(url, params), timeout=10)
        assert response.status_code == 200, response.text

    return reply


def table_rows(out: str, header: str) -> list[list[str]]:
    """The rows (cells split at two or more spaces) of the table whose header starts so."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def test_inbox_shows_the_replies_to_read_and_all_shows_keywords_too(bulksms, replies):
    replies("Is parking free?")
    replies("STOP", sender="+14155550198")

    to_read = bulksms("inbox")
    everything = bulksms("inbox", "--all")
    raw = json.loads(bulksms("inbox", "--json").stdout)

    assert to_read.returncode == 0, to_read.stderr
    ((received, *cells),) = table_rows(to_read.stdout, "received")
    assert received.endswith(" UTC")
    assert cells == ["+14155550199", "+14155550000", "-", "Is parking free?"]
    stop, question = table_rows(everything.stdout, "received")
    assert stop[1:] == ["+14155550198", "+14155550000", "opt_out", "-", "-", "STOP"]
    assert question[-1] == "Is parking free?"
    assert [item["text"] for item in raw["items"]] == ["Is parking free?"]


def test_inbox_follow_prints_new_replies_as_they_arrive(live_api, replies):
    replies("first")
    process = subprocess.Popen(
        [str(BULKSMS), "inbox", "--follow", "--interval", "0.2", "--max-wait", "6"],
        env=cli_env(live_api),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    time.sleep(2)
    replies("second")
    replies("STOP")  # a keyword: not shown without --all
    replies("third")
    out, err = process.communicate(timeout=RUN_TIMEOUT)

    assert process.returncode == 0, err
    texts = [line.rsplit("  ", 1)[-1] for line in out.splitlines()]
    assert texts == ["first", "second", "third"]
