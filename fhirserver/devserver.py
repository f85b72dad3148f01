"""``fhirserver serve --dev``: one command that runs the whole system on a laptop.

A small supervisor starts three child processes - the development SMTP sink (emails
land in ``var/mail/*.eml``), a Celery worker with embedded beat on the
``filesystem://`` broker, and gunicorn - waits until the web server answers, prints
the demo logins and URLs, and then watches. Ctrl-C or SIGTERM stops every child by
PID (SIGTERM, then SIGKILL after a grace period). If any child dies, the others are
stopped and the supervisor exits non-zero, so a broken part is never hidden behind a
half-working demo. Children run in their own sessions, so a terminal's Ctrl-C reaches
the supervisor only and the shutdown order stays ours.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from fhirserver.config import Settings

GRACE_SECONDS = 15.0
READY_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 0.3
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    children: list[Child] = field(default_factory=list)
    stop_requested: bool = False
    signals_seen: int = 0

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals_seen += 1
        self.stop_requested = True
        if self.signals_seen > 1:
            # A second Ctrl-C: do not wait for graceful shutdowns any more.
            for child in self.children:
                if child.running and child.proc is not None:
                    child.proc.kill()

    def start(self, child: Child, env: dict[str, str]) -> None:
        child.proc = subprocess.Popen(  # noqa: S603 - argv is built here from sys.executable
            child.argv, env=env, start_new_session=True, preexec_fn=_die_with_parent(os.getpid())
        )
        self.children.append(child)
        _say(f"started {child.name} (pid {child.proc.pid})")

    def dead_child(self) -> Child | None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                return child
        return None

    def stop_all(self) -> None:
        """SIGTERM each running child (web first, sink last), wait, then SIGKILL what is left."""
        for child in reversed(self.children):
            if child.running and child.proc is not None:
                _say(f"stopping {child.name} (pid {child.proc.pid})")
                child.proc.terminate()
        deadline = time.monotonic() + GRACE_SECONDS
        for child in reversed(self.children):
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _say(f"{child.name} did not stop in {GRACE_SECONDS:.0f} s: killing pid {child.proc.pid}")
                child.proc.kill()
                child.proc.wait()


def _die_with_parent(parent_pid: int):  # type: ignore[no-untyped-def]
    """Ask Linux to SIGTERM the child if the supervisor itself dies (e.g. SIGKILL)."""

    def _preexec() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return  # not Linux: the supervisor's own handlers still stop the children
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return _preexec


def _say(message: str) -> None:
    print(f"[serve --dev] {message}", file=sys.stderr, flush=True)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own loopback URL
            return bool(200 <= resp.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False


def child_commands(settings: Settings, *, bind: str, mail_dir: Path) -> list[Child]:
    """The three children, each an ordinary ``fhirserver`` subcommand of this interpreter."""
    cli = [sys.executable, "-m", "fhirserver.cli"]
    smtp = urlsplit(settings.smtp_url)
    return [
        Child(
            "smtp-sink",
            [
                *cli,
                "mail-sink",
                "--folder",
                str(mail_dir),
                "--host",
                smtp.hostname or "127.0.0.1",
                "--port",
                str(smtp.port or 8025),
            ],
        ),
        Child("celery-worker", [*cli, "worker", "--beat", "--pool", "threads", "--concurrency", "2"]),
        Child("gunicorn", [*cli, "serve", "--bind", bind, "--workers", "2", "--threads", "8"]),
    ]


def banner(settings: Settings, mail_dir: Path) -> str:
    from fhirserver.seed import FIXTURE, SeedError, demo_logins, load_fixture

    base = settings.base_url
    lines = [
        "",
        "=" * 72,
        "  FHIR server (development mode: plain http on loopback, demo accounts)",
        f"  Patient portal:    {base}/portal/",
        f"  Provider console:  {base}/portal/console/",
        f"  FHIR API:          {base}/fhir/metadata",
        f"  Emails:            {mail_dir}/*.eml (nothing leaves this machine)",
        "",
        "  Demo logins (username / password / role):",
    ]
    try:
        for login in demo_logins(load_fixture(FIXTURE)):
            note = "  <- must change password at first login" if login.must_change_password else ""
            lines.append(f"    {login.username:<16} {login.password:<22} {login.role}{note}")
    except SeedError as exc:
        lines.append(f"    (cannot read the demo logins: {exc})")
    if settings.mfa_required:
        lines += [
            "",
            "  Two-step sign-in (MFA) is ON: providers and staff set up an authenticator app",
            "  at their first sign-in (lost phone: fhirserver user reset-mfa --username U).",
        ]
    else:
        lines += [
            "",
            "  Two-step sign-in (MFA) is OFF (MFA_REQUIRED=0, the demo practice): providers and",
            "  staff sign in with the password alone. Production keeps it on; make run MFA_REQUIRED=1.",
        ]
    lines += ["", "  Press Ctrl-C to stop everything.", "=" * 72, ""]
    return "\n".join(lines)


def run_dev(settings: Settings, *, bind: str, var: Path) -> int:
    """Run sink, worker and web server until Ctrl-C/SIGTERM (0) or until a child dies (1)."""
    host, port = _split_bind(bind)
    smtp = urlsplit(settings.smtp_url)
    smtp_host, smtp_port = smtp.hostname or "127.0.0.1", smtp.port or 8025
    busy = [f"{h}:{p}" for h, p in ((host, port), (smtp_host, smtp_port)) if not _port_free(h, p)]
    if busy:
        _say(f"port(s) in use: {', '.join(busy)} - is another server running?")
        return 2
    mail_dir = var / "mail"
    for folder in (mail_dir, Path(settings.broker_folder), Path(settings.broker_folder) / "processed"):
        folder.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["FHIRSERVER_ENV"] = "development"
    env.setdefault("VAR_DIR", str(var))

    sup = Supervisor()
    previous = {s: signal.signal(s, sup.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in child_commands(settings, bind=bind, mail_dir=mail_dir):
            sup.start(child, env)
        probe = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/fhir/metadata"  # noqa: S104
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        ready = False
        while not sup.stop_requested:
            dead = sup.dead_child()
            if dead is not None and dead.proc is not None:
                _say(f"{dead.name} exited with code {dead.proc.returncode}: stopping the others")
                return 1
            if not ready:
                if _answers(probe):
                    ready = True
                    print(banner(settings, mail_dir), flush=True)
                elif time.monotonic() > deadline:
                    _say(f"the web server did not answer within {READY_TIMEOUT_SECONDS:.0f} s")
                    return 1
            time.sleep(POLL_SECONDS)
        _say("stopping")
        return 0
    finally:
        sup.stop_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _say("all stopped")
