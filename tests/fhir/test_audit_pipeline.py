"""The audit pipeline (checklist E4): the append-only audit table, the read path's batch
writer (group commit, a failed batch is a 5xx), AuditEvent search for auditors over the
table, and the hash chain with its tamper cases. Both databases."""

from __future__ import annotations

import importlib.util
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete as sql_delete
from sqlalchemy import event, insert, select, update

from fhirserver.core import audit, audit_batch, audit_chain, audit_log
from fhirserver.core.audit_batch import AuditBatchWriter, AuditWriteFailed
from fhirserver.db import make_engine
from fhirserver.extensions import db
from fhirserver.models import AuditLogRow
from tests.factories import PROVIDER_SCOPE, token_for
from tests.support import uid

TABLE = AuditLogRow.__table__
ROOT = Path(__file__).resolve().parents[2]


def read_row(patient_id: str | None = None) -> dict[str, Any]:
    pid = patient_id or f"p{uid()}"
    return audit.rest_record(
        None, interaction="read", status=200, res_type="Patient", res_id=pid, patient_ref=f"Patient/{pid}"
    )


@pytest.fixture()
def engine(settings: Any) -> Any:
    eng = make_engine(settings.database_url)
    yield eng
    eng.dispose()


@pytest.fixture()
def key(settings: Any) -> bytes:
    return audit_chain.chain_key(settings.secret_key)


def stored_ids(engine: Any, ids: list[str]) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(TABLE.c.event_id).where(TABLE.c.event_id.in_(ids))))


def run_threads(writer: AuditBatchWriter, rows: list[dict[str, Any]]) -> list[BaseException | None]:
    results: list[BaseException | None] = [None] * len(rows)

    def one(i: int) -> None:
        try:
            writer.write([rows[i]])
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(rows))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


# -- the batch writer ---------------------------------------------------------------------


def test_E4_batch_writer_commits_records_of_several_threads_once(engine: Any) -> None:
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))
    # The batch closes when all 6 records are in (max_wait is long): one executemany, one commit.
    writer = AuditBatchWriter(engine, max_batch=6, max_wait=60)
    rows = [read_row() for _ in range(6)]
    results = run_threads(writer, rows)
    assert results == [None] * 6
    assert len(commits) == 1 and writer.batches_committed == 1
    assert stored_ids(engine, [r["event_id"] for r in rows]) == {r["event_id"] for r in rows}


def test_E4_failed_batch_fails_every_request_in_it_and_stores_none(engine: Any) -> None:
    first = read_row()
    AuditBatchWriter(engine, max_batch=1).write([first])
    duplicate = {**read_row(), "event_id": first["event_id"]}  # violates the unique event id
    innocent = read_row()
    writer = AuditBatchWriter(engine, max_batch=2, max_wait=60)
    results = run_threads(writer, [duplicate, innocent])
    assert all(isinstance(r, AuditWriteFailed) for r in results), results
    assert writer.batches_failed == 1 and writer.batches_committed == 0
    assert stored_ids(engine, [innocent["event_id"]]) == set()


def auditor_headers(app: Any, settings: Any) -> dict[str, str]:
    from smart_auth import accounts

    with app.app_context():
        user = accounts.create_user(
            db.session, username=f"aud{uid()}", password="correct horse battery", role="auditor"
        )
        db.session.commit()
        user_id = user.id
        db.session.remove()
    return {"Authorization": "Bearer " + token_for(app, settings, user_id, "user/AuditEvent.rs")}


def test_E4_a_read_whose_audit_batch_fails_is_a_500_without_the_phi(
    app: Any, client: Any, settings: Any, practice: Any, tmp_path: Path
) -> None:
    headers = {"Authorization": "Bearer " + token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)}
    # A real database that cannot take the records: an empty SQLite file (no audit table).
    broken = make_engine(f"sqlite:///{tmp_path / 'no-tables.db'}")
    with app.app_context():
        engine = db.engine
    audit_batch.use_writer(engine, AuditBatchWriter(broken, max_batch=1))
    try:
        resp = client.get(f"/fhir/Patient/{practice.patient_id}", headers=headers)
        search = client.get("/fhir/Patient?_count=5", headers=headers)
    finally:
        audit_batch.forget_writer(engine)
        broken.dispose()
    for r in (resp, search):
        assert r.status_code == 500
        body = r.get_json(force=True)
        assert body["resourceType"] == "OperationOutcome"
        assert practice.patient_id not in r.get_data(as_text=True)
    assert client.get(f"/fhir/Patient/{practice.patient_id}", headers=headers).status_code == 200


# -- AuditEvent read and search for auditors, from the table ------------------------------


def test_E4_auditor_reads_and_searches_audit_events_from_the_table(
    app: Any, client: Any, settings: Any, practice: Any
) -> None:
    provider = {"Authorization": "Bearer " + token_for(app, settings, practice.provider_user_id, PROVIDER_SCOPE)}
    rid = f"req-{uid()}"
    for _ in range(3):
        assert (
            client.get(f"/fhir/Patient/{practice.patient_id}", headers={**provider, "X-Request-Id": rid}).status_code
            == 200
        )
    with app.app_context():
        rows = db.session.execute(
            select(TABLE.c.event_id, TABLE.c.action, TABLE.c.agent_ref, TABLE.c.entity_ref).where(
                TABLE.c.request_id == rid
            )
        ).all()
        db.session.remove()
    assert len(rows) == 3 and {r.action for r in rows} == {"R"}
    assert {r.agent_ref for r in rows} == {practice.practitioner_ref}
    assert {r.entity_ref for r in rows} == {practice.patient_ref}
    auditor = auditor_headers(app, settings)
    base = f"patient={practice.patient_ref}&action=R&outcome=0&date=ge2000-01-01&agent={practice.practitioner_ref}"
    base += f"&entity={practice.patient_ref}&subtype=read&type=rest"
    found: list[str] = []
    url = f"/fhir/AuditEvent?{base}&_count=2"
    while url:
        resp = client.get(url, headers=auditor)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        bundle = resp.get_json(force=True)
        assert len(bundle["entry"]) <= 2
        found += [e["resource"]["id"] for e in bundle["entry"]]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = "/fhir" + nxt[0][len(settings.fhir_base) :] if nxt else ""
    assert set(found) >= {r.event_id for r in rows} and len(found) == len(set(found))
    assert client.get(f"/fhir/AuditEvent?patient=Patient/nobody-{uid()}", headers=auditor).get_json()["entry"] == []
    assert client.get(f"/fhir/AuditEvent?{base}&outcome=8", headers=auditor).get_json()["entry"] == []
    one = client.get(f"/fhir/AuditEvent/{rows[0].event_id}", headers=auditor)
    assert one.status_code == 200
    event_json = one.get_json(force=True)
    assert event_json["resourceType"] == "AuditEvent" and event_json["id"] == rows[0].event_id
    assert event_json["type"]["code"] == "rest" and event_json["subtype"][0]["code"] == "read"
    assert client.get(f"/fhir/AuditEvent/{rows[0].event_id}/_history/1", headers=auditor).status_code == 200
    assert client.get(f"/fhir/AuditEvent/{uuid.uuid4().hex}", headers=auditor).status_code == 404
    # Only auditors read; nobody writes (405 before anything else).
    assert client.get(f"/fhir/AuditEvent/{rows[0].event_id}", headers=provider).status_code == 403
    assert client.get(f"/fhir/AuditEvent?patient={practice.patient_ref}", headers=provider).status_code == 403
    body = json.dumps(event_json)
    ctype = {"Content-Type": "application/fhir+json"}
    for headers in (auditor, provider):
        assert client.post("/fhir/AuditEvent", data=body, headers={**headers, **ctype}).status_code == 405
        assert (
            client.put(f"/fhir/AuditEvent/{rows[0].event_id}", data=body, headers={**headers, **ctype}).status_code
            == 405
        )
        assert client.delete(f"/fhir/AuditEvent/{rows[0].event_id}", headers=headers).status_code == 405


def test_E4_audit_event_search_bad_input_is_a_400(app: Any, client: Any, settings: Any) -> None:
    auditor = auditor_headers(app, settings)
    for query in ("date=notadate", "_sort=outcome", "patient=Practitioner/x", "nosuch=1", "_count=x"):
        resp = client.get(f"/fhir/AuditEvent?{query}", headers=auditor)
        assert resp.status_code == 400, (query, resp.get_data(as_text=True))


# -- the hash chain ----------------------------------------------------------------------


def _sealed_fixture(conn: Any, key: bytes, n: int = 3) -> list[dict[str, Any]]:
    rows = [read_row() for _ in range(n)]
    audit_log.append_many(conn, rows)
    audit_chain.seal(conn, key)
    return rows


TAMPERING = ["update-content", "update-column", "delete-middle", "insert-forged", "insert-unsealed-with-seal"]


@pytest.mark.parametrize("tamper", TAMPERING)
def test_E4_tampering_with_a_sealed_row_fails_verification(engine: Any, key: bytes, tamper: str) -> None:
    with engine.connect() as conn:
        trans = conn.begin()  # rolled back: the run's shared chain stays intact
        try:
            rows = _sealed_fixture(conn, key)
            assert audit_chain.verify(conn, key).ok
            ids = [r["event_id"] for r in rows]
            if tamper == "update-content":
                conn.execute(update(TABLE).where(TABLE.c.event_id == ids[1]).values(content=b'{"outcome":"0"}'))
            elif tamper == "update-column":
                conn.execute(update(TABLE).where(TABLE.c.event_id == ids[1]).values(outcome="8"))
            elif tamper == "delete-middle":
                conn.execute(sql_delete(TABLE).where(TABLE.c.event_id == ids[1]))
            else:
                seq, head = conn.execute(
                    select(TABLE.c.seal_seq, TABLE.c.hash).order_by(TABLE.c.seal_seq.desc()).limit(1)
                ).one()
                forged = read_row()
                if tamper == "insert-forged":
                    # A row linked to the head, sealed with a key other than the server's.
                    wrong = audit_chain.seal_hash(b"x" * 32, head, seq + 1, _as_row(forged))
                    forged.update(seal_seq=seq + 1, prev_hash=head, hash=wrong)
                else:
                    forged.update(prev_hash=head, hash="0" * 64)
                conn.execute(insert(TABLE), [forged])
            result = audit_chain.verify(conn, key)
            assert not result.ok, tamper
        finally:
            trans.rollback()


class _as_row:  # a row-like view of an insert dict, for seal_hash
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def test_E4_sealing_links_committed_rows_and_verify_reports_the_unsealed_tail(engine: Any, key: bytes) -> None:
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            audit_chain.seal(conn, key)
            audit_log.append_many(conn, [read_row(), read_row()])
            before = audit_chain.verify(conn, key)
            assert before.ok and before.unsealed >= 2 and before.oldest_unsealed is not None
            assert audit_chain.seal(conn, key) >= 2
            after = audit_chain.verify(conn, key)
            assert after.ok and after.unsealed == 0 and after.sealed == before.sealed + before.unsealed
        finally:
            trans.rollback()


def test_E4_writes_audit_in_their_transaction_and_a_rollback_leaves_no_record(engine: Any, settings: Any) -> None:
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        kept = audit.security_event(session, subtype="login", outcome="0", user_id="u1", address="127.0.0.1")
        session.rollback()
    assert stored_ids(engine, [kept]) == set()


def test_E4_cli_audit_verify_reports_and_fails_on_a_broken_chain(
    settings: Any, engine: Any, server_port: int, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from fhirserver.cli import main
    from tests import conftest

    env = conftest.test_env(tmp_path, settings.database_url, server_port, SECRET_KEY=settings.secret_key)
    runner = CliRunner()
    row = read_row()
    with engine.begin() as conn:
        audit_log.append_many(conn, [row])
    sealed = runner.invoke(main, ["audit", "seal"], env=env)
    assert sealed.exit_code == 0, sealed.output
    ok = runner.invoke(main, ["audit", "verify"], env=env)
    assert ok.exit_code == 0 and "audit chain OK" in ok.output and "unsealed tail" in ok.output, ok.output
    head = next(line.split(" ", 1)[1] for line in ok.output.splitlines() if line.startswith("head: "))
    anchored = runner.invoke(main, ["audit", "verify", "--anchor", head], env=env)
    assert anchored.exit_code == 0 and "audit chain OK" in anchored.output, anchored.output
    with engine.begin() as conn:
        original = conn.scalar(select(TABLE.c.outcome).where(TABLE.c.event_id == row["event_id"]))
        conn.execute(update(TABLE).where(TABLE.c.event_id == row["event_id"]).values(outcome="8"))
    try:
        broken = runner.invoke(main, ["audit", "verify"], env=env)
        assert broken.exit_code == 1 and "BROKEN" in broken.output, broken.output
    finally:
        with engine.begin() as conn:
            conn.execute(update(TABLE).where(TABLE.c.event_id == row["event_id"]).values(outcome=original))
    assert runner.invoke(main, ["audit", "verify"], env=env).exit_code == 0


def test_E4_cutting_the_chain_back_is_caught_by_an_anchor(engine: Any, key: bytes) -> None:
    """Deleting the newest seals leaves a chain valid link by link; a recorded head catches it."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            rows = _sealed_fixture(conn, key, n=3)
            seq, digest = audit_chain.head(conn)
            assert audit_chain.verify(conn, key, anchors=((seq, digest),)).ok
            assert not audit_chain.verify(conn, key, anchors=((seq, "f" * 64),)).ok  # another hash
            conn.execute(sql_delete(TABLE).where(TABLE.c.event_id == rows[-1]["event_id"]))
            assert audit_chain.verify(conn, key).ok  # the cut is invisible without the anchor
            cut = audit_chain.verify(conn, key, anchors=((seq, digest),))
            assert not cut.ok and any(f"anchored seal {seq} is gone" in p for p in cut.problems), cut.problems
        finally:
            trans.rollback()


@pytest.mark.parametrize("anchor", ["12", "x:" + "a" * 64, "3:" + "a" * 63, "3:" + "g" * 64, "0:" + "a" * 64])
def test_E4_cli_audit_verify_refuses_a_malformed_anchor(
    settings: Any, server_port: int, tmp_path: Path, anchor: str
) -> None:
    from click.testing import CliRunner

    from fhirserver.cli import main
    from tests import conftest

    env = conftest.test_env(tmp_path, settings.database_url, server_port, SECRET_KEY=settings.secret_key)
    result = CliRunner().invoke(main, ["audit", "verify", "--anchor", anchor], env=env)
    assert result.exit_code == 2 and "SEQ:HASH" in result.output, result.output


# -- the migration -----------------------------------------------------------------------


def test_E4_migration_reads_old_audit_events_into_the_same_columns() -> None:
    """0007 moves stored AuditEvents with its own copy of the extraction: it must agree with the writer."""
    spec = importlib.util.spec_from_file_location("m0007", ROOT / "migrations/versions/0007_audit_log.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from fhirserver.core.principal import Principal
    from fhirserver.core.scopes import ScopeSet

    who = Principal(
        role="provider",
        scopes=ScopeSet.parse("user/Patient.rs"),
        user_id="u-1",
        fhir_user="Practitioner/p-1",
        client_id="c-1",
        address="10.0.0.1",
        request_id="r-1",
    )
    for row in (
        audit.rest_record(
            who,
            interaction="search-type",
            status=200,
            res_type="Patient",
            patient_ref="Patient/x",
            query_params=["name"],
        ),
        audit.rest_record(who, interaction="read", status=404, res_type="Patient", res_id="x", patient_ref="Patient/x"),
    ):
        moved = module._columns(row["event_id"], row["recorded"], row["content"])
        assert moved == row


def test_E4_migration_moves_old_audit_events_and_back(tmp_path: Path) -> None:
    """On a database of its own: AuditEvents stored as resources (before 0007) move into the table."""
    from alembic import command
    from sqlalchemy import text

    from fhirserver.migrate import alembic_config, upgrade

    url = f"sqlite:///{tmp_path / 'migrate.db'}"
    upgrade(url, "0006")
    row = read_row("moved-patient")
    body = row["content"]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            values = {"t": "AuditEvent", "i": row["event_id"], "d": row["recorded"], "c": body}
            conn.execute(
                text(
                    "INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted, content) "
                    "VALUES (:t, :i, 1, :d, false, :c)"
                ),
                values,
            )
            conn.execute(
                text(
                    "INSERT INTO resource_version (res_type, res_id, version_id, last_updated, deleted, method,"
                    " content) VALUES (:t, :i, 1, :d, false, 'POST', :c)"
                ),
                values,
            )
        upgrade(url, "0007")
        with engine.connect() as conn:
            moved = conn.execute(select(TABLE).where(TABLE.c.event_id == row["event_id"])).one()
            left = conn.scalar(text("SELECT count(*) FROM resource WHERE res_type = 'AuditEvent'"))
        assert moved.patient_ref == "Patient/moved-patient" and bytes(moved.content) == body and left == 0
        command.downgrade(alembic_config(url), "0006")
        with engine.connect() as conn:
            back = conn.scalar(text("SELECT content FROM resource WHERE res_type = 'AuditEvent'"))
        assert bytes(back) == body
    finally:
        engine.dispose()
