"""The mailbox table (docs/webmail-profile.md, "Mailbox"): its invariant, and that the inbox page
and the unread count it serves are exactly what the generic search and count give.

The module runs on a database of its own, so that ``fhirserver mailbox check`` (which checks
the whole table) sees only this scenario's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from fhirserver.cli import main
from fhirserver.config import Settings, load_settings
from fhirserver.core import access
from fhirserver.core.principal import Principal, system_principal
from fhirserver.core.repository import Repository, cursor_key
from fhirserver.core.scopes import ScopeSet
from fhirserver.db import make_sessionmaker
from fhirserver.models import MailboxRow, MailboxUnreadRow
from fhirserver.search.query import parse_search
from fhirserver.webmail import mailbox, read_state
from smart_auth import accounts
from tests.factories import PROVIDER_SCOPE, Practice, make_practice, message_json, practitioner_json
from tests.fhir.search_pages import all_pages
from tests.support import fresh_database, test_env, uid

CATEGORY_TOKEN = "http://fhir-webmail.example/CodeSystem/communication-category|webmail"


@pytest.fixture(scope="module")
def mb_env(database_url: str, server_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with fresh_database(backend, tmp_path_factory) as url:
        yield test_env(tmp_path_factory.mktemp("mailbox-var"), url, server_port)


@pytest.fixture(scope="module")
def mb_settings(mb_env: dict[str, str]) -> Settings:
    return load_settings(mb_env)


@pytest.fixture()
def session(mb_settings: Settings) -> Iterator[Any]:
    maker = make_sessionmaker(mb_settings.database_url)
    s = maker()
    try:
        yield s
    finally:
        s.rollback()
        s.close()
        maker.kw["bind"].dispose()


def _check(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, ["mailbox", "check", *args], env=env)


def _staff(session: Any, settings: Settings, *refs: str) -> Any:
    return accounts.create_user(
        session,
        username=f"staff{uid()}",
        password="correct horse battery staple",
        role="staff",
        staff_of=list(refs),
        settings=settings,
    )


def _staff_principal(user: Any, *refs: str) -> Principal:
    return Principal(
        role="staff", scopes=ScopeSet.parse(PROVIDER_SCOPE), user_id=user.id, client_id="tests", staff_of=tuple(refs)
    )


def _send(session: Any, settings: Settings, who: Principal, sender: str, recipient: str, **kw: Any) -> str:
    stored = Repository(session, settings, who).create("Communication", message_json(sender, recipient, **kw))
    session.commit()
    return stored.res_id


def _mine(session: Any, user_id: str) -> dict[str, tuple[bool, bool]]:
    rows = session.execute(select(MailboxRow).where(MailboxRow.user_id == user_id)).scalars()
    return {r.message_id: (r.read, r.deleted) for r in rows}


@pytest.fixture(scope="module")
def scenario(mb_settings: Settings) -> dict[str, Any]:
    """Two practices, staff, mail both ways and between providers, reads, and a reassignment."""
    s = mb_settings
    maker = make_sessionmaker(s.database_url)
    session = maker()
    try:
        a: Practice = make_practice(session, s)
        b: Practice = make_practice(session, s)
        staff = _staff(session, s, a.practitioner_ref)
        session.commit()
        to_a = [_send(session, s, a.patient, a.patient_ref, a.practitioner_ref) for _ in range(5)]
        to_pat = [_send(session, s, a.provider, a.practitioner_ref, a.patient_ref) for _ in range(3)]
        a_to_b = _send(session, s, a.provider, a.practitioner_ref, b.practitioner_ref)
        read_state.mark_read(session, to_a[0], a.provider_user_id, a.practitioner_ref)
        read_state.mark_read(session, to_a[1], staff.id, f"urn:fhirserver:user:{staff.id}")
        read_state.mark_read(session, to_pat[0], a.patient_user_id, a.patient_ref)
        read_state.mark_read(session, to_pat[1], a.patient_user_id, a.patient_ref)
        read_state.mark_unread(session, to_pat[1], a.patient_user_id)
        session.commit()
        return {"a": a, "b": b, "staff_id": staff.id, "to_a": to_a, "to_pat": to_pat, "a_to_b": a_to_b}
    finally:
        session.close()
        maker.kw["bind"].dispose()


def test_mailbox_invariant_over_a_scripted_scenario(session, mb_settings, scenario) -> None:
    """Rows for each recipient account and each staff member of a recipient provider; own read state."""
    a, b, to_a, to_pat = scenario["a"], scenario["b"], scenario["to_a"], scenario["to_pat"]
    assert _mine(session, a.provider_user_id) == {m: (m == to_a[0], False) for m in to_a}
    assert _mine(session, scenario["staff_id"]) == {m: (m == to_a[1], False) for m in to_a}
    assert _mine(session, a.patient_user_id) == {m: (m == to_pat[0], False) for m in to_pat}
    assert _mine(session, b.provider_user_id) == {scenario["a_to_b"]: (False, False)}
    assert _mine(session, b.patient_user_id) == {}


def test_unread_count_equals_the_count_from_the_resources(session, scenario) -> None:
    a, b, staff_id = scenario["a"], scenario["b"], scenario["staff_id"]
    cases = [
        (a.provider_user_id, [a.practitioner_ref], 4),
        (staff_id, [a.practitioner_ref], 4),
        (a.patient_user_id, [a.patient_ref], 2),
        (b.provider_user_id, [b.practitioner_ref], 1),
        (b.patient_user_id, [b.patient_ref], 0),
    ]
    for user_id, refs, expected in cases:
        assert read_state.unread_count(session, user_id, refs) == expected
        assert read_state.unread_count_from_resources(session, user_id, refs) == expected


def test_unread_counters_equal_the_unread_rows_after_the_scenario(session, scenario) -> None:
    """Sends, reads, an unread again, staff: each user's counter is their unread, undeleted rows."""
    a, b, staff_id = scenario["a"], scenario["b"], scenario["staff_id"]
    counters = dict(session.execute(select(MailboxUnreadRow.user_id, MailboxUnreadRow.unread)).all())
    for user_id, expected in [(a.provider_user_id, 4), (staff_id, 4), (a.patient_user_id, 2), (b.provider_user_id, 1)]:
        assert counters[user_id] == expected == mailbox.count_unread_rows(session, user_id)
    assert counters.get(b.patient_user_id, 0) == 0
    assert mailbox.check_counters(session) == []


def test_a_read_twice_or_an_unread_of_an_unread_message_moves_no_counter(session, scenario) -> None:
    a, msg = scenario["a"], scenario["to_pat"][2]

    def unread() -> int:
        return read_state.unread_count(session, a.patient_user_id, [a.patient_ref])

    before = unread()
    read_state.mark_unread(session, msg, a.patient_user_id)  # it is unread already
    assert unread() == before
    read_state.mark_read(session, msg, a.patient_user_id, a.patient_ref)
    mailbox.set_read(session, msg, a.patient_user_id, datetime.now(UTC))  # read again, row already read
    assert unread() == before - 1
    read_state.mark_unread(session, msg, a.patient_user_id)
    read_state.mark_unread(session, msg, a.patient_user_id)
    assert unread() == before == mailbox.count_unread_rows(session, a.patient_user_id)
    session.rollback()


def test_mailbox_check_finds_a_wrong_counter_and_fix_sets_it(session, mb_env, scenario) -> None:
    a = scenario["a"]
    session.execute(update(MailboxUnreadRow).where(MailboxUnreadRow.user_id == a.provider_user_id).values(unread=99))
    session.commit()
    found = _check(mb_env)
    assert found.exit_code == 1
    assert f"count  user {a.provider_user_id}  (the unread counter differs from the rows)" in found.stdout
    assert _check(mb_env, "--fix").exit_code == 0
    assert _check(mb_env).exit_code == 0
    session.expire_all()
    assert read_state.unread_count(session, a.provider_user_id, [a.practitioner_ref]) == 4


def test_unread_count_keeps_granular_scope_conditions(session, scenario) -> None:
    a = scenario["a"]
    for scope, expected in [
        (f"user/Communication.rs?category={CATEGORY_TOKEN}", 4),
        ("user/Communication.rs?category=http://example.org/other|x", 0),
    ]:
        p = Principal(
            role="provider",
            scopes=ScopeSet.parse(scope),
            user_id=a.provider_user_id,
            fhir_user=a.practitioner_ref,
            client_id="tests",
        )
        grant = access.scope_conditions(p, "Communication", "r")
        assert grant, "a granular scope adds conditions"
        assert read_state.unread_count(session, p.user_id or "", [a.practitioner_ref], grant) == expected
        assert read_state.unread_count_from_resources(session, p.user_id or "", [a.practitioner_ref], grant) == expected


@pytest.mark.parametrize(
    "extra",
    [
        [("status", "completed"), ("_sort", "-sent")],
        [("category", CATEGORY_TOKEN), ("_sort", "-sent"), ("_count", "2")],
        [("status", "completed"), ("_sort", "-sent"), ("_count", "1")],
        [("_sort", "-sent"), ("_count", "0")],
    ],
)
def test_inbox_page_from_the_mailbox_is_the_generic_bundle(session, mb_settings, scenario, extra) -> None:
    a, staff_id = scenario["a"], scenario["staff_id"]
    for who, me, n in [
        (a.provider, a.practitioner_ref, 5),
        (a.patient, a.patient_ref, 3),
        (_staff_principal(accounts.get_user(session, staff_id), a.practitioner_ref), a.practitioner_ref, 5),
    ]:
        params = [("recipient", me), *extra]
        planned = all_pages(session, mb_settings, who, params, generic=False)
        generic = all_pages(session, mb_settings, who, params, generic=True)
        assert planned == generic
        if ("_count", "0") not in extra:
            assert sorted(i for p in planned for i in p) == sorted(scenario["to_a"] if n == 5 else scenario["to_pat"])


def test_inbox_planner_serves_only_the_inbox_shape(session, mb_settings, scenario) -> None:
    """Other searches (another recipient, other sorts, extra parameters) take the generic path."""
    from fhirserver.webmail import inbox

    a, b = scenario["a"], scenario["b"]
    key = cursor_key(mb_settings)
    restrict = access.row_conditions(a.provider, "Communication", "s")

    def planned(params: list[tuple[str, str]], who: Principal = a.provider) -> bool:
        req = parse_search("Communication", params, cursor_key=key, server_base=mb_settings.fhir_base)
        return inbox.plan(session, who, req, restrict) is not None

    assert planned([("recipient", a.practitioner_ref), ("_sort", "-sent")])
    assert not planned([("recipient", b.practitioner_ref), ("_sort", "-sent")])
    assert not planned([("recipient", a.practitioner_ref), ("_sort", "sent")])
    assert not planned([("recipient", a.practitioner_ref)])
    assert not planned([("recipient", a.practitioner_ref), ("status", "in-progress"), ("_sort", "-sent")])
    assert not planned([("recipient", a.practitioner_ref), ("sender", a.patient_ref), ("_sort", "-sent")])
    assert not planned([("recipient", a.practitioner_id), ("_sort", "-sent")])  # a bare id: any type
    two = _staff_principal(accounts.get_user(session, scenario["staff_id"]), a.practitioner_ref, b.practitioner_ref)
    assert not planned([("recipient", a.practitioner_ref), ("_sort", "-sent")], two)


def test_mark_read_and_unread_update_the_row_in_the_same_transaction(session, scenario) -> None:
    a, msg = scenario["a"], scenario["to_a"][4]
    read_state.mark_read(session, msg, a.provider_user_id, a.practitioner_ref)
    assert _mine(session, a.provider_user_id)[msg] == (True, False)
    assert read_state.unread_count(session, a.provider_user_id, [a.practitioner_ref]) == 3
    session.rollback()
    assert _mine(session, a.provider_user_id)[msg] == (False, False)
    assert read_state.unread_count(session, a.provider_user_id, [a.practitioner_ref]) == 4


def test_an_account_created_later_gets_the_earlier_mail(session, mb_settings) -> None:
    """A provider whose account is made after a colleague wrote; a second account of a patient."""
    s = mb_settings
    a = make_practice(session, s)
    server = system_principal("tests")
    prac = Repository(session, s, server).create("Practitioner", practitioner_json(family=f"Late{uid()}"))
    session.commit()
    ref = f"Practitioner/{prac.res_id}"
    early = _send(session, s, a.provider, a.practitioner_ref, ref)
    late = accounts.create_user(
        session,
        username=f"dr{uid()}",
        password="correct horse battery staple",
        role="provider",
        fhir_user=ref,
        settings=s,
    )
    session.commit()
    assert _mine(session, late.id) == {early: (False, False)}
    to_patient = _send(session, s, a.provider, a.practitioner_ref, a.patient_ref)
    second = accounts.create_user(
        session,
        username=f"rep{uid()}",
        password="correct horse battery staple",
        role="patient",
        fhir_user=a.patient_ref,
        settings=s,
    )
    session.commit()
    assert _mine(session, second.id) == {to_patient: (False, False)}
    assert read_state.unread_count(session, second.id, [a.patient_ref]) == 1


def test_portal_access_granted_later_recomputes_the_new_account(session, mb_settings) -> None:
    from tests.factories import make_patient

    s = mb_settings
    a = make_practice(session, s)
    pid = make_patient(session, s, a.practitioner_ref)
    creds = accounts.grant_portal_access(session, s, patient_id=pid, first_name="Late")
    session.commit()
    assert _mine(session, creds.user_id) == {}
    sent = _send(session, s, a.provider, a.practitioner_ref, f"Patient/{pid}")
    assert _mine(session, creds.user_id) == {sent: (False, False)}


def test_staff_reassignment_recomputes_their_rows(session, mb_settings) -> None:
    s = mb_settings
    a = make_practice(session, s)
    b = make_practice(session, s)
    staff = _staff(session, s, a.practitioner_ref)
    session.commit()
    m_a = _send(session, s, a.patient, a.patient_ref, a.practitioner_ref)
    m_b = _send(session, s, b.patient, b.patient_ref, b.practitioner_ref)
    read_state.mark_read(session, m_b, staff.id, f"urn:fhirserver:user:{staff.id}")  # read before assigned
    session.commit()
    assert _mine(session, staff.id) == {m_a: (False, False)}
    accounts.assign_staff(session, staff, b.practitioner_ref)
    session.commit()
    assert _mine(session, staff.id) == {m_a: (False, False), m_b: (True, False)}
    accounts.assign_staff(session, staff, a.practitioner_ref, remove=True)
    session.commit()
    assert _mine(session, staff.id) == {m_b: (True, False)}
    assert read_state.unread_count(session, staff.id, [b.practitioner_ref]) == 0


def test_mailbox_check_is_clean_after_the_scenario_and_finds_a_tampered_row(session, mb_env, scenario) -> None:
    """Sends, reads, unreads, accounts made later and reassignments (the tests above) leave no difference."""
    clean = _check(mb_env)
    assert clean.exit_code == 0, clean.output
    a, msg = scenario["a"], scenario["to_a"][2]
    session.execute(
        update(MailboxRow)
        .where(MailboxRow.message_id == msg, MailboxRow.user_id == a.provider_user_id)
        .values(read=True)
    )
    _add_stray_row(session, msg, sent=mailbox_sent(session, msg))
    session.commit()
    found = _check(mb_env)
    assert found.exit_code == 1
    assert f"differs  Communication/{msg}  user {a.provider_user_id}" in found.output
    assert f"unexpected  Communication/{msg}  user nobody" in found.output
    fixed = _check(mb_env, "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert _check(mb_env).exit_code == 0
    session.rollback()
    assert _mine(session, a.provider_user_id)[msg] == (False, False)
    assert "nobody" not in {r.user_id for r in session.execute(select(MailboxRow)).scalars()}


def test_mailbox_check_finds_a_missing_row(session, mb_env, scenario) -> None:
    a, msg = scenario["a"], scenario["to_pat"][2]
    session.execute(
        MailboxRow.__table__.delete().where(MailboxRow.message_id == msg, MailboxRow.user_id == a.patient_user_id)
    )
    session.commit()
    found = _check(mb_env)
    assert found.exit_code == 1
    assert f"missing  Communication/{msg}  user {a.patient_user_id}" in found.output
    assert _check(mb_env, "--fix").exit_code == 0
    assert msg in _mine(session, a.patient_user_id)


def _add_stray_row(session: Any, message_id: str, *, sent: Any) -> None:
    """A mailbox row for user "nobody", whom no message reaches: the check calls it unexpected."""
    session.execute(
        MailboxRow.__table__.insert().values(
            message_id=message_id,
            user_id="nobody",
            recipient_ref="Practitioner/x",
            sent=sent,
            read=False,
            read_at=None,
            deleted=False,
        )
    )


def mailbox_sent(session: Any, msg: str) -> Any:
    return session.execute(select(MailboxRow.sent).where(MailboxRow.message_id == msg).limit(1)).scalar_one()


def test_a_recompute_waits_for_a_message_being_written_to_the_provider(session, mb_settings) -> None:
    """A staff assignment cannot slip between a send's read of the provider's users and its commit."""
    if not mb_settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: the two transactions cannot overlap")
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    s = mb_settings
    a = make_practice(session, s)
    staff = _staff(session, s)
    session.commit()
    Repository(session, s, a.patient).create("Communication", message_json(a.patient_ref, a.practitioner_ref))
    maker = make_sessionmaker(s.database_url)
    other = maker()
    try:
        other.execute(text("SET lock_timeout = '200ms'"))
        with pytest.raises(OperationalError, match="lock timeout"):
            accounts.assign_staff(other, other.get(type(staff), staff.id), a.practitioner_ref)
        other.rollback()
        session.commit()  # the send commits; now the assignment goes through and sees the message
        accounts.assign_staff(other, other.get(type(staff), staff.id), a.practitioner_ref)
        other.commit()
    finally:
        other.close()
        maker.kw["bind"].dispose()
    assert len(_mine(session, staff.id)) == 1


def test_a_created_message_gets_the_rows_a_recompute_would_give(session, mb_settings, scenario) -> None:
    """A create writes its rows from its own index rows (no read-back): they equal expected_rows."""
    from fhirserver.webmail import mailbox

    a = scenario["a"]
    mid = _send(session, mb_settings, a.patient, a.patient_ref, a.practitioner_ref, topic="fast path")
    rows = {
        (r.message_id, r.user_id): (r.recipient_ref, r.read, r.read_at, r.deleted, r.sent.replace(tzinfo=None))
        for r in session.execute(select(MailboxRow).where(MailboxRow.message_id == mid)).scalars()
    }
    want = {
        key: (e.recipient_ref, e.read, e.read_at, e.deleted, e.sent.replace(tzinfo=None))
        for key, e in mailbox.expected_rows(session, [mid]).items()
    }
    assert rows == want
    assert {uid for _, uid in rows} == {a.provider_user_id, scenario["staff_id"]}


@pytest.mark.parametrize("page", [1, 3])
def test_mailbox_check_pages_find_what_one_page_finds(session, scenario, page) -> None:
    """The check walks message ids page by page (bounded memory); no page boundary hides a
    difference, including rows of a message that does not exist at all."""
    from fhirserver.webmail import mailbox

    a, msg = scenario["a"], scenario["to_pat"][2]
    session.execute(
        update(MailboxRow)
        .where(MailboxRow.message_id == msg, MailboxRow.user_id == a.patient_user_id)
        .values(read=True)
    )
    for orphan in ("0-orphan", msg + "-orphan", "zzzz-orphan"):  # before, beside and after the real ids
        _add_stray_row(session, orphan, sent=mailbox_sent(session, msg))
    session.flush()
    try:
        whole = mailbox.check(session, page=10**6)
        assert {(d.message_id, d.problem) for d in whole} >= {
            (msg, "differs"),
            ("0-orphan", "unexpected"),
            (msg + "-orphan", "unexpected"),
            ("zzzz-orphan", "unexpected"),
        }
        assert mailbox.check(session, page=page) == whole
    finally:
        session.rollback()
