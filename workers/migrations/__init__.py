"""Alembic migrations of the job database, runnable from code: ``upgrade_database(url)``.

The version table is ``mcvae_workers_version`` (not Alembic's default) so another component
can keep its own migration history in the same database.
"""

from __future__ import annotations

from pathlib import Path

from workers.migrating import run_upgrade

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "mcvae_workers_version"
_ADVISORY_LOCK = 0x6D637661  # "mcva": one lock id for this schema on a PostgreSQL server


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the job database at ``url`` to ``revision``; safe when several processes race.

    Workers, the gateway and the CLI all call this on first use, so concurrent starts must not
    both try to create the tables: a PostgreSQL advisory lock (or a file lock for SQLite)
    serialises them, and the second finds the schema already current.
    """
    run_upgrade(HERE, url, _ADVISORY_LOCK, "migrate", revision)
