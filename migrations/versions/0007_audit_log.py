"""append-only audit log (batched writer, hash chain)

AuditEvents leave the generic resource tables for ``audit_log``: one row per event, with
columns for what auditors search, the BALP JSON, and seal columns for the hash chain
(NULL until the sealer links the row). Existing AuditEvents are moved (their resource,
version and index rows are removed); the downgrade moves them back.

The column extraction is written out here rather than imported from the application, so
that this migration keeps meaning the same thing when the application changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:30:00
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

AUDIT = "AuditEvent"
INDEX_TABLES = ("idx_string", "idx_token", "idx_reference", "idx_date")


def _table() -> sa.Table:
    return sa.table(
        "audit_log",
        sa.column("event_id", sa.String()),
        sa.column("recorded", sa.DateTime(timezone=True)),
        sa.column("type_code", sa.String()),
        sa.column("subtype", sa.String()),
        sa.column("action", sa.String()),
        sa.column("outcome", sa.String()),
        sa.column("agent_user", sa.String()),
        sa.column("agent_ref", sa.String()),
        sa.column("client_id", sa.String()),
        sa.column("address", sa.String()),
        sa.column("patient_ref", sa.String()),
        sa.column("entity_ref", sa.String()),
        sa.column("purpose_of_use", sa.String()),
        sa.column("request_id", sa.String()),
        sa.column("content", sa.LargeBinary()),
    )


def _columns(event_id: str, last_updated: datetime, content: bytes) -> dict[str, Any]:
    """The searchable columns of one stored AuditEvent (the same reading as fhirserver.core.audit_log)."""
    ev = json.loads(content)
    try:
        recorded = datetime.fromisoformat(ev["recorded"])
    except (KeyError, TypeError, ValueError):
        recorded = last_updated
    if recorded.tzinfo is None:
        recorded = recorded.replace(tzinfo=UTC)
    out: dict[str, Any] = {
        "event_id": event_id,
        "recorded": recorded,
        "type_code": (ev.get("type") or {}).get("code") or "unknown",
        "subtype": ((ev.get("subtype") or [{}])[0] or {}).get("code"),
        "action": (ev.get("action") or "E")[:1],
        "outcome": (ev.get("outcome") or "0")[:1],
        "agent_user": None,
        "agent_ref": None,
        "client_id": None,
        "address": None,
        "patient_ref": None,
        "entity_ref": None,
        "purpose_of_use": None,
        "request_id": None,
        "content": content,
    }
    for agent in ev.get("agent") or []:
        who = agent.get("who") or {}
        ident = who.get("identifier") or {}
        if ident.get("system") == "urn:fhirserver:user":
            out["agent_user"] = ident.get("value")
            out["agent_ref"] = who.get("reference")
            for pou in agent.get("purposeOfUse") or []:
                out["purpose_of_use"] = ((pou.get("coding") or [{}])[0]).get("code")
        elif ident.get("system") == "urn:fhirserver:client":
            out["client_id"] = None if ident.get("value") == "none" else ident.get("value")
            out["address"] = (agent.get("network") or {}).get("address")
    for ent in ev.get("entity") or []:
        what = ent.get("what") or {}
        code = (ent.get("role") or {}).get("code")
        if code == "1" and what.get("reference"):
            out["patient_ref"] = what["reference"]
        elif code == "4" and what.get("reference"):
            out["entity_ref"] = what["reference"]
        elif (what.get("identifier") or {}).get("system") == "urn:fhirserver:request-id":
            out["request_id"] = what["identifier"].get("value")
    return out


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("recorded", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type_code", sa.String(length=64), nullable=False),
        sa.Column("subtype", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=1), nullable=False),
        sa.Column("outcome", sa.String(length=1), nullable=False),
        sa.Column("agent_user", sa.String(length=64), nullable=True),
        sa.Column("agent_ref", sa.String(length=129), nullable=True),
        sa.Column("client_id", sa.String(length=255), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("patient_ref", sa.String(length=129), nullable=True),
        sa.Column("entity_ref", sa.String(length=129), nullable=True),
        sa.Column("purpose_of_use", sa.String(length=32), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("seal_seq", sa.BigInteger(), nullable=True),
        sa.Column("prev_hash", sa.String(length=64), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_log_event_id")),
        sa.UniqueConstraint("seal_seq", name=op.f("uq_audit_log_seal_seq")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_recorded", ["recorded"], unique=False)
        batch_op.create_index("ix_audit_log_patient", ["patient_ref", "recorded"], unique=False)
        batch_op.create_index("ix_audit_log_agent", ["agent_ref", "recorded"], unique=False)
        batch_op.create_index("ix_audit_log_agent_user", ["agent_user", "recorded"], unique=False)
        batch_op.create_index("ix_audit_log_entity", ["entity_ref", "recorded"], unique=False)
        batch_op.create_index("ix_audit_log_unsealed", ["seal_seq", "id"], unique=False)

    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT res_id, last_updated, content FROM resource "
            "WHERE res_type = :t AND content IS NOT NULL ORDER BY last_updated, res_id"
        ),
        {"t": AUDIT},
    ).all()
    moved = [_columns(r[0], r[1], bytes(r[2])) for r in rows]
    if moved:
        bind.execute(_table().insert(), moved)
    for name in (*INDEX_TABLES, "resource_version", "resource"):
        bind.execute(sa.text(f"DELETE FROM {name} WHERE res_type = :t"), {"t": AUDIT})  # noqa: S608 (fixed names)


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT event_id, recorded, outcome, patient_ref, content FROM audit_log")).all()
    resource = sa.table(
        "resource",
        *(sa.column(c) for c in ("res_type", "res_id", "version_id", "last_updated", "deleted", "content", "key_id")),
    )
    version = sa.table(
        "resource_version",
        *(
            sa.column(c)
            for c in ("res_type", "res_id", "version_id", "last_updated", "deleted", "method", "content", "key_id")
        ),
    )
    idx_date = sa.table("idx_date", *(sa.column(c) for c in ("res_type", "res_id", "param", "low", "high")))
    idx_token = sa.table("idx_token", *(sa.column(c) for c in ("res_type", "res_id", "param", "system", "code")))
    idx_ref = sa.table(
        "idx_reference", *(sa.column(c) for c in ("res_type", "res_id", "param", "target_type", "target_id"))
    )
    for event_id, recorded, outcome, patient_ref, content in rows:
        base = {"res_type": AUDIT, "res_id": event_id, "version_id": 1, "last_updated": recorded, "deleted": False}
        bind.execute(resource.insert(), {**base, "content": bytes(content), "key_id": None})
        bind.execute(version.insert(), {**base, "method": "POST", "content": bytes(content), "key_id": None})
        bind.execute(
            idx_date.insert(),
            {"res_type": AUDIT, "res_id": event_id, "param": "date", "low": recorded, "high": recorded},
        )
        bind.execute(
            idx_token.insert(),
            {"res_type": AUDIT, "res_id": event_id, "param": "outcome", "system": None, "code": outcome},
        )
        if patient_ref and "/" in patient_ref:
            ptype, pid = patient_ref.split("/", 1)
            bind.execute(
                idx_ref.insert(),
                {"res_type": AUDIT, "res_id": event_id, "param": "patient", "target_type": ptype, "target_id": pid},
            )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_unsealed")
        batch_op.drop_index("ix_audit_log_entity")
        batch_op.drop_index("ix_audit_log_agent_user")
        batch_op.drop_index("ix_audit_log_agent")
        batch_op.drop_index("ix_audit_log_patient")
        batch_op.drop_index("ix_audit_log_recorded")
    op.drop_table("audit_log")
