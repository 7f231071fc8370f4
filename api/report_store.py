"""Delivery reports are committed to the database before Plivo gets its 200, by a group commit.

One INSERT and commit per callback costs a round trip and a commit each, more than the rest
of the callback together: at thousands a second the database would be the limit. So the
request threads of a process share their writes. A thread that finds no write in progress
becomes the writer: it waits (at most MAX_WAIT) for the callbacks this process is already
handling to queue their reports too, then writes everything queued in one multi-row
`INSERT ... ON CONFLICT (nonce) DO NOTHING RETURNING nonce` (one statement, one commit),
and wakes each of the others with its own outcome. Those that queued during the write are
the next group, written by the first of them. Groups thus grow with the load by
themselves, a lone callback waits for nobody, and no thread of our own runs in the
server's processes. A nonce the table already holds is a replay. The applier
(workers/delivery_reports.py) takes it from there."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.db import SQLITE_CHUNK, chunked, get_engine
from shared.logs import log_event
from shared.models import DeliveryReport, utcnow

log = logging.getLogger(__name__)

STORED = "stored"  # committed: answer 200
REPLAYED = "replayed"  # this nonce was received before: 403
UNAVAILABLE = "unavailable"  # not committed (database down, too slow): 503, Plivo retries

# A group is one statement; more than this wait for the next one.
MAX_ROWS = 500
# How long a writer waits for callbacks that are still being checked to queue theirs. Each
# statement costs the database far more than the rows in it (a round trip and a commit are
# most of a small group's cost), so two callbacks in one group cost little more than one.
MAX_WAIT = 0.002
# A waiting request gives up (503) well before Plivo's own 8 s, so that Plivo's retry is
# the one that counts.
WAIT_TIMEOUT = 5.0
# A connection unused this long is checked (pinged) before the next write: the database
# may have restarted meanwhile. Under load, none is: a group costs one round trip.
IDLE_CHECK = 1.0

# One fixed statement whatever the group size (arrays, not a VALUES list per size),
# prepared once per connection: planning it again for each group cost a third of a write.
_PREPARED = "delivery_report_insert"
_PREPARE = (
    f"PREPARE {_PREPARED} (text[], text[], text[], timestamptz) AS "
    "INSERT INTO delivery_reports (nonce, message_uuid, params, received_at, due_at) "
    "SELECT v.nonce, v.message_uuid, CAST(v.params AS json), $4, $4 "
    "FROM unnest($1, $2, $3) AS v(nonce, message_uuid, params) "
    "ON CONFLICT (nonce) DO NOTHING RETURNING nonce"
)
_EXECUTE = f"EXECUTE {_PREPARED} (%(nonce)s, %(message_uuid)s, %(params)s, %(now)s)"


class Arrival:
    """A callback this process has started to handle: its report may soon queue."""

    __slots__ = ("queued",)

    def __init__(self) -> None:
        self.queued = False


@dataclass(eq=False)
class _Waiting:
    """One request's report, and the lock its thread sleeps on until its outcome is known
    (or until it is handed the next write)."""

    nonce: str
    message_uuid: str
    params: str
    done: threading.Lock = field(default_factory=threading.Lock)
    outcome: str = UNAVAILABLE
    writes: bool = False


def insert_reports(connection: Connection, rows: list[dict]) -> set[str]:
    """Insert `rows` (nonce, message_uuid, params as JSON text) in one statement per chunk;
    the nonces actually inserted (the others were in the table already)."""
    now = utcnow()
    if connection.dialect.name == "postgresql":
        columns = {key: [row[key] for row in rows] for key in ("nonce", "message_uuid", "params")}
        # The driver's own cursor: SQLAlchemy's result machinery cost as much as the rest
        # of a small group's write.
        cursor = connection.connection.cursor()
        try:
            # `info` lives as long as the database session, and so does a prepared statement.
            if not connection.info.get(_PREPARED):
                cursor.execute(_PREPARE)
                connection.info[_PREPARED] = True
            cursor.execute(_EXECUTE, {**columns, "now": now})
            return {nonce for (nonce,) in cursor.fetchall()}
        finally:
            cursor.close()
    table = DeliveryReport.__table__
    stored: set[str] = set()
    for chunk in chunked(rows, SQLITE_CHUNK // 5):
        values = [
            {**row, "params": json.loads(row["params"]), "received_at": now, "due_at": now}
            for row in chunk
        ]
        statement = (
            sqlite_insert(table)
            .values(values)
            .on_conflict_do_nothing(index_elements=["nonce"])
            .returning(table.c.nonce)
        )
        stored.update(connection.execute(statement).scalars())
    return stored


class ReportStore:
    """The group commit of one database in one process. It holds no thread and opens its
    connection on first use, in the serving process (granian forks its workers)."""

    def __init__(
        self,
        database_url: str,
        max_rows: int = MAX_ROWS,
        max_wait: float = MAX_WAIT,
        timeout: float = WAIT_TIMEOUT,
    ):
        self.database_url = database_url
        self.max_rows, self.max_wait, self.timeout = max_rows, max_wait, timeout
        self._connection: Connection | None = None
        self._reset()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._reset()
        # The engine's pool may hold the parent's connections (sockets the two processes
        # would share): the child gets a pool of its own, the parent's are left untouched.
        try:
            get_engine(self.database_url).dispose(close=False)
        except Exception as error:  # a bad URL: the first write will say so, with a 503
            log_event(log, "reports.fork_dispose_failed", error=type(error).__name__)

    def _reset(self) -> None:
        # Also run in a forked child: the parent's lock may have been held at the fork. Its
        # connection is the parent's socket: kept referenced, never used or closed here (a
        # close would end the parent's session).
        if self._connection is not None:
            _inherited.append(self._connection)
        self._connection = None
        self._last_used = 0.0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a report queued, or won't come
        self._coming = 0  # callbacks being handled whose report has not queued yet
        self._queue: list[_Waiting] = []
        self._writing = False  # a thread is writing a group; the others queue
        self.groups = 0  # commits made, for tests and benchmarks

    @contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Around the handling of one callback: a writer may wait for its report (pass the
        Arrival to `store`); if it never comes (a bad signature, say), nobody waits long."""
        arrival = Arrival()
        with self._lock:
            self._coming += 1
        try:
            yield arrival
        finally:
            if not arrival.queued:
                with self._lock:
                    self._coming -= 1
                    self._changed.notify_all()

    def store(
        self,
        nonce: str,
        message_uuid: str,
        params: dict[str, str],
        arrival: Arrival | None = None,
    ) -> str:
        """STORED once committed, REPLAYED for a nonce seen before, UNAVAILABLE if it could
        not be committed within `timeout`."""
        item = _Waiting(nonce, message_uuid, json.dumps(params, separators=(",", ":")))
        item.done.acquire()
        with self._lock:
            if arrival is not None and not arrival.queued:
                arrival.queued = True
                self._coming -= 1
            self._queue.append(item)
            self._changed.notify_all()
            item.writes = not self._writing
            self._writing = True
        if not item.writes and not item.done.acquire(timeout=self.timeout):
            with self._lock:
                if not item.writes:
                    if item in self._queue:  # not taken yet: it will never be written
                        self._queue.remove(item)
                    log_event(log, "reports.store_timeout", logging.WARNING, timeout=self.timeout)
                    return UNAVAILABLE
            # The next write was handed to us as we gave up: someone has to do it.
            item.done.acquire()
        if item.writes:
            self._write_next(item)
        return item.outcome

    def _write_next(self, writer: _Waiting) -> None:
        """Write the queued reports (this thread's first), then hand the next write to the
        first report that queued meanwhile, or end the writing."""
        with self._lock:
            deadline = time.monotonic() + self.max_wait
            while self._coming > 0 and len(self._queue) < self.max_rows:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    break
            group = self._queue[: self.max_rows]
            del self._queue[: self.max_rows]
        self._write(group)
        for item in group:
            if item is not writer:
                item.done.release()
        with self._lock:
            if self._queue:
                first = self._queue[0]
                first.writes = True
                first.done.release()
            else:
                self._writing = False

    def _write(self, group: list[_Waiting]) -> None:
        rows: dict[str, _Waiting] = {}
        for item in group:
            if item.nonce in rows:
                item.outcome = REPLAYED  # the same signed request twice in one group
            else:
                rows[item.nonce] = item
        started = time.monotonic()
        try:
            stored = self._insert(
                [
                    {"nonce": i.nonce, "message_uuid": i.message_uuid, "params": i.params}
                    for i in rows.values()
                ]
            )
            for nonce, item in rows.items():
                item.outcome = STORED if nonce in stored else REPLAYED
            self.groups += 1
        # Whatever went wrong, none of this group is known to be committed: every request
        # in it is told so (503, Plivo retries), and the next write takes a new connection.
        # (Had the commit happened after all, the retry is stored again: harmless.)
        except Exception as error:
            self._release(broken=True)
            for item in rows.values():
                item.outcome = UNAVAILABLE
            log_event(
                log,
                "reports.store_failed",
                logging.ERROR,
                error=type(error).__name__,
                reports=len(rows),
                seconds=round(time.monotonic() - started, 3),
            )

    def _insert(self, rows: list[dict]) -> set[str]:
        if self._connection is not None and time.monotonic() - self._last_used > IDLE_CHECK:
            self._release()  # back to the pool, which pings it on the way out again
        if self._connection is None:
            connection = get_engine(self.database_url).connect()
            if connection.dialect.name == "postgresql":
                # One statement is one transaction: no BEGIN round trip before it.
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
        connection = self._connection
        if connection.dialect.name == "postgresql":
            stored = insert_reports(connection, rows)  # autocommit: committed once it returns
        else:
            with connection.begin():
                stored = insert_reports(connection, rows)
        self._last_used = time.monotonic()
        return stored

    def _release(self, broken: bool = False) -> None:
        """Give the connection back to the pool, or drop it (after an error)."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            if broken:
                connection.invalidate()
            connection.close()
        except Exception as error:  # it is being thrown away; only say so
            log_event(log, "reports.connection_close_failed", error=type(error).__name__)


# Connections inherited across a fork: referenced so that they are never closed in the child.
_inherited: list[Connection] = []
_stores: dict[str, ReportStore] = {}
_stores_lock = threading.Lock()


def _new_stores_lock() -> None:
    global _stores_lock
    _stores_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_stores_lock)


def report_store(database_url: str) -> ReportStore:
    """The one ReportStore per database URL per process (however many apps share it)."""
    with _stores_lock:
        store = _stores.get(database_url)
        if store is None:
            store = _stores[database_url] = ReportStore(database_url)
        return store
