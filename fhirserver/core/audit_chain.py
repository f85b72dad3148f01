"""The hash chain over the audit table: seal committed rows, verify the sealed chain.

Records are sealed *after* they commit, by a sealer that runs after each batch of the
batch writer (fhirserver.core.audit_batch) and from a beat task (notifier.tasks). It
takes the committed rows that have no seal yet, in id order, and gives each the next
``seal_seq``, the previous seal's hash and its own hash::

    hash_n = HMAC-SHA256(key, hash_{n-1} | canonical(row_n) | n)

canonical(row) covers every column and the SHA-256 of the event's JSON, so changing
any stored value of a sealed row, deleting one, or inserting one between sealed rows
breaks the chain; without the key (derived from the app secret) a forged row cannot be
given a valid seal.

One chain per database. The sealer is the only writer of the chain head, so there is
no contention on it: writes and batches insert unsealed rows and never touch the head
inside their own transactions. Sealers in several processes take turns (a PostgreSQL
advisory lock; SQLite's ``BEGIN IMMEDIATE``). A row whose transaction commits late,
after rows with higher ids were sealed, is simply sealed in a later round: the chain
order is the order in which the sealer saw rows committed, and nothing uncommitted
(rolled back, or a killed batch) is ever in it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.engine import Connection

from fhirserver.models import AuditLogRow

TABLE: Table = AuditLogRow.__table__  # type: ignore[assignment]
GENESIS = "0" * 64
SEAL_BATCH = 1000
ADVISORY_LOCK_KEY = 0x61756469  # "audi"
COLUMNS = (
    "event_id",
    "recorded",
    "type_code",
    "subtype",
    "action",
    "outcome",
    "agent_user",
    "agent_ref",
    "client_id",
    "address",
    "patient_ref",
    "entity_ref",
    "purpose_of_use",
    "request_id",
)


def chain_key(secret_key: str) -> bytes:
    from fhirserver.core.crypto import derive_key

    return derive_key(secret_key, b"fhirserver audit chain")


def _utc_text(value: datetime) -> str:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="microseconds")


def _canonical(row: Any) -> bytes:
    values = [_utc_text(row.recorded) if c == "recorded" else getattr(row, c) for c in COLUMNS]
    values.append(hashlib.sha256(bytes(row.content)).hexdigest())
    return json.dumps(values, separators=(",", ":")).encode()


def seal_hash(key: bytes, prev_hash: str, seq: int, row: Any) -> str:
    msg = prev_hash.encode() + b"|" + _canonical(row) + b"|" + str(seq).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})


def _head(conn: Connection) -> tuple[int, str]:
    row = conn.execute(
        select(TABLE.c.seal_seq, TABLE.c.hash)
        .where(TABLE.c.seal_seq.isnot(None))
        .order_by(TABLE.c.seal_seq.desc())
        .limit(1)
    ).first()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def seal(conn: Connection, key: bytes, limit: int = SEAL_BATCH) -> int:
    """Seal up to ``limit`` committed, unsealed rows in the caller's transaction; returns how many."""
    _lock(conn)
    seq, prev = _head(conn)
    rows = conn.execute(select(TABLE).where(TABLE.c.seal_seq.is_(None)).order_by(TABLE.c.id).limit(limit)).all()
    seals: list[dict[str, Any]] = []
    for row in rows:
        seq += 1
        digest = seal_hash(key, prev, seq, row)
        seals.append({"row_id": row.id, "s_seq": seq, "s_prev": prev, "s_hash": digest})
        prev = digest
    if seals:  # one executemany
        conn.execute(
            update(TABLE)
            .where(TABLE.c.id == bindparam("row_id"))
            .values(seal_seq=bindparam("s_seq"), prev_hash=bindparam("s_prev"), hash=bindparam("s_hash")),
            seals,
        )
    return len(rows)


def head(conn: Connection) -> tuple[int, str]:
    """The last seal (number and hash), to anchor outside the database (the beat task logs it)."""
    return _head(conn)


def sealer(key: bytes) -> Callable[[Connection], int]:
    """The batch writer's after-commit hook: seal with ``key``."""
    return partial(seal, key=key)


def seal_all(engine: Any, key: bytes) -> int:
    """Seal every committed row, one transaction per ``SEAL_BATCH`` (the beat task and the CLI)."""
    total = 0
    while True:
        with engine.begin() as conn:
            n = seal(conn, key)
        total += n
        if n < SEAL_BATCH:
            return total


@dataclass(frozen=True)
class Verification:
    sealed: int
    unsealed: int
    oldest_unsealed: datetime | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_anchor(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as the beat task logs it and ``audit verify`` prints it, or ValueError."""
    seq, sep, digest = text.strip().partition(":")
    hexdigits = set("0123456789abcdefABCDEF")
    if not sep or not seq.isdigit() or int(seq) < 1 or len(digest) != 64 or not set(digest) <= hexdigits:
        raise ValueError("an anchor is SEQ:HASH, the seal number and its 64-digit hex hash")
    return int(seq), digest.lower()


def verify(
    conn: Connection, key: bytes, *, anchors: tuple[tuple[int, str], ...] = (), max_problems: int = 20
) -> Verification:
    """Walk the sealed chain in seal order and recompute every link; report the unsealed tail.

    A chain is valid link by link even after its newest seals were deleted; ``anchors``
    (heads recorded outside the database, e.g. from the beat task's log) catch that: each
    anchored seal must still be there with the hash recorded.
    """
    problems: list[str] = []
    expected_seq, prev = 0, GENESIS
    sealed = 0
    wanted = dict(anchors)
    found: dict[int, str] = {}
    result = conn.execute(
        select(TABLE).where(TABLE.c.seal_seq.isnot(None)).order_by(TABLE.c.seal_seq).execution_options(yield_per=1000)
    )
    for row in result:
        sealed += 1
        expected_seq += 1
        if len(problems) >= max_problems:
            continue
        if row.seal_seq != expected_seq:
            problems.append(f"seal {expected_seq} is missing (next seal found: {row.seal_seq})")
            expected_seq = row.seal_seq
        if row.prev_hash != prev:
            problems.append(f"seal {row.seal_seq}: previous hash does not match seal {row.seal_seq - 1}")
        if row.hash is None or not hmac.compare_digest(
            row.hash, seal_hash(key, row.prev_hash or "", row.seal_seq, row)
        ):
            problems.append(f"seal {row.seal_seq}: the record does not match its seal")
        if row.seal_seq in wanted:
            found[row.seal_seq] = row.hash or ""
        prev = row.hash or ""
    partial = conn.execute(
        select(func.count())
        .select_from(TABLE)
        .where(TABLE.c.seal_seq.is_(None), (TABLE.c.hash.isnot(None)) | (TABLE.c.prev_hash.isnot(None)))
    ).scalar_one()
    if partial:
        problems.append(f"{partial} unsealed record(s) carry seal values")
    for seq, digest in sorted(wanted.items()):
        if seq not in found:
            problems.append(f"anchored seal {seq} is gone: the chain was cut back to {expected_seq}")
        elif not hmac.compare_digest(found[seq], digest):
            problems.append(f"anchored seal {seq} has another hash than the one recorded")
    unsealed, oldest = conn.execute(
        select(func.count(), func.min(TABLE.c.recorded)).select_from(TABLE).where(TABLE.c.seal_seq.is_(None))
    ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return Verification(sealed, int(unsealed), oldest, problems)
