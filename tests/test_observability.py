"""What an operator sees: JSON log lines with the ids of the request or task, no secret in
any of them, and Prometheus metrics on /metrics (behind METRICS_TOKEN) that move while a
broadcast is sent, summed over granian's and Celery's processes."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from shared.logs import log_event
from shared.taskqueue import QUEUES
from tests.conftest import API_KEY, ROOT, Beat, Worker, granian_serving, wait_for
from tests.services import HOST, free_port

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
TOKEN = "metrics-token-0123456789abcdef"
NUMBERS = [f"+1415{i:07d}" for i in range(1, 201)]


def json_lines(text: str) -> list[dict]:
    """Every log line in `text`, parsed; fails on any line that is not one JSON object."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            lines.append(parsed)
    return lines


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def scrape(base: str, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{base}/metrics", headers=headers, timeout=10)


# --- /metrics, in process ---


def test_metrics_answers_404_while_no_token_is_configured(client):
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 404
    # Just like a path that does not exist: nothing tells that /metrics is there.
    assert answer.get_json() == client.get("/no-such-path").get_json()


def test_metrics_needs_the_bearer_token_and_nothing_else(settings):
    from api import create_app

    # A request limit that the calls below would pass: /metrics is not under it.
    guarded = settings.model_copy(
        update={"metrics_token": SecretStr(TOKEN), "api_rate_limit": "2/minute"}
    )
    client = create_app(guarded).test_client()

    def get(**headers):
        # Buffered: a request is counted once its answer is sent, as a server closes it.
        return client.get("/metrics", headers=headers, buffered=True)

    missing = get()
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert get(Authorization="Bearer wrong").status_code == 401
    # An API key, even an admin one, is not the metrics token.
    assert get(**{"X-API-Key": API_KEY}).status_code == 401
    assert get(Authorization=API_KEY).status_code == 401
    for _ in range(4):
        answer = get(Authorization=f"Bearer {TOKEN}")
        assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    text = answer.get_data(as_text=True)
    # Routes by their template, and by status: the earlier scrapes.
    assert samples(text, "bulksms_http_requests_total", route="/metrics", status="200") >= 3
    assert samples(text, "bulksms_http_requests_total", route="/metrics", status="401") >= 4
    for queue in QUEUES:
        assert f'bulksms_queue_depth{{queue="{queue}"}}' in text
    assert 'bulksms_metrics_source_up{source="redis"} 1.0' in text
    assert 'bulksms_metrics_source_up{source="database"} 1.0' in text
    assert "bulksms_delivery_report_oldest_unapplied_age_seconds" in text


def test_routes_are_counted_by_template_not_by_path(settings):
    from api import create_app

    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(TOKEN)}))
    client = app.test_client()
    headers = {"X-API-Key": API_KEY}
    for path in ("/v1/broadcasts/8c1f7a1e-0000-4000-8000-000000000001", "/wp-admin/setup.php"):
        client.get(path, headers=headers, buffered=True)
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = answer.get_data(as_text=True)
    assert "8c1f7a1e" not in text and "wp-admin" not in text
    assert (
        samples(
            text, "bulksms_http_requests_total", route="/v1/broadcasts/<broadcast_id>", status="404"
        )
        >= 1
    )
    assert samples(text, "bulksms_http_requests_total", route="unmatched", status="404") >= 1


def test_the_grafana_dashboard_asks_only_for_metrics_that_exist(settings):
    from api import create_app

    app = create_app(settings.model_copy(update={"metrics_token": SecretStr(TOKEN)}))
    answer = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    exposed = set(re.findall(r"^# TYPE (\S+)", answer.get_data(as_text=True), re.M))
    dashboard = json.loads((ROOT / "ops" / "grafana" / "bulksms.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    asked = set(re.findall(r"bulksms_[a-z_]+", " ".join(exprs)))
    assert asked, "the dashboard queries nothing"
    for name in asked:
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert name in exposed or base in exposed, f"{name} is not a metric of shared/metrics.py"


# --- JSON logs, in process ---


def test_a_request_logs_json_lines_with_its_request_id_and_echoes_it(client, capsys):
    capsys.readouterr()
    answer = client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:3], "text": "Hello"},
        headers={"X-Request-ID": "checkout-42.retry:1"},
    )
    assert answer.status_code == 202
    assert answer.headers["X-Request-ID"] == "checkout-42.retry:1"
    lines = json_lines(capsys.readouterr().err)
    (accepted,) = [line for line in lines if line["event"] == "broadcast.accepted"]
    assert accepted["request_id"] == "checkout-42.retry:1"
    assert accepted["broadcast_id"] == answer.get_json()["id"]
    assert {"timestamp", "level", "logger"} <= accepted.keys()
    assert (accepted["level"], accepted["logger"]) == ("info", "api.broadcasts")


def test_a_request_id_that_is_not_a_sane_token_is_replaced(client):
    for presented in ("two words", "x" * 200, '"><script>', ""):
        answer = client.get("/healthz", headers={"X-Request-ID": presented})
        assert answer.headers["X-Request-ID"] != presented
        assert len(answer.headers["X-Request-ID"]) == 32
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(3)}
    assert len(ids) == 3


def test_no_secret_reaches_a_log_line(settings, capsys):
    from api import create_app

    api_key = "bsk_secret-api-key-0123456789abcdefghij"
    bootstrap = "bootstrap-admin-key-8c1f7a1e"
    secrets = {
        "api_keys": [API_KEY, bootstrap],
        "metrics_token": SecretStr(TOKEN),
        "callback_secret": SecretStr("callback-secret-5e0b2c"),
        "flower_password": SecretStr("flower-password-77d1"),
    }
    leaky = settings.model_copy(update=secrets)
    client = create_app(leaky).test_client()
    capsys.readouterr()

    # Requests that carry every kind of credential, good and bad.
    client.post(
        "/v1/broadcasts",
        json={"recipients": NUMBERS[:2], "text": "Hi"},
        headers={"X-API-Key": bootstrap},
    )
    client.get("/v1/broadcasts", headers={"X-API-Key": api_key})
    client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    # What a careless change might log: headers, a settings dump (plain and revealed), a
    # URL with its password, a key in free text.
    log = logging.getLogger("tests.observability")
    log_event(log, "request.headers", headers={"X-API-Key": api_key, "Authorization": TOKEN})
    log_event(log, "settings.dump", **leaky.model_dump())
    revealed = {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value
        for name, value in leaky.model_dump().items()
    }
    log_event(log, "settings.revealed", settings=revealed)
    log_event(log, "db.connect", url="postgresql://bulksms:hunter2-pw@db:5432/bulksms")
    log.warning("caller used %s then %s", api_key, bootstrap)

    text = capsys.readouterr().err
    lines = json_lines(text)
    logged = {line["event"] for line in lines}
    assert {"broadcast.accepted", "request.headers", "settings.dump", "db.connect"} <= logged
    for secret in (api_key, bootstrap, TOKEN, "callback-secret-5e0b2c", "flower-password-77d1",
                   "hunter2-pw", API_KEY):  # fmt: skip
        assert secret not in text
    assert "[redacted]" in text


# --- the whole service: granian, a prefork worker, beat, the sandbox ---


@contextmanager
def granian_api(settings, log_path: Path, port: int, env: dict[str, str]) -> Iterator[str]:
    """The API as `make run` serves it: granian, 2 worker processes, its access log on."""
    argv = [
        sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "2",
        "--blocking-threads", "2", "--host", HOST, "--port", str(port), "--access-log",
        "api.wsgi:app",
    ]  # fmt: skip
    with granian_serving(settings, log_path, argv, port, env) as base:
        yield base


@POSTGRES_ONLY
def test_a_broadcast_moves_the_counters_on_metrics(settings, sandbox, tmp_path, monkeypatch):
    requests.post(
        f"{sandbox}/sandbox/config",
        json={"share_undelivered": 0.1, "fault_seed": 7, "delivery_delay": 0.2},
        timeout=5,
    ).raise_for_status()
    port = free_port()
    # 8 batches, one every half second: a few seconds of sending to scrape during.
    live = settings.model_copy(
        update={
            "public_base_url": f"http://{HOST}:{port}",
            "metrics_token": SecretStr(TOKEN),
            "batch_size": 25,
            "sms_mps": 50,
            "reconcile_interval": 1,
        }
    )
    # Shared by the API's and the worker's processes, fresh for this test, as `make run` does.
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc))
    # No start-up banner from Celery (not a log line), as in `make run` and the image.
    monkeypatch.setenv("CELERY_QUIET", "1")
    granian_env = {"GRANIAN_LOG_CONFIG": str(ROOT / "ops" / "granian-logging.json")}

    worker = Worker(live, tmp_path / "worker.log", queues="sms,webhooks,maintenance")
    beat = Beat(live, tmp_path)
    try:
        with granian_api(live, tmp_path / "api.log", port, granian_env) as base:
            worker.wait_ready()
            assert scrape(base, token=None).status_code == 401
            assert scrape(base, token="wrong").status_code == 401
            before = scrape(base).text
            assert samples(before, "bulksms_messages_total") == 0

            created = requests.post(
                f"{base}/v1/broadcasts",
                json={"recipients": NUMBERS, "text": "Metrics"},
                headers={"X-API-Key": API_KEY, "X-Request-ID": "obs-broadcast-1"},
                timeout=30,
            )
            assert created.status_code == 202, created.text
            assert created.headers["X-Request-ID"] == "obs-broadcast-1"
            broadcast_id = created.json()["id"]

            queued_seen = []

            def finished():
                queued_seen.append(
                    samples(scrape(base).text, "bulksms_messages_total", outcome="queued")
                )
                body = requests.get(
                    f"{base}/v1/broadcasts/{broadcast_id}",
                    headers={"X-API-Key": API_KEY},
                    timeout=10,
                ).json()
                return body if body["status"].startswith("completed") else None

            wait_for(finished, timeout=120, interval=0.3, message=worker.log_tail())

            def counted():
                # Counters move just after the commit that completed the broadcast.
                text = scrape(base).text
                final = sum(
                    samples(text, "bulksms_messages_total", outcome=outcome)
                    for outcome in ("delivered", "undelivered")
                )
                return text if final >= len(NUMBERS) else None

            after = wait_for(counted, timeout=15, interval=0.3, message=worker.log_tail())
    finally:
        worker.stop()
        beat.stop()

    # Moving during the broadcast, not only at its end.
    assert queued_seen == sorted(queued_seen)
    assert any(0 < seen < len(NUMBERS) for seen in queued_seen), queued_seen
    assert samples(after, "bulksms_messages_total", outcome="queued") == len(NUMBERS)
    delivered = samples(after, "bulksms_messages_total", outcome="delivered")
    undelivered = samples(after, "bulksms_messages_total", outcome="undelivered")
    assert delivered + undelivered == len(NUMBERS)
    assert undelivered > 0
    assert samples(after, "bulksms_messages_total", outcome="undelivered", error_code="none") == 0
    assert samples(after, "bulksms_batches_total", kind="sms", outcome="submitted") == 8
    assert samples(after, "bulksms_pacing_wait_seconds_count", kind="sms") >= 1
    assert samples(after, "bulksms_delivery_report_lag_seconds_count") >= len(NUMBERS)
    # Counted in granian's two processes, summed; the fast path by its own route.
    assert samples(after, "bulksms_http_requests_total", route="/v1/broadcasts", status="202") == 1
    assert samples(
        after, "bulksms_http_requests_total", route="/webhooks/plivo/status", status="200"
    ) >= len(NUMBERS)
    assert samples(after, "bulksms_queue_depth", queue="sms") == 0

    # One JSON object per line, from the API (granian's own lines too) and the worker.
    api_lines = json_lines((tmp_path / "api.log").read_text())
    (accepted,) = [line for line in api_lines if line["event"] == "broadcast.accepted"]
    assert (accepted["request_id"], accepted["broadcast_id"]) == ("obs-broadcast-1", broadcast_id)
    assert any(line["event"] == "http.access" for line in api_lines)
    worker_lines = json_lines(_log_lines(worker.log_path))
    submitted = [line for line in worker_lines if line["event"] == "batch.submitted"]
    assert len(submitted) == 8
    for line in submitted:
        assert line["broadcast_id"] == broadcast_id
        assert line["batch_id"] and line["task_id"] and line["task"] == "send_sms_batch"
    # Celery's own lines are JSON too, and inside a task they carry its ids.
    celery_lines = [line for line in worker_lines if line["logger"].startswith("celery")]
    assert any("ready" in line["event"] for line in celery_lines)
    assert any(line.get("broadcast_id") == broadcast_id for line in celery_lines)
    beat_lines = json_lines(_log_lines(tmp_path / "beat.log"))
    assert any(line["event"] == "beat: Starting..." for line in beat_lines)
    for path in (tmp_path / "api.log", worker.log_path, tmp_path / "beat.log"):
        text = path.read_text()
        assert TOKEN not in text and API_KEY not in text


def _log_lines(path: Path) -> str:
    """A Celery process's log lines, checking that the rest is only what Celery prints
    outside logging: its warning about running as root (CI runs as root) before logging is
    set up, and its shutdown notice."""
    logged, printed, in_warning = [], [], False
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            logged.append(line)
        elif "SecurityWarning" in line:
            in_warning = True
        elif in_warning:
            in_warning = "_warn_or_raise_security_error" not in line
        elif line.strip() and "Warm shutdown" not in line:
            printed.append(line)
    assert printed == [], f"lines that are not JSON in {path.name}"
    return "\n".join(logged)
