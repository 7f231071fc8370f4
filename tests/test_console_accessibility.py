"""The console's accessibility, checked by tools in a real headless Chromium rather than
claimed: axe-core (vendored under tests/vendor/axe-core/, injected here and never served by
the console) finds no WCAG 2 A/AA violation on any page; at 200 % zoom no page scrolls
sideways and nothing is clipped; and the new-broadcast form can be filled and sent with the
keyboard alone, every stop showing where the focus is."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import requests
from sqlalchemy import select, update

from shared.db import session_scope
from shared.models import Batch, Broadcast, Recipient
from tests.conftest import API_KEY
from tests.console_browser import SHOTS, chromium, needs_chromium, serving, sign_in, until

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
NUMBERS = [f"+1415555{i:04d}" for i in range(1, 41)]
# Each recipient's state on the seeded broadcast, in the order given: every status the page
# shows a colour, a count and a filter for.
SPREAD = (
    ["delivered"] * 14 + ["failed"] * 6 + ["undelivered"] * 4 + ["unknown"] * 3
    + ["sent"] * 4 + ["queued"] * 3 + ["skipped"] * 2 + ["rejected"] * 1 + ["pending"] * 3
)  # fmt: skip
CODES = {"failed": "20", "undelivered": "50", "rejected": "420"}

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
        driver.set_script_timeout(60)
        yield driver


def _api(base: str, method: str, path: str, **kwargs) -> requests.Response:
    response = requests.request(
        method, f"{base}{path}", headers={"X-API-Key": API_KEY}, timeout=30, **kwargs
    )
    assert response.ok, (path, response.status_code, response.text)
    return response


def _seed(base: str, database_url: str) -> str:
    """A broadcast as after some minutes of sending: recipients in every status, error codes,
    batches handed to Plivo over time (so the chart has lines), and an audit trail."""
    bid = _api(
        base, "POST", "/v1/broadcasts",
        json={"recipients": NUMBERS, "text": "Accessibility check", "name": "Seeded",
              "send_at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
    ).json()["id"]  # fmt: skip
    _api(base, "POST", f"/v1/broadcasts/{bid}/pause")
    start = datetime.now(UTC) - timedelta(minutes=10)
    with session_scope(database_url) as session:
        key = UUID(bid)
        session.execute(
            update(Broadcast).where(Broadcast.id == key).values(status="sending", created_at=start)
        )
        for index, batch_id in enumerate(session.scalars(select(Batch.id).where(
            Batch.broadcast_id == key
        ))):  # fmt: skip
            session.execute(
                update(Batch).where(Batch.id == batch_id).values(
                    status="submitted", submitted_at=start + timedelta(minutes=index + 1)
                )
            )  # fmt: skip
        recipients = session.scalars(
            select(Recipient).where(Recipient.broadcast_id == key).order_by(Recipient.phone)
        ).all()
        for index, (recipient, status) in enumerate(zip(recipients, SPREAD, strict=True)):
            recipient.status = status
            recipient.error_code = CODES.get(status)
            if status not in ("pending", "queued", "skipped"):
                # Long unbroken words are what push a table past a narrow screen.
                recipient.message_uuid = str(uuid4())
                recipient.updated_at = start + timedelta(seconds=15 * index)
            if status in CODES:
                recipient.error_reason = "Destination handset unreachable after retries"
            if status in ("delivered", "failed", "undelivered", "rejected"):
                recipient.finished_at = start + timedelta(seconds=15 * index)
    _api(base, "POST", "/v1/opt-outs", json={"phones": ["+14155559999"], "reason": "STOP"})
    return bid


def _axe(driver) -> list[dict]:
    """axe-core's WCAG 2 A/AA violations on the page as it is now."""
    driver.execute_script(AXE.read_text())
    answer = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: "tag", values: arguments[0]},
                           resultTypes: ["violations"]})
          .then(r => done(r.violations.map(v => ({
              id: v.id, impact: v.impact, help: v.help,
              nodes: v.nodes.map(n => ({target: n.target.join(" "),
                                        html: n.html.slice(0, 160),
                                        summary: n.failureSummary}))}))),
                e => done([{id: "axe-error", help: String(e), nodes: []}]));
        """,
        WCAG_TAGS,
    )
    return answer


def _readable(page: str, violations: list[dict]) -> str:
    lines = [f"{page}: {len(violations)} axe violation(s)"]
    for violation in violations:
        lines.append(f"- {violation['id']} ({violation.get('impact')}): {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"    at {node['target']}: {node['html']}")
            lines.append("      " + (node["summary"] or "").replace("\n", "\n      "))
    return "\n".join(lines)


# What overflows at a 640 px viewport: the document itself, any element whose content is cut
# off by overflow hidden/clip, and any visible element reaching past the viewport without a
# scrolling box around it (wide data tables may scroll inside their own box, as WCAG 1.4.10
# allows). Elements wholly off to the left are the visually-hidden pattern (the skip link).
OVERFLOW = """
const root = document.documentElement, width = root.clientWidth, found = [];
if (root.scrollWidth > width) found.push("document scrolls: " + root.scrollWidth + " > " + width);
function scroller(el) {
  for (let p = el.parentElement; p; p = p.parentElement) {
    const o = getComputedStyle(p).overflowX;
    if (o === "auto" || o === "scroll") return true;
  }
  return false;
}
function name(el) {
  const classes = typeof el.className === "string" ? el.className.trim() : "";
  return el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (classes ? "." + classes.replace(/ +/g, ".") : "");
}
for (const el of document.body.querySelectorAll("*")) {
  const style = getComputedStyle(el), rect = el.getBoundingClientRect();
  if (style.display === "none" || style.visibility === "hidden" || rect.width === 0) continue;
  if (rect.right <= 0) continue;
  const clips = ["hidden", "clip"];
  if ((clips.includes(style.overflowX) && el.scrollWidth > el.clientWidth + 1) ||
      (clips.includes(style.overflowY) && el.scrollHeight > el.clientHeight + 1)) {
    if (!(el instanceof SVGElement)) found.push("clipped: " + name(el));
  }
  if ((rect.right > width + 1 || rect.left < -1) && !scroller(el)) {
    found.push("past the edge: " + name(el) + " (" + Math.round(rect.left) + ".." +
               Math.round(rect.right) + " of " + width + ")");
  }
}
return found.slice(0, 20);
"""

# The focused element, and whether its focus can be seen: an outline of at least 2 px whose
# colour has 3:1 contrast with what is behind it (WCAG 1.4.11 and 2.4.7).
FOCUS = """
const el = document.activeElement;
if (!el || el === document.body) return null;
function rgb(text) { const m = text.match(/[\\d.]+/g); return m ? m.map(Number) : [0, 0, 0, 0]; }
function lum(c) {
  const f = v => {
    v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
  };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
}
function behind(node) {
  for (let p = node.parentElement; p; p = p.parentElement) {
    const c = rgb(getComputedStyle(p).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c;
  }
  return [255, 255, 255];
}
const s = getComputedStyle(el), ring = rgb(s.outlineColor), back = behind(el);
const a = lum(ring), b = lum(back);
return {id: el.id, tag: el.tagName.toLowerCase(), type: el.type || "",
        text: (el.innerText || el.value || "").slice(0, 40),
        outline: s.outlineStyle + " " + s.outlineWidth + " " + s.outlineColor,
        visible: s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2 &&
                 (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05) >= 3};
"""


def _full_page_shot(driver, path: Path) -> None:
    """The whole page, not just the window, so a reviewer sees every part at 200 %."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"captureBeyondViewport": True,
         "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}},
    )  # fmt: skip
    path.write_bytes(base64.b64decode(shot["data"]))


def _pages(base: str, bid: str) -> list[tuple[str, str]]:
    return [
        ("broadcasts", f"{base}/console/broadcasts"),
        ("broadcast", f"{base}/console/broadcasts/{bid}"),
        ("broadcast, failed recipients", f"{base}/console/broadcasts/{bid}?rstatus=failed"),
        ("new broadcast", f"{base}/console/broadcasts/new"),
        ("opt-outs", f"{base}/console/opt-outs"),
        ("limits", f"{base}/console/limits"),
        ("system", f"{base}/console/system"),
        ("confirm retry", f"{base}/console/broadcasts/{bid}/confirm/retry"),
        ("confirm cancel", f"{base}/console/broadcasts/{bid}/confirm/cancel"),
        ("not found", f"{base}/console/broadcasts/{UUID(int=0)}"),
    ]


def _quote(driver, base: str) -> None:
    """The quote page, reached through the form."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/console/broadcasts/new")
    driver.find_element(By.ID, "recipients").send_keys("\n".join(NUMBERS[:5] + ["+442071838750"]))
    driver.find_element(By.ID, "text").send_keys("Quote me, with a € sign")
    driver.find_element(By.ID, "get-quote").click()
    until(driver, lambda d: d.find_elements(By.ID, "send"), 30, "no quote page")


def _visit_all(driver, base: str, bid: str, check) -> dict[str, object]:
    """`check(page)` on every console page, signed out and in; what it returned, by page."""
    from selenium.webdriver.common.by import By

    found = {}
    driver.get(f"{base}/console/sign-in")
    found["sign-in"] = check("sign-in")
    driver.find_element(By.ID, "api_key").send_keys("not-a-key")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    until(driver, lambda d: d.find_elements(By.ID, "signin-error"), 20, "no sign-in error")
    found["sign-in, refused"] = check("sign-in, refused")
    sign_in(driver, base, API_KEY)
    for page, url in _pages(base, bid):
        driver.get(url)
        found[page] = check(page)
    _quote(driver, base)
    found["quote"] = check("quote")
    return found


def test_axe_finds_no_wcag_a_or_aa_violation_on_any_page(console_server, browser, settings):
    base, _settings = console_server
    bid = _seed(base, settings.database_url)
    found = _visit_all(browser, base, bid, lambda page: _axe(browser))
    assert set(found) >= {"sign-in", "broadcasts", "broadcast", "new broadcast", "quote",
                          "opt-outs", "limits", "system", "confirm retry"}  # fmt: skip
    # The seeded page shows what it should, so axe looked at a full page, not an empty one.
    browser.get(f"{base}/console/broadcasts/{bid}")
    assert browser.find_elements("css selector", "#error-table")
    assert browser.find_elements("css selector", "svg.chart polyline")
    failures = [_readable(page, v) for page, v in found.items() if v]
    assert not failures, "\n\n".join(failures)
    # And axe does see a fault when there is one: an unlabelled field is one.
    browser.execute_script(
        "document.querySelector('main').insertAdjacentHTML('beforeend', '<input id=nolabel>');"
    )
    assert "label" in {v["id"] for v in _axe(browser)}


def test_at_200_percent_zoom_no_page_scrolls_sideways_or_clips(console_server, browser, settings):
    base, _settings = console_server
    bid = _seed(base, settings.database_url)
    # 200 % zoom of a 1280 px window: a 640 CSS px viewport at two device pixels per CSS px.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 640, "height": 900, "deviceScaleFactor": 2, "mobile": False},
    )
    SHOTS.mkdir(parents=True, exist_ok=True)

    def check(page: str) -> list[str]:
        # 640 px wide, less the vertical scroll bar's width of a long page.
        assert browser.execute_script("return window.innerWidth;") == 640
        slug = page.replace(" ", "-").replace(",", "")
        _full_page_shot(browser, SHOTS / f"zoom200-{slug}.png")
        return browser.execute_script(OVERFLOW)

    found = _visit_all(browser, base, bid, check)
    failures = {page: problems for page, problems in found.items() if problems}
    assert not failures, json.dumps(failures, indent=2, ensure_ascii=False)
    # And the check does see a page too wide: one long unbroken word makes one.
    browser.execute_script(
        "document.querySelector('main').insertAdjacentHTML('beforeend', '<p>' + 'x'.repeat(200));"
    )
    assert any("document scrolls" in p for p in browser.execute_script(OVERFLOW))


def test_the_new_broadcast_form_is_filled_and_sent_with_the_keyboard_alone(
    console_server, browser, settings
):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, _settings = console_server
    sign_in(browser, base, API_KEY)
    browser.get(f"{base}/console/broadcasts/new")
    keys = ActionChains(browser)
    fields = browser.execute_script(
        "return Array.from(document.querySelectorAll("
        "'#compose input:not([type=hidden]), #compose select, #compose textarea, "
        "#compose button')).map(e => e.id);"
    )
    typed = {"name": "By keyboard", "recipients": "\n".join(NUMBERS[:3]), "text": "Hi there"}
    stops, unseen = [], []
    for _ in range(80):
        keys.send_keys(Keys.TAB).perform()
        focused = browser.execute_script(FOCUS)
        if focused is None:
            continue
        # A date or time field takes one Tab per part (day, month, hours ...): one stop.
        if not stops or stops[-1] != (focused["id"] or focused["tag"]):
            stops.append(focused["id"] or focused["tag"])
        if not focused["visible"]:
            unseen.append(focused)
        if focused["id"] in typed:
            keys.send_keys(typed.pop(focused["id"])).perform()
        if focused["id"] == "get-quote":
            break
    assert stops[-1] == "get-quote", stops
    # Every control of the form is a stop, in the order of the page (a radio group is one
    # stop, on its checked button: arrows move within it).
    radios = {"quiet-off", "quiet-custom"}
    form_stops = [s for s in stops if s in fields]
    assert form_stops == [f for f in fields if f not in radios], stops
    assert not unseen, unseen
    assert browser.find_element(By.ID, "text-meter").text.startswith("8 characters · GSM-7")

    keys.send_keys(Keys.ENTER).perform()
    until(browser, lambda d: d.find_elements(By.ID, "send"), 30, "no quote page")
    for _ in range(60):
        keys.send_keys(Keys.TAB).perform()
        focused = browser.execute_script(FOCUS)
        if focused and focused["id"] == "send":
            break
        assert focused is None or focused["visible"], focused
    assert focused and focused["id"] == "send" and focused["visible"], focused
    keys.send_keys(Keys.ENTER).perform()
    until(browser, lambda d: d.find_elements(By.ID, "broadcast-status"), 30, "not sent")
    assert "By keyboard" in browser.find_element(By.TAG_NAME, "h1").text
