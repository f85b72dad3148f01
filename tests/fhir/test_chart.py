"""The chart table (docs/webmail-profile.md, "Chart"): a patient's messages,
``Communication?subject=...&_sort=-sent``, served from it exactly as the generic search serves them.

The module runs on a database of its own, so that ``fhirserver mailbox check`` (which checks
the whole table) and the migration's backfill see only this scenario's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import delete, insert, select, update

from fhirserver.cli import main
from fhirserver.config import Settings, load_settings
from fhirserver.core import access
from fhirserver.core.principal import Principal
from fhirserver.core.repository import Repository, cursor_key
from fhirserver.db import make_sessionmaker
from fhirserver.migrate import alembic_config
from fhirserver.models import ChartRow, IdxDate, MailboxUnreadRow, ResourceRow
from fhirserver.search.query import parse_search
from fhirserver.webmail import chart, mailbox, read_state
from tests.factories import Practice, make_practice, message_json
from tests.fhir.search_pages import all_pages
from tests.support import fresh_database, test_env

CATEGORY_TOKEN = "http://fhir-webmail.example/CodeSystem/communication-category|webmail"


@pytest.fixture(scope="module")
def ch_env(database_url: str, server_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with fresh_database(backend, tmp_path_factory) as url:
        yield test_env(tmp_path_factory.mktemp("chart-var"), url, server_port)


@pytest.fixture(scope="module")
def ch_settings(ch_env: dict[str, str]) -> Settings:
    return load_settings(ch_env)


@pytest.fixture()
def session(ch_settings: Settings) -> Iterator[Any]:
    maker = make_sessionmaker(ch_settings.database_url)
    s = maker()
    try:
        yield s
    finally:
        s.rollback()
        s.close()
        maker.kw["bind"].dispose()


def _send(session: Any, settings: Settings, who: Principal, sender: str, recipient: str, **kw: Any) -> str:
    stored = Repository(session, settings, who).create("Communication", message_json(sender, recipient, **kw))
    session.commit()
    return stored.res_id


@pytest.fixture(scope="module")
def scenario(ch_settings: Settings) -> dict[str, Any]:
    """Two practices; mail both ways between each patient and provider, and provider to provider."""
    s = ch_settings
    maker = make_sessionmaker(s.database_url)
    session = maker()
    try:
        a: Practice = make_practice(session, s)
        b: Practice = make_practice(session, s)
        session.commit()
        mine = [_send(session, s, a.patient, a.patient_ref, a.practitioner_ref) for _ in range(4)]
        mine += [_send(session, s, a.provider, a.practitioner_ref, a.patient_ref) for _ in range(3)]
        theirs = [_send(session, s, b.patient, b.patient_ref, b.practitioner_ref) for _ in range(2)]
        about_a = _send(session, s, a.provider, a.practitioner_ref, b.practitioner_ref, subject=a.patient_ref)
        no_subject = _send(session, s, a.provider, a.practitioner_ref, b.practitioner_ref)
        return {"a": a, "b": b, "mine": [*mine, about_a], "theirs": theirs, "no_subject": no_subject}
    finally:
        session.close()
        maker.kw["bind"].dispose()


def _ids(pages: list[list[str]]) -> list[str]:
    return [i for p in pages for i in p]


def _check(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(main, ["mailbox", "check", *args], env=env)


def test_a_message_gets_one_row_per_subject_with_its_sent(session, scenario) -> None:
    a, b = scenario["a"], scenario["b"]
    rows = {r.message_id: r for r in session.execute(select(ChartRow)).scalars()}
    assert {m for m, r in rows.items() if r.subject_ref == a.patient_ref} == set(scenario["mine"])
    assert {m for m, r in rows.items() if r.subject_ref == b.patient_ref} == set(scenario["theirs"])
    assert scenario["no_subject"] not in rows  # a message between providers about nobody: no chart row
    assert all(r.has_sent and r.sent is not None for r in rows.values())
    assert chart.check_page(session, sorted(rows), fix=False) == []


@pytest.mark.parametrize(
    "extra",
    [
        [("_sort", "-sent")],
        [("_sort", "-sent"), ("_count", "2")],
        [("_sort", "-sent"), ("_count", "1"), ("status", "completed")],
        [("_sort", "-sent"), ("_count", "3"), ("category", CATEGORY_TOKEN)],
        [("_sort", "-sent"), ("_count", "2"), ("sender:missing", "false")],
        [("_sort", "-sent"), ("_count", "0")],
    ],
)
@pytest.mark.parametrize("param", ["subject", "patient"])
def test_chart_pages_from_the_table_are_the_genericall_pages(session, ch_settings, scenario, extra, param) -> None:
    a, b = scenario["a"], scenario["b"]
    for who, ref, expected in [
        (a.provider, a.patient_ref, scenario["mine"]),
        (a.patient, a.patient_ref, scenario["mine"]),  # the compartment: the note about them too
        (a.provider, b.patient_ref, []),  # outside the grant: nothing, on both paths
        (b.provider, b.patient_ref, scenario["theirs"]),
    ]:
        params = [(param, ref), *extra]
        planned = all_pages(session, ch_settings, who, params, generic=False)
        generic = all_pages(session, ch_settings, who, params, generic=True)
        assert planned == generic
        if ("_count", "0") not in extra:
            assert sorted(_ids(planned)) == sorted(expected)


def test_other_parameters_filter_the_chart_as_in_the_generic_search(session, ch_settings, scenario) -> None:
    a = scenario["a"]
    for sender, n in [(a.patient_ref, 4), (a.practitioner_ref, 4), (scenario["b"].patient_ref, 0)]:
        params = [("subject", a.patient_ref), ("sender", sender), ("_sort", "-sent"), ("_count", "3")]
        planned = all_pages(session, ch_settings, a.provider, params, generic=False)
        assert planned == all_pages(session, ch_settings, a.provider, params, generic=True)
        assert len(_ids(planned)) == n


def test_the_planner_answers_the_chart_shape_and_nothing_else(session, ch_settings, scenario) -> None:
    a = scenario["a"]
    key = cursor_key(ch_settings)
    restrict = access.row_conditions(a.provider, "Communication", "s")

    def planned(params: list[tuple[str, str]]) -> bool:
        req = parse_search("Communication", params, cursor_key=key, server_base=ch_settings.fhir_base)
        return chart.plan(session, a.provider, req, restrict) is not None

    assert planned([("subject", a.patient_ref), ("_sort", "-sent")])
    assert planned([("patient", a.patient_ref), ("_sort", "-sent"), ("status", "completed")])
    assert not planned([("subject", a.patient_ref)])  # no sort: the generic order
    assert not planned([("subject", a.patient_ref), ("_sort", "sent")])
    assert not planned([("subject", a.patient_id), ("_sort", "-sent")])  # a bare id: any type
    assert not planned([("subject", f"{a.patient_ref},{a.patient_ref}x"), ("_sort", "-sent")])
    assert not planned([("subject", a.patient_ref), ("patient", a.patient_ref), ("_sort", "-sent")])
    assert not planned([("subject:missing", "false"), ("_sort", "-sent")])
    assert not planned([("recipient", a.practitioner_ref), ("_sort", "-sent")])


def test_deleted_and_unsent_messages_sort_and_page_as_in_the_generic_search(session, ch_settings, scenario) -> None:
    """A deleted message is skipped; messages without ``sent`` come last, by id, on both paths.

    The rules stamp ``sent`` on every message today, so the state is made by hand (as a later
    import of other systems' Communications would write it), in a transaction rolled back after.
    """
    a = scenario["a"]
    gone, *rest = scenario["mine"]
    unsent = rest[:3]
    mine = (ResourceRow.res_type == "Communication", ResourceRow.res_id == gone)
    session.execute(update(ResourceRow).where(*mine).values(deleted=True))
    session.execute(
        delete(IdxDate).where(IdxDate.res_type == "Communication", IdxDate.res_id.in_(unsent), IdxDate.param == "sent")
    )
    session.execute(update(ChartRow).where(ChartRow.message_id.in_(unsent)).values(has_sent=False, sent=None))
    session.flush()
    assert chart.check_page(session, scenario["mine"], fix=False) == []
    for count in ("1", "2", "20"):
        params = [("subject", a.patient_ref), ("_sort", "-sent"), ("_count", count)]
        planned = all_pages(session, ch_settings, a.provider, params, generic=False)
        assert planned == all_pages(session, ch_settings, a.provider, params, generic=True)
        ids = _ids(planned)
        assert gone not in ids and len(ids) == len(rest)
        assert ids[-3:] == sorted(unsent, reverse=True)


def test_check_finds_missing_unexpected_and_differing_rows_and_fix_repairs_them(
    session, ch_env, ch_settings, scenario
) -> None:
    a = scenario["a"]
    assert _check(ch_env).exit_code == 0
    first, second = scenario["mine"][:2]
    session.execute(delete(ChartRow).where(ChartRow.message_id == first))
    session.execute(update(ChartRow).where(ChartRow.message_id == second).values(subject_ref="Patient/elsewhere"))
    session.execute(insert(ChartRow).values(message_id="zz-orphan", subject_ref=a.patient_ref, has_sent=False))
    session.commit()
    found = _check(ch_env)
    assert found.exit_code == 1
    lines = set(found.stdout.splitlines())
    assert f"missing  Communication/{first}  chart {a.patient_ref}" in lines
    assert f"missing  Communication/{second}  chart {a.patient_ref}" in lines
    assert f"unexpected  Communication/{second}  chart Patient/elsewhere" in lines
    assert f"unexpected  Communication/zz-orphan  chart {a.patient_ref}" in lines
    for page in (1, 3):
        assert len(chart.check(session, page=page)) == 4
    session.rollback()  # the fix writes from another connection (SQLite: one writer)
    assert _check(ch_env, "--fix").exit_code == 0
    assert _check(ch_env).exit_code == 0
    session.expire_all()
    assert {r.message_id for r in session.execute(select(ChartRow)).scalars()} == {
        *scenario["mine"],
        *scenario["theirs"],
    }


def test_a_changed_sent_is_a_difference(session, scenario) -> None:
    msg = scenario["theirs"][0]
    session.execute(update(ChartRow).where(ChartRow.message_id == msg).values(has_sent=False, sent=None))
    diffs = chart.check_page(session, [msg], fix=True)
    assert [d.problem for d in diffs] == ["differs"]
    assert chart.check_page(session, [msg], fix=False) == []
    session.rollback()


def test_the_migrations_backfill_the_rows_the_write_rules_write(session, ch_settings, scenario) -> None:
    """Down to 0008 (the chart and the unread counters go) and up again: the backfills give exactly
    the rows and counts that the write rules wrote."""
    a = scenario["a"]
    read_state.mark_read(session, scenario["mine"][4], a.patient_user_id, a.patient_ref)  # a read row: not counted
    session.commit()
    before = {(r.message_id, r.subject_ref, r.has_sent) for r in session.execute(select(ChartRow)).scalars()}
    counters = dict(session.execute(select(MailboxUnreadRow.user_id, MailboxUnreadRow.unread)).all())
    assert counters and any(counters.values())
    session.rollback()
    session.get_bind().dispose()
    cfg = alembic_config(ch_settings.database_url)
    command.downgrade(cfg, "0008")
    command.upgrade(cfg, "head")
    after = {(r.message_id, r.subject_ref, r.has_sent) for r in session.execute(select(ChartRow)).scalars()}
    assert after == before and before
    assert chart.check(session) == []
    assert dict(session.execute(select(MailboxUnreadRow.user_id, MailboxUnreadRow.unread)).all()) == counters
    assert mailbox.check_counters(session) == []
