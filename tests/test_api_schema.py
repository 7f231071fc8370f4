"""Schemathesis against the API served over real HTTP: every operation in /openapi.json,
with generated valid and invalid requests, and every check (no 5xx, each status, content
type, header and body as documented, invalid input refused, valid input accepted, auth
enforced, 405 with Allow for other methods). The settings are in tests/schemathesis.toml.

Run it alone: `.venv/bin/pytest tests/test_api_schema.py`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY, ROOT

CONFIG = ROOT / "tests" / "schemathesis.toml"
# Small lists make generated broadcasts cheap; the schema's maxItems is this setting.
MAX_RECIPIENTS = 20
# Far above what the run takes on 2 cores (1-2 minutes); a hang fails instead of stalling.
TIMEOUT = 600


@pytest.fixture()
def settings(settings):
    return settings.model_copy(update={"max_recipients": MAX_RECIPIENTS})


def test_every_operation_is_described(app):
    """Every route Flask serves is in the document, with a 2xx answer described."""
    spec = app.test_client().get("/openapi.json").get_json()
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(("openapi.", "console.")):
            continue
        path = rule.rule.replace("<path:", "<").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    described = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert served <= described, served - described
    for path, method in described:
        answers = spec["paths"][path][method]["responses"]
        assert any(status.startswith("2") for status in answers), (path, method)


def test_the_document_bounds_recipients_by_max_recipients(app):
    schemas = app.test_client().get("/openapi.json").get_json()["components"]["schemas"]
    for name in ("BroadcastRequest", "MmsRequest"):
        assert schemas[name]["properties"]["recipients"]["maxItems"] == MAX_RECIPIENTS


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_schemathesis_finds_nothing(live_api, tmp_path: Path, caplog):
    """On PostgreSQL only: it refuses what SQLite lets through (NUL characters, say)."""
    caplog.set_level(logging.WARNING, logger="werkzeug")  # a line per request otherwise
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(CONFIG),
        "run",
        f"{live_api}/openapi.json",
    ]
    env = {**os.environ, "BULKSMS_API_KEY": API_KEY, "NO_COLOR": "1"}
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    print(run.stdout[-3000:])  # the summary, with `pytest -rP`
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
