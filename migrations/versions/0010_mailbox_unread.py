"""mailbox unread counters

One row per user with the number of their unread, undeleted mailbox rows, written with the
rows it counts, so that ``$unread-count`` reads one row however many messages are unread
(docs/webmail-profile.md, "Mailbox"). The upgrade counts the existing rows with one plain
INSERT ... SELECT.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO mailbox_unread (user_id, unread)
SELECT user_id, COUNT(*) FROM mailbox WHERE NOT read AND NOT deleted GROUP BY user_id
"""


def upgrade() -> None:
    op.create_table(
        "mailbox_unread",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("unread", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_mailbox_unread")),
    )
    op.execute(sa.text(BACKFILL))


def downgrade() -> None:
    op.drop_table("mailbox_unread")
