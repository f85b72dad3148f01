"""The portal's pure WebMail helpers: replies and threads, bundle parsing, names, outcomes."""

from __future__ import annotations

from portal_app import webmail as wm


def comm(cid: str = "c1", **extra: object) -> dict:
    data = wm.new_message("Practitioner/dr1", ["Patient/p1"], "Your results", "All normal.", "Patient/p1")
    data["id"] = cid
    data.update(extra)
    return data


def test_new_message_follows_the_profile() -> None:
    msg = wm.new_message("Patient/p1", ["Practitioner/dr1"], "  Question ", "Body", "Patient/p1")
    assert msg["category"] == [
        {"coding": [{"system": "http://fhir-webmail.example/CodeSystem/communication-category", "code": "webmail"}]}
    ]
    assert msg["status"] == "completed"
    assert msg["sender"] == {"reference": "Patient/p1"}
    assert msg["recipient"] == [{"reference": "Practitioner/dr1"}]
    assert msg["subject"] == {"reference": "Patient/p1"}
    assert msg["topic"] == {"text": "Question"}
    assert msg["payload"] == [{"contentString": "Body"}]
    assert "sent" not in msg  # stamped by the server


def test_provider_to_provider_message_has_no_subject() -> None:
    msg = wm.new_message("Practitioner/a", ["Practitioner/b"], "Referral", "Hi")
    assert "subject" not in msg


def test_reply_subject_adds_one_prefix() -> None:
    assert wm.reply_subject("Results") == "RE: Results"
    assert wm.reply_subject("RE: Results") == "RE: Results"
    assert wm.reply_subject("re:Results") == "RE: Results"
    assert wm.reply_subject("") == "RE: "
    assert len(wm.reply_subject("x" * 500)) == wm.MAX_SUBJECT


def test_thread_root_is_the_original_without_part_of() -> None:
    assert wm.thread_root(comm("c1")) == "Communication/c1"


def test_thread_root_is_the_originals_part_of() -> None:
    original = comm("c3", partOf=[{"reference": "Communication/c1"}])
    assert wm.thread_root(original) == "Communication/c1"


def test_reply_to_a_received_message() -> None:
    original = comm("c2", partOf=[{"reference": "Communication/c1"}])
    reply = wm.reply_message(original, "Patient/p1", "Thanks")
    assert reply["sender"] == {"reference": "Patient/p1"}
    assert reply["recipient"] == [{"reference": "Practitioner/dr1"}]
    assert reply["subject"] == {"reference": "Patient/p1"}
    assert reply["inResponseTo"] == [{"reference": "Communication/c2"}]
    assert reply["partOf"] == [{"reference": "Communication/c1"}]
    assert reply["topic"] == {"text": "RE: Your results"}
    assert reply["payload"] == [{"contentString": "Thanks"}]


def test_reply_to_my_own_sent_message_goes_to_its_recipients() -> None:
    original = comm("c9")
    reply = wm.reply_message(original, "Practitioner/dr1", "Also...", "RE: Custom")
    assert reply["recipient"] == [{"reference": "Patient/p1"}]
    assert reply["partOf"] == [{"reference": "Communication/c9"}]
    assert reply["topic"] == {"text": "RE: Custom"}


def test_parse_bundle_reads_the_read_state() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "link": [{"relation": "next", "url": "x?_cursor=abc"}],
        "entry": [
            {
                "resource": comm("a", sent="2025-01-02T03:04:05Z"),
                "extension": [
                    {
                        "url": wm.READ_STATE_URL,
                        "extension": [
                            {"url": "readByMe", "valueBoolean": False},
                            {"url": "readByRecipient", "valueBoolean": True},
                        ],
                    }
                ],
            },
            {"resource": comm("b")},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}},
        ],
    }
    page = wm.parse_message_bundle(bundle)
    assert [m.id for m in page.messages] == ["a", "b"]
    a, b = page.messages
    assert a.unread and a.read_by_recipient is True and a.recipient_status == "Read"
    assert a.subject_line == "Your results" and a.body == "All normal."
    assert a.sender == "Practitioner/dr1" and a.recipients == ("Patient/p1",) and a.patient == "Patient/p1"
    assert not b.unread and b.read_by_me is None and b.recipient_status == "Sent"
    assert page.total == 2 and page.has_more


def test_read_state_ignores_other_extensions_and_non_booleans() -> None:
    exts = [
        {"url": "http://other.example", "extension": [{"url": "readByMe", "valueBoolean": True}]},
        {"url": wm.READ_STATE_URL, "extension": [{"url": "readByMe", "valueString": "yes"}]},
    ]
    assert wm.read_state(exts) == (None, None)
    assert wm.summarize(comm("x", readByRecipient=False), exts).recipient_status == "Sent"


def test_unread_by_recipient_shows_unread() -> None:
    exts = [{"url": wm.READ_STATE_URL, "extension": [{"url": "readByRecipient", "valueBoolean": False}]}]
    assert wm.summarize(comm(), exts).recipient_status == "Unread"


def test_format_name_prefers_official_and_text() -> None:
    assert wm.format_name({"name": [{"family": "Okafor", "given": ["Ada"], "prefix": ["Dr"]}]}) == "Dr Ada Okafor"
    assert wm.format_name({"name": [{"use": "nickname", "text": "Ad"}, {"use": "official", "family": "O"}]}) == "O"
    assert wm.format_name({"name": [{"text": "Ada O."}]}) == "Ada O."
    assert wm.format_name({}) == "" and wm.format_name(None) == ""


def test_general_practitioners_keeps_practitioners_only() -> None:
    patient = {
        "generalPractitioner": [
            {"reference": "Organization/o1"},
            {"reference": "Practitioner/dr2"},
            {"reference": "Practitioner/dr1"},
        ]
    }
    assert wm.general_practitioners(patient) == ["Practitioner/dr2", "Practitioner/dr1"]


def test_provider_contact_patient_is_tagged_and_complete() -> None:
    p = wm.provider_contact_patient(
        first_name=" Grace ",
        last_name="Hopper",
        birth_date="1970-12-09",
        phone="555-0101",
        email="grace@clinic.example",
        lines=["1 Navy Way", "", "  "],
        city="Arlington",
        state="VA",
        postal_code="22201",
        primary_provider="Practitioner/dr1",
    )
    assert wm.is_provider_contact(p)
    assert p["name"] == [{"use": "official", "family": "Hopper", "given": ["Grace"]}]
    assert p["address"][0]["line"] == ["1 Navy Way"]
    assert p["generalPractitioner"] == [{"reference": "Practitioner/dr1"}]
    assert wm.telecom(p, "email") == "grace@clinic.example"
    assert wm.format_address(p) == "1 Navy Way, Arlington VA 22201"
    assert not wm.is_provider_contact({"meta": {"tag": [{"system": "x", "code": "provider-contact"}]}})


def test_outcome_messages_and_parameters() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "business-rule", "diagnostics": "The patient has no email address"},
            {"severity": "error", "code": "invalid", "details": {"text": "Second"}},
            {"severity": "error", "code": "processing"},
        ],
    }
    assert wm.outcome_messages(outcome) == ["The patient has no email address", "Second", "processing"]
    assert wm.outcome_messages({"resourceType": "Patient"}) == []
    params = {"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": 3}]}
    assert wm.parameters_value(params, "count") == 3
    assert wm.parameters_value(params, "other") is None
    assert wm.parameters_value(None, "count") is None


def test_format_when_and_quote() -> None:
    assert wm.format_when("2025-01-02T03:04:05Z") == "2025-01-02 03:04 UTC"
    assert wm.format_when("2025-01-02T03:04:05+02:00") == "2025-01-02 03:04 UTC+02:00"
    assert wm.format_when("not a date") == "not a date"
    assert wm.format_when(None) == ""
    msg = wm.summarize(comm("c1", sent="2025-01-02T03:04:05Z"))
    quoted = wm.quote_original(msg, "Dr Ada")
    assert "From: Dr Ada" in quoted and "> All normal." in quoted and "Subject: Your results" in quoted
