"""Where a hot-path request spends its CPU: a cProfile of reads, searches or creates, in-process.

Seeds a fresh database on the shared PostgreSQL server as bench/hot_path.py does (smaller by
default), then sends ``--requests`` requests of one kind through the real WSGI app (Flask's
test client: the same app, bearer check, router, repository and audit writer as under
gunicorn, without the HTTP parsing) under cProfile, and prints the top functions by
cumulative and by own time. Not a benchmark: a profile is for finding what bounds a figure
that bench/hot_path.py measures.

    .venv/bin/python bench/profile_path.py --kind read --requests 2000
    .venv/bin/python bench/profile_path.py --kind create --requests 1000
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from werkzeug.test import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.hot_path import NAME_QUERY, mint, seed, shared_pg  # noqa: E402
from bench.run import analyze  # noqa: E402
from tests.support import free_port, test_env  # noqa: E402

KINDS = ("read", "create", "name", "inbox", "unread", "chart")


def patient_body(n: int, gp: str) -> bytes:
    return json.dumps(
        {
            "resourceType": "Patient",
            "name": [{"family": f"Prof{n}", "given": ["Bench"]}],
            "birthDate": "1980-04-02",
            "telecom": [{"system": "phone", "value": "555-0100"}, {"system": "email", "value": f"p{n}@mail.example"}],
            "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345"}],
            "generalPractitioner": [{"reference": gp}],
        }
    ).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=KINDS, default="read")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--no-profile", action="store_true", help="only the rate, without cProfile's overhead")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-prof-"))
    with shared_pg() as db_url:
        from fhirserver.migrate import upgrade

        upgrade(db_url)
        env = {**os.environ, **test_env(tmp, db_url, free_port())}
        data = seed(env, patients=args.patients, providers=3, messages=args.messages)
        analyze(db_url)  # statistics, as bench/hot_path.py and autovacuum give them
        os.environ.update(env)
        from fhirserver.wsgi import application

        client = Client(application)
        token = mint(env, data.provider_user_id)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
        ids, prac = data.patients, data.practitioner

        def one(n: int) -> int:
            if args.kind == "create":
                h = {**headers, "Content-Type": "application/fhir+json"}
                return client.post("/fhir/Patient", data=patient_body(n, prac), headers=h).status_code
            path = {
                "read": f"/fhir/Patient/{ids[n % len(ids)]}",
                "name": f"/fhir/Patient?name={NAME_QUERY}",
                "inbox": f"/fhir/Communication?recipient={prac}&status=completed&_sort=-sent&_count=20",
                "unread": "/fhir/Communication/$unread-count",
                "chart": f"/fhir/Communication?subject=Patient/{ids[n % len(ids)]}&_sort=-sent",
            }[args.kind]
            return client.get(path, headers=headers).status_code

        for n in range(50):  # warm: connections, caches, first plans
            one(n)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        if not args.no_profile:
            prof.enable()
        statuses = [one(n) for n in range(50, 50 + args.requests)]
        prof.disable()
        elapsed = time.perf_counter() - t0
        bad = [s for s in statuses if s >= 300]
        how = "without a profiler" if args.no_profile else "under cProfile"
        print(
            f"{args.kind}: {args.requests} requests in {elapsed:.2f} s ({args.requests / elapsed:,.0f}/s "
            f"in one thread, {how}), {len(bad)} not 2xx"
        )
        for order in ("cumulative", "tottime") if not args.no_profile else ():
            out = io.StringIO()
            pstats.Stats(prof, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
