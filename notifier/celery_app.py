"""The Celery application of the notifier, configured from Settings.

Delivery is at least once and the tasks are idempotent, so the configuration favours
never losing a task over never repeating one: a task is acknowledged only after it ran
(``acks_late``), a task whose worker died goes back to the queue, and a worker takes
one task at a time. Only JSON crosses the broker (task arguments are outbox row ids,
never PHI) and no results are stored: the outbox row is the record of what happened.

``celery -A notifier.celery_app worker`` finds the module-level ``app``, built on first
access from the environment (``load_settings()``), so importing this module has no side
effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from fhirserver.config import ROOT, Settings, load_settings
from notifier.app_settings import (
    PURGE_TASK,
    SEAL_AUDIT_EVERY_SECONDS,
    SEAL_AUDIT_TASK,
    SEND_TASK,
    SWEEP_TASK,
    remember,
    settings_of,
)

SWEEP_EVERY_SECONDS = 30.0
PURGE_EVERY_SECONDS = 600.0
QUEUE = "notifier"
__all__ = ["SEND_TASK", "SWEEP_TASK", "get_app", "make_celery", "settings_of"]

_default_app: Celery | None = None


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem://"):
        folder = Path(settings.broker_folder or ROOT / "var" / "broker")
        processed = folder / "processed"
        processed.mkdir(parents=True, exist_ok=True)
        # In and out must be the same folder: producers write where the worker reads.
        return {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(processed),
            # Exchange tables; kombu's default is ./control in whatever the working directory is.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    if settings.broker_url.startswith("redis"):
        # A web request that enqueues must not hang on a dead broker: the sweep catches up.
        return {"socket_connect_timeout": 3}
    return {}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for these settings, with the notifier's tasks registered on it."""
    app = Celery("notifier", broker=settings.broker_url, include=["notifier.tasks"])
    app.conf.update(
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_always_eager=settings.celery_eager,
        worker_hijack_root_logger=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "notifier-sweep-outbox": {
                "task": SWEEP_TASK,
                "schedule": SWEEP_EVERY_SECONDS,
                # A sweep nobody ran in time is superseded by the next one.
                "options": {"expires": SWEEP_EVERY_SECONDS},
            },
            # Expired sessions, codes, grants, refresh tokens and throttle rows (smart_auth).
            "auth-purge-expired": {
                "task": PURGE_TASK,
                "schedule": PURGE_EVERY_SECONDS,
                "options": {"expires": PURGE_EVERY_SECONDS},
            },
            # The audit chain: seals what the web processes' batch writers left unsealed.
            "audit-seal": {
                "task": SEAL_AUDIT_TASK,
                "schedule": SEAL_AUDIT_EVERY_SECONDS,
                "options": {"expires": SEAL_AUDIT_EVERY_SECONDS},
            },
        },
    )
    remember(app, settings)
    import notifier.tasks  # noqa: F401 - registers the shared tasks on this app

    return app


def get_app() -> Celery:
    """The process-wide app built from the environment (what the worker and beat run)."""
    global _default_app
    if _default_app is None:
        _default_app = make_celery(load_settings())
    return _default_app


def __getattr__(name: str) -> Any:
    # PEP 562: ``notifier.celery_app.app`` is built on first use, not on import.
    if name == "app":
        return get_app()
    raise AttributeError(name)
