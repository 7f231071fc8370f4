"""Engines and sessions for PostgreSQL (production) and SQLite (the zero-setup default), and
the Redis connection pool (pacing, limits, the delivery-report stream)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import redis
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

# SQLite caps the number of bound parameters per statement (32766 on current builds).
SQLITE_CHUNK = 500


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """One engine per database URL per process (Celery prefork children build their own)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql://; we ship psycopg2
        # (and use its COPY for bulk intake).
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # The API and the workers write from several processes: wait for the lock
        # instead of failing with "database is locked".
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers (GET /v1/broadcasts) run while a worker writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def chunked(items: Sequence, size: int = SQLITE_CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ping(url: str) -> None:
    """Raise if the database cannot answer a trivial query."""
    with get_engine(url).connect() as connection:
        connection.execute(text("SELECT 1"))


@lru_cache(maxsize=8)
def redis_client(url: str) -> redis.Redis:
    """One connection pool per Redis URL per process."""
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
