"""Token endpoint throughput for SMART Backend Services: `make bench` runs this after bench/security.py.

One gunicorn server (the worker class and threads of bench/security.py) on a fresh
PostgreSQL database; two backend clients (RS384 and ES384, inline JWKS). Before each wrk
run, this script signs one client assertion per request it may send (each with its own
``jti``: the server accepts a jti once), writes the form bodies to a file, and wrk's Lua
script hands each request the next unused body (each wrk thread takes its own lines), so
wrk signs nothing and costs the server almost no CPU. Every request is a full
``client_credentials`` grant: assertion checks and signature, jti insert, grant row,
audit row, a signed access token. The baseline in the same run is the SMART discovery
document (no database). The runs alternate (A B C A B C), medians reported.

Prints the section (``--output FILE`` also writes it between markers). No assertion
anywhere: the numbers are for reading, the ratios are what the docs quote.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import stop, wait_http, write_section  # noqa: E402
from bench.security import GUNICORN, wrk  # noqa: E402
from tests.support import create_pg_database, drop_pg_database, free_port, test_env  # noqa: E402

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SCOPE = "system/Patient.rs"

LUA_TOKEN = """
-- One pre-made body per request: thread k of n takes lines k, k+n, k+2n, ... of the file.
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
local bodies = {}
local i = 0
function init(args)
  local n, file = tonumber(args[1]), args[2]
  local line_no = 0
  for line in io.lines(file) do
    if line_no % n == tid then bodies[#bodies + 1] = line end
    line_no = line_no + 1
  end
end
request = function()
  i = i + 1
  local body = bodies[((i - 1) % #bodies) + 1]  -- wraps only if the file ran out (then 401s show)
  return wrk.format("POST", "/auth/token", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
"""
LUA_DISCOVERY = """
request = function()
  return wrk.format("GET", "/.well-known/smart-configuration", {["Accept"] = "application/json"})
end
"""


def register(env: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """Two backend clients with inline JWKS: alg -> (client_id, private key)."""
    from joserfc.jwk import ECKey, RSAKey

    from fhirserver.config import load_settings
    from fhirserver.db import make_sessionmaker
    from smart_auth.clients import register_backend_client

    settings = load_settings(env)
    session = make_sessionmaker(settings.database_url)()
    out: dict[str, tuple[str, Any]] = {}
    for alg, key in (("RS384", RSAKey.generate_key(2048)), ("ES384", ECKey.generate_key("P-384"))):
        client_id = f"bench-{alg.lower()}"
        jwks = {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint()}]}
        register_backend_client(session, client_id=client_id, name=client_id, scope=SCOPE, jwks=jwks)
        out[alg] = (client_id, key)
    session.commit()
    session.close()
    return out


def sign_bodies(path: Path, alg: str, client_id: str, key: Any, token_url: str, count: int) -> None:
    """``count`` token-request bodies, each with a freshly signed assertion (unique jti, exp +290 s)."""
    from joserfc import jws

    header = {"alg": alg, "kid": key.thumbprint(), "typ": "JWT"}
    exp = int(time.time()) + 290
    with path.open("w") as out:
        for _ in range(count):
            claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": exp, "jti": uuid.uuid4().hex}
            signed = jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=[alg])
            form = {
                "grant_type": "client_credentials",
                "scope": SCOPE,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": signed,
            }
            out.write(urlencode(form) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--per-run", type=int, default=8_000, help="assertions signed before each token run")
    ap.add_argument("--output", default=None, help="also write the section into this Markdown file")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-backend-"))
    db_url = create_pg_database()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    runs: dict[str, list[dict[str, float]]] = {"discovery": [], "RS384": [], "ES384": []}
    served: dict[str, list[int]] = {"RS384": [], "ES384": []}
    try:
        from fhirserver.migrate import upgrade

        upgrade(db_url)
        env = {**os.environ, **test_env(tmp, db_url, port)}
        backends = register(env)
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        procs.append(
            subprocess.Popen(
                [gunicorn, *GUNICORN, "-b", f"127.0.0.1:{port}", "fhirserver.wsgi:application"], env=env, cwd=ROOT
            )
        )
        wait_http(f"{base}/fhir/metadata")
        token_script, discovery_script = tmp / "token.lua", tmp / "discovery.lua"
        token_script.write_text(LUA_TOKEN)
        discovery_script.write_text(LUA_DISCOVERY)
        bodies = tmp / "bodies.txt"

        def token_run(alg: str, seconds: int) -> dict[str, float]:
            client_id, key = backends[alg]
            sign_bodies(bodies, alg, client_id, key, f"{base}/auth/token", args.per_run)
            return wrk_args(base, token_script, seconds, args.connections, ["2", str(bodies)])

        wrk(base, discovery_script, 3, args.connections)  # warm-up
        token_run("RS384", 3)
        for _ in range(args.rounds):
            runs["discovery"].append(wrk(base, discovery_script, args.seconds, args.connections))
            for alg in ("RS384", "ES384"):
                result = token_run(alg, args.seconds)
                runs[alg].append(result)
                served[alg].append(int(result["rps"] * args.seconds))
    finally:
        stop(procs)
        drop_pg_database(db_url)
        shutil.rmtree(tmp, ignore_errors=True)

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    labels = {
        "discovery": "GET /.well-known/smart-configuration (baseline, no database)",
        "RS384": "POST /auth/token, client_credentials, RS384 assertion",
        "ES384": "POST /auth/token, client_credentials, ES384 assertion",
    }
    rows = "\n".join(
        f"| {label} | {med(k, 'rps'):,.0f} | {med(k, 'p50'):.1f} | {med(k, 'p99'):.1f} "
        f"| {sum(r['errors'] for r in runs[k]):.0f} |"
        for k, label in labels.items()
    )
    ratios = "\n".join(
        f"- {alg}: **{med(alg, 'rps') / med('discovery', 'rps'):.2f}x** the baseline's requests/s, "
        f"p99 **{med(alg, 'p99') / med('discovery', 'p99'):.1f}x** the baseline's."
        for alg in ("RS384", "ES384")
    )
    most = max(max(v) for v in served.values())
    text = f"""## Backend-services tokens (bench/backend_token.py)

Measured on {datetime.now(UTC):%Y-%m-%d}: one gunicorn server (`{" ".join(GUNICORN)}`) on PostgreSQL;
wrk (`-t2 -c{args.connections}`, {args.seconds} s, {args.rounds} turns each, alternating, medians). Each
token request carries its own pre-signed assertion ({args.per_run:,} signed before each run; the most
one run used was {most:,}), so every request is a full grant: assertion checks and signature, the jti
insert, a grant row, an audit row and a signed access token.

| scenario | req/s | p50 ms | p99 ms | non-2xx |
|---|---:|---:|---:|---:|
{rows}

{ratios}
"""
    if args.output:
        write_section(Path(args.output), "backend_token.py", text)
    print(text)
    return 0


def wrk_args(base: str, script: Path, seconds: int, connections: int, script_args: list[str]) -> dict[str, float]:
    """bench.security.wrk, with arguments for the Lua script (after ``--``)."""
    import re

    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), base, "--", *script_args],
        capture_output=True,
        text=True,
        check=True,
    )
    if result.stderr.strip():  # e.g. a Lua error: wrk still "runs", sending nothing useful
        raise RuntimeError(result.stderr)
    out = result.stdout

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if m is None:
            raise RuntimeError(out)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": pct("50"),
        "p99": pct("99"),
        "errors": float(bad.group(1)) if bad else 0.0,
    }


if __name__ == "__main__":
    sys.exit(main())
