"""The baseline benchmark: `make bench` (or `.venv/bin/python -m bench.run`).

Starts the real server under gunicorn on a fresh PostgreSQL database, with auth and
audit on, a Celery worker on Redis and an SMTP sink; beside it, under the same
gunicorn settings, a bare Flask endpoint that returns a stored resource's bytes.
Measures at concurrency 8: FHIR read, create, and the provider inbox search;
then the time from a patient's send to the provider's unread count rising, and from a
provider's send to the email being captured. Writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import Result, run  # noqa: E402
from tests.support import create_pg_database, drop_pg_database, free_port, redis_database, test_env  # noqa: E402

# The worker class `fhirserver serve` runs (fhirserver/gunicorn_worker.py), for both servers.
GUNICORN = ["-w", "2", "-k", "fhirserver.gunicorn_worker.FhirThreadWorker", "--threads", "4", "--log-level", "warning"]
FHIR = "application/fhir+json"
SECURITY_SECTION = "<!-- bench/security.py: start -->"


def write_section(path: Path, name: str, text: str) -> None:
    """Replace bench/``name``'s section of docs/benchmarks.md between its markers, or append it.

    Appended sections go after bench/security.py's marker, from which this script's own rewrite
    keeps everything (so the marker is added first when it is missing).
    """
    start, end = f"<!-- bench/{name}: start -->", f"<!-- bench/{name}: end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        if name != "security.py" and SECURITY_SECTION not in doc:
            doc = doc.rstrip() + f"\n\n{SECURITY_SECTION}\n<!-- bench/security.py: end -->"
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def seed(env: dict[str, str], messages: int) -> dict[str, Any]:
    """Demo-sized data through the real repository and accounts, and the tokens to use."""
    from fhirserver.config import load_settings
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository
    from fhirserver.db import make_sessionmaker
    from smart_auth.grants import issue_token
    from tests.factories import PATIENT_SCOPE, PROVIDER_SCOPE, make_practice, message_json, patient_json

    settings = load_settings(env)
    session = make_sessionmaker(settings.database_url)()
    practice = make_practice(session, settings)
    repo = Repository(session, settings, practice.patient)
    for i in range(messages):
        repo.create("Communication", message_json(practice.patient_ref, practice.practitioner_ref, topic=f"m{i}"))
    extra = Repository(session, settings, system_principal()).create(
        "Patient", patient_json([practice.practitioner_ref])
    )
    session.commit()
    from smart_auth.accounts import get_user

    provider = get_user(session, practice.provider_user_id)
    patient = get_user(session, practice.patient_user_id)
    out = {
        "practice": practice,
        "read_id": extra.res_id,
        "provider_token": issue_token(session, settings, user=provider, client_id="bench", scope=PROVIDER_SCOPE),
        "patient_token": issue_token(
            session, settings, user=patient, client_id="bench", scope=PATIENT_SCOPE, patient=practice.patient_id
        ),
    }
    session.commit()
    session.close()
    return out


class Sink:
    """An aiosmtpd server that records the arrival time of each message."""

    def __init__(self, port: int) -> None:
        from aiosmtpd.controller import Controller

        self.arrivals: list[float] = []
        self.cond = threading.Condition()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                with sink.cond:
                    sink.arrivals.append(time.perf_counter())
                    sink.cond.notify_all()
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=port)
        self.controller.start()

    def wait_for(self, n: int, timeout: float = 30) -> float:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.arrivals) >= n, timeout)
        if not ok:
            raise RuntimeError("email not captured in time")
        return self.arrivals[n - 1]


def request(base: str, method: str, path: str, token: str, body: Any = None, form: bool = False) -> Any:
    data = None
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        if form:
            from urllib.parse import urlencode

            data = urlencode(body).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = FHIR
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def unread(base: str, token: str) -> int:
    return int(request(base, "GET", "/fhir/Communication/$unread-count", token)["parameter"][0]["valueInteger"])


def send_to_unread(base: str, data: dict[str, Any], rounds: int) -> list[float]:
    from tests.factories import message_json

    p = data["practice"]
    out = []
    for i in range(rounds):
        before = unread(base, data["provider_token"])
        t0 = time.perf_counter()
        request(
            base,
            "POST",
            "/fhir/Communication",
            data["patient_token"],
            message_json(p.patient_ref, p.practitioner_ref, topic=f"latency {i}"),
        )
        while unread(base, data["provider_token"]) <= before:
            time.sleep(0.005)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def send_to_email(base: str, data: dict[str, Any], sink: Sink, rounds: int) -> list[float]:
    from tests.factories import message_json

    p = data["practice"]
    out = []
    for i in range(rounds):
        n = len(sink.arrivals)
        t0 = time.perf_counter()
        request(
            base,
            "POST",
            "/fhir/Communication",
            data["provider_token"],
            message_json(p.practitioner_ref, p.patient_ref, topic=f"email {i}"),
        )
        out.append((sink.wait_for(n + 1) - t0) * 1000)
    return out


def analyze(db_url: str) -> None:
    """Refresh planner statistics, as autovacuum does within a minute on a live system.

    Right after thousands of inserts into fresh tables PostgreSQL still believes they hold
    a row or two and picks nested loops; a steady-state server has current statistics.
    """
    from sqlalchemy import text

    from fhirserver.db import make_engine

    engine = make_engine(db_url)
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


def fmt(r: Result) -> str:
    return f"| {r.name} | {r.throughput:,.0f} | {r.p50:.1f} | {r.p99:.1f} | {r.errors} |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--redis-db", default="15")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    with redis_database(int(args.redis_db)) as broker_url:  # flushed before and after the run
        return measure(args, broker_url)


def measure(args: argparse.Namespace, broker_url: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    db_url = create_pg_database()
    port, bare_port, smtp_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        **test_env(
            tmp,
            db_url,
            port,
            ARGON2_TIME_COST="1",
            ARGON2_MEMORY_KIB="1024",
            BROKER_URL=broker_url,
            NOTIFY_DISPATCH="celery",
            SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
        ),
    }
    procs: list[subprocess.Popen[bytes]] = []
    venv_bin = Path(sys.executable).parent
    try:
        from fhirserver.migrate import upgrade

        upgrade(db_url)
        data = seed(env, args.messages)
        sink = Sink(smtp_port)
        procs.append(
            subprocess.Popen(
                [str(venv_bin / "gunicorn"), *GUNICORN, "-b", f"127.0.0.1:{port}", "fhirserver.wsgi:application"],
                env=env,
                cwd=ROOT,
            )
        )
        procs.append(
            subprocess.Popen(
                [str(venv_bin / "gunicorn"), *GUNICORN, "-b", f"127.0.0.1:{bare_port}", "bench.bare_app:app"],
                env=env,
                cwd=ROOT,
            )
        )
        procs.append(
            subprocess.Popen(
                [str(venv_bin / "celery"), "-A", "notifier.celery_app", "worker", "--pool=solo", "--loglevel=WARNING"],
                env=env,
                cwd=ROOT,
            )
        )
        base, bare = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        wait_http(base + "/fhir/metadata")
        p = data["practice"]
        read_id = data["read_id"]
        wait_http(f"{bare}/bare/Patient/{read_id}")
        prov = {"Authorization": f"Bearer {data['provider_token']}", "Accept": FHIR}
        pat = {"Authorization": f"Bearer {data['patient_token']}", "Content-Type": FHIR, "Accept": FHIR}
        from tests.factories import message_json

        body = json.dumps(message_json(p.patient_ref, p.practitioner_ref, topic="bench")).encode()
        inbox = f"/fhir/Communication?recipient={p.practitioner_ref}&status=completed&_sort=-sent&_count=20"
        c, s = args.concurrency, args.seconds
        analyze(db_url)
        results = [
            run(
                "bare Flask endpoint (stored bytes)",
                bare,
                lambda t, i: ("GET", f"/bare/Patient/{read_id}", None, {}),
                concurrency=c,
                seconds=s,
            ),
            run(
                "FHIR read Patient",
                base,
                lambda t, i: ("GET", f"/fhir/Patient/{read_id}", None, prov),
                concurrency=c,
                seconds=s,
            ),
            run(
                "FHIR create Communication",
                base,
                lambda t, i: ("POST", "/fhir/Communication", body, pat),
                concurrency=c,
                seconds=s,
            ),
        ]
        analyze(db_url)  # the creates above grew the inbox
        results.append(
            run("FHIR inbox search", base, lambda t, i: ("GET", inbox, None, prov), concurrency=c, seconds=s)
        )
        unread_ms = send_to_unread(base, data, args.rounds)
        email_ms = send_to_email(base, data, sink, args.rounds)
        sink.controller.stop()
        write_report(Path(args.output), results, unread_ms, email_ms, args)
        for r in results:
            print(fmt(r))
        print(
            f"send -> unread count p50 {statistics.median(unread_ms):.1f} ms; "
            f"send -> email p50 {statistics.median(email_ms):.1f} ms"
        )
        return 0
    finally:
        stop(procs)
        drop_pg_database(db_url)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every server this benchmark started (by PID), then SIGKILL what is left after 15 s."""
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def write_report(
    path: Path, results: list[Result], unread_ms: list[float], email_ms: list[float], args: argparse.Namespace
) -> None:
    bare = results[0]

    def p99(xs: list[float]) -> float:
        return sorted(xs)[min(len(xs) - 1, int(0.99 * len(xs)))]

    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench` (bench/run.py) on {datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, PostgreSQL on the same machine.",
        f"gunicorn `{' '.join(GUNICORN)}` for both servers; the load generator (bench/loadgen.py, "
        f"{args.concurrency} threads, {args.seconds:.0f} s per row) runs on the same 2 cores, so absolute",
        "numbers are low and only the ratios measured in the same run mean much.",
        f"Data: one provider, one patient, {args.messages} messages, plus every message the create row",
        "added (the inbox search runs over all of them); auth (RS256 JWT) and audit (one AuditEvent per",
        "interaction, committed with the request) are on. `ANALYZE` runs before the rows, as autovacuum",
        "would on a live system: on fresh tables without statistics PostgreSQL picks nested loops and the",
        "inbox search and unread count are 10-40x slower (measured: 345 ms vs 28 ms at 3,000 messages).",
        "",
        "| scenario | req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
        *[fmt(r) for r in results],
        "",
        "Ratios (same run):",
        "",
        *[f"- {r.name}: **{r.throughput / bare.throughput:.2f}x** the bare endpoint's throughput" for r in results[1:]],
        "",
        "Latency of the WebMail flows (sequential, no load):",
        "",
        f"- patient sends -> provider's `$unread-count` rises: p50 {statistics.median(unread_ms):.1f} ms, "
        f"p99 {p99(unread_ms):.1f} ms ({len(unread_ms)} rounds; the count is a live query, so this is the",
        "  create plus one count query)",
        f"- provider sends -> notification email captured by SMTP: p50 {statistics.median(email_ms):.1f} ms, "
        f"p99 {p99(email_ms):.1f} ms ({len(email_ms)} rounds; outbox row in the write transaction,",
        "  enqueued after commit to Celery on Redis, sent by one solo worker)",
        "",
        "What limits each row today (for the issues that set targets):",
        "",
        "- read: JWT verification, the access check and one AuditEvent insert + commit per read;",
        "- create: validation, encryption, four index tables, the outbox and the audit in one transaction;",
        "- inbox search: `_sort=-sent` reads the `sent` index row of every match before it keeps 20, so",
        "  it grows with the inbox; the dedicated composite index for the inbox comes with the search issue.",
        "",
        "This is the baseline; the targets come in later issues (roadmap).",
        "",
    ]
    # Keep the section bench/security.py writes (it runs after this script in `make bench`).
    old = path.read_text() if path.exists() else ""
    kept = old[old.index(SECURITY_SECTION) :] if SECURITY_SECTION in old else ""
    path.write_text("\n".join(lines) + ("\n" + kept if kept else ""))


if __name__ == "__main__":
    raise SystemExit(main())
