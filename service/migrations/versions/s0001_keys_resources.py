"""API keys and resource ownership.

Revision ID: s0001
Revises:
Create Date: 2025-01-02
"""

import sqlalchemy as sa
from alembic import op

from workers.records import UTCDateTime

revision = "s0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("lab", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_api_keys_lab", "api_keys", ["lab"])
    op.create_table(
        "gateway_resources",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("lab", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("dataset", sa.String(200), nullable=True),
        sa.Column("upload", sa.String(200), nullable=True),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("deleted_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_gateway_resources_job_id", "gateway_resources", ["job_id"])
    op.create_index("ix_gateway_resources_lab_kind", "gateway_resources", ["lab", "kind", "created_at"])


def downgrade() -> None:
    op.drop_table("gateway_resources")
    op.drop_table("api_keys")
