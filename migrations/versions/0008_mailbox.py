"""mailbox rows (message, recipient user)

One row per (WebMail message, user who receives it) with its sent time and read state,
for the inbox page and the unread count (docs/webmail-profile.md, "Mailbox"). The
upgrade backfills the rows of existing messages with plain SQL (a migration must not
depend on today's application code): the same rule as ``fhirserver.webmail.mailbox``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CATEGORY_SYSTEM = "http://fhir-webmail.example/CodeSystem/communication-category"
CATEGORY_CODE = "webmail"


def _backfill() -> None:
    conn = op.get_bind()
    messages = conn.execute(
        sa.text(
            "SELECT r.res_id, r.deleted FROM resource r WHERE r.res_type = 'Communication'"
            " AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_type = 'Communication' AND t.res_id = r.res_id"
            " AND t.param = 'category' AND t.system = :system AND t.code = :code)"
            " AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_type = 'Communication' AND t.res_id = r.res_id"
            " AND t.param = 'status' AND t.code = 'completed')"
        ),
        {"system": CATEGORY_SYSTEM, "code": CATEGORY_CODE},
    ).all()
    if not messages:
        return
    deleted = {m: bool(d) for m, d in messages}
    sent = {
        m: high
        for m, high in conn.execute(
            sa.text(
                "SELECT res_id, MAX(high) FROM idx_date WHERE res_type = 'Communication' AND param = 'sent'"
                " GROUP BY res_id"
            )
        ).all()
    }
    recipients: dict[str, set[str]] = {}
    for m, ttype, tid in conn.execute(
        sa.text(
            "SELECT res_id, target_type, target_id FROM idx_reference"
            " WHERE res_type = 'Communication' AND param = 'recipient'"
        )
    ).all():
        recipients.setdefault(m, set()).add(f"{ttype}/{tid}")
    users: dict[str, set[str]] = {}
    for uid, ref in conn.execute(sa.text("SELECT id, fhir_user FROM user_account WHERE fhir_user IS NOT NULL")).all():
        users.setdefault(ref, set()).add(uid)
    for uid, ref in conn.execute(
        sa.text(
            "SELECT s.user_id, s.practitioner_ref FROM staff_assignment s"
            " JOIN user_account u ON u.id = s.user_id WHERE u.fhir_user IS NULL"
        )
    ).all():
        users.setdefault(ref, set()).add(uid)
    reads = {
        (m, u): at
        for m, u, at in conn.execute(sa.text("SELECT communication_id, user_id, read_at FROM webmail_read_state")).all()
    }
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for m in deleted:
        if m not in sent:
            continue
        for ref in sorted(recipients.get(m, ())):
            for uid in sorted(users.get(ref, ())):
                if (m, uid) not in rows:
                    rows[(m, uid)] = {
                        "message_id": m,
                        "user_id": uid,
                        "recipient_ref": ref,
                        "sent": sent[m],
                        "read": (m, uid) in reads,
                        "read_at": reads.get((m, uid)),
                        "deleted": deleted[m],
                    }
    if rows:
        table = sa.table(
            "mailbox",
            *(sa.column(c) for c in ("message_id", "user_id", "recipient_ref", "sent", "read", "read_at", "deleted")),
        )
        conn.execute(table.insert(), list(rows.values()))


def upgrade() -> None:
    op.create_table(
        "mailbox",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("recipient_ref", sa.String(length=129), nullable=False),
        sa.Column("sent", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read", sa.Boolean(), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "user_id", name=op.f("pk_mailbox")),
    )
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.create_index("ix_mailbox_user_unread", ["user_id", "read", "deleted", "sent"], unique=False)
        batch_op.create_index("ix_mailbox_user_sent", ["user_id", "sent", "message_id"], unique=False)
    _backfill()


def downgrade() -> None:
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.drop_index("ix_mailbox_user_sent")
        batch_op.drop_index("ix_mailbox_user_unread")
    op.drop_table("mailbox")
