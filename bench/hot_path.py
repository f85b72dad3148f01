"""The hot path at realistic size, loaded by wrk: `make bench` runs this (`make bench SOAK=1` adds the soak).

1. Seeding through the repository's own write path (``Repository`` with a system principal,
   large transactions): encryption, index rows (and whatever else the server writes in a
   write's transaction, e.g. mailbox rows) exactly as the server writes them. Default: 1,000
   Patients over 3 providers (each with a portal account), 10,000 Communications over them
   (three of four from the patient to their provider, one of four back, with its outbox row).
   Exactly 10 Patients, all of the first provider, are named ``Xyzzy``, so ``Patient?name=xyz``
   has 10 matches. The seeding rate is printed; ``ANALYZE`` runs after it.
2. The database: a fresh one on the shared PostgreSQL server (dropped after), or with
   ``--private-pg`` a private PostgreSQL instance (``initdb`` as the ``postgres`` user on its
   own port, removed after): the 1,000,000-message size belongs there, never on the shared
   server CI uses:
   ``bench/hot_path.py --private-pg --patients 10000 --providers 50 --messages 1000000``.
3. The real server under gunicorn (the settings of bench/security.py), and beside it under the
   same settings the bare Flask endpoint of bench/run.py (one primary-key SELECT, the bytes).
4. wrk (Debian's package; it costs the server almost no CPU) with Lua scripts that rotate over
   the first provider's patients, or build one body per request. Each row: throughput at
   concurrency 8 (``-t2 -c8``), latency p50/p99 at concurrency 1 (``-t1 -c1``, so that it does
   not measure queueing on 2 cores), and the PSS of gunicorn's master and workers sampled under
   the concurrency-8 load. Tokens are minted as ``fhirserver token`` mints them
   (``smart_auth.grants.issue_token``), fresh before every wrk run (they live at most an hour).
5. ``--soak``: read and create together for 10 minutes at 80% of the peak measured in the same
   run (each gets half of that budget), reporting errors and RSS growth. Debian's wrk 4.1 has
   no ``-R`` (rate): the Lua scripts pace each connection with wrk's ``delay()`` hook, calibrated
   in two short runs to the target rate.

Writes its section between the markers in docs/benchmarks.md, after bench/security.py's marker
(bench/run.py keeps everything from there on). No assertion anywhere: the numbers are for
reading; the ratios in the same run, and against the fixed Medplum 4.5.2 figures of issue 7,
are what the docs quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import analyze, stop, wait_http, write_section  # noqa: E402
from bench.security import GUNICORN  # noqa: E402
from tests.support import create_pg_database, drop_pg_database, free_port, test_env  # noqa: E402

NAME_MATCH, NAME_QUERY, NAME_MATCHES = "Xyzzy", "xyz", 10
COMMIT_EVERY = 1000
# Medplum 4.5.2 on this machine kind (2 cores, PostgreSQL 15 on the host), concurrency 8: the
# fixed reference figures of issue 7 (Medplum is not rebuilt here).
MEDPLUM = {"read": (848, 27), "create": (250, 749), "name": (141, 97)}
MEDPLUM_PSS_MB = 735


# -- the database -----------------------------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb: install postgresql")
    return found[-1].parent


def _as_postgres(*cmd: str) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, stdout=subprocess.DEVNULL)


@contextmanager
def private_pg(keep: Path | None = None, reuse: Path | None = None) -> Iterator[str]:
    """A PostgreSQL instance of this run's own (initdb as postgres, its own port), removed after.

    ``keep``: the instance lives in that folder and stays after the run (stopped), so that a
    later run can measure a newer tree on the same seeded data with ``reuse`` (started on a new
    port and migrated; seeding 1M messages takes most of an hour).
    """
    pg = _pg_bin()
    home = reuse or keep or Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if keep is not None and reuse is None:
        home.mkdir(parents=True, exist_ok=False)
    shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()
    if reuse is None:
        _as_postgres(str(pg / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c max_connections=100"
    started = False
    try:
        _as_postgres(str(pg / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-o", opts, "-w", "start")
        started = True
        import psycopg

        if reuse is None:
            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", autocommit=True) as conn:
                conn.execute('CREATE DATABASE "bench"')
        print(f"private PostgreSQL {pg.parent.name} on port {port}", file=sys.stderr)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/bench"
    finally:
        if started:
            _as_postgres(str(pg / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        if keep is None and reuse is None:
            shutil.rmtree(home, ignore_errors=True)


SEEDED = "seeded.json"  # in a --keep-pg folder: what was seeded, for --reuse-pg


def tree_id() -> str:
    """The commit measured (with ``+changes`` when the work tree differs from it)."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    return (rev.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")


@contextmanager
def shared_pg() -> Iterator[str]:
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


# -- seeding ----------------------------------------------------------------------------------


@dataclass
class Seeded:
    provider_user_id: str
    practitioner: str  # Practitioner/<id> of the first provider
    patients: list[str]  # the first provider's Patient ids
    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    seeded_on: str = ""  # when and on which tree (a run with --reuse-pg measures a later tree)


def install_optional_ports() -> None:
    """Wire in the ports a newer tree has (the mailbox users: the rules then write mailbox rows),
    so that the same script seeds the tree before and after the hot-path work lands."""
    try:
        from fhirserver.core.ports import install_mailbox_users  # type: ignore[attr-defined,unused-ignore]
        from smart_auth import mailbox_users  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return
    install_mailbox_users(mailbox_users)


def seed(env: dict[str, str], *, patients: int, providers: int, messages: int, first_unread: int = 0) -> Seeded:
    """Patients over providers, their accounts, and messages, through the repository in large transactions.

    ``first_unread``: then more patient messages to the first provider until that many of
    theirs are unread (the unread count's worst case), on top of ``messages``.
    """
    from fhirserver.config import load_settings
    from fhirserver.core.ports import install_portal_accounts
    from fhirserver.core.principal import system_principal
    from fhirserver.core.repository import Repository
    from fhirserver.db import make_sessionmaker
    from smart_auth import accounts
    from tests.factories import message_json, patient_json, practitioner_json

    install_portal_accounts(accounts)
    install_optional_ports()
    settings = load_settings(env)
    cheap = settings.with_(argon2_time_cost=1, argon2_memory_kib=1024)
    session = make_sessionmaker(settings.database_url)()
    repo = Repository(session, settings, system_principal("bench"))

    def user(role: str, fhir_user: str) -> str:
        return accounts.create_user(
            session,
            username=f"bench{role}{uuid.uuid4().hex[:12]}",
            password=secrets.token_urlsafe(16),
            role=role,
            fhir_user=fhir_user,
            settings=cheap,
            enforce_policy=False,
        ).id

    t0 = time.perf_counter()
    pracs, prov_users = [], []
    for p in range(providers):
        prac = f"Practitioner/{repo.create('Practitioner', practitioner_json(family=f'Bench{p}')).res_id}"
        pracs.append(prac)
        prov_users.append(user("provider", prac))
    session.commit()
    owner: list[tuple[str, str]] = []  # (Patient/<id>, its Practitioner/<id>)
    named = 0
    for i in range(patients):
        gp = pracs[i % providers]
        family = f"Fam{i:07d}"
        if i % providers == 0 and named < NAME_MATCHES:
            family, named = NAME_MATCH, named + 1
        pid = repo.create("Patient", patient_json([gp], family=family, given=f"Giv{i:07d}")).res_id
        user("patient", f"Patient/{pid}")
        owner.append((f"Patient/{pid}", gp))
        if (i + 1) % COMMIT_EVERY == 0:
            session.commit()
    session.commit()
    t1 = time.perf_counter()
    for j in range(messages):
        pat, prac = owner[j % len(owner)]
        topic, body = f"Seeded message {j}", f"Message body number {j}, as a patient would write it."
        if j % 4 == 3:  # the provider writes back: subject set by the rules, an outbox row
            repo.create("Communication", message_json(prac, pat, topic=topic, body=body))
        else:
            repo.create("Communication", message_json(pat, prac, topic=topic, body=body))
        if (j + 1) % COMMIT_EVERY == 0:
            session.commit()
            if (j + 1) % (COMMIT_EVERY * 50) == 0:
                rate = (j + 1) / (time.perf_counter() - t1)
                print(f"  {j + 1:,} messages, {rate:,.0f}/s", file=sys.stderr)
    session.commit()
    mine = [p for p, gp in owner if gp == pracs[0]]
    unread = sum(1 for j in range(messages) if j % 4 != 3 and owner[j % len(owner)][1] == pracs[0])
    extra = max(0, first_unread - unread)
    for k in range(extra):
        repo.create("Communication", message_json(mine[k % len(mine)], pracs[0], topic=f"Extra message {k}"))
        if (k + 1) % COMMIT_EVERY == 0:
            session.commit()
    session.commit()
    t2 = time.perf_counter()
    session.close()
    first = [p.split("/", 1)[1] for p in mine]
    return Seeded(
        provider_user_id=prov_users[0],
        practitioner=pracs[0],
        patients=first,
        seconds={"patients": t1 - t0, "messages": t2 - t1},
        counts={
            "patients": patients,
            "providers": providers,
            "messages": messages + extra,
            "first_unread": unread + extra,
        },
    )


def mint(env: dict[str, str], user_id: str) -> str:
    """A provider access token of a grant of its own, as ``fhirserver token`` mints it (one hour)."""
    from fhirserver.config import load_settings
    from fhirserver.db import make_sessionmaker
    from smart_auth.accounts import get_user
    from smart_auth.grants import issue_token
    from tests.factories import PROVIDER_SCOPE

    settings = load_settings(env)
    session = make_sessionmaker(settings.database_url)()
    try:
        user = get_user(session, user_id)
        if user is None:
            raise RuntimeError("the seeded provider account is gone")
        token = issue_token(session, settings, user=user, client_id="bench", scope=PROVIDER_SCOPE, lifetime=3600)
        session.commit()
        return token
    finally:
        session.close()


# -- wrk --------------------------------------------------------------------------------------

LUA = """
-- Rotates over paths; a POST gets a body of its own per request. Thread k of n starts at k.
local paths = {%(paths)s}
local method, token, gp = "%(method)s", "%(token)s", "%(gp)s"
local pause = %(pause)d
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local n = 0
request = function()
  n = n + 1
  local headers = {["Authorization"] = "Bearer " .. token, ["Accept"] = "application/fhir+json"}
  local path = paths[((n + (tid or 0) * 7919) %% #paths) + 1]
  if method == "POST" then
    headers["Content-Type"] = "application/fhir+json"
    local tag = (tid or 0) .. "x" .. n .. "x" .. math.random(1000000)
    local body = '{"resourceType":"Patient","name":[{"family":"Wrk' .. tag .. '","given":["Bench"]}],' ..
      '"birthDate":"1980-04-02","telecom":[{"system":"phone","value":"555-0100"},' ..
      '{"system":"email","value":"wrk' .. tag .. '@mail.example"}],' ..
      '"address":[{"line":["1 Main St"],"city":"Springfield","postalCode":"12345"}],' ..
      '"generalPractitioner":[{"reference":"' .. gp .. '"}]}'
    return wrk.format("POST", path, headers, body)
  end
  return wrk.format("GET", path, headers)
end
if pause > 0 then
  function delay()
    return pause
  end
end
"""


@dataclass
class Load:
    """One scenario: the requests wrk sends."""

    key: str
    label: str
    paths: list[str]
    method: str = "GET"
    bare: bool = False


def lua(load: Load, token: str, gp: str, pause_ms: int = 0) -> str:
    paths = ", ".join(f'"{p}"' for p in load.paths)
    return LUA % {"paths": paths, "method": load.method, "token": token, "gp": gp, "pause": pause_ms}


def _ms(value: str, unit: str) -> float:
    v = float(value)
    return {"us": v / 1000, "ms": v, "s": v * 1000, "m": v * 60_000}[unit]


def run_wrk(base: str, script: Path, *, seconds: int, threads: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    pcts = {p: re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s|m)\b", out) for p in ("50", "99")}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if not rps or not total or not all(pcts.values()):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)),
        "p50": _ms(*pcts["50"].groups()),  # type: ignore[union-attr]
        "p99": _ms(*pcts["99"].groups()),  # type: ignore[union-attr]
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "socket": float(sum(int(x) for x in sock.groups())) if sock else 0.0,
    }


# -- memory -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kib(path: str, key: str) -> int:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(master: int) -> dict[str, float]:
    """PSS and RSS (MB) of a gunicorn master and its workers, summed over the processes."""
    pids = [master, *_children(master)]
    pss = sum(_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
    return {"pss": pss / 1024, "rss": rss / 1024, "procs": float(len(pids)), "load": os.getloadavg()[0]}


@contextmanager
def sampling(master: int, every: float = 1.0) -> Iterator[list[dict[str, float]]]:
    """Samples memory() in the background while the body runs (the load is on)."""
    samples: list[dict[str, float]] = []
    done = threading.Event()

    def loop() -> None:
        while not done.wait(every):
            samples.append(memory(master))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield samples
    finally:
        done.set()
        t.join()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Row:
    load: Load
    c8: dict[str, float]
    c1: dict[str, float]
    pss: float
    rss: float
    machine_load: float  # the machine's 1-minute load average, the largest seen during the c8 run


def preflight(load: Load, base: str, token: str) -> str:
    """One request of the row before wrk runs: its status and, for a search, its entries (for the reader)."""
    import json
    import urllib.request

    if load.method != "GET":
        return "not sent (wrk sends the bodies)"
    req = urllib.request.Request(base + load.paths[0], headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read())
        status = resp.status
    if body.get("resourceType") == "Bundle":
        matches = [e for e in body.get("entry", []) if (e.get("search") or {}).get("mode", "match") == "match"]
        return f"{status}, {len(matches)} matches on the first page"
    if body.get("resourceType") == "Parameters":
        return f"{status}, {body['parameter'][0]}"
    return f"{status}"


def measure(
    load: Load,
    base: str,
    master: int,
    token: Callable[[], str],
    gp: str,
    tmp: Path,
    seconds: int,
    warmup: int,
) -> Row:
    script = tmp / f"{load.key}.lua"
    tok = token()
    print(f"{load.label}: first request {preflight(load, base, tok)}", file=sys.stderr)
    script.write_text(lua(load, tok, gp))
    if warmup:
        run_wrk(base, script, seconds=warmup, threads=2, connections=8)
    with sampling(master) as samples:
        c8 = run_wrk(base, script, seconds=seconds, threads=2, connections=8)
    c1 = run_wrk(base, script, seconds=seconds, threads=1, connections=1)
    pss = max((s["pss"] for s in samples), default=memory(master)["pss"])
    rss = max((s["rss"] for s in samples), default=memory(master)["rss"])
    row = Row(load, c8, c1, pss, rss, max((s["load"] for s in samples), default=os.getloadavg()[0]))
    print(
        f"{load.label}: {c8['rps']:,.0f}/s (c8 p99 {c8['p99']:.1f} ms), c1 p50 {c1['p50']:.1f} / p99 "
        f"{c1['p99']:.1f} ms, errors {c8['non2xx'] + c8['socket'] + c1['non2xx'] + c1['socket']:.0f}, "
        f"PSS {pss:.0f} MB",
        file=sys.stderr,
    )
    return row


def soak(
    base: str,
    master: int,
    token: Callable[[], str],
    gp: str,
    tmp: Path,
    loads: dict[str, Load],
    peak: dict[str, float],
    minutes: float,
) -> dict[str, Any]:
    """Read and create together at 80% of peak (half the budget each), paced with wrk's delay()."""
    conns = 4
    targets = {k: 0.8 * 0.5 * peak[k] for k in ("read", "create")}
    pause = {k: max(0.0, conns / targets[k] * 1000 - 8.0) for k in targets}  # first guess: 8 ms service time

    def both(seconds: int) -> dict[str, dict[str, float]]:
        tok = token()
        procs: dict[str, threading.Thread] = {}
        outs: dict[str, dict[str, float]] = {}
        for k in targets:
            script = tmp / f"soak-{k}.lua"
            script.write_text(lua(loads[k], tok, gp, round(pause[k])))
            procs[k] = threading.Thread(
                target=lambda k=k, script=script: outs.__setitem__(
                    k, run_wrk(base, script, seconds=seconds, threads=1, connections=conns)
                )
            )
            procs[k].start()
        for t in procs.values():
            t.join()
        return outs

    for _ in range(2):  # calibrate the pause to the target rates
        got = both(15)
        for k in targets:
            pause[k] = max(0.0, pause[k] + (conns / targets[k] - conns / max(got[k]["rps"], 0.1)) * 1000)
    before = memory(master)
    with sampling(master, every=10) as samples:
        outs = both(int(minutes * 60))
    after = memory(master)
    first = samples[2] if len(samples) > 2 else before  # after the first 30 s of load
    return {
        "minutes": minutes,
        "targets": targets,
        "pause": pause,
        "connections": conns,
        "outs": outs,
        "rss_start": first["rss"],
        "rss_end": after["rss"],
        "rss_max": max((s["rss"] for s in samples), default=after["rss"]),
        "pss_end": after["pss"],
        "rss_before": before["rss"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=1000, help="1,000 (default) or 10,000")
    ap.add_argument("--providers", type=int, default=3)
    ap.add_argument("--messages", type=int, default=10_000, help="Communications (1,000,000: use --private-pg)")
    ap.add_argument(
        "--first-unread", type=int, default=0, help="seed until the first provider has this many unread (22500)"
    )
    ap.add_argument("--private-pg", action="store_true", help="a private PostgreSQL instance (initdb), removed after")
    ap.add_argument("--keep-pg", type=Path, help="with --private-pg: keep the seeded instance in this new folder")
    ap.add_argument(
        "--reuse-pg", type=Path, help="measure on an instance kept by --keep-pg (migrated to this tree; no seeding)"
    )
    ap.add_argument("--seconds", type=int, default=10, help="per wrk run")
    ap.add_argument("--warmup", type=int, default=3, help="seconds of wrk before each row's runs")
    ap.add_argument("--soak", action="store_true", help="then 10 minutes of read + create at 80%% of peak")
    ap.add_argument("--soak-minutes", type=float, default=10.0)
    ap.add_argument(
        "--wait-quiet",
        type=int,
        default=0,
        metavar="SECONDS",
        help="before the rows, wait up to this long for the 1-minute load average to fall below 1.0",
    )
    ap.add_argument("--only", default="", help="comma-separated row keys (bare,read,name,inbox,unread,chart,create)")
    ap.add_argument(
        "--section",
        default="hot_path.py",
        help="docs/benchmarks.md section to write (runs at other sizes keep their own: hot_path.py 1M)",
    )
    ap.add_argument("--note", default="", help="a line for the section (what tree was measured, say)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"), help="'' prints only")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if (args.keep_pg or args.reuse_pg) and not args.private_pg:
        print("--keep-pg and --reuse-pg go with --private-pg", file=sys.stderr)
        return 2
    if args.private_pg and os.geteuid() != 0:
        print("--private-pg runs initdb as the postgres user: run as root", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-hot-"))
    load_before = os.getloadavg()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        pg = private_pg(args.keep_pg, args.reuse_pg) if args.private_pg else shared_pg()
        with pg as db_url:
            from fhirserver.migrate import upgrade

            upgrade(db_url)
            port, bare_port = free_port(), free_port()
            env = {**os.environ, **test_env(tmp, db_url, port)}
            if args.reuse_pg:
                data = Seeded(**json.loads((args.reuse_pg / SEEDED).read_text()))
                print(f"reusing the data seeded on {data.seeded_on}", file=sys.stderr)
            else:
                data = seed(
                    env,
                    patients=args.patients,
                    providers=args.providers,
                    messages=args.messages,
                    first_unread=args.first_unread,
                )
                data.seeded_on = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, tree {tree_id()}"
                if args.keep_pg:
                    (args.keep_pg / SEEDED).write_text(json.dumps(asdict(data)))
                s = data.seconds
                print(
                    f"seeded {args.patients:,} patients (with accounts) in {s['patients']:.0f} s "
                    f"({args.patients / s['patients']:,.0f}/s), {args.messages:,} messages in {s['messages']:.0f} s "
                    f"({args.messages / max(s['messages'], 1e-9):,.0f}/s)",
                    file=sys.stderr,
                )
            analyze(db_url)
            gunicorn = str(Path(sys.executable).parent / "gunicorn")
            for p, app in ((port, "fhirserver.wsgi:application"), (bare_port, "bench.bare_app:app")):
                procs.append(subprocess.Popen([gunicorn, *GUNICORN, "-b", f"127.0.0.1:{p}", app], env=env, cwd=ROOT))
            base, bare = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
            wait_http(base + "/fhir/metadata")
            wait_http(f"{bare}/bare/Patient/{data.patients[0]}")
            masters = {base: procs[0].pid, bare: procs[1].pid}
            deadline = time.time() + args.wait_quiet
            while os.getloadavg()[0] >= 1.0 and time.time() < deadline:
                time.sleep(5)
            load_before = os.getloadavg()
            ids, prac = data.patients, data.practitioner
            loads = [
                Load("bare", "bare Flask endpoint (stored bytes)", [f"/bare/Patient/{i}" for i in ids], bare=True),
                Load("read", "read Patient/{id}", [f"/fhir/Patient/{i}" for i in ids]),
                Load(
                    "name",
                    f"search Patient?name={NAME_QUERY} ({NAME_MATCHES} matches)",
                    [f"/fhir/Patient?name={NAME_QUERY}"],
                ),
                Load(
                    "inbox",
                    "inbox: Communication?recipient&status=completed&_sort=-sent&_count=20",
                    [f"/fhir/Communication?recipient={prac}&status=completed&_sort=-sent&_count=20"],
                ),
                Load("unread", "Communication/$unread-count", ["/fhir/Communication/$unread-count"]),
                Load(
                    "chart",
                    "chart: Communication?subject=Patient/x&_sort=-sent",
                    [f"/fhir/Communication?subject=Patient/{i}&_sort=-sent" for i in ids],
                ),
                Load("create", "create Patient (a body per request)", ["/fhir/Patient"], method="POST"),
            ]
            only = {k for k in args.only.split(",") if k}
            by_key = {ld.key: ld for ld in loads}

            def token() -> str:
                return mint(env, data.provider_user_id)

            rows = [
                measure(
                    ld,
                    bare if ld.bare else base,
                    masters[bare if ld.bare else base],
                    token,
                    prac,
                    tmp,
                    args.seconds,
                    args.warmup,
                )
                for ld in loads
                if not only or ld.key in only
            ]
            soaked = None
            if args.soak:
                peak = {r.load.key: r.c8["rps"] for r in rows}
                if {"read", "create"} <= peak.keys():
                    soaked = soak(base, masters[base], token, prac, tmp, by_key, peak, args.soak_minutes)
                else:
                    print("--soak needs the read and create rows", file=sys.stderr)
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(args, data, rows, soaked, load_before, os.getloadavg())
    if args.output:
        write_section(Path(args.output), args.section, text)
    print(text)
    return 0


# -- the report -------------------------------------------------------------------------------


def command(args: argparse.Namespace) -> str:
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith(("--output", "--note")):
            skip = a in ("--output", "--note")  # its value is the next argument
            continue
        argv.append(a)
    return " ".join([".venv/bin/python", "bench/hot_path.py", *map(shlex.quote, argv)])


def report(
    args: argparse.Namespace,
    data: Seeded,
    rows: list[Row],
    soaked: dict[str, Any] | None,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> str:
    by = {r.load.key: r for r in rows}
    s = data.seconds

    def errors(r: Row) -> float:
        return sum(x["non2xx"] + x["socket"] for x in (r.c8, r.c1))

    table = "\n".join(
        f"| {r.load.label} | {r.c8['rps']:,.0f} | {r.c8['p99']:.1f} | {r.c1['p50']:.1f} | {r.c1['p99']:.1f} "
        f"| {r.pss:,.0f} | {errors(r):.0f} |"
        for r in rows
    )
    ratios = []
    if "read" in by and "bare" in by:
        ratios.append(
            f"- read vs the bare endpoint (same run): **{by['read'].c8['rps'] / by['bare'].c8['rps']:.2f}x** "
            "(target: >= 0.50x)"
        )
    medplum_rows = []
    for key, target in (("read", "1.5x"), ("create", "2x"), ("name", "2x")):
        if key in by:
            rps, p99 = MEDPLUM[key]
            r = by[key]
            medplum_rows.append(
                f"| {r.load.label} | {rps:,}/s, p99 {p99} ms | {r.c8['rps']:,.0f}/s, p99 {r.c8['p99']:.0f} ms "
                f"| **{r.c8['rps'] / rps:.2f}x** | >= {target} |"
            )
    if "read" in by:
        pss = max(r.pss for r in rows if not r.load.bare)
        medplum_rows.append(
            f"| app memory under load (PSS, master + workers) | {MEDPLUM_PSS_MB} MB | {pss:,.0f} MB "
            f"| **{pss / MEDPLUM_PSS_MB:.2f}x** | <= 0.33x |"
        )
    medplum_text = ""
    if medplum_rows:  # the inbox rows have no Medplum figure
        medplum_text = (
            "Against Medplum 4.5.2 (issue 7's fixed reference figures, same machine kind, concurrency 8;"
            " not rebuilt):\n\n| | Medplum 4.5.2 | ours | ours / Medplum | target |\n|---|---|---|---:|---:|\n"
            + "\n".join(medplum_rows)
        )
    soak_text = ""
    if soaked:
        o = soaked["outs"]
        bad = {k: o[k]["non2xx"] + o[k]["socket"] for k in o}
        errs = sum(bad.values())
        growth = (soaked["rss_end"] - soaked["rss_start"]) / soaked["rss_start"] * 100
        soak_text = f"""
Soak ({soaked["minutes"]:g} minutes, read and create together, each paced to half of 80% of its peak
above: {soaked["targets"]["read"]:,.0f}/s and {soaked["targets"]["create"]:,.0f}/s; Debian's wrk 4.1 has no
`-R`, so each of {soaked["connections"]} connections per wrk waits a calibrated pause in wrk's `delay()` hook,
{soaked["pause"]["read"]:.0f} ms and {soaked["pause"]["create"]:.0f} ms):

| | read | create |
|---|---:|---:|
| achieved req/s | {o["read"]["rps"]:,.0f} | {o["create"]["rps"]:,.0f} |
| requests | {o["read"]["requests"]:,.0f} | {o["create"]["requests"]:,.0f} |
| p50 / p99 ms | {o["read"]["p50"]:.1f} / {o["read"]["p99"]:.1f} | {o["create"]["p50"]:.1f} / {o["create"]["p99"]:.1f} |
| non-2xx + socket errors | {bad["read"]:.0f} | {bad["create"]:.0f} |

- errors: **{errs:.0f}** (target 0); RSS of master + workers {soaked["rss_start"]:,.0f} MB after 30 s of
  load, {soaked["rss_end"]:,.0f} MB at the end (max {soaked["rss_max"]:,.0f} MB): growth **{growth:+.1f}%**
  (target < 10%).
"""
    db = (
        "a private PostgreSQL instance (initdb, own port)"
        if args.private_pg
        else "a fresh database on the shared PostgreSQL server"
    )
    reused = ""
    if args.reuse_pg:
        reused = f" on {data.seeded_on}, kept (`--keep-pg`) and migrated to the tree measured here"
    c = data.counts
    size = f"{c['patients']:,} Patients, {c['providers']} providers, {c['messages']:,} Communications"
    return f"""## The hot path: {size} (bench/hot_path.py)

Measured on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.machine()}, {os.cpu_count()} cores,
Python {platform.python_version()}, {db} on the same machine; 1-minute load average
{load_before[0]:.2f} before the rows, {max([r.machine_load for r in rows], default=0):.2f} at most during them,
{load_after[0]:.2f} after (the figures include this run's own load: 8 connections on 2 cores).

Reproduce: `{command(args)}`{chr(10) + chr(10) + args.note if args.note else ""}

- Data, seeded through `Repository` (system principal, {COMMIT_EVERY:,} writes per transaction){reused}:
  {data.counts["patients"]:,} Patients over {data.counts["providers"]} providers, each with a portal account
  ({s["patients"]:.0f} s: **{data.counts["patients"] / s["patients"]:,.0f} patients/s** with their accounts);
  {data.counts["messages"]:,} Communications, three in four from the patient, one in four from the provider
  ({s["messages"]:.0f} s: **{data.counts["messages"] / max(s["messages"], 1e-9):,.0f} messages/s**). `ANALYZE` after.
  The first provider has {data.counts.get("first_unread", 0):,} unread messages.
- The first provider's token reads its {len(data.patients):,} patients in rotation (read, chart);
  {NAME_MATCHES} of them are named {NAME_MATCH} (`name={NAME_QUERY}`); the inbox and unread count are its own.
- gunicorn `{" ".join(GUNICORN)}` for the server and the bare endpoint alike.
- wrk: {args.warmup} s warm-up, then `-t2 -c8` for {args.seconds} s (throughput; PSS of master + workers
  sampled each second, the largest shown), then `-t1 -c1` for {args.seconds} s (latency).

| scenario | req/s (c8) | p99 ms (c8) | p50 ms (c1) | p99 ms (c1) | PSS MB | errors |
|---|---:|---:|---:|---:|---:|---:|
{table}

{chr(10).join(ratios)}

{medplum_text}
{soak_text}"""


if __name__ == "__main__":
    sys.exit(main())
