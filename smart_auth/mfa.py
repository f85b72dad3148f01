"""The second factor of a sign-in: TOTP (RFC 6238) authenticators and recovery codes.

Providers and staff must pass it after their password when ``settings.mfa_required``
(``MFA_REQUIRED``, on by default); administrators and auditors may enrol on their own, and
whoever has enrolled is always asked. Patients are never asked (:func:`offered`).

- **Codes**: 6 digits, 30-second steps, one step of clock drift either way. Each account
  keeps the step of its last accepted code, and a code of that step or an earlier one is
  refused: a code works once, even inside its own 30 seconds (an UPDATE conditional on the
  stored step settles two requests racing with the same code).
- **Secrets** (160 random bits, base32) are stored only as AES-256-GCM envelopes under the
  configured ``ENCRYPTION_KEYS`` (the envelope of ``fhirserver.core.crypto``, with its key id),
  bound to the user id. A secret waiting for its first code (enrolment) is sealed the same
  way into the browser session, never stored in clear and never put in a URL.
- **Recovery codes**: ten, shown once at enrolment, 79 random bits each, stored as SHA-256 of
  (user id, code), each single-use.
- **Throttling**: failures go through ``smart_auth.throttle`` with the password's policy
  (pair delays, account limit, device standing), on keys of their own, so that entering the
  password again does not wipe the count of wrong codes.

Every outcome is audited (``security_event``) by user id and address; never a code or a secret.
Plain functions over a SQLAlchemy Session; the caller commits. No Flask here.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from dataclasses import dataclass

import pyotp
import segno
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.audit import security_event
from fhirserver.core.crypto import KeyRing
from fhirserver.core.errors import FhirError
from smart_auth import throttle
from smart_auth.accounts import LoginThrottled
from smart_auth.hashing import sha256_hex, utcnow
from smart_auth.models import MfaRecoveryCode, UserAccount, UserMfa

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
RECOVERY_CODE_COUNT = 10
# 16 symbols of an alphabet without 0/O, 1/I/L (31 symbols): 79 random bits, read off paper.
RECOVERY_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
RECOVERY_LENGTH = 16
MAX_CODE_INPUT = 64
# How long "password accepted, second factor next" lasts, and a sealed enrolment secret.
PENDING_SECONDS = 300
ENROL_SECONDS = 900
REQUIRED_ROLES = frozenset({"provider", "staff"})
OFFERED_ROLES = REQUIRED_ROLES | {"admin", "auditor"}
_CONFIRMED = "UserMfa"
_PENDING = "UserMfaPending"


@dataclass(frozen=True)
class Enrolment:
    """A new authenticator: the secret to show once (QR and text) and its otpauth:// URI."""

    secret: str
    uri: str


def offered(user: UserAccount) -> bool:
    """Whether this account may use a second factor at all (never patients)."""
    return user.role in OFFERED_ROLES


def is_enrolled(session: Session, user_id: str) -> bool:
    return session.get(UserMfa, user_id) is not None


def must_enrol(session: Session, settings: Settings, user: UserAccount) -> bool:
    """The policy requires a second factor of this user, who has none yet."""
    return settings.mfa_required and user.role in REQUIRED_ROLES and not is_enrolled(session, user.id)


def needed_at_login(session: Session, settings: Settings, user: UserAccount) -> bool:
    """After the password, this user must give a code (or enrol first): required by the
    policy for their role, or chosen by them (enrolled)."""
    if not offered(user):
        return False
    return (settings.mfa_required and user.role in REQUIRED_ROLES) or is_enrolled(session, user.id)


# ---------------------------------------------------------------- secrets, sealed


def _ring(settings: Settings) -> KeyRing:
    return KeyRing(settings.encryption_keys, settings.active_key_id)


def _seal(settings: Settings, kind: str, user_id: str, secret: str) -> tuple[bytes, str]:
    return _ring(settings).encrypt(secret.encode("ascii"), kind, user_id, 1)


def _open(settings: Settings, kind: str, user_id: str, envelope: bytes, key_id: str) -> str | None:
    try:
        return _ring(settings).decrypt(envelope, key_id, kind, user_id, 1).decode("ascii")
    except (FhirError, UnicodeDecodeError):
        return None


def new_enrolment(settings: Settings, user: UserAccount) -> Enrolment:
    secret = pyotp.random_base32()
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=settings.office_name or "FHIR server")
    return Enrolment(secret, uri)


def enrolment_for(settings: Settings, user: UserAccount, secret: str) -> Enrolment:
    uri = pyotp.TOTP(secret).provisioning_uri(name=user.username, issuer_name=settings.office_name or "FHIR server")
    return Enrolment(secret, uri)


def seal_pending(settings: Settings, user_id: str, secret: str) -> str:
    """The enrolment secret as a session value: ``key id`` + ``.`` + base64 envelope."""
    envelope, key_id = _seal(settings, _PENDING, user_id, secret)
    return key_id + "." + base64.urlsafe_b64encode(envelope).decode("ascii")


def open_pending(settings: Settings, user_id: str, value: object) -> str | None:
    if not isinstance(value, str) or "." not in value or len(value) > 400:
        return None
    key_id, _, blob = value.partition(".")
    try:
        envelope = base64.urlsafe_b64decode(blob)
    except (binascii.Error, ValueError):
        return None
    return _open(settings, _PENDING, user_id, envelope, key_id)


def qr_svg(uri: str) -> str:
    """The otpauth:// URI as an inline SVG QR code: it never leaves the page as a URL."""
    return str(segno.make_qr(uri, error="m").svg_inline(scale=4, title="Authenticator set-up code"))


# ---------------------------------------------------------------- codes


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP_SECONDS)


def normalize(code: str | None) -> str:
    if not isinstance(code, str) or len(code) > MAX_CODE_INPUT:
        return ""
    return "".join(ch for ch in code if ch not in " -\t").upper()


def _matching_step(secret: str, code: str, now: float | None, after: int | None) -> int | None:
    """The step within the drift window whose code is ``code`` and is later than ``after``."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    step_now = current_step(now)
    found = None
    for step in range(step_now - DRIFT_STEPS, step_now + DRIFT_STEPS + 1):
        if after is not None and step <= after:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):  # look at every step: same time for each
            found = step if found is None else found
    return found


def _recovery_hash(user_id: str, code: str) -> str:
    return sha256_hex(f"mfa-recovery\0{user_id}\0{code}")


def _format_recovery(raw: str) -> str:
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def new_recovery_codes(session: Session, user: UserAccount) -> list[str]:
    """Replace the user's recovery codes with ten new ones; returned in clear this once."""
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.user_id == user.id))
    now = utcnow()
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(RECOVERY_ALPHABET) for _ in range(RECOVERY_LENGTH))
        session.add(MfaRecoveryCode(code_hash=_recovery_hash(user.id, raw), user_id=user.id, created_at=now))
        codes.append(_format_recovery(raw))
    session.flush()
    return codes


def audit_new_recovery_codes(session: Session, user: UserAccount, address: str | None) -> None:
    security_event(
        session,
        subtype="mfa-recovery-codes",
        outcome="0",
        user_id=user.id,
        address=address,
        description="new recovery codes issued (the old ones no longer work)",
    )


def recovery_codes_left(session: Session, user_id: str) -> int:
    count = session.execute(
        select(func.count())
        .select_from(MfaRecoveryCode)
        .where(MfaRecoveryCode.user_id == user_id, MfaRecoveryCode.used_at.is_(None))
    ).scalar_one()
    return int(count)


def confirm_enrolment(
    session: Session,
    settings: Settings,
    user: UserAccount,
    secret: str,
    code: str,
    address: str | None,
    now: float | None = None,
) -> list[str] | None:
    """Store ``secret`` as the user's authenticator once ``code`` proves the app has it.

    Replaces an earlier authenticator and all recovery codes; returns the new recovery codes
    (in clear, to show once), or None when the code does not match.
    """
    step = _matching_step(secret, normalize(code), now, None)
    if step is None:
        security_event(
            session,
            subtype="mfa-enrol",
            outcome="4",
            user_id=user.id,
            address=address,
            description="authenticator set-up refused: wrong code",
        )
        return None
    envelope, key_id = _seal(settings, _CONFIRMED, user.id, secret)
    row = session.get(UserMfa, user.id)
    replaced = row is not None
    if row is None:
        row = UserMfa(user_id=user.id, secret_envelope=envelope, key_id=key_id, last_step=step, confirmed_at=utcnow())
        session.add(row)
    else:
        row.secret_envelope, row.key_id, row.last_step, row.confirmed_at = envelope, key_id, step, utcnow()
    codes = new_recovery_codes(session, user)
    security_event(
        session,
        subtype="mfa-enrol",
        outcome="0",
        user_id=user.id,
        address=address,
        description="authenticator replaced" if replaced else "authenticator enrolled",
    )
    session.flush()
    return codes


def enrol_with_secret(
    session: Session, settings: Settings, user: UserAccount, secret: str, now: float | None = None
) -> list[str]:
    """Enrol a known secret without a browser (operators' scripts and tests); audited."""
    codes = confirm_enrolment(session, settings, user, secret, pyotp.TOTP(secret).at(now or time.time()), None, now)
    assert codes is not None
    row = session.get(UserMfa, user.id)
    assert row is not None
    row.last_step = None  # no code has been used to sign in yet
    session.flush()
    return codes


def _use_totp(session: Session, settings: Settings, user: UserAccount, code: str, now: float | None) -> bool:
    row = session.get(UserMfa, user.id)
    if row is None:
        return False
    secret = _open(settings, _CONFIRMED, user.id, row.secret_envelope, row.key_id)
    if secret is None:
        return False
    step = _matching_step(secret, code, now, row.last_step)
    if step is None:
        return False
    claimed = session.execute(
        update(UserMfa)
        .where(UserMfa.user_id == user.id, or_(UserMfa.last_step.is_(None), UserMfa.last_step < step))
        .values(last_step=step)
        .execution_options(synchronize_session=False)
    )
    session.expire(row)
    return int(getattr(claimed, "rowcount", 0) or 0) == 1


def _use_recovery(session: Session, user: UserAccount, code: str) -> bool:
    if len(code) != RECOVERY_LENGTH or not is_enrolled(session, user.id):
        return False
    claimed = session.execute(
        update(MfaRecoveryCode)
        .where(
            MfaRecoveryCode.code_hash == _recovery_hash(user.id, code),
            MfaRecoveryCode.user_id == user.id,
            MfaRecoveryCode.used_at.is_(None),
        )
        .values(used_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(claimed, "rowcount", 0) or 0) == 1


def _attempt(user: UserAccount, address: str | None, device: str | None) -> throttle.Attempt:
    # Keys of their own (the policy is the password's): a correct password must not reset them.
    return throttle.Attempt(f"{user.username}\0mfa", address, device)


def verify(
    session: Session,
    settings: Settings,
    user: UserAccount,
    code: str,
    address: str | None,
    device: str | None = None,
    now: float | None = None,
) -> str | None:
    """Check a sign-in's second factor: "totp" or "recovery" when accepted, None when not.

    Raises LoginThrottled when this attempt must wait (the code is then not looked at).
    ``device`` is the nonce of a device cookie of this account, as for the password.
    The caller commits, after a failure too (the throttle counts must persist).
    """
    if device is not None and not throttle.device_in_good_standing(session, settings, device):
        device = None
    attempt = _attempt(user, address, device)
    refusal = throttle.check(session, settings, attempt)
    if refusal is not None:
        security_event(
            session,
            subtype="mfa",
            outcome="4",
            user_id=user.id,
            address=address,
            description=f"second factor refused: too many failed attempts ({refusal.reason})",
        )
        raise LoginThrottled(refusal.retry_after)
    value = normalize(code)
    kind = None
    if _use_totp(session, settings, user, value, now):
        kind = "totp"
    elif _use_recovery(session, user, value):
        kind = "recovery"
    if kind is None:
        throttle.record_failure(session, settings, attempt)
        security_event(
            session, subtype="mfa", outcome="4", user_id=user.id, address=address, description="second factor failed"
        )
        return None
    throttle.record_success(session, attempt)
    description = "second factor accepted (authenticator code)"
    if kind == "recovery":
        description = f"second factor accepted (recovery code; {recovery_codes_left(session, user.id)} left)"
    security_event(session, subtype="mfa", outcome="0", user_id=user.id, address=address, description=description)
    session.flush()
    return kind


def reset(session: Session, user: UserAccount) -> bool:
    """Remove the user's authenticator and recovery codes (a lost device); True if there was one.

    The next sign-in asks for a new enrolment (when the policy requires one). The caller audits.
    """
    had = is_enrolled(session, user.id)
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.user_id == user.id))
    session.execute(delete(UserMfa).where(UserMfa.user_id == user.id))
    session.flush()
    return had
