"""run_search() on SQLite and PostgreSQL: every parameter, modifiers, sorting, paging, grants."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhirserver.core.errors import FhirError
from fhirserver.models import IdxString, ResourceRow
from fhirserver.search.indexing import delete_index, write_index
from fhirserver.search.query import parse_search
from tests.search.search_support import BASE, Store

WEBMAIL = "http://fhir-webmail.example/CodeSystem/communication-category"


def patients(store: Store) -> None:
    store.add(
        "Patient",
        "zoe",
        {
            "name": [{"family": "Zoë Ünder", "given": ["Anna"]}],
            "birthDate": "1980-05-03",
            "telecom": [{"system": "email", "value": "zoe@x.example"}, {"system": "phone", "value": "555"}],
            "identifier": [{"system": "urn:mrn", "value": "42"}],
            "generalPractitioner": [{"reference": "Practitioner/d1"}],
        },
    )
    store.add(
        "Patient",
        "zed",
        {
            "name": [{"family": "Zoeller", "given": ["Bob", "Anne"]}],
            "birthDate": "1980",
            "identifier": [{"value": "42"}],
            "generalPractitioner": [{"reference": f"{BASE}/Organization/o1"}],
        },
    )
    store.add(
        "Patient",
        "old",
        {
            "name": [{"family": "Older", "text": "Mr Older"}],
            "birthDate": "1979-12-31",
            "telecom": [{"system": "email", "value": "555"}],
            "generalPractitioner": [{"reference": "Practitioner/d2"}],
        },
    )
    store.add("Patient", "new", {"name": [{"family": "Newer"}], "birthDate": "1981-01-01"})


def test_string_prefix_is_case_and_accent_insensitive(store: Store) -> None:
    patients(store)
    assert store.found("Patient", ("family", "zoe")) == {"zoe", "zed"}
    assert store.found("Patient", ("family", "ZOË Ü")) == {"zoe"}
    assert store.found("Patient", ("name", "ann")) == {"zoe", "zed"}
    assert store.found("Patient", ("given", "anne")) == {"zed"}
    assert store.found("Patient", ("name", "mr o")) == {"old"}
    assert store.found("Patient", ("family", "nobody")) == set()
    assert store.found("Patient", ("family", "zoe_")) == set()  # LIKE wildcards are literal
    assert store.found("Patient", ("family", "%")) == set()


def test_string_exact_and_contains(store: Store) -> None:
    patients(store)
    assert store.found("Patient", ("family:exact", "Zoë Ünder")) == {"zoe"}
    assert store.found("Patient", ("family:exact", "zoë ünder")) == set()
    assert store.found("Patient", ("family:exact", "Zoë")) == set()
    assert store.found("Patient", ("family:contains", "DE")) == {"zoe", "old"}
    assert store.found("Patient", ("family:contains", "under")) == {"zoe"}


def test_or_within_a_parameter_and_across_repeats(store: Store) -> None:
    patients(store)
    assert store.found("Patient", ("family", "older,newer")) == {"old", "new"}
    assert store.found("Patient", ("name", "zoe"), ("name", "bob")) == {"zed"}
    assert store.found("Patient", ("name", "zoe"), ("birthdate", "1980-05")) == {"zoe"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1980", {"zoe", "zed"}),
        ("eq1980", {"zoe", "zed"}),
        ("1980-05", {"zoe"}),
        ("1980-05-03", {"zoe"}),
        ("1980-05-03T12:00:00Z", set()),
        ("ne1980", {"old", "new"}),
        ("lt1980", {"old"}),
        ("lt1980-05-03", {"old", "zed"}),
        ("le1980-05-03", {"old", "zed", "zoe"}),
        ("gt1980", {"new"}),
        ("gt1980-05-03", {"zed", "new"}),
        ("ge1980-05-03", {"zed", "zoe", "new"}),
        ("ge1981", {"new"}),
        ("sa1980-05-03", {"new"}),
        ("sa1979", {"zoe", "zed", "new"}),
        ("eb1980", {"old"}),
        ("eb1981-01-01", {"old", "zoe", "zed"}),
        ("sa1979-12-31T23:30:00Z", {"zoe", "zed", "new"}),
        ("sa1979-12-31T23:30:00-01:00", {"zoe", "new"}),  # = 1980-01-01T00:30Z: after the start of "1980"
    ],
)
def test_date_prefixes_with_partial_dates(store: Store, value: str, expected: set[str]) -> None:
    patients(store)
    assert store.found("Patient", ("birthdate", value)) == expected


def test_date_ap_uses_a_tenth_of_the_distance_to_now(store: Store) -> None:
    patients(store)
    now = datetime(1980, 5, 13, tzinfo=UTC)  # gap of one day
    assert store.found("Patient", ("birthdate", "ap1980-05-03"), now=now) == {"zoe", "zed"}
    assert store.found("Patient", ("birthdate", "ap1980-05-06"), now=now) == {"zed"}
    assert store.found("Patient", ("birthdate", "ap1980"), now=datetime(2030, 1, 1, tzinfo=UTC)) == {
        "zoe",
        "zed",
        "old",
        "new",
    }


def test_date_ranges_and(store: Store) -> None:
    patients(store)
    assert store.found("Patient", ("birthdate", "ge1980-01-01"), ("birthdate", "lt1981")) == {"zoe", "zed"}


def test_tokens(store: Store) -> None:
    patients(store)
    assert store.found("Patient", ("email", "zoe@x.example")) == {"zoe"}
    assert store.found("Patient", ("email", "555")) == {"old"}  # a phone number is not an email
    assert store.found("Patient", ("identifier", "42")) == {"zoe", "zed"}
    assert store.found("Patient", ("identifier", "urn:mrn|42")) == {"zoe"}
    assert store.found("Patient", ("identifier", "|42")) == {"zed"}
    assert store.found("Patient", ("identifier", "urn:mrn|")) == {"zoe"}
    assert store.found("Patient", ("identifier", "urn:other|42")) == set()


def test_references(store: Store) -> None:
    patients(store)
    assert store.found("Patient", ("general-practitioner", "Practitioner/d1")) == {"zoe"}
    assert store.found("Patient", ("general-practitioner", "d1,o1")) == {"zoe", "zed"}
    assert store.found("Patient", ("general-practitioner", f"{BASE}/Practitioner/d2")) == {"old"}
    assert store.found("Patient", ("general-practitioner", "Organization/o1")) == {"zed"}
    assert store.found("Patient", ("general-practitioner:Practitioner", "o1")) == set()
    assert store.found("Patient", ("general-practitioner", "https://elsewhere.example/Practitioner/d1")) == set()


def test_id_and_last_updated(store: Store) -> None:
    patients(store)
    ids = store.ids
    assert store.found("Patient", ("_id", f"{ids['zoe']},{ids['new']}")) == {"zoe", "new"}
    # the store's clock gives zoe..new last_updated 2024-01-01T00:00:01 .. :04
    assert store.found("Patient", ("_lastUpdated", "gt2024-01-01T00:00:02Z")) == {"old", "new"}
    assert store.found("Patient", ("_lastUpdated", "2024-01-01")) == {"zoe", "zed", "old", "new"}
    assert store.found("Patient", ("_lastUpdated", "lt2024")) == set()


def messages(store: Store) -> None:
    """A thread header and four messages; one about a Group, one with no sent time."""
    cat = [{"coding": [{"system": WEBMAIL, "code": "webmail"}]}]
    store.add(
        "Communication",
        "head",
        {
            "status": "in-progress",
            "category": cat,
            "subject": {"reference": "Patient/p1"},
            "recipient": [{"reference": "Practitioner/d1"}, {"reference": "Patient/p1"}],
        },
    )
    head = f"Communication/{store.ids['head']}"
    for name, sender, sent, status in [
        ("m1", "Patient/p1", "2024-02-01T10:00:00Z", "completed"),
        ("m2", "Practitioner/d1", "2024-02-02T10:00:00+01:00", "in-progress"),
        ("m3", "Patient/p1", "2024-02-03", "entered-in-error"),
    ]:
        store.add(
            "Communication",
            name,
            {
                "status": status,
                "category": cat,
                "partOf": [{"reference": head}],
                "subject": {"reference": "Patient/p1"},
                "sender": {"reference": sender},
                "recipient": [{"reference": "Practitioner/d1" if sender.startswith("Pat") else "Patient/p1"}],
                "sent": sent,
                "topic": {"text": "Secret topic"},
                "payload": [{"contentString": "Secret body"}],
            },
        )
    store.add(
        "Communication",
        "grp",
        {
            "status": "stopped",
            "subject": {"reference": "Group/g1"},
            "sender": {"reference": "Practitioner/d1"},
            "sent": "2024-02-04T00:00:00Z",
        },
    )


def test_communication_parameters(store: Store) -> None:
    messages(store)
    head = store.ids["head"]
    assert store.found("Communication", ("sender", "Patient/p1")) == {"m1", "m3"}
    assert store.found("Communication", ("recipient", "Practitioner/d1")) == {"head", "m1", "m3"}
    assert store.found("Communication", ("subject", "Group/g1")) == {"grp"}
    assert store.found("Communication", ("subject", "p1")) == {"head", "m1", "m2", "m3"}
    assert store.found("Communication", ("patient", "Patient/p1")) == {"head", "m1", "m2", "m3"}
    assert store.found("Communication", ("patient", "g1")) == set()
    assert store.found("Communication", ("part-of", f"Communication/{head}")) == {"m1", "m2", "m3"}
    assert store.found("Communication", ("part-of:missing", "true")) == {"head", "grp"}
    assert store.found("Communication", ("part-of:missing", "false")) == {"m1", "m2", "m3"}
    assert store.found("Communication", ("category", f"{WEBMAIL}|webmail")) == {"head", "m1", "m2", "m3"}
    assert store.found("Communication", ("category", "webmail")) == {"head", "m1", "m2", "m3"}
    assert store.found("Communication", ("status", "completed,stopped")) == {"m1", "grp"}
    assert store.found("Communication", ("status:not", "completed,entered-in-error,stopped")) == {"head", "m2"}
    assert store.found("Communication", ("category:not", "webmail")) == {"grp"}  # no category at all
    assert store.found("Communication", ("sent", "2024-02-02")) == {"m2"}
    assert store.found("Communication", ("sent", "ge2024-02-03")) == {"m3", "grp"}


def test_encrypted_elements_are_not_searchable(store: Store) -> None:
    messages(store)
    rows = store.session.query(IdxString).filter(IdxString.res_id.startswith(store.prefix)).all()
    assert rows == []
    with pytest.raises(FhirError):
        store.page("Communication", ("topic", "secret"))


def test_inbox_query_of_the_anchors(store: Store) -> None:
    messages(store)
    inbox = store.names(
        "Communication",
        ("part-of:missing", "true"),
        ("recipient", "Practitioner/d1"),
        ("status:not", "completed,entered-in-error,stopped,unknown"),
        ("_sort", "-_lastUpdated"),
    )
    assert inbox == ["head"]


def test_sort_by_sent(store: Store) -> None:
    messages(store)
    assert store.names("Communication", ("_sort", "-sent")) == ["grp", "m3", "m2", "m1", "head"]
    assert store.names("Communication", ("_sort", "sent")) == ["m1", "m2", "m3", "grp", "head"]


def test_default_sort_is_last_updated_descending_then_id(store: Store) -> None:
    same = datetime(2024, 3, 1, tzinfo=UTC)
    for name in ("b", "a", "c"):
        store.add("Practitioner", name, {"name": [{"family": "Same"}]}, last_updated=same)
    store.add("Practitioner", "newest", {"name": [{"family": "Same"}]}, last_updated=datetime(2024, 4, 1, tzinfo=UTC))
    assert store.names("Practitioner") == ["newest", "c", "b", "a"]
    assert store.names("Practitioner", ("_sort", "_lastUpdated")) == ["a", "b", "c", "newest"]
    assert store.names("Practitioner", ("_sort", "-_id")) == ["newest", "c", "b", "a"]


def walk(store: Store, res_type: str, *params: tuple[str, str]) -> list[list[str]]:
    """Follow next cursors to the end; returns the names on each page."""
    pages: list[list[str]] = []
    page = store.page(res_type, *params)
    while True:
        pages.append([r.res_id[len(store.prefix) :] for r in page.rows])
        if page.next_cursor is None:
            return pages
        assert "2024" not in page.next_cursor and "Patient" not in page.next_cursor
        page = store.page(res_type, ("_cursor", page.next_cursor))
        assert len(pages) < 20


def test_paging_three_pages_no_repeats_no_gaps(store: Store) -> None:
    messages(store)
    # a second message at the very same sent instant as m2 tests the id tie-break
    store.add(
        "Communication",
        "m2b",
        {"status": "completed", "subject": {"reference": "Patient/p1"}, "sent": "2024-02-02T09:00:00Z"},
    )
    pages = walk(store, "Communication", ("_sort", "-sent"), ("_count", "2"))
    assert [len(p) for p in pages] == [2, 2, 2]
    flat = [n for p in pages for n in p]
    assert flat == store.names("Communication", ("_sort", "-sent"), ("_count", "100"))
    assert sorted(flat) == sorted(store.ids)
    assert flat.index("m2b") == flat.index("m2") - 1  # same sent: ids descending


def test_paging_keeps_filters_and_survives_concurrent_inserts(store: Store) -> None:
    for i in range(7):
        store.add("Patient", f"p{i}", {"name": [{"family": f"Pager{i}"}], "birthDate": f"19{60 + i}"})
    store.add("Patient", "other", {"name": [{"family": "Other"}]})
    first = store.page("Patient", ("family", "pager"), ("_sort", "birthdate"), ("_count", "3"))
    assert [r.res_id for r in first.rows] == [store.ids[f"p{i}"] for i in range(3)]
    # rows inserted before and after the cursor position: the old ones are neither repeated nor skipped
    store.add("Patient", "early", {"name": [{"family": "Pager early"}], "birthDate": "1950"})
    store.add("Patient", "late", {"name": [{"family": "Pager late"}], "birthDate": "1999"})
    assert first.next_cursor is not None
    second = store.page("Patient", ("_cursor", first.next_cursor))
    assert [r.res_id for r in second.rows] == [store.ids[f"p{i}"] for i in range(3, 6)]
    assert second.next_cursor is not None
    third = store.page("Patient", ("_cursor", second.next_cursor))
    assert [r.res_id for r in third.rows] == [store.ids["p6"], store.ids["late"]]
    assert third.next_cursor is None


def test_paging_with_missing_sort_values(store: Store) -> None:
    for i, born in enumerate(["1990", None, "1970", None, "1980"]):
        store.add("Patient", f"n{i}", {"birthDate": born} if born else {"gender": "unknown"})
    for order in ("birthdate", "-birthdate"):
        pages = walk(store, "Patient", ("_sort", order), ("_count", "2"))
        flat = [n for p in pages for n in p]
        assert flat == store.names("Patient", ("_sort", order), ("_count", "100"))
        assert sorted(flat) == sorted(store.ids)
        assert set(flat[-2:]) == {"n1", "n3"}  # missing values last in both directions


def test_count_zero_and_exact_fit(store: Store) -> None:
    patients(store)
    empty = store.page("Patient", ("_count", "0"))
    assert empty.rows == [] and empty.next_cursor is None
    fit = store.page("Patient", ("_count", "4"))
    assert len(fit.rows) == 4 and fit.next_cursor is None


def test_tampered_and_foreign_cursors_are_refused(store: Store) -> None:
    patients(store)
    page = store.page("Patient", ("_count", "1"))
    token = page.next_cursor
    assert token is not None
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for res_type, cursor in [("Patient", tampered), ("Practitioner", token), ("Patient", token + "x")]:
        with pytest.raises(FhirError) as info:
            store.page(res_type, ("_cursor", cursor))
        assert info.value.status == 400
    with pytest.raises(FhirError):
        parse_search("Patient", [("_cursor", token)], cursor_key=b"k" * 32)


def test_restrict_conditions_confine_results_and_paging(store: Store) -> None:
    patients(store)
    allowed = [ResourceRow.res_id.in_([store.ids["zoe"], store.ids["old"], store.ids["new"]])]
    assert store.found("Patient", ("family", "zoe"), restrict=allowed) == {"zoe"}
    pages = walk_restricted(store, allowed)
    assert sorted(n for p in pages for n in p) == ["new", "old", "zoe"]


def walk_restricted(store: Store, restrict: list) -> list[list[str]]:
    pages = []
    page = store.page("Patient", ("_count", "1"), restrict=restrict)
    for _ in range(20):
        pages.append([r.res_id[len(store.prefix) :] for r in page.rows])
        if page.next_cursor is None:
            return pages
        page = store.page("Patient", ("_cursor", page.next_cursor), restrict=restrict)
    raise AssertionError("paging did not end")


def test_deleted_rows_are_never_returned(store: Store) -> None:
    patients(store)
    # a deleted row whose index rows were (wrongly) left behind must still not appear
    store.add("Patient", "gone", {"name": [{"family": "Zoe Gone"}], "birthDate": "1980"}, deleted=True)
    assert store.found("Patient", ("family", "zoe")) == {"zoe", "zed"}
    assert store.found("Patient", ("birthdate", "1980")) == {"zoe", "zed"}
    assert "gone" not in store.found("Patient")


def test_write_index_replaces_and_delete_index_removes(store: Store) -> None:
    res_id = store.add("Patient", "chg", {"name": [{"family": "Before"}], "birthDate": "1970"})
    write_index(store.session, "Patient", res_id, {"resourceType": "Patient", "name": [{"family": "After"}]})
    assert store.found("Patient", ("family", "before")) == set()
    assert store.found("Patient", ("family", "after")) == {"chg"}
    assert store.found("Patient", ("birthdate", "1970")) == set()
    delete_index(store.session, "Patient", res_id)
    assert store.found("Patient", ("family", "after")) == set()
    assert store.found("Patient") == {"chg"}  # the row itself is not the index's business


def test_unknown_parameter_is_refused_before_any_query(store: Store) -> None:
    with pytest.raises(FhirError) as info:
        store.page("Patient", ("shoe-size", "42"))
    assert info.value.status == 400


def test_audit_events_written_by_the_audit_module_are_searchable(store: Store) -> None:
    """AuditEvents are searched over the audit table's columns (fhirserver.core.audit_log)."""
    from fhirserver.core import audit_log
    from fhirserver.core.audit import rest_event

    pid = store.prefix + "pat"
    ok = rest_event(
        store.session,
        None,
        interaction="read",
        status=200,
        res_type="Patient",
        res_id=pid,
        patient_ref=f"Patient/{pid}",
    )
    rest_event(
        store.session,
        None,
        interaction="read",
        status=404,
        res_type="Patient",
        res_id=pid,
        patient_ref=f"Patient/{pid}",
    )
    store.session.flush()
    req = parse_search(
        "AuditEvent", [("patient", f"Patient/{pid}"), ("outcome", "0"), ("date", "ge2000")], cursor_key=store.key
    )
    rows, _ = audit_log.search(store.session, req)
    assert [r.res_id for r in rows] == [ok]
