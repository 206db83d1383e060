"""A fresh PostgreSQL database per test or benchmark on the server that DAGSTER_PG_* point at (see
scripts/postgres.sh), so that runs of one never show up in another."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def _connect(db_name: str):
    import psycopg2

    env = os.environ
    connection = psycopg2.connect(
        host=env["DAGSTER_PG_HOST"], port=int(env["DAGSTER_PG_PORT"]), user=env["DAGSTER_PG_USERNAME"],
        password=env["DAGSTER_PG_PASSWORD"], dbname=db_name,
    )
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    return connection


@contextmanager
def fresh_database() -> Iterator[str]:
    """The name of a new, empty database, dropped afterwards."""
    name = f"isles_test_{uuid.uuid4().hex[:12]}"
    admin = _connect(os.environ["DAGSTER_PG_DB"])
    try:
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        try:
            yield name
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()
