"""Running Alembic migrations from code, safely when several processes start at once.

Workers, the gateway and the CLI all migrate on first use, so concurrent starts must not both
try to create tables: a PostgreSQL advisory lock (or a file lock for SQLite) serialises them,
and the second finds the schema already current. Each component keeps its own version table
and lock id, so their histories live side by side in one database.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text


def alembic_config(script_location: Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# A SQLite job database holds every lab's job parameters and the API keys' digests: readable by
# the service's user and group only (SQLite gives its -wal/-shm files the same mode), in a folder
# made 0750 when it is new. See docs/OPERATIONS.md, Permissions.
DB_FILE_MODE, DB_DIR_MODE = 0o640, 0o750


def prepare_sqlite_file(database: str) -> None:
    path = Path(database).expanduser()
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=DB_DIR_MODE)
    path.touch(mode=DB_FILE_MODE, exist_ok=True)
    try:
        os.chmod(path, DB_FILE_MODE)  # also an older, wider file
    except PermissionError:
        pass  # another user's file: theirs to set


@contextlib.contextmanager
def _sqlite_file_lock(url: str, name: str):
    database = url.split("///", 1)[-1]
    if not database or database == ":memory:":
        yield
        return
    prepare_sqlite_file(database)  # before Alembic creates it with the umask's mode
    lock_path = Path(database).expanduser().with_suffix(f".{name}.lock")
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def run_upgrade(script_location: Path, url: str, lock_id: int, lock_name: str,
                revision: str = "head") -> None:
    """Bring the tables of one migration history at ``url`` to ``revision``."""
    cfg = alembic_config(script_location, url)
    if url.startswith("sqlite"):
        with _sqlite_file_lock(url, lock_name):
            command.upgrade(cfg, revision)
        return
    engine = create_engine(url)
    postgres = engine.dialect.name == "postgresql"
    try:
        with engine.connect() as conn:
            if postgres:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
                conn.commit()
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                if postgres:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                    conn.commit()
    finally:
        engine.dispose()
