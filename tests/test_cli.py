"""The `bulksms` CLI, run as the installed console script against the API over real HTTP,
the way an operator runs it from another machine."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from cli.progress import RateEstimator, measure, render
from cli.recipient_files import parse_recipients
from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient
from tests import services
from tests.conftest import API_KEY, sandbox_stats

BULKSMS = Path(sys.executable).parent / "bulksms"
NUMBERS = [f"+1415555{i:04d}" for i in range(1, 31)]
RUN_TIMEOUT = 120


def cli_env(url: str, key: str | None = API_KEY, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKSMS_")}
    env["BULKSMS_URL"] = url
    if key is not None:
        env["BULKSMS_API_KEY"] = key
    return {**env, **extra}


def run(
    url: str, *args: str, key: str | None = API_KEY, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`bulksms ARGS` as a separate process, from a directory unrelated to the checkout."""
    if not BULKSMS.exists():
        pytest.fail(f"{BULKSMS} is missing: run .venv/bin/pip install -e '.[dev]'")
    return subprocess.run(
        [str(BULKSMS), *args],
        env=cli_env(url, key),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd="/",
    )


def run_on_a_terminal(url: str, *args: str) -> tuple[int, str, str]:
    """Like run(), but stderr is a pseudo-terminal, as when an operator watches it."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(BULKSMS), *args],
        env=cli_env(url, COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=terminal,
        cwd="/",
    )
    os.close(terminal)
    received: list[bytes] = []

    def drain() -> None:
        # A pty buffer is small: unread, it would block the child mid-write.
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO once the child has closed its end
                return
            if not data:
                return
            received.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        reader.join(timeout=10)
        os.close(controller)
    return process.returncode, stdout.decode(), b"".join(received).decode(errors="replace")


@pytest.fixture()
def bulksms(live_api):
    """`bulksms(*args)` against the live API with the test key."""
    return lambda *args, **kwargs: run(live_api, *args, **kwargs)


def created_id(bulksms, *numbers: str, text: str = "CLI hello", extra=()) -> str:
    result = bulksms("send", "--quiet", "--text", text, *[f"--to={n}" for n in numbers], *extra)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def api_get(live_api: str, path: str) -> dict:
    response = requests.get(live_api + path, headers={"X-API-Key": API_KEY}, timeout=10)
    response.raise_for_status()
    return response.json()


def table_in(out: str, header: str) -> dict[str, list[str]]:
    """{first cell: other cells} of the printed table whose header row starts with `header`."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    rows = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        first, *rest = re.split(r"\s{2,}", line.strip())
        rows[first] = rest
    return rows


# --- send ---------------------------------------------------------------------------------


def test_send_reads_numbers_from_args_csv_and_text_files_and_prints_the_intake(
    bulksms, live_api, tmp_path
):
    people = tmp_path / "people.csv"
    people.write_text(
        "name,phone\nAda,+14155550001\nBob,+14155550002\nEve,not-a-number\n", encoding="utf-8"
    )
    plain = tmp_path / "more.txt"
    plain.write_text("+14155550003\n\n+14155550001\n", encoding="utf-8")
    message = tmp_path / "message.txt"
    message.write_text("Doors open at 9\n", encoding="utf-8")

    result = bulksms(
        "send",
        "--to",
        "+14155550004",
        "--file",
        str(people),
        "--file",
        str(plain),
        "--text-file",
        str(message),
        "--skip-invalid",
    )

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "status     queued" in out
    assert "4 accepted, 1 invalid, 1 duplicates, 0 skipped (opted out)" in out
    assert "batches    1" in out
    assert "GSM" in out and "1 segment(s) per message, 4 in all" in out
    assert "'not-a-number'" in out
    broadcast_id = out.split()[1]
    body = api_get(live_api, f"/v1/broadcasts/{broadcast_id}")
    assert body["recipients"]["by_status"] == {"pending": 4}


def test_the_same_idempotency_key_gives_back_the_same_broadcast(bulksms):
    extra = ("--idempotency-key", "cli-once")
    first = created_id(bulksms, NUMBERS[0], extra=extra)
    # The same request again, its number read from standard input this time.
    again = bulksms(
        "send", "-q", "--text", "CLI hello", "--file", "-", *extra, stdin=f"phone\n{NUMBERS[0]}\n"
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == first


def test_the_apis_refusal_is_printed_with_the_numbers_it_refused(bulksms):
    result = bulksms("send", "--text", "Hi", "--to", "+14155550001", "--to", "12")

    assert result.returncode == 2
    assert "invalid phone number" in result.stderr
    assert "'12'" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args, complaint",
    [
        (["--text", "Hi"], "no recipients"),
        (["--to", "+14155550001"], "exactly one of --text or --text-file"),
        (["--to", "+14155550001", "--text", "a", "--text-file", "/etc/hostname"], "exactly one"),
        (["--to", "+14155550001", "--text", "a", "--send-at", "2030-01-01T09:00"], "time zone"),
        (["--to", "+14155550001", "--text", "a", "--send-at", "tomorrow"], "not an ISO 8601"),
    ],
)
def test_send_refuses_bad_usage_before_calling_the_api(args, complaint):
    # Nothing listens at this URL: an attempt to call the API would show up as "cannot reach".
    result = run(f"http://127.0.0.1:{services.free_port()}", "send", *args)

    assert result.returncode == 2
    assert complaint in result.stderr
    assert "cannot reach" not in result.stderr


def test_send_wait_follows_a_broadcast_to_completion_and_prints_the_summary(
    bulksms, worker, sandbox
):
    result = bulksms(
        "send", "--text", "Watch me", *[f"--to={n}" for n in NUMBERS], "--wait",
        "--interval", "0.2", "--max-wait", "90",
    )  # fmt: skip

    assert result.returncode == 0, result.stderr + worker.log_tail()
    out = result.stdout
    assert "status     completed" in out
    assert "30 accepted, 0 invalid, 0 duplicates, 0 skipped" in out
    assert table_in(out, "recipients") == {"queued": ["30"], "total": ["30"]}
    # Not a terminal: whole progress lines, ending on the final one.
    last = result.stderr.splitlines()[-1]
    assert re.search(r"%  \d+/30  queued 30  [\d.]+ msg/s  ETA 0:00:00  completed$", last), last
    assert "\r" not in result.stderr
    assert sandbox_stats(sandbox)["sends"] == {n[1:]: 1 for n in NUMBERS}


def test_send_wait_on_a_terminal_draws_a_live_bar_and_exits_1_when_some_fail(
    live_api, worker, sandbox
):
    requests.post(
        f"{sandbox}/sandbox/config", json={"invalid_prefixes": ["1415555000"]}, timeout=5
    ).raise_for_status()

    code, out, terminal = run_on_a_terminal(
        live_api, "send", "--text", "Some fail", *[f"--to={n}" for n in NUMBERS[:20]],
        "--wait", "--interval", "0.2", "--max-wait", "90",
    )  # fmt: skip

    assert code == 1, terminal + worker.log_tail()
    # Redrawn in place: a carriage return before each state, one newline at the very end.
    final_draw = terminal.rstrip().split("\r")[-1]
    assert terminal.count("\n") == 1 and terminal.startswith("\r[")
    assert re.fullmatch(
        r"\[[#-]{20}\] +[\d.]+%  \d+/20  queued 11 rejected 9  [\d.]+ msg/s  ETA 0:00:00  "
        r"completed_with_failures",
        final_draw,
    ), terminal
    assert "status     completed_with_failures" in out
    # +14155550001..+14155550009 match the prefix; 0010..0020 do not.
    assert table_in(out, "recipients") == {"queued": ["11"], "rejected": ["9"], "total": ["20"]}


def test_send_wait_gives_up_after_max_wait_and_says_the_broadcast_goes_on(bulksms):
    # No worker: the broadcast stays queued.
    result = bulksms(
        "send", "--to", NUMBERS[0], "--text", "Hi", "--wait", "--interval", "0.2",
        "--max-wait", "1",
    )  # fmt: skip

    assert result.returncode == 3
    assert "still queued after 1s; the broadcast goes on: bulksms show" in result.stderr


def test_send_at_makes_a_scheduled_broadcast(bulksms):
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0).isoformat()

    result = bulksms("send", "--to", NUMBERS[0], "--text", "Later", "--send-at", later)

    assert result.returncode == 0, result.stderr
    assert "status     scheduled" in result.stdout


def test_send_at_in_the_past_is_refused_by_the_api(bulksms):
    result = bulksms(
        "send", "--to", NUMBERS[0], "--text", "Late", "--send-at", "2020-01-01T00:00:00Z"
    )

    assert result.returncode == 2
    assert "send_at" in result.stderr


# --- reading broadcasts -------------------------------------------------------------------


def test_show_prints_a_readable_summary_or_the_raw_json(bulksms):
    broadcast_id = created_id(bulksms, *NUMBERS[:3])

    readable = bulksms("show", broadcast_id)
    raw = bulksms("show", broadcast_id, "--json")

    assert readable.returncode == 0, readable.stderr
    assert f"broadcast  {broadcast_id}" in readable.stdout
    assert "status     queued" in readable.stdout
    assert table_in(readable.stdout, "recipients") == {"pending": ["3"], "total": ["3"]}
    assert table_in(readable.stdout, "batches") == {"pending": ["1"], "total": ["1"]}
    assert json.loads(raw.stdout)["recipients"]["total"] == 3


def test_send_show_and_list_json_print_one_representation(bulksms):
    sent = json.loads(bulksms("send", "--json", "--text", "Hi", f"--to={NUMBERS[0]}").stdout)
    shown = json.loads(bulksms("show", sent["id"], "--json").stdout)
    (listed,) = json.loads(bulksms("list", "--json").stdout)["items"]

    assert list(sent) == list(shown)
    assert sent["segments"] == shown["segments"] == listed["segments"]
    assert sent["batches"] == shown["batches"] == {"total": 1, "by_status": {"pending": 1}}
    assert listed == {key: shown[key] for key in listed}


def test_list_shows_the_newest_broadcasts_first_page_by_page(bulksms):
    older = created_id(bulksms, NUMBERS[0], text="older")
    newer = created_id(bulksms, NUMBERS[1], text="newer")

    first_page = bulksms("list", "--limit", "1")
    everything = bulksms("list", "--status", "queued", "--json")

    assert first_page.returncode == 0, first_page.stderr
    assert newer in first_page.stdout and older not in first_page.stdout
    assert "more: bulksms list --limit 1 --cursor" in first_page.stdout
    cursor = first_page.stdout.split("--cursor")[-1].strip()
    second_page = bulksms("list", "--limit", "1", "--cursor", cursor)
    assert older in second_page.stdout
    listed = [row["id"] for row in json.loads(everything.stdout)["items"]]
    assert listed == [newer, older]


def test_recipients_csv_streams_every_row_with_a_header(bulksms):
    broadcast_id = created_id(bulksms, *NUMBERS)

    result = bulksms("recipients", broadcast_id, "--csv")

    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["phone"] for row in rows} == set(NUMBERS)
    assert {row["status"] for row in rows} == {"pending"}


def test_recipients_pages_through_the_api_with_its_cursor(bulksms):
    broadcast_id = created_id(bulksms, *NUMBERS)

    result = bulksms("recipients", broadcast_id, "--status", "pending", "--page-size", "7")
    limited = bulksms("recipients", broadcast_id, "--limit", "5", "--page-size", "2")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["phone", "status"]
    assert sorted(line.split()[0] for line in lines[1:]) == NUMBERS
    assert "30 recipient(s)" in result.stderr
    assert len(limited.stdout.splitlines()) == 1 + 5


# --- actions ------------------------------------------------------------------------------


def _fail_recipients(database_url: str, broadcast_id: str, phones: list[str]) -> None:
    """What a batch that Plivo refused leaves behind."""
    bid = uuid.UUID(broadcast_id)
    with session_scope(database_url) as session:
        session.execute(update(Batch).where(Batch.broadcast_id == bid).values(status="failed"))
        session.execute(
            update(Recipient)
            .where(Recipient.broadcast_id == bid)
            .values(status="queued", message_uuid=None)
        )
        session.execute(
            update(Recipient)
            .where(Recipient.broadcast_id == bid, Recipient.phone.in_(phones))
            .values(status="failed", error_reason="HTTP 400 from Plivo")
        )
        session.execute(
            update(Broadcast).where(Broadcast.id == bid).values(status="completed_with_failures")
        )


def test_retry_sends_again_to_failed_recipients_once(bulksms, settings):
    broadcast_id = created_id(bulksms, *NUMBERS[:3])
    _fail_recipients(settings.database_url, broadcast_id, NUMBERS[:2])

    first = bulksms("retry", broadcast_id)
    again = bulksms("retry", broadcast_id, "--status", "failed", "--json")

    assert first.returncode == 0, first.stderr
    assert "retrying 2 recipient(s) (failed) in 1 batch(es)" in first.stdout
    assert json.loads(again.stdout)["retried"] == 0


def test_pause_resume_and_cancel_each_answer_with_the_new_status(bulksms, live_api):
    broadcast_id = created_id(bulksms, *NUMBERS[:3])

    paused = bulksms("pause", broadcast_id)
    paused_again = bulksms("pause", broadcast_id)
    resumed = bulksms("resume", broadcast_id)
    cancelled = bulksms("cancel", broadcast_id)
    cancelled_again = bulksms("cancel", broadcast_id)

    assert paused.returncode == 0, paused.stderr
    assert paused.stdout.startswith(f"{broadcast_id}  paused")
    assert paused_again.returncode == 0 and "paused" in paused_again.stdout
    assert "paused" not in resumed.stdout
    assert cancelled.stdout.startswith(f"{broadcast_id}  cancelled")
    assert cancelled_again.returncode == 0 and "cancelled" in cancelled_again.stdout
    body = api_get(live_api, f"/v1/broadcasts/{broadcast_id}")
    assert body["recipients"]["by_status"] == {"skipped": 3}


# --- opt-outs and limits ------------------------------------------------------------------


def test_opt_outs_import_export_round_trip_and_keep_those_numbers_out(bulksms, tmp_path):
    upload = tmp_path / "stop.csv"
    upload.write_text("phone\n+14155550101\n+1 415 555 0102\n+14155550101\n", encoding="utf-8")
    exported = tmp_path / "out" / "opt-outs.csv"
    exported.parent.mkdir()

    first = bulksms("opt-outs", "import", str(upload), "--reason", "CRM")
    again = bulksms("opt-outs", "import", str(upload))
    to_file = bulksms("opt-outs", "export", "--output", str(exported))
    to_stdout = bulksms("opt-outs", "export")
    sent = bulksms("send", "--text", "Hi", "--to", "+14155550101", "--to", "+14155550103")

    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "added 2, already opted out 0, invalid 0"
    assert again.stdout.strip() == "added 0, already opted out 2, invalid 0"
    assert "wrote 2 opt-out(s)" in to_file.stderr
    rows = list(csv.DictReader(io.StringIO(exported.read_text())))
    assert [(r["phone"], r["reason"]) for r in rows] == [
        ("+14155550101", "CRM"),
        ("+14155550102", "CRM"),
    ]
    assert to_stdout.stdout == exported.read_text()
    assert "1 accepted, 0 invalid, 0 duplicates, 1 skipped (opted out)" in sent.stdout


def test_an_opt_out_file_with_bad_numbers_is_refused_unless_told_to_skip(bulksms, tmp_path):
    upload = tmp_path / "stop.txt"
    upload.write_text("+14155550101\nnope\n", encoding="utf-8")

    refused = bulksms("opt-outs", "import", str(upload))
    skipped = bulksms("opt-outs", "import", str(upload), "--skip-invalid")

    assert refused.returncode == 2
    assert "1 invalid phone number" in refused.stderr and "'nope'" in refused.stderr
    assert skipped.stdout.strip() == "added 1, already opted out 0, invalid 1"


def test_limits_show_set_per_sender_and_clear(bulksms):
    sender = "+14155550000"

    shown = bulksms("limits", "show")
    account = bulksms("limits", "set", "--sms-mps", "4", "--mms-mps", "0.5")
    per_sender = bulksms("limits", "set", "--sender", sender, "--sms-mps", "2")
    cleared = bulksms("limits", "set", "--clear")
    sender_cleared = bulksms("limits", "set", "--sender", sender, "--clear")
    nothing = bulksms("limits", "set")

    assert shown.returncode == 0, shown.stderr
    configured = ["100,000 msg/s (config)", "0.25 msg/s (config)"]
    assert table_in(shown.stdout, "scope") == {"account": configured}
    assert table_in(account.stdout, "scope") == {
        "account": ["4 msg/s (override)", "0.5 msg/s (override)"]
    }
    assert table_in(per_sender.stdout, "scope")[sender] == ["2 msg/s (override)", "-"]
    # --clear without --sender drops only the account's overrides.
    assert table_in(cleared.stdout, "scope") == {
        "account": configured,
        sender: ["2 msg/s (override)", "-"],
    }
    assert table_in(sender_cleared.stdout, "scope") == {"account": configured}
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr


# --- errors -------------------------------------------------------------------------------


def test_an_unreachable_api_is_named_with_what_to_do():
    url = f"http://127.0.0.1:{services.free_port()}"

    result = run(url, "list")

    assert result.returncode == 2
    assert f"cannot reach the API at {url}: connection refused" in result.stderr
    assert "(is it running? set --url/BULKSMS_URL)" in result.stderr


def test_a_url_that_is_not_http_is_a_usage_error():
    result = run("127.0.0.1:8000", "limits", "show")

    assert result.returncode == 2
    assert "is not an http(s) URL" in result.stderr


def test_a_wrong_key_is_reported_without_echoing_it(live_api):
    wrong = "wrong-key-s3cret"

    result = run(live_api, "limits", "show", key=wrong)
    missing = run(live_api, "limits", "show", key=None)
    helped = run(live_api, "--help", key=wrong)

    assert result.returncode == 2
    assert "the API refused the key (set --api-key/BULKSMS_API_KEY)" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert helped.returncode == 0 and wrong not in helped.stdout
    assert missing.returncode == 2
    assert "no API key: set --api-key or BULKSMS_API_KEY" in missing.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["show"],
        ["show", "--wait"],
        ["recipients"],
        ["recipients", "--csv"],
        ["retry"],
        ["pause"],
        ["resume"],
        ["cancel"],
    ],
    ids=" ".join,
)
def test_an_unknown_broadcast_id_is_reported_as_such(bulksms, command):
    missing = str(uuid.uuid4())

    result = bulksms(command[0], missing, *command[1:])

    assert result.returncode == 2
    assert f"no broadcast {missing}" in result.stderr


# --- progress arithmetic (no API needed) -----------------------------------------------------


def test_rate_and_eta_come_from_successive_polls_when_the_api_gives_none():
    estimator = RateEstimator()
    poll = {"status": "sending", "recipients": {"total": 1000, "by_status": {"pending": 1000}}}
    measure(poll, estimator, at=100.0)
    poll["recipients"]["by_status"] = {"pending": 800, "queued": 200}

    progress = measure(poll, estimator, at=104.0)

    assert progress.percent == 20.0
    assert progress.rate == 50.0
    assert progress.eta_seconds == 16.0
    assert "[####----------------]   20.0%  200/1,000" in render(progress, bar=True)
    assert "50.0 msg/s  ETA 0:00:16  sending" in render(progress, bar=True)


def test_the_apis_own_progress_rate_and_eta_are_preferred():
    poll = {
        "status": "sending",
        "recipients": {"total": 10, "by_status": {"pending": 10}},
        "progress": {"final": 4, "total": 10, "percent": 40.0},
        "rate": {"messages_per_second": 2.5},
        "eta_seconds": 3,
    }

    progress = measure(poll, RateEstimator(), at=1.0)

    assert (progress.final, progress.percent, progress.rate, progress.eta_seconds) == (
        4,
        40.0,
        2.5,
        3,
    )


@pytest.mark.parametrize(
    "text",
    [
        "name;mobile\nAda;+14155550001\nBob;+14155550002\n",
        "+14155550001,Ada\n+14155550002,Bob\n",
        "Phone Number\n+14155550001\n\n+14155550002\n",
        "+14155550001\n+14155550002",
        'id\tto\n1\t"+14155550001"\n2\t+14155550002\n',
    ],
    ids=["semicolon-header", "first-column", "text-header", "plain-text", "tab-to-column"],
)
def test_recipient_files_in_common_shapes_give_the_numbers(text):
    assert parse_recipients(text) == ["+14155550001", "+14155550002"]
