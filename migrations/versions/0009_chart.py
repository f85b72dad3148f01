"""chart rows (message, subject)

One row per (Communication, subject reference) with the message's ``sent``, for a
patient's chart of messages, ``Communication?subject=...&_sort=-sent``
(docs/webmail-profile.md, "Chart"). The upgrade backfills the rows of existing messages
from their index rows with one plain INSERT ... SELECT (a migration must not depend on
today's application code): the same rule as ``fhirserver.webmail.chart``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO chart (message_id, subject_ref, has_sent, sent)
SELECT DISTINCT r.res_id, r.target_type || '/' || r.target_id, s.high IS NOT NULL, s.high
FROM idx_reference r
LEFT JOIN (
    SELECT res_id, MAX(high) AS high FROM idx_date
    WHERE res_type = 'Communication' AND param = 'sent' GROUP BY res_id
) s ON s.res_id = r.res_id
WHERE r.res_type = 'Communication' AND r.param = 'subject'
"""


def upgrade() -> None:
    op.create_table(
        "chart",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("subject_ref", sa.String(length=129), nullable=False),
        sa.Column("has_sent", sa.Boolean(), nullable=False),
        sa.Column("sent", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id", "subject_ref", name=op.f("pk_chart")),
    )
    with op.batch_alter_table("chart", schema=None) as batch_op:
        batch_op.create_index(
            "ix_chart_subject_sent", ["subject_ref", "has_sent", "sent", "message_id"], unique=False
        )
    op.execute(sa.text(BACKFILL))


def downgrade() -> None:
    with op.batch_alter_table("chart", schema=None) as batch_op:
        batch_op.drop_index("ix_chart_subject_sent")
    op.drop_table("chart")
