"""The Celery app's configuration: what delivery guarantees rest on, and the filesystem broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from fhirserver.config import Settings
from notifier.app_settings import PURGE_TASK, SEAL_AUDIT_TASK
from notifier.celery_app import SEND_TASK, SWEEP_TASK, make_celery, settings_of
from tests.support import wait_until


def test_configuration(tmp_path: Path) -> None:
    cfg = Settings(database_url="sqlite://", broker_url="filesystem://", broker_folder=str(tmp_path / "b"))
    app = make_celery(cfg)
    conf = app.conf
    assert settings_of(app) is cfg
    assert (conf.task_acks_late, conf.task_reject_on_worker_lost, conf.worker_prefetch_multiplier) == (True, True, 1)
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.task_ignore_result is True and not conf.result_backend
    assert conf.task_always_eager is False
    schedule = {entry["task"]: entry["schedule"] for entry in conf.beat_schedule.values()}
    assert schedule == {SWEEP_TASK: 30.0, PURGE_TASK: 600.0, SEAL_AUDIT_TASK: 30.0}
    assert {SEND_TASK, SWEEP_TASK, PURGE_TASK} <= set(app.tasks)
    opts = conf.broker_transport_options
    assert opts["data_folder_in"] == opts["data_folder_out"] == str(tmp_path / "b")
    assert Path(opts["processed_folder"]).is_dir()
    assert make_celery(cfg.with_(celery_eager=True)).conf.task_always_eager is True


def test_filesystem_broker_carries_the_task(tmp_path: Path) -> None:
    """A task published on the serverless broker is a file in the shared folder, holding only the id."""
    folder = tmp_path / "broker"
    app = make_celery(Settings(database_url="sqlite://", broker_url="filesystem://", broker_folder=str(folder)))
    app.tasks[SEND_TASK].delay(4242)
    [msg] = wait_until(lambda: list(folder.glob("*.msg")), 10, "a message file")
    text = msg.read_text()
    assert "notifier.tasks.send_notification" in text and "4242" in text


def test_notify_settings_from_the_environment(tmp_path: Path) -> None:
    from fhirserver.config import SettingsError, load_settings

    base = {"VAR_DIR": str(tmp_path), "DATABASE_URL": "sqlite:///x.db"}
    cfg = load_settings(base)
    assert (cfg.notify_dispatch, cfg.notify_retry_backoff) == ("celery", 10)
    cfg = load_settings({**base, "NOTIFY_DISPATCH": "none", "NOTIFY_RETRY_BACKOFF": "2"})
    assert (cfg.notify_dispatch, cfg.notify_retry_backoff) == ("none", 2)
    for bad in ({"NOTIFY_DISPATCH": "smtp"}, {"NOTIFY_RETRY_BACKOFF": "0"}):
        with pytest.raises(SettingsError):
            load_settings({**base, **bad})
    # The office's own template must carry the portal link.
    cfg = load_settings({**base, "NOTIFY_BODY": "New message at [OFFICE]: [URL]"})
    assert cfg.notify_body == "New message at [OFFICE]: [URL]"
    with pytest.raises(SettingsError, match="NOTIFY_BODY"):
        load_settings({**base, "NOTIFY_BODY": "Please log in to the portal to read it."})
