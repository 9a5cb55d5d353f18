"""owner: who created a session (names unique per owner), and refused connections

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "owner", sqlmodel.sql.sqltypes.AutoString(), server_default="", nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("connections_refused", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.drop_index(batch_op.f("ix_sessions_name"))
        batch_op.create_unique_constraint(batch_op.f("uq_sessions_owner_name"), ["owner", "name"])
    with op.batch_alter_table("port_mappings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("connections_refused", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("port_mappings", schema=None) as batch_op:
        batch_op.drop_column("connections_refused")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_sessions_owner_name"), type_="unique")
        batch_op.create_index(batch_op.f("ix_sessions_name"), ["name"], unique=True)
        batch_op.drop_column("connections_refused")
        batch_op.drop_column("owner")
