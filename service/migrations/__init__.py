"""Alembic migrations of the gateway's tables: ``upgrade_database(url)``.

Its own version table (``mcvae_service_version``) beside the workers' one, so the two
components keep separate histories in one database.
"""

from __future__ import annotations

from pathlib import Path

from workers.migrating import run_upgrade

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "mcvae_service_version"
_ADVISORY_LOCK = 0x6D637667  # "mcvg": not the workers' lock id, so the two may run together


def upgrade_database(url: str, revision: str = "head") -> None:
    """Bring the gateway's tables at ``url`` to ``revision``; several processes may race
    (uvicorn workers starting together): a lock serialises them."""
    run_upgrade(HERE, url, _ADVISORY_LOCK, "service-migrate", revision)
