"""Alembic: upgrade from an empty database gives exactly the models' schema, on both."""

from __future__ import annotations

import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from shared.db import get_engine
from shared.models import Base
from tests.conftest import ROOT, migrate


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        server.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return server.set(database=name).render_as_string(hide_password=False)


def test_upgrade_from_empty_matches_the_models(empty_database):
    migrate(empty_database)

    with get_engine(empty_database).connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    assert differences == []
    assert {"broadcasts", "batches", "recipients", "opt_outs", "alembic_version"} <= tables


def test_downgrade_to_base_and_upgrade_again(empty_database):
    migrate(empty_database)
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = empty_database
    config.attributes["configure_logger"] = False
    command.downgrade(config, "base")

    with get_engine(empty_database).connect() as connection:
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    migrate(empty_database)
    with get_engine(empty_database).connect() as connection:
        assert "recipients" in inspect(connection).get_table_names()


def test_0008_keeps_templates_and_makes_names_unique_per_key(empty_database):
    migrate(empty_database, "0007")
    insert = text(
        "INSERT INTO templates (id, name, text, fields, api_key_id, created_at, updated_at) "
        "VALUES (:id, :name, 'Hi', '{}', :key, '2026-01-01', '2026-01-01')"
    )
    engine = get_engine(empty_database)
    is_sqlite = engine.dialect.name == "sqlite"

    def row(name: str, key: str) -> dict:
        new = uuid.uuid4()
        return {"id": new.hex if is_sqlite else str(new), "name": name, "key": key}

    with engine.begin() as connection:
        connection.execute(insert, row("Welcome", "key-a"))
    migrate(empty_database)

    with engine.begin() as connection:
        connection.execute(insert, row("Welcome", "key-b"))  # another key: allowed now
        names = connection.execute(text("SELECT api_key_id, name FROM templates")).all()
    assert sorted(names) == [("key-a", "Welcome"), ("key-b", "Welcome")]
    with pytest.raises(IntegrityError), engine.begin() as connection:
        connection.execute(insert, row("Welcome", "key-a"))
