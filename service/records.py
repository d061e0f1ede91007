"""The gateway's own tables, beside the workers' job tables in the same database.

``api_keys``: one row per key, holding only the sha256 of the token. ``gateway_resources``:
which lab owns each dataset and model (and each augmentation, until its models are known).
Job ownership stays in the workers' job records; a resource points at the job that makes it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workers.records import UTCDateTime, utcnow  # noqa: F401  (re-exported for callers)

RESOURCE_KINDS = ("dataset", "model", "augmentation")


class Base(DeclarativeBase):
    pass


class ApiKeyRecord(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the token
    lab: Mapped[str] = mapped_column(String(64), index=True)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole token
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)


class ResourceRecord(Base):
    __tablename__ = "gateway_resources"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # artifact id (or augmentation-<job>)
    lab: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[str] = mapped_column(String(36), index=True)  # the job that makes it
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    label: Mapped[str | None] = mapped_column(String(128), default=None)  # a model's class
    dataset: Mapped[str | None] = mapped_column(String(200), default=None)  # a model's data
    upload: Mapped[str | None] = mapped_column(String(200), default=None)  # removed after ingest
    # Something is left to do when its job ends: remove the upload, register augment models.
    pending: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), default=None)

    __table_args__ = (Index("ix_gateway_resources_lab_kind", "lab", "kind", "created_at"),)
