"""break-glass grants

A provider's emergency access to a patient outside their care (``break_glass_grant``,
the reason encrypted) and every break-glass search, found or not, for the throttle
(``break_glass_attempt``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 13:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "break_glass_grant",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("practitioner_ref", sa.String(length=129), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_break_glass_grant")),
    )
    with op.batch_alter_table("break_glass_grant", schema=None) as batch_op:
        batch_op.create_index("ix_break_glass_grant_user", ["user_id", "expires_at"], unique=False)
        batch_op.create_index("ix_break_glass_grant_expires", ["expires_at"], unique=False)

    op.create_table(
        "break_glass_attempt",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matched", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_break_glass_attempt")),
    )
    with op.batch_alter_table("break_glass_attempt", schema=None) as batch_op:
        batch_op.create_index("ix_break_glass_attempt_user", ["user_id", "attempted_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("break_glass_attempt", schema=None) as batch_op:
        batch_op.drop_index("ix_break_glass_attempt_user")
    op.drop_table("break_glass_attempt")

    with op.batch_alter_table("break_glass_grant", schema=None) as batch_op:
        batch_op.drop_index("ix_break_glass_grant_expires")
        batch_op.drop_index("ix_break_glass_grant_user")
    op.drop_table("break_glass_grant")
