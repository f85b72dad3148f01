"""The notification email: generic text and a portal link, nothing about the message or the patient.

Notification email travels unencrypted and lands in inboxes we do not control, so it
only says that a secure message is waiting and where to log in. It never carries the
message's subject, body or attachments, the recipient's name, or any identifier of
ours (patient id, message id, token): the Message-ID is a keyed hash, so that nobody
can map it back to a record, and it is stable, so that a resend after a crash is
recognisable as the same email.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from email.utils import formataddr, formatdate
from typing import Any

from fhirserver.config import Settings

NOTIFY_KIND = "webmail-notify"
PASSWORD_RESET_KIND = "password-reset"  # noqa: S105 - an outbox kind, not a secret
RESET_NOTICE_SUBJECT = "Your patient portal password was reset"
RESET_NOTICE_BODY = (
    "Hello,\n\nThe office of [OFFICE] has reset the password of your patient portal account and given you\n"
    "a new one-time password. Every device that was signed in has been signed out.\n\n"
    "If you did not ask for this, please call the office.\n\nThe portal: [URL]\n"
)
BREAK_GLASS_KIND = "break-glass"
BREAK_GLASS_SUBJECT = "Security alert: a break-glass access was recorded"
BREAK_GLASS_BODY = (
    "Hello,\n\nA break-glass (emergency) access was recorded at [OFFICE]; review it in the audit log.\n"
    "For privacy this email says nothing about the patient or the access.\n\nThe console: [URL]\n"
)
# Fixed notices (the office's NOTIFY_SUBJECT/NOTIFY_BODY are for new messages only).
FIXED_NOTICES = {
    PASSWORD_RESET_KIND: (RESET_NOTICE_SUBJECT, RESET_NOTICE_BODY),
    BREAK_GLASS_KIND: (BREAK_GLASS_SUBJECT, BREAK_GLASS_BODY),
}
# A security-alert recipient from SECURITY_ALERT_EMAILS: ``SecurityAlert/<digest>`` in the
# outbox (the address is looked up in the settings when the email is sent).
ALERT_RECIPIENT = "SecurityAlert"
# Where each kind of recipient logs in to read the message.
PORTAL_PATHS = {"Patient": "/portal/", "Practitioner": "/portal/console/", ALERT_RECIPIENT: "/portal/console/"}
# Deliberately narrow: one @, no whitespace, quotes, brackets, separators or control characters.
_ADDRESS = re.compile(r"^[^@\s\"<>(),;:\\\[\]]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z0-9-]{2,63}$")
MAX_ADDRESS_LEN = 254
# 7-bit clean on the wire: a relay without 8BITMIME must not mangle a non-ASCII office name.
POLICY = default_policy.clone(cte_type="7bit")
SMTP_LINE_LIMIT = 998


def message_id_for(
    key: str | int,
    recipient_ref: str,
    mail_from: str,
    *,
    secret: str = "",
    kind: str = NOTIFY_KIND,
) -> str:
    """The Message-ID of the one notification for (message ``key``, ``recipient_ref``).

    ``key`` is the Communication id (known before the outbox row is flushed, so the
    WebMail writer can fill ``OutboxRow.message_id`` at insert). Pass the server's
    ``secret_key`` as ``secret``: the digest is then an HMAC, which cannot be reversed
    by hashing guessed ids. The result has no id in clear.
    """
    material = f"{kind}\x1f{key}\x1f{recipient_ref}".encode()
    if secret:
        digest = hmac.new(secret.encode(), material, hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(material).hexdigest()
    domain = mail_from.rpartition("@")[2] or "localhost"
    # 96 bits: no collisions in practice, and the header stays short enough not to fold.
    return f"<{kind}.{digest[:24]}@{domain}>"


def portal_link(settings: Settings, recipient_type: str = "Patient") -> str:
    """The login page of the portal the recipient uses; a plain link, never a token."""
    return settings.base_url.rstrip("/") + PORTAL_PATHS.get(recipient_type, PORTAL_PATHS["Patient"])


def render_body(settings: Settings, link: str, kind: str = NOTIFY_KIND) -> str:
    """The template of ``kind`` with its two placeholders filled; nothing else is substituted.

    A new message uses the office's own template (NOTIFY_BODY); the account notice is fixed.
    """
    template = FIXED_NOTICES[kind][1] if kind in FIXED_NOTICES else settings.notify_body
    return template.replace("[URL]", link).replace("[OFFICE]", settings.office_name)


def alert_recipient_ref(address: str) -> str:
    """The outbox recipient of one SECURITY_ALERT_EMAILS address: a digest, not the address."""
    return f"{ALERT_RECIPIENT}/{hashlib.sha256(address.strip().lower().encode()).hexdigest()[:40]}"


def alert_address(settings: Settings, recipient_ref: str) -> str | None:
    """The configured alert address behind ``recipient_ref`` (None if the setting changed since)."""
    for address in settings.security_alert_emails:
        if alert_recipient_ref(address) == recipient_ref and is_valid_address(address.strip()):
            return address.strip()
    return None


def is_valid_address(address: str) -> bool:
    return len(address) <= MAX_ADDRESS_LEN and _ADDRESS.fullmatch(address) is not None


def _ended(telecom: dict[str, Any], now: datetime) -> bool:
    end = (telecom.get("period") or {}).get("end")
    if not isinstance(end, str) or len(end) < 10:
        return False  # open-ended, or a partial date we do not second-guess
    try:
        when = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when < now


def email_of(resource: dict[str, Any], now: datetime | None = None) -> str | None:
    """The recipient's current email address (``telecom`` with ``system=email``), best rank first.

    Addresses marked ``old``, whose period has ended, or that do not look like a plain
    address are ignored, so that a malformed value can never reach an email header.
    """
    now = now or datetime.now(UTC)
    candidates = []
    for position, telecom in enumerate(resource.get("telecom") or []):
        if not isinstance(telecom, dict) or telecom.get("system") != "email":
            continue
        value = str(telecom.get("value") or "").strip()
        if telecom.get("use") == "old" or _ended(telecom, now) or not is_valid_address(value):
            continue
        rank = telecom.get("rank")
        candidates.append((rank if isinstance(rank, int) and rank > 0 else 1 << 30, position, value))
    return min(candidates)[2] if candidates else None


def build_notification(
    settings: Settings, to_address: str, message_id: str, recipient_type: str = "Patient", kind: str = NOTIFY_KIND
) -> EmailMessage:
    """The plain-text notice of ``kind`` for one recipient: From, To (address only), the template."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = formataddr((settings.office_name, settings.mail_from))
    msg["To"] = to_address
    msg["Subject"] = FIXED_NOTICES[kind][0] if kind in FIXED_NOTICES else settings.notify_subject
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    # RFC 3834: keeps auto-responders (vacation replies) from answering the notify address.
    msg["Auto-Submitted"] = "auto-generated"
    # A break-glass alert always links to the console (where its reviewers sign in).
    link_type = "Practitioner" if kind == BREAK_GLASS_KIND else recipient_type
    body = render_body(settings, portal_link(settings, link_type), kind)
    # Plain ASCII goes as is, so the link is never split by quoted-printable soft breaks;
    # anything else is encoded by the email package's own choice.
    plain = body.isascii() and all(len(line) <= SMTP_LINE_LIMIT for line in body.splitlines())
    msg.set_content(body, cte="7bit" if plain else None)
    return msg
