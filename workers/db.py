"""The job database: one SQLAlchemy engine per URL per process, sessions, and its schema.

SQLite (the default) and PostgreSQL (deployment) are both first-class. The schema is brought
up to date by Alembic the first time a process opens a database, so a fresh data directory or
a new PostgreSQL database needs no manual step.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from .migrating import prepare_sqlite_file
from .migrations import upgrade_database
from .settings import get_settings, on_reset

_lock = threading.Lock()
_engines: dict[str, tuple[Engine, sessionmaker]] = {}
_migrated: set[str] = set()  # survives dispose_engines: a forked child need not migrate again


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers (the API, the gateway) run beside a writing worker; busy_timeout makes
    # concurrent writers wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _create(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # pre_ping: a worker that has been idle for hours finds its pooled connections dead.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def engine(url: str | None = None) -> Engine:
    return _open(url)[0]


def _open(url: str | None) -> tuple[Engine, sessionmaker]:
    url = url or get_settings().database
    with _lock:
        if url not in _engines:
            database = url.split("///", 1)[-1] if url.startswith("sqlite") else ""
            if database and database != ":memory:":
                prepare_sqlite_file(database)  # 0640, and 0750 for a new folder
            if url not in _migrated:
                upgrade_database(url)
                _migrated.add(url)
            eng = _create(url)
            _engines[url] = (eng, sessionmaker(eng, expire_on_commit=False))
        return _engines[url]


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A session in a transaction: committed on success, rolled back on error."""
    factory = _open(url)[1]
    with factory() as s, s.begin():
        yield s


def dispose_engines(close: bool = True) -> None:
    """Forget every engine. In a forked child pass ``close=False``: the pooled connections
    belong to the parent, and closing them here would close the parent's sockets."""
    with _lock:
        for eng, _ in _engines.values():
            eng.dispose(close=close)
        _engines.clear()


on_reset(dispose_engines)  # reset_settings(): the next session opens the database it names
