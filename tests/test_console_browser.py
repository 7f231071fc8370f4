"""The console in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium): sign in, send 2,500 recipients from the form to the sandbox with a real worker,
watch the list reach `completed` without reloading, see the error table, retry the failures,
pause and resume another broadcast. Every page is saved as a screenshot under
var/console-screenshots/, and no page may make a request to any host but the console's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests

from shared.encoding import measure
from tests.conftest import API_KEY, Beat, Worker
from tests.console_browser import Watch, chromium, click, needs_chromium, serving, text_of, until

NUMBERS = [f"+1415555{i:04d}" for i in range(1, 2501)]
# The sandbox fails these with error 20 (network error, worth a retry).
FAILING = NUMBERS[:12]
TRICKY_TEXTS = [
    "",
    "plain",
    "x" * 160,
    "x" * 161,
    "€" * 80,
    "€" * 81,
    "^{}\\[~]|",
    "ç is not GSM, Ç is",
    "’curly quote’",
    "😀" * 35,
    "😀" * 36,
    "a\nb\rc\fd",
    "Ünïcödé ÄÖÑÜ§¿ äöñüà",
    "y" * 70 + "é",
    "中文" * 40,
]

pytestmark = [
    needs_chromium,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]


@pytest.fixture()
def console_server(settings) -> Iterator[tuple[str, object]]:
    with serving(settings) as served:
        yield served


@pytest.fixture()
def browser() -> Iterator:
    with chromium() as driver:
        yield driver


@pytest.fixture()
def processes(console_server, tmp_path) -> Iterator[Worker]:
    _base, settings = console_server
    worker = Worker(settings, tmp_path / "worker.log", queues="sms,webhooks,maintenance")
    beat = Beat(settings, tmp_path)
    try:
        worker.wait_ready()
        yield worker
    finally:
        beat.stop()
        worker.stop()


def test_an_operator_sends_watches_retries_and_pauses_from_the_browser(
    console_server, processes, browser, sandbox, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, _settings = console_server
    watch = Watch(browser, base)
    requests.post(
        f"{sandbox}/sandbox/config",
        json={"outcomes": {n[1:]: "failed:20" for n in FAILING}, "delivery_delay": 0.2},
        timeout=5,
    ).raise_for_status()

    # Sign in, with the keyboard alone.
    browser.get(f"{base}/console/")
    watch.shot("01-sign-in")
    browser.find_element(By.ID, "api_key").send_keys(API_KEY, Keys.ENTER)
    until(browser, lambda d: "/console/broadcasts" in d.current_url, 20, "not signed in")

    # The text counter counts as the server does, on tricky strings too.
    browser.get(f"{base}/console/broadcasts/new")
    for text in TRICKY_TEXTS:
        counted = browser.execute_script("return window.bulksmsMeasure(arguments[0]);", text)
        cost = measure(text)
        assert (counted["encoding"], counted["length"], counted["segments"]) == (
            cost.encoding, cost.length, cost.segments,
        ), text  # fmt: skip
    csv_path = tmp_path / "numbers.csv"
    csv_path.write_text("phone\n" + "\n".join(NUMBERS) + "\n")
    browser.find_element(By.ID, "name").send_keys("Browser test")
    browser.find_element(By.ID, "file").send_keys(str(csv_path))
    browser.find_element(By.ID, "text").send_keys("Hello from the console: 10 € off")
    assert text_of(browser, "#text-meter").startswith("33 characters · GSM-7 · 1 segment")
    watch.shot("02-new-broadcast")
    click(browser, "#get-quote")
    until(browser, lambda d: d.find_elements(By.ID, "send"), 30, "no quote page")
    watch.shot("03-quote")
    click(browser, "#send")
    until(browser, lambda d: d.find_elements(By.ID, "broadcast-status"), 30, "no broadcast page")
    broadcast_id = browser.current_url.rsplit("/", 1)[1]

    # The list reaches a final state by itself: the page is never reloaded.
    browser.get(f"{base}/console/broadcasts")
    browser.execute_script("window.notReloaded = true;")
    row = f'#broadcast-table tr[data-id="{broadcast_id}"]'

    def finished(driver):
        found = driver.find_elements(By.CSS_SELECTOR, row)
        status = found[0].get_attribute("data-status") if found else ""
        return status if status.startswith("completed") else None

    status = until(browser, finished, 180, f"never completed:\n{processes.log_tail()}")
    assert status == "completed_with_failures"
    assert browser.execute_script("return window.notReloaded === true;")
    watch.shot("04-broadcasts")

    # The error table names code 20, what it means and that a retry can help.
    browser.get(f"{base}/console/broadcasts/{broadcast_id}")
    errors = text_of(browser, "#error-table")
    assert "20 12 network error (temporary) yes" in errors
    watch.shot("05-broadcast")

    # Retry the failures (the sandbox now delivers them) behind a confirmation.
    requests.post(f"{sandbox}/sandbox/config", json={"outcomes": {}}, timeout=5)
    click(browser, 'a[href$="/confirm/retry"]')
    assert "Retry 12 failed recipients, in new batches." in text_of(browser, "#consequences")
    watch.shot("06-confirm-retry")
    click(browser, "#confirm-action")
    until(browser, lambda d: "Retrying 12 recipients" in d.page_source, 20, "no retry notice")
    until(
        browser,
        lambda d: (
            d.find_element(By.ID, "broadcast-status").get_attribute("data-status") == "completed"
        ),
        120,
        f"retry never completed:\n{processes.log_tail()}",
    )
    assert not browser.find_elements(By.ID, "error-table")

    # Pause and resume another broadcast (scheduled for later, so it waits meanwhile).
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = requests.post(
        f"{base}/v1/broadcasts",
        json={"recipients": NUMBERS[:50], "text": "Later", "send_at": later},
        headers={"X-API-Key": API_KEY},
        timeout=30,
    )
    other = created.json()["id"]
    browser.get(f"{base}/console/broadcasts/{other}")
    click(browser, 'a[href$="/confirm/pause"]')
    assert "50 recipients in 1 pending batches wait" in text_of(browser, "#consequences")
    watch.shot("07-confirm-pause")
    click(browser, "#confirm-action")
    assert text_of(browser, "#broadcast-status") == "paused"
    click(browser, 'a[href$="/confirm/resume"]')
    click(browser, "#confirm-action")
    assert text_of(browser, "#broadcast-status") == "scheduled"

    for name, path in (("08-opt-outs", "opt-outs"), ("09-limits", "limits"),
                       ("10-system", "system")):  # fmt: skip
        browser.get(f"{base}/console/{path}")
        watch.shot(name)
    assert "test-" in text_of(browser, "#worker-table")  # the worker answered its ping

    assert watch.foreign() == []
    assert any(u.endswith("/console/broadcasts/live") or "/live?" in u for u in watch.requested)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe  # a CSP violation would be logged here
