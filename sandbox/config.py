"""Settings of the sandbox: the credentials it accepts and which numbers it calls invalid."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEFAULT_AUTH_ID = "MASANDBOX00000000000"
DEFAULT_AUTH_TOKEN = "sandbox-auth-token"


@dataclass
class SandboxConfig:
    # The SDK refuses auth ids that are not 20 characters starting with MA/SA, so the default
    # has that shape.
    auth_id: str = DEFAULT_AUTH_ID
    auth_token: str = DEFAULT_AUTH_TOKEN
    invalid_prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.invalid_prefixes = normalize_prefixes(self.invalid_prefixes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxConfig:
        env = os.environ if environ is None else environ
        return cls(
            auth_id=env.get("SANDBOX_AUTH_ID") or DEFAULT_AUTH_ID,
            auth_token=env.get("SANDBOX_AUTH_TOKEN") or DEFAULT_AUTH_TOKEN,
            invalid_prefixes=env.get("SANDBOX_INVALID_PREFIXES", "").split(","),
        )

    def public(self) -> dict:
        """The config as shown over HTTP: the control endpoints have no auth, so no token."""
        return {"auth_id": self.auth_id, "invalid_prefixes": list(self.invalid_prefixes)}


def normalize_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Digit prefixes without '+' or blanks; raises ValueError on anything else."""
    if isinstance(prefixes, str):
        raise ValueError("invalid_prefixes must be a list of digit strings")
    cleaned = []
    for prefix in prefixes:
        if not isinstance(prefix, str):
            raise ValueError(f"invalid prefix {prefix!r}: must be a string of digits")
        digits = prefix.strip().removeprefix("+")
        if not digits:
            continue
        if not digits.isdecimal() or not digits.isascii():
            raise ValueError(f"invalid prefix {prefix!r}: must be a string of digits")
        cleaned.append(digits)
    return cleaned
