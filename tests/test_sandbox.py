"""The sandbox, driven over real HTTP by the real plivo SDK."""

from __future__ import annotations

import uuid

import plivo
import plivo.rest.client
import pytest
import requests
from plivo.exceptions import AuthenticationError, ValidationError

from sandbox import SandboxConfig, create_app, serve_in_thread
from sandbox.__main__ import build_config, parse_args

AUTH_ID = "MASANDBOX00000000000"
AUTH_TOKEN = "sandbox-auth-token"
SRC = "+14155550000"


@pytest.fixture(scope="module")
def base_url():
    url, shutdown = serve_in_thread(SandboxConfig())
    yield url
    shutdown()


@pytest.fixture(autouse=True)
def fresh_sandbox(base_url):
    # One server for the module keeps the suite fast; each test starts from a clean slate.
    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()
    set_invalid_prefixes(base_url, [])


@pytest.fixture
def sdk_pointed_at_sandbox(base_url, monkeypatch):
    # The SDK re-reads this module constant on every call; monkeypatch restores it afterwards.
    monkeypatch.setattr(plivo.rest.client, "PLIVO_API_BASE_URI", f"{base_url}/v1/Account")


@pytest.fixture
def client(sdk_pointed_at_sandbox):
    with plivo.RestClient(AUTH_ID, AUTH_TOKEN) as rest_client:
        yield rest_client


def stats(base_url) -> dict:
    response = requests.get(f"{base_url}/stats", timeout=5)
    response.raise_for_status()
    return response.json()


def set_invalid_prefixes(base_url, prefixes) -> requests.Response:
    return requests.post(
        f"{base_url}/sandbox/config", json={"invalid_prefixes": prefixes}, timeout=5
    )


def numbers(count: int, start: int = 14155550001) -> list[str]:
    return [str(start + i) for i in range(count)]


def is_uuid4(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == value


def test_it_returns_one_message_uuid_per_destination(client, base_url):
    response = client.messages.create(src=SRC, dst="14155550001<14155550002", text="hi")

    assert response.message == "message(s) queued"
    assert is_uuid4(response.api_id)
    assert len(response.message_uuid) == 2
    assert all(is_uuid4(message_uuid) for message_uuid in response.message_uuid)
    assert len(set(response.message_uuid)) == 2
    assert "invalid_number" not in response
    assert stats(base_url)["sends"] == {"14155550001": 1, "14155550002": 1}


def test_it_keeps_a_record_of_each_message_in_destination_order():
    app = create_app(SandboxConfig(callback_retries=0))
    # Nothing listens on the discard port: the callbacks fail at once, on this machine.
    callback_url = "http://127.0.0.1:9/cb"
    response = app.test_client().post(
        f"/v1/Account/{AUTH_ID}/Message/",
        json={"src": SRC, "dst": "+14155550002<14155550001", "text": "hi", "url": callback_url},
        auth=(AUTH_ID, AUTH_TOKEN),
    )
    app.extensions["sandbox"].close()

    assert response.status_code == 202
    state = app.extensions["sandbox"].state
    records = [state.message(message_uuid) for message_uuid in response.json["message_uuid"]]
    assert [record.dst for record in records] == ["14155550002", "14155550001"]
    assert {(record.src, record.text, record.type, record.url) for record in records} == {
        (SRC, "hi", "sms", callback_url)
    }


def test_it_reports_invalid_numbers_and_queues_only_the_valid_ones(client, base_url):
    assert set_invalid_prefixes(base_url, ["+1999"]).json()["invalid_prefixes"] == ["1999"]

    response = client.messages.create(
        src=SRC, dst="14155550001<123<+19995550000<14155550002<1234567890123456", text="hi"
    )

    assert len(response.message_uuid) == 2
    assert response.invalid_number == ["123", "+19995550000", "1234567890123456"]
    counters = stats(base_url)
    assert counters["messages"] == 2
    assert counters["invalid"] == 3
    assert set(counters["sends"]) == {"14155550001", "14155550002"}


def test_it_removes_duplicate_destinations_within_one_request(client, base_url):
    response = client.messages.create(
        src=SRC, dst="14155550001<+14155550001<14155550002<14155550001", text="hi"
    )

    assert len(response.message_uuid) == 2
    counters = stats(base_url)
    assert counters["sends"] == {"14155550001": 1, "14155550002": 1}
    assert counters["duplicates"] == 0


def test_it_rejects_a_wrong_token_so_the_sdk_raises_authentication_error(
    sdk_pointed_at_sandbox, base_url
):
    with plivo.RestClient(AUTH_ID, "not-the-token") as wrong_client:
        with pytest.raises(AuthenticationError, match="credentials invalid"):
            wrong_client.messages.create(src=SRC, dst="14155550001", text="hi")

    counters = stats(base_url)
    assert counters["auth_failures"] == 1
    assert counters["messages"] == 0


def test_it_rejects_credentials_that_do_not_match_the_account_in_the_path(base_url):
    response = requests.post(
        f"{base_url}/v1/Account/MAOTHERACCOUNT000000/Message/",
        json={"src": SRC, "dst": "14155550001", "text": "hi"},
        auth=(AUTH_ID, AUTH_TOKEN),
        timeout=5,
    )

    assert response.status_code == 401
    assert set(response.json()) == {"api_id", "error"}
    assert stats(base_url)["messages"] == 0


def test_it_rejects_the_str_of_a_python_list_as_dst(client, base_url):
    with pytest.raises(ValidationError, match="Python list"):
        client.messages.create(src=SRC, dst=str(["14155550001", "14155550002"]), text="hi")

    counters = stats(base_url)
    assert counters["bad_requests"] == 1
    assert counters["messages"] == 0


def test_it_counts_sends_and_duplicates_across_requests(client, base_url):
    client.messages.create(src=SRC, dst="14155550001<14155550002", text="hi")
    client.messages.create(src=SRC, dst="14155550002<14155550003", text="hi")
    # Same person, different text: a second message, not a double send.
    client.messages.create(src=SRC, dst="14155550001", text="bye")

    counters = stats(base_url)
    assert counters["requests"] == 3
    assert counters["messages"] == 5
    assert counters["unique_numbers"] == 3
    assert counters["sends"] == {"14155550001": 2, "14155550002": 2, "14155550003": 1}
    assert counters["duplicates"] == 1
    assert counters["duplicate_numbers"] == ["14155550002"]


def test_it_accepts_1000_destinations_and_rejects_1001(client, base_url):
    accepted = client.messages.create(src=SRC, dst="<".join(numbers(1000)), text="hi")
    assert len(accepted.message_uuid) == 1000
    # The limit counts unique numbers: a repeat is removed, not counted against it.
    repeated = numbers(1000) + ["14155550001"]
    assert (
        len(client.messages.create(src=SRC, dst="<".join(repeated), text="yo").message_uuid) == 1000
    )

    with pytest.raises(ValidationError, match="at most 1000"):
        client.messages.create(src=SRC, dst="<".join(numbers(1001)), text="hi")

    counters = stats(base_url)
    assert counters["messages"] == 2000
    assert counters["bad_requests"] == 1


def test_it_forgets_everything_on_reset(client, base_url):
    client.messages.create(src=SRC, dst="14155550001", text="hi")
    client.messages.create(src=SRC, dst="14155550001", text="hi")
    client.messages.get(client.messages.list(limit=20).objects[0].message_uuid)
    assert stats(base_url)["duplicates"] == 1

    requests.post(f"{base_url}/stats/reset", timeout=5).raise_for_status()

    assert stats(base_url) == {
        "requests": 0,
        "messages": 0,
        "unique_numbers": 0,
        "duplicates": 0,
        "duplicate_numbers": [],
        "sends": {},
        "invalid": 0,
        "auth_failures": 0,
        "bad_requests": 0,
        "too_many_requests": 0,
        "faults": {
            "drop_before": 0,
            "5xx": 0,
            "429": 0,
            "drop_after": 0,
            "slow": 0,
            "fail_after_accept": 0,
        },
        "expired": 0,
        "max_queue_depth": {},
        "queue_depth": {},
        "outcomes": {"delivered": 0, "undelivered": 0, "failed": 0, "sent": 0},
        "by_type": {"sms": 0, "mms": 0},
        "lookups": {
            "gets": 0,
            "gets_not_found": 0,
            "lists": 0,
            "list_too_many_requests": 0,
            "too_many_requests": 0,
            "bad_requests": 0,
            "auth_failures": 0,
        },
        "callbacks": {"sent": 0, "failed": 0, "pending": 0, "withheld": 0},
    }
    client.messages.create(src=SRC, dst="14155550001", text="hi")
    assert stats(base_url)["duplicates"] == 0


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"dst": "14155550001", "text": "hi"}, "either powerpack_uuid or src"),
        ({"src": SRC, "powerpack_uuid": "pp", "dst": "14155550001", "text": "hi"}, "both"),
        ({"src": SRC, "text": "hi"}, "dst is required"),
        ({"src": SRC, "dst": ["14155550001"], "text": "hi"}, "joined by '<'"),
        ({"src": SRC, "dst": "14155550001,14155550002", "text": "hi"}, "14155550001,1415"),
        ({"src": SRC, "dst": "14155550001<", "text": "hi"}, "joined by '<'"),
        ({"src": SRC, "dst": "123", "text": "hi"}, "no valid destination"),
        ({"src": SRC, "dst": "14155550001"}, "text is required"),
        ({"src": SRC, "dst": "14155550001", "text": ""}, "text is required"),
        ({"src": SRC, "dst": "14155550001", "text": "hi", "type": "fax"}, "type must be"),
        ({"src": SRC, "dst": "14155550001", "type": "mms"}, "media_urls or media_ids"),
        ({"src": SRC, "dst": "14155550001", "text": "hi", "message_expiry": 4}, "expiry"),
        ({"src": SRC, "dst": "14155550001", "text": "hi", "url": "ftp://x"}, "http"),
    ],
)
def test_it_rejects_malformed_requests_with_a_plivo_error_body(base_url, body, error):
    response = requests.post(
        f"{base_url}/v1/Account/{AUTH_ID}/Message/",
        json=body,
        auth=(AUTH_ID, AUTH_TOKEN),
        timeout=5,
    )

    assert response.status_code == 400
    assert error in response.json()["error"]
    assert is_uuid4(response.json()["api_id"])
    assert stats(base_url)["bad_requests"] == 1


def test_it_accepts_mms_with_media_and_the_optional_parameters(client, base_url):
    response = client.messages.create(
        src=SRC,
        dst="14155550001",
        type_="mms",
        media_urls=["https://example.com/a.png"],
        url="https://example.com/status",
        method="GET",
        log="false",
        trackable=True,
        message_expiry=600,
    )

    assert len(response.message_uuid) == 1
    assert stats(base_url)["messages"] == 1


def test_it_answers_unknown_paths_and_wrong_methods_with_json_errors(base_url):
    auth = (AUTH_ID, AUTH_TOKEN)
    wrong_method = requests.put(
        f"{base_url}/v1/Account/{AUTH_ID}/Message/", json={}, auth=auth, timeout=5
    )
    unknown = requests.post(f"{base_url}/v1/Account/{AUTH_ID}/Nope/", json={}, auth=auth, timeout=5)

    assert wrong_method.status_code == 405
    assert unknown.status_code == 404
    for response in (wrong_method, unknown):
        assert set(response.json()) == {"api_id", "error"}


def test_it_serves_health_and_never_shows_the_token(base_url):
    assert requests.get(f"{base_url}/health", timeout=5).json() == {"ok": True}
    config = requests.get(f"{base_url}/sandbox/config", timeout=5).json()

    assert config["auth_id"] == AUTH_ID
    assert config["invalid_prefixes"] == []
    assert "auth_token" not in config
    assert set_invalid_prefixes(base_url, ["12a"]).status_code == 400
    assert "auth_token" not in set_invalid_prefixes(base_url, ["44"]).json()


def test_it_leaves_the_callers_config_alone_when_changed_at_run_time():
    config = SandboxConfig(invalid_prefixes=["1"])
    client = create_app(config).test_client()

    changed = client.post("/sandbox/config", json={"invalid_prefixes": ["44"]}).json

    assert changed["invalid_prefixes"] == ["44"]
    assert config.invalid_prefixes == ["1"]


def test_delete_puts_back_the_config_it_was_started_with():
    client = create_app(SandboxConfig(invalid_prefixes=["1"], share_failed=0.0)).test_client()
    client.post("/sandbox/config", json={"invalid_prefixes": ["44"], "share_failed": 0.5})

    restored = client.delete("/sandbox/config").json

    assert (restored["invalid_prefixes"], restored["share_failed"]) == (["1"], 0.0)
    assert client.get("/sandbox/config").json == restored


def test_it_takes_cli_flags_over_environment_over_defaults(monkeypatch):
    monkeypatch.setenv("SANDBOX_AUTH_ID", "MAFROMENV00000000000")
    monkeypatch.setenv("SANDBOX_AUTH_TOKEN", "env-token")
    monkeypatch.setenv("SANDBOX_INVALID_PREFIXES", "999, +888")

    from_env = build_config(parse_args([]))
    from_flags = build_config(parse_args(["--auth-token", "flag-token"]))

    assert (from_env.auth_id, from_env.auth_token) == ("MAFROMENV00000000000", "env-token")
    assert from_env.invalid_prefixes == ["999", "888"]
    assert (from_flags.auth_id, from_flags.auth_token) == ("MAFROMENV00000000000", "flag-token")
    monkeypatch.delenv("SANDBOX_AUTH_ID")
    assert build_config(parse_args([])).auth_id == AUTH_ID
