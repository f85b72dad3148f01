"""The hot queries keep their index-driven plans at a realistic size, on PostgreSQL.

A plan test that runs a query once sees only the custom plan. psycopg 3 prepares a
statement on its 5th execution on a connection, and PostgreSQL may then switch to a
*generic plan*, chosen without the parameter values (a name search walking all of a
provider's patients: ``docs/deploy.md``, "Workers, threads and connections"). So each hot
operation here runs 8 times on ONE connection of an engine built with the app's own
options (``fhirserver.db.make_engine``), through the app's own code (Repository, the unread
count, the grant-state check); then every statement it sent is checked:

- it never ran with a generic plan (``pg_prepared_statements.generic_plans`` is 0 when
  psycopg prepared it at all; with the app's options it does not);
- the plan it gets now (``EXPLAIN EXECUTE`` of the prepared statement, or ``EXPLAIN`` with
  its values) costs no more than its custom plan, reads no big table with a Seq Scan, and,
  for the queries whose work does not grow with the data, has a bounded estimated cost.

The data (20,000 Patients of 3 providers, 200,000 Communications, their index rows as
``fhirserver.search.indexing.extract`` makes them, read state, accounts and grants) is
COPYed into a database of its own, then ANALYZEd. Communication bodies are stored as plain
JSON (the plans do not look inside; encryption is the write path's business).

``PLANS_AT_SCALE_ENGINE=generic`` runs the same test with psycopg's default
``prepare_threshold`` (5) and ``plan_cache_mode=force_generic_plan``: it fails, which shows
that the test can. ``PLANS_AT_SCALE_ENGINE=psycopg-default`` runs it with psycopg's and the
server's defaults (prepare after 5, ``plan_cache_mode=auto``); ``PLANS_AT_SCALE_SHOW=1``
prints each statement's runs, generic plan count and costs (with ``-s``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import psycopg
import pytest
from psycopg.sql import Literal
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.principal import Principal
from fhirserver.core.repository import Repository
from fhirserver.core.scopes import ScopeSet
from fhirserver.db import make_engine
from fhirserver.search.indexing import extract
from fhirserver.webmail import mailbox, profile, read_state
from smart_auth.resource_server import LiveGrant, grant_state
from tests.support import BACKENDS, fresh_database

pytestmark = pytest.mark.skipif("postgresql" not in BACKENDS, reason="plans at scale are PostgreSQL's")

PATIENTS = 20_000
MESSAGES = 200_000
PROVIDERS = 3
FAMILIES = 2_000  # 10 patients per family name: the selective name search of the bench
RUNS = 8  # more than psycopg's prepare_threshold (5) and PostgreSQL's 5 custom plans
BASE = "https://fhir.example/fhir"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
BIG_TABLES = frozenset(
    {"resource", "idx_string", "idx_token", "idx_reference", "idx_date", "webmail_read_state", "mailbox", "chart"}
)
# A bounded query's estimated cost (PostgreSQL's units: ~1 per page read): its work does not
# grow with the number of patients or messages (a patient's chart of 10 messages: ~550; the
# inbox through the generic search, which sorts every match: ~350,000).
BOUNDED_COST = 1000.0
SETTINGS = Settings(database_url="unused", encryption_keys={"plans": b"k" * 32}, active_key_id="plans")


def patient_id(i: int) -> str:
    return f"p{i:05d}"


def provider_of(i: int) -> str:
    return f"d{i % PROVIDERS}"


def family_of(i: int) -> str:
    return f"Fam{i % FAMILIES:04d}"


def _patient(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id(i),
        "meta": {"versionId": "1", "lastUpdated": T0.isoformat()},
        "name": [{"family": family_of(i), "given": [f"Given{i % 97}"]}],
        "birthDate": f"{1940 + i % 60}-0{1 + i % 9}-1{i % 10}",
        "telecom": [{"system": "email", "value": f"{patient_id(i)}@mail.example"}],
        "generalPractitioner": [{"reference": f"Practitioner/{provider_of(i)}"}],
    }


def _message(i: int) -> dict[str, Any]:
    pat = i % PATIENTS
    patient, provider = f"Patient/{patient_id(pat)}", f"Practitioner/{provider_of(pat)}"
    sender, recipient = (patient, provider) if i % 2 == 0 else (provider, patient)
    return {
        "resourceType": "Communication",
        "id": f"c{i:06d}",
        "status": "completed",
        "category": [profile.CATEGORY],
        "subject": {"reference": patient},
        "sender": {"reference": sender},
        "recipient": [{"reference": recipient}],
        "sent": (T0 + timedelta(minutes=i)).isoformat(),
        "payload": [{"contentString": "stored encrypted by the server"}],
    }


def _load(url: str) -> None:
    """COPY the resources, their index rows, read state, accounts and grants; then ANALYZE."""
    from fhirserver.core.repository import dumps

    columns = {
        "string": ("idx_string", ("res_type", "res_id", "param", "value", "exact")),
        "token": ("idx_token", ("res_type", "res_id", "param", "system", "code")),
        "reference": ("idx_reference", ("res_type", "res_id", "param", "target_type", "target_id")),
        "date": ("idx_date", ("res_type", "res_id", "param", "low", "high")),
    }
    resources: list[tuple[Any, ...]] = []
    index: dict[str, list[tuple[Any, ...]]] = {t: [] for t in columns}
    docs = [("Practitioner", {"resourceType": "Practitioner", "id": f"d{k}"}) for k in range(PROVIDERS)]
    docs += [("Patient", _patient(i)) for i in range(PATIENTS)]
    docs += [("Communication", _message(i)) for i in range(MESSAGES)]
    for n, (res_type, data) in enumerate(docs):
        resources.append((res_type, data["id"], 1, T0 + timedelta(seconds=n), False, dumps(data), None))
        for kind, rows in extract(res_type, data, server_base=BASE).rows.items():
            names = columns[kind][1][2:]
            index[kind] += [(res_type, data["id"], *(r[c] for c in names)) for r in rows]
    # A quarter of the messages patients sent have been read by their provider's user.
    reads = [
        (f"c{i:06d}", f"u-{provider_of(i % PATIENTS)}", f"Practitioner/{provider_of(i % PATIENTS)}", T0)
        for i in range(0, MESSAGES, 8)
    ]
    # The mailbox: a row per message and recipient user (fhirserver.webmail.mailbox).
    sent_at = {r[1]: r[-1] for r in index["date"] if r[0] == "Communication" and r[2] == "sent"}
    mailbox = []
    for i in range(MESSAGES):
        msg, pat = f"c{i:06d}", i % PATIENTS
        ref = f"Practitioner/{provider_of(pat)}" if i % 2 == 0 else f"Patient/{patient_id(pat)}"
        read = i % 8 == 0
        mailbox.append((msg, f"u-{ref.split('/')[1]}", ref, sent_at[msg], read, T0 if read else None, False))
    # The chart: a row per message and subject (fhirserver.webmail.chart).
    chart = [
        (r[1], f"{r[3]}/{r[4]}", True, sent_at[r[1]])
        for r in index["reference"]
        if r[0] == "Communication" and r[2] == "subject"
    ]
    users = [(f"u-d{k}", f"dr{k}", "provider", f"Practitioner/d{k}") for k in range(PROVIDERS)]
    users += [(f"u-{patient_id(i)}", patient_id(i), "patient", f"Patient/{patient_id(i)}") for i in range(PATIENTS)]
    accounts = [(*u, "x", "", False, True, T0) for u in users]
    grants = [(f"g-{u[0]}", u[0], "portal", "openid", False, T0, T0) for u in users]
    raw = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(raw) as conn, conn.cursor() as cur:
        tables: list[tuple[str, tuple[str, ...], list[tuple[Any, ...]]]] = [
            (
                "resource",
                ("res_type", "res_id", "version_id", "last_updated", "deleted", "content", "key_id"),
                resources,
            ),
            *((table, cols, index[kind]) for kind, (table, cols) in columns.items()),
            ("webmail_read_state", ("communication_id", "user_id", "reader_ref", "read_at"), reads),
            (
                "user_account",
                ACCOUNT_COLUMNS,
                accounts,
            ),
            ("oauth_grant", ("id", "user_id", "client_id", "scope", "offline", "created_at", "last_issued_at"), grants),
        ]
        if cur.execute("SELECT to_regclass('mailbox')").fetchone() != (None,):
            mailbox_cols = ("message_id", "user_id", "recipient_ref", "sent", "read", "read_at", "deleted")
            tables.append(("mailbox", mailbox_cols, mailbox))
        if cur.execute("SELECT to_regclass('mailbox_unread')").fetchone() != (None,):
            unread: dict[str, int] = {}
            for row in mailbox:
                if not row[4] and not row[6]:
                    unread[row[1]] = unread.get(row[1], 0) + 1
            tables.append(("mailbox_unread", ("user_id", "unread"), list(unread.items())))
        if cur.execute("SELECT to_regclass('chart')").fetchone() != (None,):
            tables.append(("chart", ("message_id", "subject_ref", "has_sent", "sent"), chart))
        for table, cols, values in tables:
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


ACCOUNT_COLUMNS: tuple[str, ...] = ("id", "username", "role", "fhir_user", "password_hash", "display_name")
ACCOUNT_COLUMNS += ("must_change_password", "active", "created_at")


@dataclass
class Scale:
    url: str
    engine: Engine


def _engine(url: str) -> Engine:
    if os.environ.get("PLANS_AT_SCALE_ENGINE") == "psycopg-default":
        from sqlalchemy import create_engine

        return create_engine(url)  # psycopg's prepare_threshold=5, the server's plan_cache_mode=auto
    if os.environ.get("PLANS_AT_SCALE_ENGINE") == "generic":
        # What the app ran with before: psycopg prepares after 5 runs; here the server is also
        # told to use the generic plan of a prepared statement whenever it may.
        from sqlalchemy import create_engine

        return create_engine(url, connect_args={"options": "-c plan_cache_mode=force_generic_plan"})
    return make_engine(url)


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scale]:
    with fresh_database("postgresql", tmp_path_factory) as url:
        _load(url)
        engine = _engine(url)
        try:
            yield Scale(url, engine)
        finally:
            engine.dispose()


# -- looking at plans ----------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _normal(sql: str) -> str:
    """A statement as the server shows it, with every placeholder as ``?``."""
    return re.sub(r"\$\d+", "?", PLACEHOLDER.sub("?", sql).replace("%%", "%")).strip()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _explain(conn: Connection, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    value = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()
    doc = value if isinstance(value, list) else json.loads(value)
    plan: dict[str, Any] = doc[0]["Plan"]
    return plan


def _prepared(conn: Connection, sql: str) -> tuple[str, int] | None:
    """psycopg's prepared statement for ``sql`` on this connection: its name and generic plan count."""
    rows = conn.exec_driver_sql(
        "SELECT name, statement, generic_plans FROM pg_prepared_statements WHERE NOT from_sql"
    ).all()
    return next(((name, generic) for name, text, generic in rows if _normal(text) == _normal(sql)), None)


@dataclass
class Checked:
    sql: str
    runs: int
    generic_plans: int
    cost: float
    custom_cost: float
    seq_scans: list[str]


def check_plans(conn: Connection, sent: list[tuple[str, dict[str, Any]]]) -> list[Checked]:
    """Every statement sent more than 5 times: how it is planned now, against its custom plan."""
    by_sql: dict[str, list[dict[str, Any]]] = {}
    for sql, params in sent:
        by_sql.setdefault(sql, []).append(params)
    out = []
    for sql, runs in by_sql.items():
        if len(runs) <= 5:
            continue
        params = runs[-1]
        custom = _explain(conn, sql, params)
        prepared = _prepared(conn, sql)
        generic, used = 0, custom
        if prepared is not None:
            name, generic = prepared
            # EXECUTE's arguments as literals: in a utility statement the server cannot type $n.
            raw = cast(psycopg.Connection[Any], conn.connection.dbapi_connection)
            order = list(dict.fromkeys(PLACEHOLDER.findall(sql)))
            args = ", ".join(Literal(params[n]).as_string(raw) for n in order)
            used = _explain(conn, f"EXECUTE {name}({args})" if order else f"EXECUTE {name}", {})
        # A Seq Scan of a big table counts unless the whole plan is cheap: the planner then
        # expects to stop at the first rows (EXISTS, LIMIT) of a value with many matches.
        seq = [
            n["Relation Name"]
            for n in _nodes(used)
            if n["Node Type"] == "Seq Scan" and n["Relation Name"] in BIG_TABLES and used["Total Cost"] >= BOUNDED_COST
        ]
        out.append(Checked(sql, len(runs), generic, used["Total Cost"], custom["Total Cost"], seq))
    return out


def run_hot(scale: Scale, operation: Callable[[Session, int], Any]) -> list[Checked]:
    """Run ``operation`` RUNS times on one connection (a transaction each), then check its plans."""
    sent: list[tuple[str, dict[str, Any]]] = []

    def record(_c: Any, _cur: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        sent.append((statement, dict(parameters or {})))

    with scale.engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", record)
        for n in range(RUNS):
            with Session(bind=conn) as session:
                operation(session, n)
                # A commit, as a request that wrote its audit record ends: psycopg drops its
                # prepared statements on every rollback, which would hide them from this test.
                session.commit()
        event.remove(conn, "before_cursor_execute", record)
        checked = check_plans(conn, sent)
        conn.rollback()
    assert checked, "no statement ran more than 5 times"
    return checked


def assert_custom_plans(checked: list[Checked], *, bounded: bool) -> None:
    for c in checked:
        if os.environ.get("PLANS_AT_SCALE_SHOW"):
            print(
                f"runs={c.runs} generic={c.generic_plans} cost={c.cost:.0f} custom={c.custom_cost:.0f} {c.sql[:40]!r}"
            )
        where = f"{c.sql[:300]}..."
        assert c.generic_plans == 0, f"ran with a generic plan {c.generic_plans} times: {where}"
        assert c.cost <= c.custom_cost * 1.01 + 1, f"plan costs {c.cost:.0f}, custom plan {c.custom_cost:.0f}: {where}"
        assert not c.seq_scans, f"Seq Scan on {c.seq_scans}: {where}"
        if bounded:
            assert c.cost < BOUNDED_COST, f"estimated cost {c.cost:.0f}: {where}"


# -- principals ----------------------------------------------------------------------------------

PROVIDER = Principal(
    role="provider",
    scopes=ScopeSet.parse("user/Patient.rs user/Communication.rs"),
    user_id="u-d1",
    fhir_user="Practitioner/d1",
)


def patient_principal(i: int) -> Principal:
    return Principal(
        role="patient",
        scopes=ScopeSet.parse("patient/Patient.rs patient/Communication.rs"),
        user_id=f"u-{patient_id(i)}",
        fhir_user=f"Patient/{patient_id(i)}",
    )


def of_provider_1(n: int) -> int:
    """The n-th patient (of 8) of Practitioner/d1, spread over the table."""
    return 1 + PROVIDERS * (n * 811)


# -- the hot queries -----------------------------------------------------------------------------


def test_plans_read_patient_by_id_as_provider(scale: Scale) -> None:
    def read(session: Session, n: int) -> None:
        Repository(session, SETTINGS, PROVIDER).read("Patient", patient_id(of_provider_1(n)))

    assert_custom_plans(run_hot(scale, read), bounded=True)


def test_plans_read_patient_by_id_as_patient(scale: Scale) -> None:
    def read(session: Session, n: int) -> None:
        i = of_provider_1(n)
        Repository(session, SETTINGS, patient_principal(i)).read("Patient", patient_id(i))

    assert_custom_plans(run_hot(scale, read), bounded=True)


def message_of_provider_1(n: int) -> int:
    """The n-th message (of 8) about a patient of Practitioner/d1."""
    return of_provider_1(n) + PATIENTS * n


def test_plans_read_communication_by_id_as_provider(scale: Scale) -> None:
    def read(session: Session, n: int) -> None:
        Repository(session, SETTINGS, PROVIDER).read("Communication", f"c{message_of_provider_1(n):06d}")

    assert_custom_plans(run_hot(scale, read), bounded=True)


def test_plans_read_communication_by_id_as_patient(scale: Scale) -> None:
    def read(session: Session, n: int) -> None:
        msg = message_of_provider_1(n)
        Repository(session, SETTINGS, patient_principal(msg % PATIENTS)).read("Communication", f"c{msg:06d}")

    assert_custom_plans(run_hot(scale, read), bounded=True)


def test_plans_patient_name_search_by_provider(scale: Scale) -> None:
    def search(session: Session, n: int) -> None:
        page = Repository(session, SETTINGS, PROVIDER).search("Patient", [("name", family_of(of_provider_1(n)))])
        assert page.rows

    assert_custom_plans(run_hot(scale, search), bounded=True)


def test_plans_patient_search_of_the_provider(scale: Scale) -> None:
    def search(session: Session, n: int) -> None:
        params = [("general-practitioner", "Practitioner/d1"), ("_count", str(10 + n))]
        assert Repository(session, SETTINGS, PROVIDER).search("Patient", params).rows

    assert_custom_plans(run_hot(scale, search), bounded=False)


def test_plans_inbox_search(scale: Scale) -> None:
    def search(session: Session, n: int) -> None:
        params = [("recipient", "Practitioner/d1"), ("status", "completed"), ("_sort", "-sent"), ("_count", "20")]
        assert Repository(session, SETTINGS, PROVIDER).search("Communication", params).rows

    assert_custom_plans(run_hot(scale, search), bounded=False)


def test_plans_patient_chart(scale: Scale) -> None:
    def search(session: Session, n: int) -> None:
        params = [("subject", f"Patient/{patient_id(of_provider_1(n))}"), ("_sort", "-sent")]
        assert Repository(session, SETTINGS, PROVIDER).search("Communication", params).rows

    assert_custom_plans(run_hot(scale, search), bounded=True)


def test_plans_unread_count(scale: Scale) -> None:
    def count(session: Session, n: int) -> None:
        user, ref = (
            ("u-d1", "Practitioner/d1")
            if n % 2
            else (f"u-{patient_id(of_provider_1(n))}", f"Patient/{patient_id(of_provider_1(n))}")
        )
        assert read_state.unread_count(session, user, [ref]) > 0

    assert_custom_plans(run_hot(scale, count), bounded=True)  # the counter: one row


def test_plans_unread_count_of_the_rows(scale: Scale) -> None:
    """The count of the rows themselves: what a granular grant reads, and what ``mailbox check`` compares."""

    def count(session: Session, n: int) -> None:
        user = "u-d1" if n % 2 else f"u-{patient_id(of_provider_1(n))}"
        assert mailbox.count_unread_rows(session, user) > 0

    assert_custom_plans(run_hot(scale, count), bounded=False)


def test_plans_grant_state(scale: Scale) -> None:
    def check(session: Session, n: int) -> None:
        user = f"u-{patient_id(of_provider_1(n))}"
        assert grant_state(session, f"g-{user}", user, "patient") == LiveGrant()

    assert_custom_plans(run_hot(scale, check), bounded=True)


def test_plans_read_receipts_of_a_page(scale: Scale) -> None:
    """Every Communication page carries its read state (readByMe, readByRecipient): a query per page
    that must stay on the page's ids, not on every recipient row of every message."""

    def receipts(session: Session, n: int) -> None:
        page = [f"c{i:06d}" for i in range(n * 20, n * 20 + 20)]
        assert read_state.read_receipts(session, "u-d1", page)

    assert_custom_plans(run_hot(scale, receipts), bounded=True)
