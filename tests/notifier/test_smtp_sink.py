"""The development SMTP sink keeps each email as a .eml file and logs its file name only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fhirserver.config import Settings
from notifier import smtp
from notifier.email import build_notification
from notifier.smtp_sink import start_sink
from tests.support import free_port, wait_until


def test_sink_writes_eml_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "mail"
    port = free_port()
    cfg = Settings(database_url="sqlite://", smtp_url=f"smtp://127.0.0.1:{port}")
    caplog.set_level(logging.INFO, logger="notifier.smtp_sink")
    sink = start_sink(folder, "127.0.0.1", port)
    try:
        for n in range(2):
            msg = build_notification(cfg, f"pt{n}@mail.example", f"<sink-{n}@practice.example>")
            smtp.send(cfg.smtp_url, msg, cfg.mail_from, f"pt{n}@mail.example")
        files = wait_until(
            lambda: sorted(folder.glob("*.eml")) if len(list(folder.glob("*.eml"))) == 2 else None, 10, "two .eml files"
        )
    finally:
        sink.stop()
    assert [f.name.endswith(("-0001.eml", "-0002.eml")) for f in files] == [True, True]
    first = files[0].read_bytes()
    assert b"Message-ID: <sink-0@practice.example>" in first
    assert f"{cfg.base_url}/portal/".encode() in first
    assert not list(folder.glob("*.part"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mail captured: ")]
    assert lines == [f"mail captured: {f}" for f in files]
    assert not any("pt0@mail.example" in r.getMessage() for r in caplog.records)
