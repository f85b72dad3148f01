"""A development SMTP server that keeps every email it receives as a ``.eml`` file.

With ``SMTP_URL=smtp://127.0.0.1:8025`` (the development default) nothing leaves the
machine: notification emails land in ``var/mail/`` where a developer can open them.
It accepts any sender and recipient and offers no AUTH and no TLS: never expose it
beyond localhost.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8025


class EmlWriter:
    """aiosmtpd handler: one file per message, named ``<UTC timestamp>-<n>.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._counter = itertools.count(1)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        path = self.write(content)
        log.info("mail captured: %s", path)
        return "250 Message accepted for delivery"

    def write(self, content: bytes) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{next(self._counter):04d}.eml"
        path = self.folder / name
        partial = path.with_suffix(".part")
        partial.write_bytes(content)
        os.replace(partial, path)  # a reader never sees half a message
        return path


def start_sink(folder: str | Path = "var/mail", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> Controller:
    """Start the sink in a background thread; call ``.stop()`` on the result to end it."""
    controller = Controller(EmlWriter(Path(folder)), hostname=host, port=port)
    controller.start()
    log.info("development SMTP sink on %s:%d writing to %s", host, port, folder)
    return controller


def run_sink(folder: str | Path = "var/mail", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Run the sink in the foreground until SIGINT or SIGTERM (for the CLI)."""
    controller = start_sink(folder, host, port)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        controller.stop()
