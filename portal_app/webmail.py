"""WebMail profile helpers: build Communications, compute replies, read search Bundles.

Pure functions over plain dicts (the JSON the API speaks), so that the rules the
portal follows when it writes a message can be tested without any server. The
server enforces the profile; these helpers only make sure we send what it expects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

CANONICAL = "http://fhir-webmail.example"
CATEGORY_SYSTEM = f"{CANONICAL}/CodeSystem/communication-category"
CATEGORY_CODE = "webmail"
CATEGORY_TOKEN = f"{CATEGORY_SYSTEM}|{CATEGORY_CODE}"
PATIENT_TAG_SYSTEM = f"{CANONICAL}/CodeSystem/patient-tag"
PROVIDER_CONTACT_CODE = "provider-contact"
READ_STATE_URL = f"{CANONICAL}/StructureDefinition/read-state"
REPLY_PREFIX = "RE: "
MAX_SUBJECT = 200
MAX_BODY = 20_000


@dataclass(frozen=True)
class MessageSummary:
    """One WebMail message as the pages show it (a search entry or a read)."""

    id: str
    subject_line: str
    sender: str | None
    recipients: tuple[str, ...]
    patient: str | None
    sent: str | None
    body: str = ""
    read_by_me: bool | None = None
    read_by_recipient: bool | None = None
    in_response_to: str | None = None
    part_of: str | None = None

    @property
    def reference(self) -> str:
        return f"Communication/{self.id}"

    @property
    def unread(self) -> bool:
        return self.read_by_me is False

    @property
    def recipient_status(self) -> str:
        """Sent-items status: Read / Unread by the recipient, or Sent when unknown."""
        if self.read_by_recipient is True:
            return "Read"
        if self.read_by_recipient is False:
            return "Unread"
        return "Sent"

    def is_from_practitioner(self) -> bool:
        return bool(self.sender and self.sender.startswith("Practitioner/"))


@dataclass
class Page:
    messages: list[MessageSummary] = field(default_factory=list)
    total: int | None = None
    has_more: bool = False


def reply_subject(subject: str) -> str:
    """Prefix "RE: " once: replying to a reply keeps a single prefix."""
    subject = (subject or "").strip()
    if subject[:3].upper() == "RE:":
        subject = subject[3:].lstrip()
    return (REPLY_PREFIX + subject)[:MAX_SUBJECT]


def thread_root(original: dict[str, Any]) -> str:
    """The reference of a thread's first message: the original's own partOf, else the original."""
    for part in original.get("partOf") or []:
        ref = (part or {}).get("reference")
        if isinstance(ref, str) and ref.startswith("Communication/"):
            return ref
    return f"Communication/{original['id']}"


def _refs(items: Any) -> list[str]:
    out = []
    for item in items or []:
        ref = (item or {}).get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str) and ref:
            out.append(ref)
    return out


def _ref(item: Any) -> str | None:
    refs = _refs([item]) if isinstance(item, dict) else []
    return refs[0] if refs else None


def new_message(
    sender: str, recipients: list[str], subject_line: str, body: str, patient: str | None = None
) -> dict[str, Any]:
    """A new WebMail Communication; ``patient`` is absent for practitioner-to-practitioner mail."""
    msg: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": CATEGORY_CODE}]}],
        "sender": {"reference": sender},
        "recipient": [{"reference": r} for r in recipients],
        "topic": {"text": subject_line.strip()},
        "payload": [{"contentString": body}],
    }
    if patient:
        msg["subject"] = {"reference": patient}
    return msg


def reply_recipients(original: dict[str, Any], me: str) -> list[str]:
    """Who a reply goes to: the original sender, or its recipients when I sent the original."""
    sender = _ref(original.get("sender"))
    if sender and sender != me:
        return [sender]
    return [r for r in _refs(original.get("recipient")) if r != me]


def reply_message(original: dict[str, Any], me: str, body: str, subject_line: str | None = None) -> dict[str, Any]:
    """A reply in the original's thread: inResponseTo the original, partOf the thread's first message."""
    subject = subject_line.strip() if subject_line else reply_subject(topic_text(original))
    msg = new_message(me, reply_recipients(original, me), subject, body, patient=_ref(original.get("subject")))
    msg["inResponseTo"] = [{"reference": f"Communication/{original['id']}"}]
    msg["partOf"] = [{"reference": thread_root(original)}]
    return msg


def topic_text(comm: dict[str, Any]) -> str:
    topic = comm.get("topic") or {}
    text = topic.get("text")
    if not text:
        for coding in topic.get("coding") or []:
            text = coding.get("display")
            if text:
                break
    return str(text or "")


def payload_text(comm: dict[str, Any]) -> str:
    parts = [p.get("contentString") for p in comm.get("payload") or [] if isinstance(p, dict)]
    return "\n\n".join(p for p in parts if isinstance(p, str))


def read_state(extensions: Any) -> tuple[bool | None, bool | None]:
    """(readByMe, readByRecipient) from a search entry's read-state extension, None when absent."""
    by_me: bool | None = None
    by_recipient: bool | None = None
    for ext in extensions or []:
        if not isinstance(ext, dict) or ext.get("url") != READ_STATE_URL:
            continue
        for sub in ext.get("extension") or []:
            value = sub.get("valueBoolean") if isinstance(sub, dict) else None
            if not isinstance(value, bool):
                continue
            if sub.get("url") == "readByMe":
                by_me = value
            elif sub.get("url") == "readByRecipient":
                by_recipient = value
    return by_me, by_recipient


def summarize(comm: dict[str, Any], extensions: Any = None) -> MessageSummary:
    by_me, by_recipient = read_state(extensions)
    return MessageSummary(
        id=str(comm.get("id", "")),
        subject_line=topic_text(comm) or "(no subject)",
        sender=_ref(comm.get("sender")),
        recipients=tuple(_refs(comm.get("recipient"))),
        patient=_ref(comm.get("subject")),
        sent=comm.get("sent"),
        body=payload_text(comm),
        read_by_me=by_me,
        read_by_recipient=by_recipient,
        in_response_to=next(iter(_refs(comm.get("inResponseTo"))), None),
        part_of=next(iter(_refs(comm.get("partOf"))), None),
    )


def parse_message_bundle(bundle: dict[str, Any]) -> Page:
    """The Communications of a searchset Bundle, with the read state of each entry."""
    page = Page(total=bundle.get("total") if isinstance(bundle.get("total"), int) else None)
    for entry in bundle.get("entry") or []:
        resource = (entry or {}).get("resource") or {}
        if resource.get("resourceType") != "Communication":
            continue
        page.messages.append(summarize(resource, entry.get("extension")))
    page.has_more = any(link.get("relation") == "next" for link in bundle.get("link") or [])
    return page


def bundle_resources(bundle: dict[str, Any], res_type: str) -> list[dict[str, Any]]:
    """The resources of one type in a Bundle (search matches and includes alike)."""
    out = []
    for entry in bundle.get("entry") or []:
        resource = (entry or {}).get("resource") or {}
        if resource.get("resourceType") == res_type:
            out.append(resource)
    return out


def format_name(resource: dict[str, Any] | None) -> str:
    """A person's display name: the official (or first) HumanName, text first."""
    if not resource:
        return ""
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    if not names:
        return ""
    name = next((n for n in names if n.get("use") == "official"), names[0])
    if name.get("text"):
        return str(name["text"])
    parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]
    return " ".join(str(p) for p in parts if p).strip()


def telecom(resource: dict[str, Any], system: str) -> str:
    for item in resource.get("telecom") or []:
        if isinstance(item, dict) and item.get("system") == system and item.get("value"):
            return str(item["value"])
    return ""


def format_address(resource: dict[str, Any]) -> str:
    for addr in resource.get("address") or []:
        if not isinstance(addr, dict):
            continue
        if addr.get("text"):
            return str(addr["text"])
        city_line = " ".join(p for p in (addr.get("city"), addr.get("state"), addr.get("postalCode")) if p)
        parts = [*(addr.get("line") or []), city_line]
        return ", ".join(p for p in parts if p)
    return ""


def general_practitioners(patient: dict[str, Any]) -> list[str]:
    """The patient's primary providers that are Practitioners, in record order."""
    return [r for r in _refs(patient.get("generalPractitioner")) if r.startswith("Practitioner/")]


def is_provider_contact(patient: dict[str, Any]) -> bool:
    tags = (patient.get("meta") or {}).get("tag") or []
    return any(
        isinstance(t, dict) and t.get("system") == PATIENT_TAG_SYSTEM and t.get("code") == PROVIDER_CONTACT_CODE
        for t in tags
    )


def provider_contact_patient(
    *,
    first_name: str,
    last_name: str,
    birth_date: str,
    phone: str,
    email: str,
    lines: list[str],
    city: str,
    state: str,
    postal_code: str,
    primary_provider: str,
) -> dict[str, Any]:
    """The Patient record of a receiving provider, tagged provider-contact, with me as primary provider."""
    return {
        "resourceType": "Patient",
        "meta": {"tag": [{"system": PATIENT_TAG_SYSTEM, "code": PROVIDER_CONTACT_CODE}]},
        "active": True,
        "name": [{"use": "official", "family": last_name.strip(), "given": [first_name.strip()]}],
        "birthDate": birth_date,
        "telecom": [
            {"system": "phone", "value": phone.strip(), "use": "work"},
            {"system": "email", "value": email.strip(), "use": "work"},
        ],
        "address": [
            {
                "use": "work",
                "line": [ln.strip() for ln in lines if ln and ln.strip()],
                "city": city.strip(),
                "state": state.strip(),
                "postalCode": postal_code.strip(),
            }
        ],
        "generalPractitioner": [{"reference": primary_provider}],
    }


def quote_original(original: MessageSummary, sender_name: str) -> str:
    """The quoted header and body a reply starts with (the reference product quotes the original)."""
    quoted = "\n".join("> " + line for line in original.body.splitlines())
    return (
        "\n\n----- Original message -----\n"
        f"From: {sender_name}\nSent: {format_when(original.sent)}\nSubject: {original.subject_line}\n\n"
        f"{quoted}"
    )


def format_when(value: str | None) -> str:
    """An instant as 'YYYY-MM-DD HH:MM UTC±hh:mm' (the server stamps sent in UTC)."""
    if not value:
        return ""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if when.tzinfo is None:
        return when.strftime("%Y-%m-%d %H:%M")
    offset = when.strftime("%z")
    zone = "UTC" if offset in ("+0000", "-0000") else f"UTC{offset[:3]}:{offset[3:]}"
    return f"{when.strftime('%Y-%m-%d %H:%M')} {zone}"


def outcome_messages(body: Any) -> list[str]:
    """The diagnostics of an OperationOutcome (or its issue codes when it has none)."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    out = []
    for issue in body.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code")
        if text:
            out.append(str(text))
    return out


def parameters_value(params: Any, name: str) -> Any:
    """The value[x] of the named parameter of a Parameters resource, or None."""
    if not isinstance(params, dict):
        return None
    for p in params.get("parameter") or []:
        if isinstance(p, dict) and p.get("name") == name:
            for key, value in p.items():
                if key.startswith("value"):
                    return value
    return None
