"""The deployment files stay valid: docker-compose.yml parses, .env.example covers Settings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SERVICES = {
    "postgres",
    "redis",
    "migrate",
    "api",
    "worker",
    "worker-events",
    "beat",
    "flower",
    "sandbox",
}


@pytest.fixture
def compose(tmp_path: Path):
    """Run docker-compose on the project's file, with an empty .env in a scratch directory.

    The compose file names `.env` as a required env_file; pointing the project directory
    elsewhere keeps a developer's real .env out of the check (and out of any output).
    """
    binary = shutil.which("docker-compose")
    if binary is None:
        message = "docker-compose is not installed (Debian: apt-get install docker-compose)"
        if os.environ.get("CI"):
            pytest.fail(message + "; `make test` installs it when run as root")
        pytest.skip(message)
    (tmp_path / ".env").write_text("")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "-f", str(COMPOSE_FILE), "--project-directory", str(tmp_path), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    return run


def test_compose_file_is_valid(compose) -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_defines_every_service(compose) -> None:
    result = compose("config", "--services")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == SERVICES


def test_env_example_documents_every_setting() -> None:
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    settings = {name.upper() for name in Settings.model_fields}
    assert settings - documented == set(), "add these to .env.example"


def test_env_example_loads_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    # Copying .env.example to .env must give a working (sandbox mode) configuration.
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings(_env_file=ENV_EXAMPLE)
    assert settings.sandbox_mode
