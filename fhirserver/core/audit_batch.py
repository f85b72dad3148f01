"""The per-process audit batch writer: group commit for the audit records of reads and searches.

A read must not answer before its audit record is durable, and one INSERT plus one
fsync per read is most of a read's cost. So request threads hand their rows to one
writer thread per process and database, and *wait*: the writer takes every row queued
when it is free (up to ``max_batch`` of them; ``max_wait`` > 0 would also wait that long
for more), inserts them with one executemany on its own connection, commits once, and
only then wakes the waiting threads. The batches form by themselves: the rows that arrive
while one batch commits make the next, so a lone read waits for one commit, not for a
timer, and under load each commit carries as many rows as came in during the last one.
A failed batch raises :class:`AuditWriteFailed` in every thread of the batch, which
answers 500: a record is never lost silently.

After each commit the writer runs the sealer (``fhirserver.core.audit_chain.seal``) on
its connection, outside the request's wait, so the chain follows the log closely without
any request waiting on the chain head.

SQLite has one writer: the writer thread's transaction is one ``BEGIN IMMEDIATE`` like
any other (fhirserver.db), and a request commits its own (read) transaction before it
hands its row over, so it never holds the lock its writer waits for.

Off-request processes (CLI, worker) insert synchronously in their own transactions
(``fhirserver.core.audit``) and never start a writer. A writer thread ends after a few
idle seconds and is started again on demand; after ``fork`` a child starts its own.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Engine

from fhirserver.core import audit_log

log = logging.getLogger(__name__)

MAX_BATCH = 64
# No timer: waiting 2 ms for company (as this once did) was most of a read's latency at
# concurrency 1 (4.2 ms against 0.6 for the bare endpoint), where a commit costs 0.07 ms.
MAX_WAIT_SECONDS = 0.0
IDLE_SECONDS = 5.0
# The sealer runs after a commit at most this often (and once more when the writer idles),
# so that under load sealing costs one extra transaction per interval, not per batch.
SEAL_INTERVAL_SECONDS = 0.25
COMMIT_TIMEOUT_SECONDS = 60.0


class AuditWriteFailed(Exception):
    """The batch holding this record did not commit: the response must not be sent."""


@dataclass
class _Pending:
    rows: list[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class AuditBatchWriter:
    """One writer thread over one engine; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = MAX_BATCH,
        max_wait: float = MAX_WAIT_SECONDS,
        idle: float = IDLE_SECONDS,
        after_commit: Callable[[Connection], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.idle = idle
        self.after_commit = after_commit
        self.batches_committed = 0
        self.batches_failed = 0
        self._sealed_at = 0.0
        self._unsealed = False
        self._queue: queue.Queue[_Pending] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Hand rows over and wait until the batch holding them has committed."""
        pending = _Pending(rows)
        self._queue.put(pending)
        self._ensure_thread()
        if not pending.done.wait(COMMIT_TIMEOUT_SECONDS):
            raise AuditWriteFailed("the audit batch did not commit in time")
        if pending.error is not None:
            raise AuditWriteFailed("the audit batch failed") from pending.error

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-batch-writer", daemon=True)
                self._thread.start()

    def _collect(self, first: _Pending) -> list[_Pending]:
        batch = [first]
        size = len(first.rows)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
            size += len(item.rows)
        return batch

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=self.idle)
            except queue.Empty:
                if self._unsealed:
                    self._seal()
                    continue
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            batch = self._collect(first)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        rows = [row for item in batch for row in item.rows]
        try:
            with self.engine.begin() as conn:
                audit_log.append_many(conn, rows)
        except Exception as exc:  # every waiting request learns of it
            self.batches_failed += 1
            log.error("audit batch of %d records failed: %s", len(rows), type(exc).__name__)
            for item in batch:
                item.error = exc
                item.done.set()
            return
        self.batches_committed += 1
        for item in batch:
            item.done.set()
        self._unsealed = True
        if time.monotonic() - self._sealed_at >= SEAL_INTERVAL_SECONDS:
            self._seal()

    def _seal(self) -> None:
        """Link the committed rows into the chain (after the requests were answered)."""
        self._unsealed = False
        self._sealed_at = time.monotonic()
        if self.after_commit is None:
            return
        try:
            with self.engine.begin() as conn:
                self.after_commit(conn)
        except Exception as exc:  # sealing is retried after the next batch and by the beat task
            log.warning("sealing after an audit batch failed: %s", type(exc).__name__)


_WRITERS: dict[int, tuple[int, Engine, AuditBatchWriter]] = {}
_REGISTRY_LOCK = threading.Lock()
_DEFAULT_AFTER_COMMIT: list[Callable[[Connection], Any]] = []


def set_after_commit(hook: Callable[[Connection], Any]) -> None:
    """The composition root names what runs after each batch commit (the sealer)."""
    _DEFAULT_AFTER_COMMIT[:] = [hook]


def use_writer(engine: Engine, writer: AuditBatchWriter) -> None:
    """Make ``writer`` the one for ``engine`` in this process (composition roots and tests)."""
    with _REGISTRY_LOCK:
        _WRITERS[id(engine)] = (os.getpid(), engine, writer)


def forget_writer(engine: Engine) -> None:
    with _REGISTRY_LOCK:
        _WRITERS.pop(id(engine), None)


def writer_for(engine: Engine) -> AuditBatchWriter:
    """This process's writer for ``engine`` (created on first use; a forked child makes its own)."""
    with _REGISTRY_LOCK:
        entry = _WRITERS.get(id(engine))
        if entry is not None and entry[0] == os.getpid() and entry[1] is engine:
            return entry[2]
        hook = _DEFAULT_AFTER_COMMIT[0] if _DEFAULT_AFTER_COMMIT else None
        writer = AuditBatchWriter(engine, after_commit=hook)
        _WRITERS[id(engine)] = (os.getpid(), engine, writer)
        return writer
