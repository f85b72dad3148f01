"""parse_search(): validation and meaning of search parameters (pure, no database)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from fhirserver.core.errors import FhirError
from fhirserver.search.query import SearchRequest, next_cursor, parse_search
from fhirserver.search.types.date import DateQuery
from fhirserver.search.types.reference import RefQuery
from fhirserver.search.types.string import StringQuery
from fhirserver.search.types.token import TokenQuery

KEY = os.urandom(32)
BASE = "https://fhir.example/fhir"
PHI = "Smithson-Secret"


def parse(res_type: str, *params: tuple[str, str], **kw: object) -> SearchRequest:
    return parse_search(res_type, list(params), cursor_key=KEY, server_base=BASE, **kw)  # type: ignore[arg-type]


def refuse(res_type: str, *params: tuple[str, str], code: str | None = None) -> FhirError:
    with pytest.raises(FhirError) as info:
        parse(res_type, *params)
    err = info.value
    assert err.status == 400
    if code:
        assert err.code == code
    assert PHI.casefold() not in str(err.to_operation_outcome()).casefold()
    return err


def test_unknown_parameter_is_named_but_its_value_never_echoed() -> None:
    err = refuse("Patient", ("nickname", PHI), code="not-supported")
    assert "nickname" in err.diagnostics


def test_parameter_names_that_are_not_names_are_not_echoed() -> None:
    err = refuse("Patient", (PHI + " <script>", "x"))
    assert "script" not in err.diagnostics


def test_chained_parameters_are_not_supported_yet() -> None:
    refuse("Communication", ("subject.name", PHI), code="not-supported")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("birthdate", PHI),
        ("birthdate", "1980-13-01"),
        ("birthdate", "xx1980"),
        ("birthdate", "zz" + PHI),
        ("_lastUpdated", "2020-01-01T10"),
        ("sent", "ge2020-02-30"),
        ("email", "a|b|c"),
        ("identifier", "|"),
        ("_id", "has space"),
        ("_id", "a|b"),
        ("general-practitioner", "Practitioner/has space"),
        ("general-practitioner", "Patient/p1"),
        ("general-practitioner", "a/b/c"),
        ("part-of:missing", "maybe"),
        ("part-of:missing", "true,false"),
        ("name", "x" * 1025),
    ],
)
def test_malformed_values_are_invalid(name: str, value: str) -> None:
    res_type = "Communication" if name in ("sent", "part-of:missing") else "Patient"
    err = refuse(res_type, (name, value), code="invalid")
    assert name.split(":")[0] in err.diagnostics
    assert len(value) < 4 or value not in err.diagnostics


@pytest.mark.parametrize(
    ("res_type", "name"),
    [
        ("Patient", "name:text"),
        ("Patient", "birthdate:exact"),
        ("Communication", "status:text"),
        ("Communication", "subject:Practitioner"),
        ("Patient", "_id:missing"),
        ("Patient", "name:bogus"),
        ("Communication", "sender:below"),
        ("Patient", "_id:not"),
        ("Patient", "_lastUpdated:not"),
        ("Patient", "_id:exact"),
    ],
)
def test_unsupported_modifiers(res_type: str, name: str) -> None:
    refuse(res_type, (name, "x"), code="not-supported")


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "1e3"])
def test_bad_count(value: str) -> None:
    refuse("Patient", ("_count", value))


def test_count_default_cap_zero_and_repeat() -> None:
    assert parse("Patient").count == 20
    assert parse("Patient", ("_count", "5")).count == 5
    assert parse("Patient", ("_count", "100000")).count == 100
    assert parse("Patient", ("_count", "500"), max_count=1000).count == 500
    assert parse("Patient", ("_count", "0")).count == 0
    refuse("Patient", ("_count", "2"), ("_count", "3"))


@pytest.mark.parametrize("value", ["name", "unknown", "-email", "sent,sent", "", "birthdate,-_id,_lastUpdated,-x"])
def test_bad_sort(value: str) -> None:
    refuse("Patient", ("_sort", value))


def test_sort_keys_and_default() -> None:
    default = parse("Communication").sort
    assert [(k.param.name, k.descending) for k in default] == [("_lastUpdated", True)]
    req = parse("Communication", ("_sort", "-sent,_id"))
    assert [(k.param.name, k.descending) for k in req.sort] == [("sent", True), ("_id", False)]
    refuse("Communication", ("_sort", "sent"), ("_sort", "_id"))


def test_repeats_are_and_and_commas_are_or() -> None:
    req = parse("Patient", ("name", "Ann,Bé"), ("name", "Zed\\,Jr"))
    assert len(req.clauses) == 2
    assert req.clauses[0].values == (StringQuery("prefix", "ann"), StringQuery("prefix", "be"))
    assert req.clauses[1].values == (StringQuery("prefix", "zed,jr"),)


def test_empty_values_are_ignored() -> None:
    assert parse("Patient", ("name", ""), ("name", ",")).clauses == ()


def test_string_modifiers() -> None:
    (c,) = parse("Patient", ("family:exact", "Zoë")).clauses
    assert c.values == (StringQuery("exact", "zoe", "Zoë"),)
    (c,) = parse("Patient", ("name:contains", "OË")).clauses
    assert c.values == (StringQuery("contains", "oe"),)


def test_token_forms() -> None:
    (c,) = parse("Patient", ("identifier", "urn:mrn|42,|7,urn:mrn|,8,a\\|b")).clauses
    assert c.values == (
        TokenQuery("42", "urn:mrn", "equals"),
        TokenQuery("7", None, "none"),
        TokenQuery(None, "urn:mrn", "equals"),
        TokenQuery("8"),
        TokenQuery("a|b"),
    )
    (c,) = parse("Communication", ("status:not", "completed,stopped")).clauses
    assert c.modifier == "not" and len(c.values) == 2


def test_reference_forms() -> None:
    (c,) = parse(
        "Patient",
        (
            "general-practitioner",
            f"Practitioner/p1,p2,{BASE}/Organization/o1,https://other.example/fhir/Practitioner/p3,"
            "PractitionerRole/r1/_history/2",
        ),
    ).clauses
    assert c.values == (
        RefQuery("Practitioner", "p1"),
        RefQuery(None, "p2"),
        RefQuery("Organization", "o1"),
        RefQuery(None, None),
        RefQuery("PractitionerRole", "r1"),
    )
    (c,) = parse("Communication", ("subject:Patient", "p9")).clauses
    assert c.values == (RefQuery("Patient", "p9"),)
    (c,) = parse("Communication", ("part-of", "Communication/c1")).clauses
    assert c.values == (RefQuery("Communication", "c1"),)
    (c,) = parse("Communication", ("part-of:missing", "true")).clauses
    assert c.modifier == "missing" and c.values == (True,)


def test_date_prefixes_and_ranges() -> None:
    (c,) = parse("Patient", ("birthdate", "1980,ge1980-05,lt1980-05-03T10:00:00Z")).clauses
    year, month, inst = c.values
    assert year == DateQuery(
        "eq", datetime(1980, 1, 1, tzinfo=UTC), datetime(1980, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    )
    assert month.prefix == "ge" and month.low == datetime(1980, 5, 1, tzinfo=UTC)
    assert inst.prefix == "lt" and inst.high == datetime(1980, 5, 3, 10, 0, 0, 999999, tzinfo=UTC)
    for prefix in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"):
        parse("Patient", ("birthdate", f"{prefix}2000"))


def test_ap_widens_by_a_tenth_of_the_distance_to_now() -> None:
    now = datetime(1990, 5, 3, tzinfo=UTC)
    (c,) = parse("Patient", ("birthdate", "ap1980-05-03"), now=now).clauses
    gap = (now - datetime(1980, 5, 3, tzinfo=UTC)) / 10
    assert c.values[0].low == datetime(1980, 5, 3, tzinfo=UTC) - gap
    assert c.values[0].high == datetime(1980, 5, 3, 23, 59, 59, 999999, tzinfo=UTC) + gap
    assert gap > timedelta(days=300)


def test_format_and_pretty_are_ignored() -> None:
    assert parse("Patient", ("_format", "json"), ("_pretty", "true")).clauses == ()


def test_repr_and_param_names_hold_no_values() -> None:
    req = parse("Patient", ("family", PHI), ("birthdate", "1980"), ("_sort", "-birthdate"))
    assert PHI not in repr(req)
    assert req.param_names == ["_sort", "birthdate", "family"]


def test_cursor_cannot_be_combined_and_must_be_genuine() -> None:
    refuse("Patient", ("_cursor", "abc"), ("name", "x"))
    for bad in ("abc", "!!!", "", "A" * 20000):
        err = refuse("Patient", ("_cursor", bad), code="invalid")
        assert "_cursor" in err.diagnostics


def test_cursor_round_trip_and_binding() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    req = parse("Patient", ("family", PHI), ("_sort", "-birthdate"), ("_count", "7"), now=now)
    position = (datetime(1980, 5, 3, tzinfo=UTC), "p-1")
    token = next_cursor(req, position)
    assert PHI not in token and "family" not in token
    again = parse("Patient", ("_cursor", token))
    assert again.clauses == req.clauses and again.sort == req.sort and again.count == 7
    assert again.now == now and again.after == position
    # another type, another key, or one changed character: all refused alike
    refuse("Practitioner", ("_cursor", token), code="invalid")
    with pytest.raises(FhirError):
        parse_search("Patient", [("_cursor", token)], cursor_key=os.urandom(32))
    flipped = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    refuse("Patient", ("_cursor", flipped), code="invalid")
