"""Sessions on the deployment's database (the workers' engine), with the gateway's tables.

The first session per database URL runs the gateway's migrations; after that it is the
workers' ``db.session`` (one engine and pool per process for jobs and gateway tables alike).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from workers import db as workers_db
from workers.settings import get_settings

from .migrations import upgrade_database

_lock = threading.Lock()
_ready: set[str] = set()


def ensure_schema(url: str | None = None) -> str:
    url = url or get_settings().database
    if url not in _ready:
        with _lock:
            if url not in _ready:
                workers_db.engine(url)  # the job tables first (creates the SQLite file too)
                upgrade_database(url)
                _ready.add(url)
    return url


@contextmanager
def session() -> Iterator[Session]:
    """A session in a transaction: committed on success, rolled back on error."""
    url = ensure_schema()
    with workers_db.session(url) as s:
        yield s
