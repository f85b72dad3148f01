"""`fhirserver serve --dev`, the supervisor behind `make run`, run for real.

The same steps as `make run` (db upgrade, seed, serve --dev) on a fresh SQLite file, on
free ports: the API and portal answer, the seeded messages' notifications arrive in the
mail folder through the real worker and SMTP sink, and Ctrl-C (SIGINT to the supervisor)
stops every child. A child that dies takes the others down and fails the supervisor.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import conftest

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


@dataclass
class DevRun:
    proc: subprocess.Popen[bytes]
    log: Path
    var: Path
    base_url: str
    ports: tuple[int, int]

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in STARTED.findall(self.text())}


def cli(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "fhirserver.cli", *args], env=env, check=True, capture_output=True, timeout=120
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped: it holds nothing.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def port_free(port: int) -> bool:
    """Nothing listens there (SO_REUSEADDR: connections left in TIME_WAIT do not count)."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(predicate, timeout: float, what: str, run: DevRun) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}; supervisor output:\n{run.text()[-4000:]}")


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(resp.status)


@pytest.fixture()
def dev_run(tmp_path: Path) -> Iterator[DevRun]:
    web, smtp = conftest.free_port(), conftest.free_port()
    env = {**os.environ, **conftest.test_env(tmp_path, f"sqlite:///{tmp_path / 'dev.db'}", web)}
    for name in ("BROKER_URL", "NOTIFY_DISPATCH"):  # the development defaults: filesystem broker, Celery
        env.pop(name, None)
    env["SMTP_URL"] = f"smtp://127.0.0.1:{smtp}"
    cli(env, "db", "upgrade")
    cli(env, "seed")
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fhirserver.cli", "serve", "--dev"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = DevRun(proc, log, tmp_path, f"http://127.0.0.1:{web}", (web, smtp))
    try:
        yield run
    finally:
        if proc.poll() is None:  # the test failed midway: stop it the way an operator would
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in run.children().values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def wait_ready(run: DevRun) -> None:
    wait_for(lambda: "Press Ctrl-C" in run.text() or run.proc.poll() is not None, 120, "the banner", run)
    assert run.proc.poll() is None, run.text()[-4000:]


def test_dev_server_serves_mails_and_stops_on_ctrl_c(dev_run: DevRun) -> None:
    wait_ready(dev_run)
    banner = dev_run.text()
    assert f"{dev_run.base_url}/portal/" in banner and f"{dev_run.base_url}/portal/console/" in banner
    assert "dr.adams" in banner and "maple-patient-demo" in banner and "must change password" in banner
    assert get(f"{dev_run.base_url}/fhir/metadata") == 200
    assert get(f"{dev_run.base_url}/portal/") == 200
    children = dev_run.children()
    assert set(children) == {"smtp-sink", "celery-worker", "gunicorn"}

    # The seeded provider->patient messages were announced: worker -> SMTP sink -> var/mail.
    mail = dev_run.var / "mail"
    wait_for(lambda: len(list(mail.glob("*.eml"))) >= 2, 90, "notification emails", dev_run)

    dev_run.proc.send_signal(signal.SIGINT)
    assert dev_run.proc.wait(60) == 0, dev_run.text()[-4000:]
    assert not [name for name, pid in children.items() if alive(pid)]
    assert all(port_free(p) for p in dev_run.ports)  # gunicorn's workers are gone too
    assert "all stopped" in dev_run.text()


def test_a_dying_child_stops_the_others_and_fails(dev_run: DevRun) -> None:
    wait_ready(dev_run)
    children = dev_run.children()
    os.kill(children["smtp-sink"], signal.SIGKILL)
    assert dev_run.proc.wait(60) != 0
    assert "smtp-sink exited" in dev_run.text()
    assert not [name for name, pid in children.items() if alive(pid)]
    assert all(port_free(p) for p in dev_run.ports)


def test_busy_port_is_reported_without_starting_anything(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = {**os.environ, **conftest.test_env(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", port)}
        result = subprocess.run(
            [sys.executable, "-m", "fhirserver.cli", "serve", "--dev"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "started" not in result.stderr
