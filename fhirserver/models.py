"""Tables of the FHIR store, its search index, WebMail read state and the notification outbox.

Resources are stored as their JSON bytes (encrypted for Communication), current
version in ``resource`` and every version in ``resource_version``. Search never
parses stored JSON: it runs on the ``idx_*`` tables, written in the same
transaction as the resource. One table per kind of search value keeps the indexes
narrow and lets each kind have the SQL index that suits it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from fhirserver.db import Base

TYPE_LEN = 64
ID_LEN = 64


class ResourceRow(Base):
    """The current version of each resource (deleted ones stay, flagged, for history and 410)."""

    __tablename__ = "resource"
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, nullable=False)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # JSON bytes as served, or an AES-GCM envelope when key_id is set.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ResourceVersionRow(Base):
    """Every version ever written, including the current one and delete markers."""

    __tablename__ = "resource_version"
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), primary_key=True)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    method: Mapped[str] = mapped_column(String(8), nullable=False)
    content: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class IdxString(Base):
    """String search values, normalised (case and accents folded) for the default prefix match."""

    __tablename__ = "idx_string"
    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), nullable=False)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    param: Mapped[str] = mapped_column(String(64), nullable=False)
    value: Mapped[str] = mapped_column(String(255), nullable=False)
    exact: Mapped[str] = mapped_column(String(255), nullable=False)
    __table_args__ = (
        Index("ix_idx_string_lookup", "res_type", "param", "value"),
        Index("ix_idx_string_owner", "res_type", "res_id"),
    )


class IdxToken(Base):
    __tablename__ = "idx_token"
    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), nullable=False)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    param: Mapped[str] = mapped_column(String(64), nullable=False)
    system: Mapped[str | None] = mapped_column(String(255), nullable=True)
    code: Mapped[str] = mapped_column(String(255), nullable=False)
    __table_args__ = (
        Index("ix_idx_token_lookup", "res_type", "param", "code", "system"),
        Index("ix_idx_token_owner", "res_type", "res_id"),
    )


class IdxReference(Base):
    __tablename__ = "idx_reference"
    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), nullable=False)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    param: Mapped[str] = mapped_column(String(64), nullable=False)
    target_type: Mapped[str] = mapped_column(String(TYPE_LEN), nullable=False)
    target_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    __table_args__ = (
        Index("ix_idx_reference_lookup", "res_type", "param", "target_type", "target_id"),
        Index("ix_idx_reference_owner", "res_type", "res_id"),
    )


class IdxDate(Base):
    """Date search values as the [low, high] instant range the FHIR value covers (UTC)."""

    __tablename__ = "idx_date"
    pk: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    res_type: Mapped[str] = mapped_column(String(TYPE_LEN), nullable=False)
    res_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    param: Mapped[str] = mapped_column(String(64), nullable=False)
    low: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    high: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    __table_args__ = (
        Index("ix_idx_date_lookup", "res_type", "param", "low"),
        Index("ix_idx_date_owner", "res_type", "res_id"),
    )


class ReadState(Base):
    """Which user has read which WebMail message. Absence of a row means unread."""

    __tablename__ = "webmail_read_state"
    communication_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The reader's FHIR identity (Patient/x or Practitioner/y): the sender's "Read" turns on
    # once any user of a recipient has read the message.
    reader_ref: Mapped[str] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=False)
    read_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    __table_args__ = (Index("ix_read_state_reader", "reader_ref", "communication_id"),)


class OutboxRow(Base):
    """A notification to send, written in the same transaction as the change it announces."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    # What the notice is about: the Communication (webmail-notify), or the AuditEvent that
    # records an account change (password-reset). Never shown in the email.
    subject_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    recipient_ref: Mapped[str] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # When the worker expects to try again (set on a failed attempt, or when the sweep
    # re-enqueues): the sweep only picks up rows whose retry is overdue.
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    message_id: Mapped[str] = mapped_column(String(255), nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    __table_args__ = (
        UniqueConstraint("kind", "subject_id", "recipient_ref", name="uq_outbox_once"),
        Index("ix_outbox_status", "status", "created_at"),
    )


class BreakGlassGrant(Base):
    """A provider's emergency (break-glass) access to one patient outside their care, until ``expires_at``.

    ``fhirserver.core.access`` opens the patient's compartment for reading to ``user_id``
    while the row is live (not revoked, not expired). The reason may hold PHI: it is kept
    as an AES-GCM envelope (key id beside it, like Communication bodies) for the review.
    """

    __tablename__ = "break_glass_grant"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    practitioner_ref: Mapped[str] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=False)
    patient_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False)
    reason: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    key_id: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (
        Index("ix_break_glass_grant_user", "user_id", "expires_at"),
        Index("ix_break_glass_grant_expires", "expires_at"),
    )


class BreakGlassAttempt(Base):
    """One break-glass search, found or not: the throttle counts these (a miss says nothing else)."""

    __tablename__ = "break_glass_attempt"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), nullable=False)
    attempted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    matched: Mapped[bool] = mapped_column(Boolean, nullable=False)
    __table_args__ = (Index("ix_break_glass_attempt_user", "user_id", "attempted_at"),)


class MailboxRow(Base):
    """One WebMail message in one user's inbox: what the inbox page and the unread count read.

    Derived data (docs/webmail-profile.md, "Mailbox"): written in the message's transaction
    and on every read-state change, recomputed for a user when their identity or staff
    assignments change, and checked against the resources by ``fhirserver mailbox check``.
    The separate index tables cannot hold one composite (user, read, sent) index.
    """

    __tablename__ = "mailbox"
    message_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # The recipient through which this user gets the message (their own identity, or for
    # staff the provider they work for; the smallest when several match).
    recipient_ref: Mapped[str] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=False)
    # The message's ``sent`` as the search index sorts it (the upper bound of its range).
    sent: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    read: Mapped[bool] = mapped_column(Boolean, nullable=False)
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False)
    __table_args__ = (
        Index("ix_mailbox_user_unread", "user_id", "read", "deleted", "sent"),
        Index("ix_mailbox_user_sent", "user_id", "sent", "message_id"),
    )


class MailboxUnreadRow(Base):
    """A user's unread count: the number of their mailbox rows with ``read`` and ``deleted`` false.

    Written in the same transaction as every mailbox row it counts (a message's rows, a
    read-state change, a recompute), so ``$unread-count`` reads one row however many messages
    are unread: a counter, never a cache (docs/webmail-profile.md, "Mailbox"). ``fhirserver
    mailbox check`` compares it with the rows.
    """

    __tablename__ = "mailbox_unread"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    unread: Mapped[int] = mapped_column(Integer, nullable=False)


class ChartRow(Base):
    """One Communication in its subject's chart: what ``Communication?subject=..&_sort=-sent`` reads.

    Derived data like the mailbox (docs/webmail-profile.md, "Chart"): one row per
    (Communication, subject reference), written in the message's transaction from its index
    rows and checked against them by ``fhirserver mailbox check``. The composite index lets a
    chart page read its ``_count + 1`` rows, newest first, and stop.
    """

    __tablename__ = "chart"
    message_id: Mapped[str] = mapped_column(String(ID_LEN), primary_key=True)
    subject_ref: Mapped[str] = mapped_column(String(TYPE_LEN + ID_LEN + 1), primary_key=True)
    # The generic search puts messages without ``sent`` last; ordering on (has_sent, sent)
    # does the same on one index without a sentinel date or NULLS LAST.
    has_sent: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # ``sent`` as the search sorts it: the upper bound of its range.
    sent: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (Index("ix_chart_subject_sent", "subject_ref", "has_sent", "sent", "message_id"),)


class AuditLogRow(Base):
    """One AuditEvent, append-only: searchable columns, the BALP JSON, and its seal in the hash chain.

    Written with plain Core inserts (fhirserver.core.audit_log), never updated except by the
    sealer, which fills the three seal columns once (NULL until sealed). ``id`` is the insert
    order; ``seal_seq`` is the chain order (fhirserver.core.audit_chain).
    """

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(ID_LEN), nullable=False, unique=True)
    recorded: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    type_code: Mapped[str] = mapped_column(String(64), nullable=False)
    subtype: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(1), nullable=False)
    outcome: Mapped[str] = mapped_column(String(1), nullable=False)
    agent_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    agent_ref: Mapped[str | None] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=True)
    client_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_ref: Mapped[str | None] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=True)
    entity_ref: Mapped[str | None] = mapped_column(String(TYPE_LEN + ID_LEN + 1), nullable=True)
    purpose_of_use: Mapped[str | None] = mapped_column(String(32), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    seal_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    __table_args__ = (
        Index("ix_audit_log_recorded", "recorded"),
        Index("ix_audit_log_patient", "patient_ref", "recorded"),
        Index("ix_audit_log_agent", "agent_ref", "recorded"),
        Index("ix_audit_log_agent_user", "agent_user", "recorded"),
        Index("ix_audit_log_entity", "entity_ref", "recorded"),
        Index("ix_audit_log_unsealed", "seal_seq", "id"),
    )
