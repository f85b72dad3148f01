"""The notification email, its Message-ID, address selection and the SMTP URL: pure functions."""

from __future__ import annotations

import email
import email.policy
import smtplib

import pytest

from fhirserver.config import Settings
from notifier.email import build_notification, email_of, is_valid_address, message_id_for, portal_link
from notifier.smtp import SmtpUrlError, is_permanent, parse_smtp_url

SETTINGS = Settings(
    database_url="sqlite://",
    base_url="https://portal.example:8443",
    mail_from="notify@clinic.example",
    office_name="Lakeside Clinic",
    notify_subject="A secure message is waiting",
    notify_body="Hello from [OFFICE]. Log in: [URL]\nThanks, [OFFICE]\n",
    secret_key="s3cret",
)


def test_body_fills_placeholders_and_nothing_else() -> None:
    msg = build_notification(SETTINGS, "pt.abc@mail.example", "<x.1@clinic.example>")
    raw = msg.as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    body = parsed.get_body().get_content()  # type: ignore[union-attr]
    assert body == (
        "Hello from Lakeside Clinic. Log in: https://portal.example:8443/portal/\nThanks, Lakeside Clinic\n"
    )
    assert parsed["To"] == "pt.abc@mail.example"
    assert parsed["From"] == "Lakeside Clinic <notify@clinic.example>"
    assert parsed["Subject"] == "A secure message is waiting"
    assert parsed["Message-ID"] == "<x.1@clinic.example>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["Date"]
    assert "[URL]" not in body and "[OFFICE]" not in body


def test_practitioner_gets_the_console_link() -> None:
    assert portal_link(SETTINGS, "Practitioner") == "https://portal.example:8443/portal/console/"
    assert portal_link(SETTINGS, "Patient") == "https://portal.example:8443/portal/"


def test_message_id_is_stable_keyed_and_opaque() -> None:
    comm, ref = "c0ffee-1234", "Patient/p-5678"
    first = message_id_for(comm, ref, SETTINGS.mail_from, secret="k1")
    assert first == message_id_for(comm, ref, SETTINGS.mail_from, secret="k1")
    assert first != message_id_for(comm, "Patient/other", SETTINGS.mail_from, secret="k1")
    assert first != message_id_for("other", ref, SETTINGS.mail_from, secret="k1")
    assert first != message_id_for(comm, ref, SETTINGS.mail_from, secret="k2")
    assert first != message_id_for(comm, ref, SETTINGS.mail_from)  # unkeyed differs from keyed
    assert first.startswith("<webmail-notify.") and first.endswith("@clinic.example>")
    assert "c0ffee" not in first and "5678" not in first


@pytest.mark.parametrize(
    "telecom, expected",
    [
        ([{"system": "phone", "value": "555"}], None),
        ([{"system": "email", "value": "a@x.example"}], "a@x.example"),
        (
            [{"system": "email", "value": "old@x.example", "use": "old"}, {"system": "email", "value": "b@x.example"}],
            "b@x.example",
        ),
        (
            [
                {"system": "email", "value": "c@x.example", "rank": 2},
                {"system": "email", "value": "d@x.example", "rank": 1},
            ],
            "d@x.example",
        ),
        ([{"system": "email", "value": "gone@x.example", "period": {"end": "2001-01-01"}}], None),
        ([{"system": "email", "value": "later@x.example", "period": {"end": "2999-01-01"}}], "later@x.example"),
        ([{"system": "email", "value": "evil@x.example\r\nBcc: all@x.example"}], None),
        ([{"system": "email", "value": "Name <n@x.example>"}], None),
        ([{"system": "email", "value": "no-at-sign"}], None),
    ],
)
def test_email_of(telecom: list[dict[str, object]], expected: str | None) -> None:
    assert email_of({"resourceType": "Patient", "telecom": telecom}) == expected


def test_address_check() -> None:
    assert is_valid_address("first.last+tag@sub.mail.example")
    assert not is_valid_address("a@b")
    assert not is_valid_address("a b@x.example")
    assert not is_valid_address("a@x.example\n")


def test_smtp_url_forms() -> None:
    plain = parse_smtp_url("smtp://127.0.0.1:8025")
    assert (plain.host, plain.port, plain.implicit_tls, plain.starttls, plain.username) == (
        "127.0.0.1",
        8025,
        False,
        False,
        "",
    )
    tls = parse_smtp_url("smtps://us%40er:p%3Ass@mail.example?timeout=3")
    assert (tls.host, tls.port, tls.implicit_tls, tls.username, tls.password, tls.timeout) == (
        "mail.example",
        465,
        True,
        "us@er",
        "p:ss",
        3.0,
    )
    assert "p:ss" not in repr(tls)
    start = parse_smtp_url("smtp://u:p@mail.example:587?starttls=1")
    assert start.starttls and not start.implicit_tls and start.port == 587
    for bad in ("http://mail.example", "smtp://", "smtp://host:notaport"):
        with pytest.raises(SmtpUrlError) as err:
            parse_smtp_url(bad)
        assert "notaport" not in str(err.value)


def test_permanent_and_transient_errors() -> None:
    assert is_permanent(smtplib.SMTPRecipientsRefused({"a@x.example": (550, b"no")}))
    assert not is_permanent(smtplib.SMTPRecipientsRefused({"a@x.example": (450, b"later")}))
    assert is_permanent(smtplib.SMTPSenderRefused(553, b"no", "n@x.example"))
    assert not is_permanent(smtplib.SMTPDataError(421, b"busy"))
    assert is_permanent(smtplib.SMTPAuthenticationError(535, b"bad"))
    assert not is_permanent(smtplib.SMTPServerDisconnected("gone"))
    assert not is_permanent(ConnectionRefusedError())
    assert not is_permanent(TimeoutError())
