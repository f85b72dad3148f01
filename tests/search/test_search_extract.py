"""extract(): index rows from resource JSON (pure, no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fhirserver.search.indexing import extract
from fhirserver.search.params import SearchParam
from fhirserver.search.types.base import Context
from fhirserver.search.types.date import MAX, MIN, date_range
from fhirserver.search.types.date import extract as date_extract
from fhirserver.search.types.string import normalize

BASE = "https://fhir.example/fhir"


def dt(*args: int) -> datetime:
    return datetime(*args).replace(tzinfo=UTC)  # type: ignore[arg-type]


def test_strings_are_folded_and_exact_kept() -> None:
    e = extract(
        "Patient",
        {
            "name": [
                {
                    "family": "Zoë  Ünder",
                    "given": ["ÅSA"],
                    "prefix": ["Dr."],
                    "suffix": ["Jr"],
                    "text": "Dr. Åsa Zoë Ünder",
                }
            ]
        },
    )
    fam = e.for_param("family")
    assert fam == [{"value": "zoe under", "exact": "Zoë  Ünder"}]
    names = {r["value"] for r in e.for_param("name")}
    assert names == {"zoe under", "asa", "dr.", "jr", "dr. asa zoe under"}
    assert e.for_param("given") == [{"value": "asa", "exact": "ÅSA"}]


def test_normalize_folds_case_accents_and_compatibility_forms() -> None:
    assert normalize("Straße") == "strasse"
    assert normalize("ﬁnn") == "finn"
    assert normalize("  José\tMaría ") == "jose maria"


def test_long_strings_are_cut_to_the_column_width() -> None:
    e = extract("Patient", {"name": [{"family": "x" * 300}]})
    row = e.for_param("family")[0]
    assert len(row["value"]) == 255 and len(row["exact"]) == 255


def test_duplicate_values_give_one_row() -> None:
    e = extract("Patient", {"name": [{"family": "Doe"}, {"family": "Doe"}]})
    assert len(e.for_param("family")) == 1


def test_tokens_from_identifier_telecom_codeableconcept_and_code() -> None:
    p = extract(
        "Patient",
        {
            "identifier": [{"system": "urn:mrn", "value": "42"}, {"value": "7"}],
            "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@x.example"}],
        },
    )
    assert p.for_param("identifier") == [{"system": "urn:mrn", "code": "42"}, {"system": None, "code": "7"}]
    assert p.for_param("email") == [{"system": None, "code": "a@x.example"}]
    c = extract(
        "Communication",
        {
            "status": "completed",
            "category": [{"coding": [{"system": "urn:cat", "code": "webmail"}, {"code": "x"}], "text": "ignored"}],
        },
    )
    assert c.for_param("status") == [{"system": None, "code": "completed"}]
    assert c.for_param("category") == [{"system": "urn:cat", "code": "webmail"}, {"system": None, "code": "x"}]


def test_references_relative_versioned_and_our_absolute_urls() -> None:
    e = extract(
        "Patient",
        {
            "generalPractitioner": [
                {"reference": "Practitioner/p1"},
                {"reference": "Practitioner/p2/_history/3"},
                {"reference": f"{BASE}/Organization/o1"},
                {"reference": "https://elsewhere.example/fhir/Practitioner/p9"},
                {"reference": "#contained"},
                {"reference": "urn:uuid:0b1c"},
                {"display": "no reference"},
                {"reference": "Practitioner/not a valid id"},
            ]
        },
        server_base=BASE,
    )
    assert e.for_param("general-practitioner") == [
        {"target_type": "Practitioner", "target_id": "p1"},
        {"target_type": "Practitioner", "target_id": "p2"},
        {"target_type": "Organization", "target_id": "o1"},
    ]


def test_absolute_urls_are_skipped_without_a_server_base() -> None:
    e = extract("Patient", {"generalPractitioner": [{"reference": f"{BASE}/Practitioner/p1"}]})
    assert e.for_param("general-practitioner") == []


def test_reference_targets_restrict_what_is_indexed() -> None:
    group = extract("Communication", {"subject": {"reference": "Group/g1"}})
    assert group.for_param("subject") == [{"target_type": "Group", "target_id": "g1"}]
    assert group.for_param("patient") == []
    pat = extract("Communication", {"subject": {"reference": "Patient/x1"}})
    assert pat.for_param("patient") == [{"target_type": "Patient", "target_id": "x1"}]
    gp = extract("Patient", {"generalPractitioner": [{"reference": "Patient/p1"}]})
    assert gp.for_param("general-practitioner") == []


def test_communication_topic_and_payload_are_never_indexed() -> None:
    secret = "Sécret diagnosis 12345"
    comm = {
        "resourceType": "Communication",
        "status": "in-progress",
        "topic": {"text": secret, "coding": [{"system": "urn:s", "code": secret}]},
        "payload": [{"contentString": secret}, {"contentReference": {"reference": "Patient/secret1"}}],
        "subject": {"reference": "Patient/p1"},
        "sender": {"reference": "Practitioner/d1"},
        "recipient": [{"reference": "Patient/p1"}],
        "sent": "2024-03-01T10:00:00Z",
        "partOf": [{"reference": "Communication/c0"}],
    }
    rows = extract("Communication", comm).rows
    dumped = json.dumps(rows, default=str).casefold()
    assert "secret" not in dumped and "12345" not in dumped
    assert sum(len(r) for r in rows.values()) == 7  # status, subject, patient, sender, recipient, part-of, sent


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("1980", dt(1980, 1, 1), dt(1980, 12, 31, 23, 59, 59, 999999)),
        ("1980-02", dt(1980, 2, 1), dt(1980, 2, 29, 23, 59, 59, 999999)),
        ("1981-02", dt(1981, 2, 1), dt(1981, 2, 28, 23, 59, 59, 999999)),
        ("1980-05-03", dt(1980, 5, 3), dt(1980, 5, 3, 23, 59, 59, 999999)),
        ("2024-01-02T03:04:05Z", dt(2024, 1, 2, 3, 4, 5), dt(2024, 1, 2, 3, 4, 5, 999999)),
        ("2024-01-02T03:04:05.12+02:00", dt(2024, 1, 2, 1, 4, 5, 120000), dt(2024, 1, 2, 1, 4, 5, 129999)),
        ("2024-01-02T03:04:05.123456789-05:30", dt(2024, 1, 2, 8, 34, 5, 123456), dt(2024, 1, 2, 8, 34, 5, 123456)),
        ("2024-01-02T03:04", dt(2024, 1, 2, 3, 4), dt(2024, 1, 2, 3, 4, 59, 999999)),
        ("2024-01-02T03:04:05", dt(2024, 1, 2, 3, 4, 5), dt(2024, 1, 2, 3, 4, 5, 999999)),
        ("0001-01-01T00:00:00+01:00", MIN, MIN),
    ],
)
def test_date_ranges_cover_their_precision(text: str, low: datetime, high: datetime) -> None:
    assert date_range(text) == (low, high)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "80",
        "1980-13",
        "1980-02-30",
        "1980-05-03T25:00:00Z",
        "1980-05-03T10",
        "1980-05-03 10:00:00",
        "1980-05-03T10:00:00+15:00",
        "abcd",
        "1980-5-3",
    ],
)
def test_malformed_dates_have_no_range(text: str) -> None:
    assert date_range(text) is None


def test_dates_and_periods_are_extracted_and_bad_ones_skipped() -> None:
    p = extract("Patient", {"birthDate": "1980-05"})
    assert p.for_param("birthdate") == [{"low": dt(1980, 5, 1), "high": dt(1980, 5, 31, 23, 59, 59, 999999)}]
    assert extract("Patient", {"birthDate": "May 1980"}).for_param("birthdate") == []
    # A Period (used by later parameters) spans start.low .. end.high; an open end reaches MAX.
    sp = SearchParam("period", "date", ("period",))
    assert date_extract([{"start": "2020", "end": "2021-06"}], sp, Context()) == [
        {"low": dt(2020, 1, 1), "high": dt(2021, 6, 30, 23, 59, 59, 999999)}
    ]
    assert date_extract([{"start": "2020"}], sp, Context()) == [{"low": dt(2020, 1, 1), "high": MAX}]
    assert date_extract([{"start": "2021", "end": "2020"}], sp, Context()) == []


def test_audit_event_rows_match_the_audit_writer_names() -> None:
    e = extract(
        "AuditEvent",
        {
            "resourceType": "AuditEvent",
            "recorded": "2024-05-01T12:00:00.250Z",
            "outcome": "0",
            "agent": [{"who": {"reference": "Practitioner/d1"}}],
            "entity": [{"what": {"reference": "Patient/p1"}}, {"what": {"reference": "Communication/c1"}}],
        },
    )
    assert e.for_param("outcome") == [{"system": None, "code": "0"}]
    assert e.for_param("patient") == [{"target_type": "Patient", "target_id": "p1"}]
    assert e.for_param("date") == [{"low": dt(2024, 5, 1, 12, 0, 0, 250000), "high": dt(2024, 5, 1, 12, 0, 0, 250999)}]


def test_unknown_types_and_odd_json_give_no_rows() -> None:
    assert not any(extract("PractitionerRole", {"code": [{"text": "x"}]}).rows.values())
    odd = {
        "name": "not a list of HumanName",
        "birthDate": 1980,
        "telecom": [None, 3, {"system": "email"}],
        "identifier": {"value": ["x"]},
        "generalPractitioner": [{"reference": 5}],
    }
    e = extract("Patient", odd)
    assert e.for_param("birthdate") == [] and e.for_param("email") == []
    assert e.for_param("general-practitioner") == [] and e.for_param("identifier") == []
