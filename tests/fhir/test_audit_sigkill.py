"""The audit guarantee (checklist E4): a PHI response is never sent before its audit record
is durable. A real ``fhirserver serve`` (gunicorn, one worker, 4 threads) answers reads from
4 client threads; its worker is SIGKILLed in the middle of the load (the master starts a
new one); afterwards every 2xx response a client received has its audit record, found by
the request id the client sent. PostgreSQL (the production database)."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fhirserver.db import make_engine
from fhirserver.models import AuditLogRow
from tests.fhir.test_gunicorn_errors import GunicornServer, gunicorn_server, make_world

CLIENTS = 4
KILL_AFTER = 40  # successful reads before the kill
AFTER_KILL = 40  # successful reads wanted after it (from the new worker)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(c) for c in text]
    return found


def _get(server: GunicornServer, path: str, token: str, request_id: str) -> int:
    req = urllib.request.Request(
        server.url + path, headers={"Authorization": f"Bearer {token}", "X-Request-Id": request_id}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # the connection died with the worker: no response received


def test_E4_every_2xx_read_has_its_audit_record_after_a_worker_is_sigkilled(database_url: str, tmp_path: Path) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the SIGKILL guarantee is tested on PostgreSQL")
    with gunicorn_server(tmp_path, database_url, workers=1, threads=4) as server:
        world = make_world(server)
        token = world.tokens["provider"]
        paths = [f"/fhir/Patient/{world.ids['Patient']}", "/fhir/Patient?_count=5"]
        ok: list[str] = []
        lock = threading.Lock()
        killed = threading.Event()
        done = threading.Event()
        before = _children(server.proc.pid)
        assert before, "no gunicorn worker"

        def client(n: int) -> None:
            i = 0
            while not done.is_set():
                rid = f"kill-{uuid.uuid4().hex}"
                status = _get(server, paths[(n + i) % 2], token, rid)
                i += 1
                if 200 <= status < 300:
                    with lock:
                        ok.append(rid)
                        count = len(ok)
                    if count >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        for pid in before:
                            os.kill(pid, signal.SIGKILL)
                    if killed.is_set() and count >= KILL_AFTER + AFTER_KILL:
                        done.set()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        done.set()
        assert killed.is_set() and len(ok) >= KILL_AFTER + AFTER_KILL
        assert set(_children(server.proc.pid)).isdisjoint(before), "the worker was not replaced"
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            table: Any = AuditLogRow.__table__
            recorded = set(conn.scalars(select(table.c.request_id).where(table.c.request_id.in_(ok))))
    finally:
        engine.dispose()
    missing = [rid for rid in ok if rid not in recorded]
    assert missing == [], f"{len(missing)} of {len(ok)} 2xx responses have no audit record"
