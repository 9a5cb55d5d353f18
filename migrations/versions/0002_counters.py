"""counters: traffic counters per session and per port mapping, and re-dials

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COUNTERS = [
    ("connections_total", sa.Integer()),
    ("connection_errors", sa.Integer()),
    ("bytes_in", sa.BigInteger()),
    ("bytes_out", sa.BigInteger()),
]


def upgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        for name, type_ in [*COUNTERS, ("reconnects", sa.Integer())]:
            batch_op.add_column(sa.Column(name, type_, server_default="0", nullable=False))
    with op.batch_alter_table("port_mappings", schema=None) as batch_op:
        for name, type_ in COUNTERS:
            batch_op.add_column(sa.Column(name, type_, server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("port_mappings", schema=None) as batch_op:
        for name, _ in reversed(COUNTERS):
            batch_op.drop_column(name)
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        for name, _ in reversed([*COUNTERS, ("reconnects", sa.Integer())]):
            batch_op.drop_column(name)
