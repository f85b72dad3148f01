"""Enqueue notification tasks once the transaction that wrote their outbox rows has committed.

The WebMail rules insert outbox rows in the message's own transaction and append the
new row ids to ``session.info["outbox_new"]``. Enqueueing before the commit could run
the task against a row that is not visible yet, or that a rollback erases; so this
module listens to ``after_commit`` on every SQLAlchemy ``Session`` (Flask-SQLAlchemy's
included) and enqueues then. An enqueue that fails (broker down) is logged without
details and left to the worker's sweep, which re-enqueues pending rows after ~20 s.
When a transaction ends any other way the list is dropped.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction

from fhirserver.config import Settings
from fhirserver.webmail.outbox import OUTBOX_KEY
from notifier.celery_app import SEND_TASK, make_celery

log = logging.getLogger(__name__)

# Per database (a process may serve several in tests): its settings and Celery app.
_configs: dict[str, tuple[Settings, Celery | None]] = {}
_latest: list[str] = []
_lock = threading.Lock()
_installed = False


def _url_key(url: Any) -> str:
    return make_url(url).render_as_string(hide_password=False)


def install(settings: Settings) -> None:
    """Start dispatching outbox rows of ``settings.database_url``; safe to call more than once.

    The listeners are registered once per process on the ``Session`` class; the settings
    of the last ``install`` for a database win.
    """
    global _installed
    app = make_celery(settings) if settings.notify_dispatch == "celery" else None
    key = _url_key(settings.database_url)
    with _lock:
        _configs[key] = (settings, app)
        _latest[:] = [key]
        if not _installed:
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_transaction_end", _after_transaction_end)
            _installed = True


def enqueue(app: Celery, outbox_ids: list[int]) -> None:
    """Publish one ``send_notification`` task per id over one broker connection."""
    task = app.tasks[SEND_TASK]
    with app.producer_or_acquire() as producer:
        for outbox_id in outbox_ids:
            task.apply_async(args=[int(outbox_id)], producer=producer)


def _config_for(session: Session) -> tuple[Settings, Celery | None] | None:
    try:
        bind = session.get_bind()
        key = _url_key(bind.engine.url)
    except Exception:  # an unbound session: fall back to the last install
        key = ""
    with _lock:
        found = _configs.get(key)
        if found is None and _latest:
            found = _configs.get(_latest[0])
    return found


def _after_commit(session: Session) -> None:
    ids = session.info.pop(OUTBOX_KEY, None)
    if not ids:
        return
    config = _config_for(session)
    if config is None or config[1] is None:
        return
    try:
        enqueue(config[1], list(ids))
    except Exception as exc:  # the commit stands; the sweep sends these later
        log.warning(
            "could not enqueue %d notification(s) (%s); the outbox sweep will retry", len(ids), type(exc).__name__
        )


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # A rolled back or closed outermost transaction: its rows are gone, forget their ids.
    # (A rolled back savepoint keeps the list; ids that no longer exist are skipped by the task.)
    if transaction.parent is None and not transaction.nested:
        session.info.pop(OUTBOX_KEY, None)
