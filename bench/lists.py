"""Contact-list import benchmark: a CSV of N rows POSTed to /v1/lists/{id}/contacts of the API
served by granian (as deployed), timed from the first byte sent to the answer, with the API
processes' peak memory.

    .venv/bin/python bench/lists.py [--rows 1000000] [--runs 3] [--only postgresql]

Each run imports the file into a new list (every number new), so each measures the whole
path: upload, CSV parsing, normalisation, COPY into a staging table, merge and upsert. Peak
RSS is VmHWM from /proc, reset before each run (clear_refs), minus the RSS just before it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# `python bench/lists.py` puts bench/ on sys.path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import requests  # noqa: E402
from harness import API_KEY, HOST, bench_run, bench_settings, wait_until  # noqa: E402

from tests import services  # noqa: E402
from tests.conftest import settings_env  # noqa: E402

HEADERS = {"X-API-Key": API_KEY}


def write_csv(path: Path, rows: int) -> int:
    """`rows` distinct numbers with two fields, written line by line."""
    with path.open("w") as out:
        out.write("phone,first_name,city\n")
        for i in range(rows):
            out.write(f"+1415{2_000_000 + i:07d},Name{i},City{i % 97}\n")
    return path.stat().st_size


def _processes(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def _peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def _reset_peak(pid: int) -> bool:
    """VmHWM back to the current RSS (Linux: `5` into clear_refs); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def import_once(base: str, csv_path: Path, api_pid: int, rows: int) -> tuple[float, int]:
    """(seconds, peak RSS growth in bytes) of one import into a new list."""
    created = requests.post(f"{base}/v1/lists", json={"name": "bench"}, headers=HEADERS)
    created.raise_for_status()
    list_id = created.json()["id"]
    processes = _processes(api_pid)
    reset = all(_reset_peak(p.pid) for p in processes)
    before = {p.pid: p.memory_info().rss if reset else _peak(p.pid) for p in processes}
    start = time.perf_counter()
    with csv_path.open("rb") as body:
        response = requests.post(
            f"{base}/v1/lists/{list_id}/contacts",
            data=body,
            headers={**HEADERS, "Content-Type": "text/csv"},
            timeout=1800,
        )
    elapsed = time.perf_counter() - start
    if response.status_code != 200 or response.json()["imported"] != rows:
        raise RuntimeError(f"import: {response.status_code} {response.text[:500]}")
    growth = max(_peak(p.pid) - before[p.pid] for p in processes)
    return elapsed, growth


def bench_database(kind: str, rows: int, runs: int, csv_path: Path) -> tuple[list, list]:
    with bench_run(f"lists-{kind}", timeout=3600) as run:
        database_url = run.database(kind)
        redis = run.redis()
        settings = bench_settings(
            database_url=database_url, redis_url=redis.url, log_level="WARNING"
        )
        port = services.free_port()
        argv = [
            sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", "1",
            "--blocking-threads", "2", "--host", HOST, "--port", str(port), "api.wsgi:app",
        ]  # fmt: skip
        api = run.spawn(argv, "granian.log", settings_env(settings))
        base = f"http://{HOST}:{port}"

        def healthy() -> bool:
            try:
                return requests.get(f"{base}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        wait_until(healthy, 60, "granian")
        times, growths = [], []
        for number in range(runs):
            elapsed, growth = import_once(base, csv_path, api.pid, rows)
            times.append(elapsed)
            growths.append(growth)
            print(
                f"  {kind} run {number + 1}: {elapsed:.1f}s, {rows / elapsed:,.0f} rows/s, "
                f"peak RSS +{growth / 2**20:.1f} MiB"
            )
        return times, growths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    args = parser.parse_args()
    kinds = [args.only] if args.only else ["postgresql", "sqlite"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-lists-csv-") as tmp:
        csv_path = Path(tmp) / "contacts.csv"
        size = write_csv(csv_path, args.rows)
        print(f"{args.rows:,} rows, {size / 1e6:.1f} MB")
        for kind in kinds:
            results[kind] = bench_database(kind, args.rows, args.runs, csv_path)
    print(f"\nCSV import of {args.rows:,} rows through granian (median of {args.runs})")
    print(f"{'database':<11} {'median s':>9} {'rows/s':>10} {'peak RSS growth':>16}")
    for kind, (times, growths) in results.items():
        median = statistics.median(times)
        print(
            f"{kind:<11} {median:>9.1f} {args.rows / median:>10,.0f} "
            f"{statistics.median(growths) / 2**20:>12.1f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
