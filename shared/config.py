"""One Settings object for the API, the workers and the tools, read from env and `.env`."""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The sandbox (sandbox/) accepts these by default; they are not secrets.
SANDBOX_AUTH_ID = "MASANDBOX00000000000"
SANDBOX_AUTH_TOKEN = "sandbox-auth-token"
SANDBOX_SENDER = "+14155550000"
SANDBOX_API_KEY = "dev-key"
SANDBOX_CALLBACK_SECRET = "sandbox-callback-secret"

# Plivo's own default account throughput; the sandbox has no such limit, so the demo
# defaults to something that finishes in seconds.
PLIVO_DEFAULT_SMS_MPS = 5.0
SANDBOX_DEFAULT_SMS_MPS = 500.0

_AUTH_ID = re.compile(r"^(MA|SA)[A-Z0-9]{18}$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class ConfigError(RuntimeError):
    """The environment holds a value the service cannot run with; the message names it."""


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _check_http_url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{name} must be an absolute http(s) URL, got {value!r}")
    return value.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    plivo_auth_id: str = ""
    plivo_auth_token: SecretStr = SecretStr("")
    plivo_sender: str = ""
    plivo_api_base_url: str = "https://api.plivo.com"
    plivo_timeout: float = Field(10.0, gt=0, le=120)
    sandbox_url: str = "http://127.0.0.1:8020"

    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Requests per API key across every /v1 route (keys in API_KEYS included), in
    # Flask-Limiter's notation; `;` separates limits that all apply.
    api_rate_limit: str = "20/second;600/minute"
    # Failed authentications per client address; past it every /v1 request from that address
    # is refused with 429 until the window ends, so keys cannot be guessed at speed.
    auth_failure_limit: str = "10/minute"
    database_url: str = f"sqlite:///{PROJECT_ROOT / 'var' / 'bulksms.db'}"
    redis_url: str = "redis://127.0.0.1:6379/0"

    batch_size: int = Field(1000, ge=1, le=1000)
    # Messages per second; 0 means unlimited (the sandbox, benchmarks).
    sms_mps: float | None = Field(None, ge=0)
    mms_mps: float = Field(0.25, ge=0)
    # One destination per MMS call unless bulk MMS is shown to work on the account.
    mms_batch_size: int = Field(1, ge=1, le=1000)
    mms_allow_http: bool = False
    # HEAD/ranged GET of each media URL at intake; default on with Plivo, off in sandbox.
    media_check: bool | None = None
    sender_mps: Annotated[dict[str, float], NoDecode] = Field(default_factory=dict)
    # Off only to compare against Celery's per-worker rate_limit alone (bench/pacing.py).
    global_pacing: bool = True
    request_limit: int = Field(300, ge=1)
    request_window: float = Field(5.0, gt=0)
    # Share of REQUEST_LIMIT kept unused, so network jitter never pushes a window over at
    # Plivo's end.
    request_margin: float = Field(0.05, ge=0, lt=1)
    # Plivo's Message list has its own, tighter limit (20 a minute).
    list_request_limit: int = Field(20, ge=1)
    list_request_window: float = Field(60.0, gt=0)
    # SENDER_MPS default for senders without an override (0 = only the account limit).
    default_sender_mps: float = Field(0.0, ge=0)
    # Slots are booked at most this far ahead; later batches wait unbooked (<= COUNTDOWN_MAX).
    pacing_horizon: float = Field(5.0, gt=0)
    pacing_max_sleep: float = Field(2.0, ge=0, le=30)
    pacing_lead: float = Field(1.0, ge=0, le=30)
    countdown_max: float = Field(300.0, gt=0)
    lease_seconds: float = Field(60.0, gt=0)
    requeue_after: float = Field(120.0, gt=0)
    reconcile_interval: float = Field(2.0, gt=0, le=60)
    max_retries: int = Field(5, ge=0, le=50)
    retry_backoff: float = Field(2.0, gt=0)
    retry_backoff_max: float = Field(300.0, gt=0)
    visibility_timeout: int = Field(3600, ge=60)
    default_region: str | None = None
    # A recipient queued/sent with no final report this long after submission is looked up
    # at Plivo (Message Get); still only `sent` there, it counts as final.
    report_timeout: float = Field(7200.0, gt=0)
    # An ambiguous attempt is looked up in Plivo's message list this long after it.
    unknown_resolve_after: float = Field(600.0, gt=0)
    # Recipients of an ambiguous attempt that Plivo never received go back to `pending`.
    resend_unsent: bool = True
    # A delivery report whose uuid is not recorded yet waits this long, then is an orphan.
    orphan_report_after: float = Field(3600.0, gt=0)
    max_recipients: int = Field(100_000, ge=1, le=1_000_000)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # A contact-list CSV import is streamed, not held: it alone may pass MAX_BODY_BYTES.
    # 1,000,000 contacts with a few fields is about 40-60 MB.
    max_import_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    # Campaigns (issue 11). A broadcast to contact lists may pass MAX_RECIPIENTS, which
    # bounds what one JSON body may list.
    max_list_recipients: int = Field(1_000_000, ge=1, le=10_000_000)
    # Named sender pools for `sender_pool`: JSON {"alerts": ["+14155550001", "+1415..."]}.
    sender_pools: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    # Default quiet hours in each recipient's local time ("21:00-08:00"); empty: none.
    quiet_hours: str = ""
    # Used instead of an alphanumeric sender for US/Canadian recipients (they cannot get
    # alphanumeric senders); empty: such a broadcast is refused.
    numeric_fallback_sender: str = ""
    opt_out_text: str = Field("Reply STOP to opt out", min_length=1, max_length=100)

    @field_validator("sender_pools", mode="before")
    @classmethod
    def _sender_pools_json(cls, value: object) -> object:
        # SENDER_POOLS={"alerts": ["+14155550001", "+14155550002"]}; blank: no pools.
        if isinstance(value, str):
            if not value.strip():
                return {}
            try:
                value = json.loads(value)
            except ValueError as error:
                raise ValueError(f'must be JSON such as {{"alerts": ["+1..."]}}: {error}') from None
        if isinstance(value, dict):
            for name, senders in value.items():
                for sender in senders if isinstance(senders, list) else [None]:
                    if not isinstance(sender, str) or not (
                        _E164.match(sender) or _ALPHANUMERIC_SENDER.match(sender)
                    ):
                        raise ValueError(
                            f"pool {name!r}: {sender!r} is not an E.164 or alphanumeric sender"
                        )
        return value

    @field_validator("quiet_hours")
    @classmethod
    def _quiet_hours_window(cls, value: str) -> str:
        from shared.quiet_hours import parse_window

        parse_window(value)  # fail loudly at start, not on the first broadcast
        return value

    @field_validator("numeric_fallback_sender")
    @classmethod
    def _fallback_numeric(cls, value: str) -> str:
        if value and not _E164.match(value):
            raise ValueError("must be an E.164 number such as +14155550100")
        return value

    # CSV of per-country SMS/MMS prices for quotes (format: shared/data/prices.csv, the
    # shipped default, dated); unset: that default.
    price_table: str | None = None
    # Answers to keyword replies (shared/keywords.py), sent once each from the number that
    # was texted; `{service}` becomes SERVICE_NAME; empty: no answer. Carriers (CTIA) expect
    # STOP confirmed and HELP answered with who is texting and how to stop.
    service_name: str = Field("bulksms", min_length=1, max_length=40)
    stop_reply: str = Field(
        "{service}: You are unsubscribed and will receive no more messages. "
        "Reply START to resubscribe.",
        max_length=1600,
    )
    start_reply: str = Field(
        "{service}: You are resubscribed and will receive messages again. "
        "Reply STOP to unsubscribe.",
        max_length=1600,
    )
    help_reply: str = Field(
        "{service}: Reply STOP to unsubscribe, START to resubscribe. "
        "Msg & data rates may apply.",
        max_length=1600,
    )

    flower_user: str = "admin"
    flower_password: SecretStr = SecretStr("")
    public_base_url: str | None = None
    # Plivo's V2 signature covers the URL and nonce but not the form fields: one leaked header
    # pair can be replayed with any From/Text. V3 only, unless an account still needs V2.
    plivo_accept_v2_signatures: bool = False
    # Signs completion notices POSTed to a broadcast's callback_url.
    callback_secret: SecretStr = SecretStr("")
    log_level: str = "INFO"
    # Bearer token Prometheus sends to GET /metrics; unset, /metrics answers 404: traffic,
    # error codes and queue depths are nobody's business by default.
    metrics_token: SecretStr = SecretStr("")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _api_keys_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("api_rate_limit", "auth_failure_limit")
    @classmethod
    def _request_limit(cls, value: str) -> str:
        try:
            parsed = parse_many(value)
        except ValueError:
            parsed = []
        if not parsed or any(item.amount < 1 for item in parsed):
            raise ValueError(f"{value!r} is not a request limit such as 20/second;600/minute")
        return value

    @field_validator("sender_mps", mode="before")
    @classmethod
    def _sender_mps_pairs(cls, value: object) -> object:
        # SENDER_MPS=+14155550000=1,MyBrand=10
        if isinstance(value, str):
            pairs = {}
            for item in _split_csv(value):
                sender, sep, mps = item.rpartition("=")
                if not sep or not sender:
                    raise ValueError(f"{item!r} is not SENDER=MPS")
                pairs[sender] = mps
            return pairs
        return value

    @field_validator("plivo_auth_id")
    @classmethod
    def _auth_id_shape(cls, value: str) -> str:
        if value and not _AUTH_ID.match(value):
            raise ValueError("must be 20 characters starting with MA or SA")
        return value

    @field_validator("plivo_sender")
    @classmethod
    def _sender_shape(cls, value: str) -> str:
        if value and not (_E164.match(value) or _ALPHANUMERIC_SENDER.match(value)):
            raise ValueError("must be an E.164 number (+14155550100) or 1-11 letters/digits")
        return value

    @field_validator("plivo_api_base_url", "sandbox_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _check_http_url("URL", value)

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return _check_http_url("URL", value) if value else None

    @field_validator("default_region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if not value:
            return None
        import phonenumbers

        region = value.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region code such as US or GB")
        return region

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis:// or rediss://")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return level

    @model_validator(mode="after")
    def _credentials_together(self) -> Settings:
        if bool(self.plivo_auth_id) != bool(self.plivo_auth_token.get_secret_value()):
            raise ValueError(
                "PLIVO_AUTH_ID and PLIVO_AUTH_TOKEN must be set together "
                "(leave both empty for sandbox mode)"
            )
        if not self.sandbox_mode and not self.api_keys:
            raise ValueError("API_KEYS must list at least one key when Plivo credentials are set")
        # Redis hands an unacknowledged task to another worker after the visibility
        # timeout; a countdown or backoff longer than that would run the task twice.
        for name in ("retry_backoff_max", "countdown_max"):
            if getattr(self, name) >= self.visibility_timeout:
                raise ValueError(f"{name.upper()} must be below VISIBILITY_TIMEOUT")
        if self.pacing_horizon > self.countdown_max:
            raise ValueError("PACING_HORIZON must not exceed COUNTDOWN_MAX")
        if self.pacing_lead > self.pacing_max_sleep:
            raise ValueError("PACING_LEAD must not exceed PACING_MAX_SLEEP")
        if self.lease_seconds <= self.plivo_timeout + self.pacing_max_sleep:
            raise ValueError("LEASE_SECONDS must exceed PLIVO_TIMEOUT + PACING_MAX_SLEEP")
        return self

    @property
    def sandbox_mode(self) -> bool:
        """No Plivo credentials: every send goes to the local sandbox instead of Plivo."""
        return not self.plivo_auth_id

    @property
    def plivo_credentials(self) -> tuple[str, str]:
        if self.sandbox_mode:
            return SANDBOX_AUTH_ID, SANDBOX_AUTH_TOKEN
        return self.plivo_auth_id, self.plivo_auth_token.get_secret_value()

    @property
    def plivo_base_url(self) -> str:
        return self.sandbox_url if self.sandbox_mode else self.plivo_api_base_url

    @property
    def default_sender(self) -> str:
        return self.plivo_sender or (SANDBOX_SENDER if self.sandbox_mode else "")

    @property
    def effective_api_keys(self) -> list[str]:
        return self.api_keys or ([SANDBOX_API_KEY] if self.sandbox_mode else [])

    @property
    def effective_sms_mps(self) -> float:
        if self.sms_mps is not None:
            return self.sms_mps
        return SANDBOX_DEFAULT_SMS_MPS if self.sandbox_mode else PLIVO_DEFAULT_SMS_MPS

    def batch_size_for(self, kind: str) -> int:
        return self.batch_size if kind == "sms" else self.mms_batch_size

    @property
    def effective_media_check(self) -> bool:
        return self.media_check if self.media_check is not None else not self.sandbox_mode

    @property
    def effective_callback_secret(self) -> str:
        secret = self.callback_secret.get_secret_value()
        return secret or (SANDBOX_CALLBACK_SECRET if self.sandbox_mode else "")

    @property
    def status_callback_url(self) -> str | None:
        if not self.public_base_url:
            return None
        return f"{self.public_base_url}/webhooks/plivo/status"


def describe_error(error: ValidationError) -> str:
    """Name every bad variable the way the operator wrote it (upper-case env names)."""
    lines = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]).upper() or "configuration"
        lines.append(f"{name}: {item['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning pydantic's error into a ConfigError that names the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(describe_error(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def main() -> int:
    """`python -m shared.config`: check the configuration before starting anything."""
    import sys

    try:
        settings = load_settings()
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    mode = "live Plivo account"
    if settings.sandbox_mode:
        mode = "SANDBOX MODE (no Plivo credentials; nothing reaches Plivo)"
    print(f"configuration ok: {mode}; database={settings.database_url.split('://')[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
