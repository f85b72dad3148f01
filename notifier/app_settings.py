"""The notifier's task names, and which Settings each Celery app was made from.

Kept apart from ``notifier.celery_app`` (which imports the tasks to register them) so that
the tasks can find their settings without importing the app module back: no import cycle.
Tests and tools may run several apps (databases, brokers) in one process, so the settings
are looked up per app. They are kept outside ``app.conf``, which ``celery inspect conf``
would show.
"""

from __future__ import annotations

import weakref
from typing import Any

from celery import Celery

from fhirserver.config import Settings, load_settings

SEND_TASK = "notifier.tasks.send_notification"
SWEEP_TASK = "notifier.tasks.sweep_outbox"
PURGE_TASK = "notifier.tasks.purge_expired"
SEAL_AUDIT_TASK = "notifier.tasks.seal_audit_log"
SEAL_AUDIT_EVERY_SECONDS = 30

_SETTINGS: weakref.WeakKeyDictionary[Celery, Settings] = weakref.WeakKeyDictionary()


def remember(app: Celery, settings: Settings) -> None:
    _SETTINGS[app] = settings


def settings_of(app: Any) -> Settings:
    """The Settings ``app`` was made from; the environment's for any other app."""
    try:
        return _SETTINGS[app]
    except (KeyError, TypeError):
        return load_settings()
