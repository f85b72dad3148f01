"""A bounded fuzz of /fhir through a real gunicorn: no 5xx, every error an OperationOutcome.

A few thousand seeded random requests (FUZZ_REQUESTS, default 3,000) against
``fhirserver serve`` with 2 workers x 4 threads: odd methods, paths under /fhir (real and
unknown types and ids, percent-encoded control bytes, overlong segments, ``$operations``,
``_history``), random query strings, headers (Accept, Content-Type and charset, If-Match,
X-Request-Id, oversized values), bodies (valid and broken JSON, non-UTF-8, deep nesting,
too large), with no token, a garbage token or real tokens of four roles. About one in
twelve is malformed on the wire (sent over a raw socket, so that it reaches gunicorn's
parser as it is); about one in seven is what a real client would send (a create, read,
search or update), so that the success paths run too. Asserted: no status >= 500; every
status >= 400 has an OperationOutcome body (parsed); the server's logs hold no traceback
and no line that is not a whole record.

The seed is printed (``-s`` shows it; a failure names it). Replay with FUZZ_SEED=<seed>;
FUZZ_CONCURRENCY=1 also replays the order (the ids of the world differ per run, the shape
of every request does not). PostgreSQL and SQLite both run.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from fhirserver.gunicorn_worker import LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_LINE
from tests.factories import message_json, patient_json, practitioner_json
from tests.fhir.test_gunicorn_errors import GunicornServer, World, gunicorn_server, make_world, send_raw

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
COUNT = int(os.environ.get("FUZZ_REQUESTS", "3000"))
CONCURRENCY = int(os.environ.get("FUZZ_CONCURRENCY", "4"))
FHIR_JSON = "application/fhir+json"

TYPES = ["Patient", "Practitioner", "Organization", "Communication", "AuditEvent"]
ODD_TYPES = ["Observation", "patient", "Pat%00ient", "%e2%80%a8", "Patient%0d%0a", "_history", "$everything", ""]
METHODS = ["GET"] * 8 + ["POST"] * 5 + ["PUT"] * 3 + ["DELETE"] * 2 + ["PATCH", "HEAD", "OPTIONS"]
ODD_METHODS = ["TRACE", "PROPFIND", "CONNECT", "MKCOL", "LOCK", "SEARCH", "QUERY", "FOO", "M-SEARCH", "get", "Get"]
CONTROL_BYTES = [f"%{b:02x}" for b in [*range(0x20), 0x7F, 0x80, 0x85, 0x9F, 0xFF]] + ["%e2%80%a8", "%e2%80%a9"]
SEARCH_PARAMS = ["name", "family", "birthdate", "identifier", "_id", "subject", "recipient", "sender", "category"]
SEARCH_PARAMS += ["_count", "_sort", "_cursor", "_format", "_include", "_revinclude", "_elements", "_summary"]
SEARCH_PARAMS += ["_lastUpdated", "status", "sent", "unknown-param", "name:exact", "name:contains", "%ff", "%00"]
VALUES = ["Smith", "1980", "ge1980-01-01", "lt2030", "-sent", "sent", "0", "-1", "abc", "100000", "json"]
VALUES += ["xml", "*", "Patient:general-practitioner", "true", "count", "%0d%0a", "%ff%fe", "%e2%80%a8", ""]
VALUES += ["http://fhir-webmail.example/CodeSystem/communication-category|webmail", "a,b,c", "eq", "%25", "+"]
ACCEPTS = [FHIR_JSON, "application/json", "application/xml", "application/fhir+xml", "*/*", "text/html", ""]
ACCEPTS += ["garbage/;;", f"{FHIR_JSON}; fhirVersion=4.0", "application/json, text/html;q=0.1", "x" * 3000]
CONTENT_TYPES = [FHIR_JSON, "application/json", f"{FHIR_JSON}; charset=utf-8", f"{FHIR_JSON}; charset=latin-1"]
CONTENT_TYPES += ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ";;;", ""]
CONTENT_TYPES += ["multipart/form-data; boundary=zz", "application/json-patch+json", "application/fhir+json;charset="]
IF_MATCH = ['W/"1"', '"1"', 'W/"2"', 'W/"999999"', "*", "garbage", 'W/""', 'W/"' + "9" * 200 + '"']
REQUEST_IDS = ["fuzz-1", "a" * 64, "a" * 65, "bad id", "%0d%0a", "x;y", "é".encode().decode("latin-1"), ""]


@dataclass
class Case:
    """One request, kept for the failure report (enough to replay it by hand)."""

    index: int
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes | None = None  # sent over a socket as is

    def wire(self) -> bytes:
        """The request as raw bytes (for bodies the server may answer before reading)."""
        head = f"{self.method} {self.target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        return head.encode("latin-1") + f"Content-Length: {len(self.body)}\r\n\r\n".encode() + self.body

    def describe(self) -> str:
        if self.raw is not None:
            return f"#{self.index} raw {self.raw[:300]!r}{'...' if len(self.raw) > 300 else ''}"
        headers = {k: (v if len(v) < 80 else f"{v[:60]}...({len(v)} chars)") for k, v in self.headers.items()}
        body = f"{self.body[:200]!r}{'...' if len(self.body) > 200 else ''} ({len(self.body)} bytes)"
        target = self.target if len(self.target) < 300 else f"{self.target[:250]}...({len(self.target)} chars)"
        return f"#{self.index} {self.method} {target} headers={headers} body={body}"


class Fuzzer:
    """Builds the cases from one seeded generator, in order, before any is sent."""

    def __init__(self, rng: random.Random, world: World) -> None:
        self.rng = rng
        self.world = world

    def pick(self, options: list[Any]) -> Any:
        return self.rng.choice(options)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    # -- paths and query strings

    def an_id(self, res_type: str) -> str:
        r = self.rng.random()
        if r < 0.45 and res_type in self.world.ids:
            return self.world.ids[res_type]
        if r < 0.6:
            return self.rng.choice(list(self.world.ids.values()))
        if r < 0.7:
            return f"{self.rng.getrandbits(128):032x}"
        if r < 0.8:
            return "x" + "".join(self.pick(CONTROL_BYTES) for _ in range(self.rng.randint(1, 4)))
        if r < 0.86:
            return "a" * self.pick([65, 300, 2000, 7000, 8200])
        return self.pick(["%2e%2e", "%2e", "%2F", "a%20b", "%C3%A9", ";x", "!", "*", "%25", "%", "-", "%ff%fe"])

    def path(self) -> str:
        res_type = self.pick(TYPES) if self.chance(0.85) else self.pick(ODD_TYPES)
        rid = self.an_id(res_type)
        shape = self.rng.random()
        if shape < 0.06:
            return self.pick(["/fhir/metadata", "/fhir", "/fhir/", "/fhir//Patient", "/fhir/metadata/x"])
        if shape < 0.3:
            return f"/fhir/{res_type}"
        if shape < 0.55:
            return f"/fhir/{res_type}/{rid}"
        if shape < 0.63:
            return f"/fhir/{res_type}/_search"
        if shape < 0.71:
            return f"/fhir/{res_type}/{rid}/_history"
        if shape < 0.77:
            return f"/fhir/{res_type}/{rid}/_history/{self.pick(['1', '2', '0', '-1', 'x', '99999999999999999999'])}"
        if shape < 0.9:
            op = self.pick(["$mark-read", "$mark-unread", "$grant-portal-access", "$everything", "$", "$%0a"])
            return f"/fhir/{res_type}/{rid}/{op}"
        if shape < 0.95:
            return f"/fhir/{res_type}/{self.pick(['$unread-count', '$validate', '$meta', '$x'])}"
        segments = [self.pick([res_type, rid, "_history", "$op", "a" * 300]) for _ in range(self.rng.randint(3, 8))]
        return "/fhir/" + "/".join(segments)

    def query(self) -> str:
        if self.chance(0.45):
            return ""
        params = []
        for _ in range(self.rng.randint(1, 6)):
            value = self.pick(VALUES)
            if self.chance(0.05):
                value = "v" * self.pick([500, 4000, 9000])
            params.append(f"{self.pick(SEARCH_PARAMS)}={value}")
        if self.chance(0.05):
            params.append(self.pick(["&&", "=", "==", "a", "%", "=x"]))
        return "?" + "&".join(params)

    # -- headers and bodies

    def headers(self, method: str) -> dict[str, str]:
        headers: dict[str, str] = {}
        auth = self.rng.random()
        if auth < 0.55:
            headers["Authorization"] = f"Bearer {self.pick(list(self.world.tokens.values()))}"
        elif auth < 0.7:
            headers["Authorization"] = self.pick(
                ["Bearer garbage", "Bearer", "Basic dXNlcjpwYXNz", "Bearer a.b.c", "bearer x y", "Bearer " + "t" * 9000]
            )
        if self.chance(0.4):
            headers["Accept"] = self.pick(ACCEPTS)
        if method in ("POST", "PUT", "PATCH") or self.chance(0.05):
            headers["Content-Type"] = self.pick(CONTENT_TYPES) if self.chance(0.4) else FHIR_JSON
        if self.chance(0.15):
            headers["If-Match"] = self.pick(IF_MATCH)
        if self.chance(0.2):
            headers["X-Request-Id"] = self.pick(REQUEST_IDS)
        if self.chance(0.05):
            headers["Prefer"] = self.pick(["return=minimal", "return=OperationOutcome", "handling=strict", "x" * 500])
        if self.chance(0.03):
            headers["X-Pad"] = "p" * self.pick([1000, 8000, LIMIT_REQUEST_FIELD_SIZE + 100])
        if self.chance(0.02):
            headers.update({f"X-H{i}": "v" for i in range(self.pick([20, 120]))})
        return headers

    def resource(self) -> dict[str, Any]:
        ids = self.world.ids
        patient, practitioner = f"Patient/{ids['Patient']}", f"Practitioner/{ids['Practitioner']}"
        kind = self.pick(["patient", "practitioner", "organization", "message", "parameters", "odd"])
        if kind == "patient":
            return patient_json([practitioner], family=self.pick(["Fuzz", "Zoë", "\u2028", "a" * 5000]))
        if kind == "practitioner":
            return practitioner_json(family=self.pick(["Fuzz", "", "x\u0000y"]))
        if kind == "organization":
            return {"resourceType": "Organization", "name": self.pick(["Fuzz Org", "", "\ud800"])}
        if kind == "message":
            sender, recipient = self.pick([(patient, practitioner), (practitioner, patient), (patient, patient)])
            return message_json(sender, recipient, topic=self.pick(["Hi", "", "\r\n"]), body=self.pick(["x", ""]))
        if kind == "parameters":
            return {
                "resourceType": "Parameters",
                "parameter": [{"name": self.pick(["username", "password", "portalUrl", "x"]), "valueString": "v"}],
            }
        return self.pick(
            [{}, {"resourceType": "Bundle"}, {"resourceType": "Patient", "id": "x" * 100, "bogus": [1, 2]}]
        )

    def body(self) -> bytes:
        r = self.rng.random()
        if r < 0.45:
            return json.dumps(self.resource()).encode()
        if r < 0.55:
            text = json.dumps(self.resource())
            return text[: self.rng.randint(0, max(0, len(text) - 1))].encode()  # broken JSON
        if r < 0.62:
            return b"\xff\xfe" + json.dumps(self.resource()).encode("utf-16-le")  # not UTF-8
        if r < 0.66:
            return '{"resourceType":"Patient","name":[{"family":"Zoë"}]}'.encode("latin-1")
        if r < 0.74:
            depth = self.pick([50, 1000, 20000])
            if self.chance(0.5):
                return b'{"resourceType":"Patient","extension":' + b"[" * depth + b"]" * depth + b"}"
            return b'{"resourceType":"Patient","x":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        if r < 0.76:
            size = self.pick([600_000, 1_100_000])  # the limit is 1 MiB
            return b'{"resourceType":"Patient","text":{"div":"' + b"a" * size + b'"}}'
        if r < 0.84:
            return self.pick([b"", b"null", b"[]", b"1", b'"x"', b"{", b'{"resourceType":null}', b"\x00" * 10])
        if r < 0.9:
            return b'{"resourceType":"Patient","name":[{"family":"\\ud800\\u0000"}]}'  # a lone surrogate
        return self.rng.randbytes(self.rng.randint(1, 2000))

    # -- malformed on the wire

    def raw(self) -> bytes:
        token = self.pick(list(self.world.tokens.values()))
        auth = self.pick(["", f"Authorization: Bearer {token}\r\n"])
        path = self.path()
        chunk_size = self.pick(["zz", "-1", "1;" + "e" * 5000, "2", "ffffffffffffffffff", "0x2"])
        bad_method = self.pick(["G(T", "GE T", "GET/", "\x16\x03\x01", "get"])
        templates: list[Callable[[], bytes]] = [
            lambda: f"GET /fhir/Patient?q={'a' * (LIMIT_REQUEST_LINE + 10)} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\r\nX-Pad: {'p' * (LIMIT_REQUEST_FIELD_SIZE + 10)}\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\r\n{auth}X-A: a\rb\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\r\nX-A: a\x00b\r\n\r\n".encode(),
            lambda: f"GET {path}\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\n{auth}\n".encode(),
            lambda: f"{bad_method} {path} HTTP/1.1\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/{self.pick(['0.9', '1.2', '2.0', '9.9', 'x'])}\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\r\nX A: b\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\r\nX-A: b\r\n folded\r\n\r\n".encode(),
            lambda: f"POST {path} HTTP/1.1\r\n{auth}Content-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}".encode(),
            lambda: f"POST {path} HTTP/1.1\r\n{auth}Content-Length: -1\r\n\r\n".encode(),
            lambda: (
                f"POST {path} HTTP/1.1\r\n{auth}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ).encode(),
            lambda: (
                f"POST /fhir/Patient HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n"
                f"Content-Type: {FHIR_JSON}\r\n\r\n{chunk_size}\r\n{{}}\r\n0\r\n\r\n"
            ).encode(),
            lambda: (
                f"POST {path} HTTP/1.1\r\n{auth}Expect: 100-continue-please\r\nContent-Length: 2\r\n\r\n{{}}".encode()
            ),
            lambda: f"GET {path} HTTP/1.1\r\n{auth}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".encode(),
            lambda: f"GET {path}\x1b[31m HTTP/1.1\r\n\r\n".encode(),
            lambda: f"GET {path} HTTP/1.1\r\n".encode() + b"X-Bin: \xff\xfe\x85\r\n\r\n",
        ]
        return self.pick(templates)()

    def sensible(self, index: int) -> Case:
        """A request a real client would send (a create, read, search or update), so that the
        success paths run too: WebMail rules, encryption, indexing, paging."""
        ids, tokens = self.world.ids, self.world.tokens
        patient, practitioner = f"Patient/{ids['Patient']}", f"Practitioner/{ids['Practitioner']}"
        provider = {"Authorization": f"Bearer {tokens['provider']}", "Content-Type": FHIR_JSON}
        as_patient = {"Authorization": f"Bearer {tokens['patient']}", "Content-Type": FHIR_JSON}
        family = self.pick(["Fuzz", "Zoë", "O'Brien", "名前"])
        options = [
            ("POST", "/fhir/Patient", provider, patient_json([practitioner], family=family)),
            ("POST", "/fhir/Communication", as_patient, message_json(patient, practitioner, topic=family)),
            ("POST", "/fhir/Communication", provider, message_json(practitioner, patient, subject=patient)),
            ("GET", f"/fhir/Patient/{ids['Patient']}", self.pick([provider, as_patient]), None),
            ("GET", f"/fhir/Communication/{ids['Communication']}", self.pick([provider, as_patient]), None),
            ("GET", f"/fhir/Communication?_count={self.rng.randint(1, 5)}&_sort=-sent", provider, None),
            ("GET", f"/fhir/Patient?family={family}", provider, None),
            ("GET", "/fhir/Communication/$unread-count", as_patient, None),
            ("POST", f"/fhir/Communication/{ids['Communication']}/$mark-read", provider, None),
            ("GET", f"/fhir/Patient/{ids['Patient']}/_history", provider, None),
            ("PUT", f"/fhir/Patient/{ids['Patient']}", provider, None),
        ]
        method, target, headers, resource = self.pick(options)
        if method == "PUT":
            resource = patient_json([practitioner], family=family, id=ids["Patient"])
        return Case(index, method, target, dict(headers), json.dumps(resource).encode() if resource else b"")

    def case(self, index: int) -> Case:
        if self.chance(1 / 12):
            return Case(index, "RAW", "", raw=self.raw())
        if self.chance(0.15):
            return self.sensible(index)
        method = self.pick(METHODS) if self.chance(0.93) else self.pick(ODD_METHODS)
        target = self.path() + self.query()
        headers = self.headers(method)
        body = self.body() if method in ("POST", "PUT", "PATCH") or self.chance(0.03) else b""
        return Case(index, method, target, headers, body)


@dataclass
class Outcome:
    status: int | None
    content_type: str
    body: bytes
    error: str | None = None


_local = threading.local()


def _session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = requests.Session()
        session.trust_env = False  # no proxies from the environment
    return session


# gunicorn drains at most 64 KiB of a body the app did not read, then closes the connection:
# larger bodies go over a socket whose answer is read while the body is still being sent.
EARLY_ANSWER_BYTES = 64 * 1024


def send(server: GunicornServer, case: Case) -> Outcome:
    try:
        if case.raw is not None or len(case.body) > EARLY_ANSWER_BYTES:
            raw = send_raw(server.port, case.raw or case.wire(), timeout=30)
            return Outcome(raw.status, raw.headers.get("content-type", ""), raw.body)
        resp = _session().request(
            case.method, server.url + case.target, headers=case.headers, data=case.body or None, timeout=30
        )
        return Outcome(resp.status_code, resp.headers.get("Content-Type", ""), resp.content)
    except (OSError, http.client.HTTPException, requests.RequestException) as exc:
        return Outcome(None, "", b"", f"{type(exc).__name__}: {exc}")


def problem(case: Case, outcome: Outcome) -> str | None:
    """Why this answer breaks the contract, or None."""
    if outcome.status is None:
        return f"no response ({outcome.error})"
    if outcome.status >= 500:
        return f"status {outcome.status}"
    if outcome.status < 400 or case.method == "HEAD":
        return None
    if not outcome.content_type.startswith(FHIR_JSON):
        return f"status {outcome.status} with Content-Type {outcome.content_type!r}"
    try:
        data = json.loads(outcome.body)
    except ValueError:
        return f"status {outcome.status} with a body that is not JSON: {outcome.body[:100]!r}"
    if not (isinstance(data, dict) and data.get("resourceType") == "OperationOutcome" and data.get("issue")):
        return f"status {outcome.status} with a body that is not an OperationOutcome: {outcome.body[:100]!r}"
    return None


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    with gunicorn_server(tmp_path_factory.mktemp("gunicorn-fuzz"), database_url, workers=2, threads=4) as srv:
        yield srv


def test_fuzzed_requests_get_no_5xx_and_only_operation_outcomes(server: GunicornServer) -> None:
    world = make_world(server)
    fuzzer = Fuzzer(random.Random(SEED), world)
    cases = [fuzzer.case(i) for i in range(COUNT)]
    print(f"\nfuzz seed {SEED} (replay: FUZZ_SEED={SEED}), {COUNT} requests, concurrency {CONCURRENCY}")

    started = time.monotonic()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(lambda c: send(server, c), cases))
    elapsed = time.monotonic() - started

    statuses = Counter(o.status for o in outcomes)
    print(f"{len(outcomes)} responses in {elapsed:.1f}s")
    print(f"statuses {dict(sorted(statuses.items(), key=str))}")
    failures = [(c, why) for c, o in zip(cases, outcomes, strict=True) if (why := problem(c, o))]
    report = "\n".join(f"{why}: {case.describe()}" for case, why in failures[:15])
    assert not failures, f"seed {SEED}: {len(failures)} of {COUNT} requests broke the contract:\n{report}"
    assert len({s for s in statuses if s and s >= 400}) > 5  # the fuzz reached many error paths

    errors = server.error_text()
    assert "Traceback" not in errors and "unexpected " not in errors, f"seed {SEED}:\n{errors[-4000:]}"
    broken = [line for line in server.access_lines() if not line.startswith("127.0.0.1 ")]
    assert not broken, f"seed {SEED}: access-log lines that are not whole records: {broken[:5]}"
