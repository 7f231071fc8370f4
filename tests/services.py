"""Real Redis and PostgreSQL servers for the test suite, each in a temporary directory.

`redis_server(tmp_dir)` and `postgres_server(tmp_dir)` are context managers that yield a URL
and stop the server (and delete its files) on exit. Set TEST_REDIS_URL or TEST_DATABASE_URL
to use a server you run yourself instead. `python tests/services.py` starts and stops both,
as a quick check of a machine.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
DATABASE_NAME = "bulksms_test"
START_TIMEOUT = 30.0
# free_port() hands back a port that another process may take before the server binds it.
START_ATTEMPTS = 3
INSTALL_HINT = "install it (Debian: apt-get install {package}) or run `make test` as root"


class ServiceUnavailable(RuntimeError):
    """A test server could not be found or started; the message says what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join(text[-lines:])


def _redis_answers(port: int) -> bool:
    # A raw PING rather than redis-py: a server still loading answers -LOADING, not +PONG.
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_for_redis(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once it answers; False if it exited (port taken, say) or took too long."""
    deadline = time.monotonic() + START_TIMEOUT
    while not _redis_answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server(tmp_dir: Path) -> Iterator[str]:
    """Yield the URL of a throwaway redis-server (no persistence) listening on 127.0.0.1."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(
            "redis-server not found on PATH: " + INSTALL_HINT.format(package="redis-server")
        )
    data_dir = Path(tmp_dir) / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    for _attempt in range(START_ATTEMPTS):
        port = free_port()
        argv = [
            binary,
            "--bind", HOST,
            "--port", str(port),
            "--dir", str(data_dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(log_path),
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            if _wait_for_redis(process, port):
                yield f"redis://{HOST}:{port}/0"
                return
        finally:
            _stop(process)
    raise ServiceUnavailable(f"redis-server did not start on {HOST}; {_log_tail(log_path)}")


def _postgres_bin_dir() -> Path:
    """The directory holding initdb, pg_ctl and postgres (Debian keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path:
        # Resolve symlinks so pg_ctl and createdb come from the same installation.
        candidates = [Path(on_path).resolve().parent]
    else:
        versions = glob.glob("/usr/lib/postgresql/*/bin")
        # Newest major version first: "16" must sort above "9.6".
        candidates = [
            Path(path)
            for path in sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p)])
        ][::-1]
    for candidate in candidates:
        if all((candidate / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise ServiceUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        "/usr/lib/postgresql/*/bin: " + INSTALL_HINT.format(package="postgresql")
    )


@contextmanager
def _postgres_home(tmp_dir: Path) -> Iterator[tuple[Path, list[str]]]:
    """A directory for the cluster and the command prefix to run server tools with.

    initdb refuses to run as root, so as root the server runs as the `postgres` user, in a
    fresh world-traversable directory: pytest's own tmp dirs are mode 700 and owned by root.
    """
    if os.geteuid() != 0:
        home = Path(tmp_dir) / "postgres"
        home.mkdir(parents=True, exist_ok=True)
        yield home, []
        return
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceUnavailable(
            "running as root but there is no `postgres` user to run PostgreSQL as: "
            + INSTALL_HINT.format(package="postgresql")
        ) from None
    home = Path(tempfile.mkdtemp(prefix="bulksms-pg-"))
    try:
        home.chmod(0o755)
        os.chown(home, user.pw_uid, user.pw_gid)
        yield home, ["runuser", "-u", "postgres", "--"]
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _run(argv: list[str], cwd: Path, what: str, log_path: Path | None = None) -> None:
    result = subprocess.run(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip()
        tail = f"\n{_log_tail(log_path)}" if log_path else ""
        raise ServiceUnavailable(f"{what} failed ({result.returncode}): {detail}{tail}")


@contextmanager
def postgres_server(tmp_dir: Path) -> Iterator[str]:
    """Yield the URL of a throwaway PostgreSQL cluster with a `bulksms_test` database."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    bin_dir = _postgres_bin_dir()
    with _postgres_home(tmp_dir) as (home, as_owner):
        data_dir = home / "data"
        log_path = home / "postgres.log"
        # The cwd matters: initdb and postgres fail if they cannot stat their working directory.
        _run(
            as_owner + [
                str(bin_dir / "initdb"),
                "--pgdata", str(data_dir),
                "--username", "postgres",
                "--auth", "trust",
                "--encoding", "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            cwd=home,
            what="initdb",
        )  # fmt: skip
        pg_ctl = as_owner + [str(bin_dir / "pg_ctl"), "--pgdata", str(data_dir)]
        for _attempt in range(START_ATTEMPTS):
            port = free_port()
            # Durability is worthless for a test database; fsync=off makes it several times faster.
            options = (
                f"-c listen_addresses={HOST} -c port={port} -c unix_socket_directories={home} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            started = subprocess.run(
                pg_ctl + ["--log", str(log_path), "--options", options, "--wait",
                          "--timeout", str(int(START_TIMEOUT)), "start"],
                cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            )  # fmt: skip
            if started.returncode == 0:
                break
        else:
            raise ServiceUnavailable(
                f"PostgreSQL did not start on {HOST}: {started.stderr.strip()}\n"
                f"{_log_tail(log_path)}"
            )
        try:
            _run(
                [str(bin_dir / "createdb"), "--host", HOST, "--port", str(port),
                 "--username", "postgres", DATABASE_NAME],
                cwd=home, what="createdb", log_path=log_path,
            )  # fmt: skip
            yield f"postgresql://postgres@{HOST}:{port}/{DATABASE_NAME}"
        finally:
            # Immediate: no checkpoint to wait for, the cluster is deleted right after.
            subprocess.run(
                pg_ctl + ["--mode", "immediate", "--wait", "stop"],
                cwd=home, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
            )  # fmt: skip


def _check_sql(database_url: str) -> None:
    try:
        import psycopg2
    except ImportError:  # outside the project's venv: a TCP connect is proof enough
        socket.create_connection((HOST, int(database_url.split(":")[2].split("/")[0]))).close()
        return
    with psycopg2.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.execute("select current_database()")
        assert cursor.fetchone() == (DATABASE_NAME,)
    conn.close()


def _smoke_check() -> None:
    """Start both servers, talk to each over TCP, stop them and check nothing is left."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        with redis_server(Path(tmp)) as redis_url:
            port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
            assert _redis_answers(port), redis_url
            print(f"redis ok: {redis_url} ({time.monotonic() - started:.1f}s)")
        assert not _redis_answers(port), "redis-server still answers after stop"
        started = time.monotonic()
        with postgres_server(Path(tmp)) as database_url:
            port = int(database_url.rsplit(":", 1)[1].split("/")[0])
            _check_sql(database_url)
            print(f"postgres ok: {database_url} ({time.monotonic() - started:.1f}s)")
        try:
            socket.create_connection((HOST, port), timeout=2).close()
        except OSError:
            print("both stopped")
        else:
            raise AssertionError("PostgreSQL still listens after stop")


if __name__ == "__main__":
    _smoke_check()
