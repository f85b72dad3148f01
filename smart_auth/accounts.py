"""User accounts: creation, portal access for patients, lookups, login, disabling.

Plain functions over a SQLAlchemy Session, shared by the login pages, the FHIR
portal-access operations (through ``fhirserver.core.ports.PortalAccounts``, which this
module implements) and the CLI. The caller commits. Passwords and one-time passwords
exist in clear only in memory: they are hashed (argon2id) before they reach the database
and never logged or audited; audit records name the user id, never the username.

A patient's portal account is in one of three states (docs/webmail-profile.md):
``none`` (no account), ``active`` and ``disabled``. Granting access moves none -> active
and is refused in any other state; a password reset keeps an active account active with
a new one-time password; disabling and enabling are an administrator's (CLI).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
import uuid
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fhirserver.config import Settings
from fhirserver.core.audit import security_event
from fhirserver.core.ports import (
    PORTAL_ACTIVE,
    PORTAL_DISABLED,
    PORTAL_NONE,
    PortalCredentials,
    PortalStateError,
)
from smart_auth import grants, mailbox_users, passwords, throttle
from smart_auth.hashing import utcnow
from smart_auth.models import ROLES, StaffAssignment, UserAccount, WebSession

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{2,149}$")
FHIR_REF_RE = re.compile(r"^(Patient|Practitioner)/[A-Za-z0-9\-.]{1,64}$")
FHIR_ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# No 0/O, 1/l/I: the one-time password is read aloud or copied from paper.
OTP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
OTP_LENGTH = 10
ROLE_REF_TYPE = {"patient": "Patient", "provider": "Practitioner"}


class AccountError(ValueError):
    """A request about accounts cannot be carried out; the message is safe to show."""


class LoginThrottled(Exception):
    """Too many failed attempts for this account or address: try again later."""

    def __init__(self, retry_after: int = 60) -> None:
        super().__init__("throttled")
        self.retry_after = retry_after


def normalize_username(username: str) -> str:
    return (username or "").strip().lower()


def get_user(session: Session, user_id: str) -> UserAccount | None:
    return session.get(UserAccount, user_id)


def find_by_username(session: Session, username: str) -> UserAccount | None:
    name = normalize_username(username)
    if not name or "\x00" in name:  # no stored username holds a NUL; PostgreSQL refuses one in a query
        return None
    return session.execute(select(UserAccount).where(UserAccount.username == name)).scalar_one_or_none()


def users_for(session: Session, fhir_ref: str) -> list[UserAccount]:
    """Every account whose FHIR identity is ``fhir_ref`` (``Patient/x`` or ``Practitioner/y``)."""
    rows = session.execute(
        select(UserAccount).where(UserAccount.fhir_user == fhir_ref).order_by(UserAccount.created_at)
    )
    return list(rows.scalars())


def staff_providers(session: Session, user_id: str) -> list[str]:
    """The ``Practitioner/y`` references a staff user works for."""
    rows = session.execute(
        select(StaffAssignment.practitioner_ref)
        .where(StaffAssignment.user_id == user_id)
        .order_by(StaffAssignment.practitioner_ref)
    )
    return list(rows.scalars())


def _patient_accounts(session: Session, patient_id: str) -> list[UserAccount]:
    return [u for u in users_for(session, f"Patient/{patient_id}") if u.role == "patient"]


def portal_state(session: Session, patient_id: str) -> str:
    """none, active or disabled: the state of Patient/{patient_id}'s portal account."""
    accounts = _patient_accounts(session, patient_id)
    if not accounts:
        return PORTAL_NONE
    return PORTAL_ACTIVE if any(u.active for u in accounts) else PORTAL_DISABLED


def end_sessions_and_grants(session: Session, user_id: str, reason: str) -> None:
    """Sign the user out everywhere and end every token they hold, at once."""
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    grants.revoke_user(session, user_id, reason)


def set_active(session: Session, user: UserAccount, active: bool) -> None:
    """Disable (sessions and tokens end at once) or enable an account. The caller audits."""
    user.active = active
    if not active:
        end_sessions_and_grants(session, user.id, "account-disabled")
    session.flush()


def _check_identity(role: str, fhir_user: str | None, staff_of: Iterable[str]) -> list[str]:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    if fhir_user is not None:
        if not FHIR_REF_RE.match(fhir_user):
            raise AccountError("fhir_user must look like Patient/{id} or Practitioner/{id}")
        wanted = ROLE_REF_TYPE.get(role)
        if wanted and not fhir_user.startswith(wanted + "/"):
            raise AccountError(f"a {role} account must be linked to a {wanted}")
        if role in ("auditor", "admin") and fhir_user.startswith("Patient/"):
            raise AccountError(f"a {role} account cannot be linked to a Patient")
    refs = list(dict.fromkeys(staff_of))
    if refs and role != "staff":
        raise AccountError("only staff accounts work for providers")
    for ref in refs:
        if not ref.startswith("Practitioner/") or not FHIR_REF_RE.match(ref):
            raise AccountError("staff_of must list Practitioner/{id} references")
    return refs


def create_user(
    session: Session,
    *,
    username: str,
    password: str,
    role: str,
    settings: Settings | None = None,
    fhir_user: str | None = None,
    display_name: str = "",
    must_change_password: bool = False,
    staff_of: Iterable[str] = (),
    enforce_policy: bool = True,
) -> UserAccount:
    """Create an account; the password must pass the policy (PasswordPolicyError otherwise).

    ``settings`` selects the argon2 cost (pass it: tests use cheap values); without it the
    production defaults of Settings are used. ``enforce_policy=False`` is for one-time
    passwords we generate ourselves (random, and changed at the first sign-in).
    """
    name = normalize_username(username)
    if not USERNAME_RE.match(name):
        raise AccountError(
            "username must be 3-150 characters: letters, digits, '.', '_', '-', '@', starting with a letter or digit"
        )
    refs = _check_identity(role, fhir_user, staff_of)
    if enforce_policy:
        passwords.check_policy(password, name)
    if find_by_username(session, name) is not None:
        raise AccountError("this username is taken")
    user = UserAccount(
        id=uuid.uuid4().hex,
        username=name,
        password_hash=passwords.hash_password(settings, password),
        role=role,
        fhir_user=fhir_user,
        display_name=display_name or "",
        must_change_password=must_change_password,
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    for ref in refs:
        session.add(StaffAssignment(user_id=user.id, practitioner_ref=ref))
    session.flush()
    mailbox_users.recompute(session, user)  # mail sent before the account existed is in its inbox
    return user


def assign_staff(session: Session, user: UserAccount, practitioner_ref: str, *, remove: bool = False) -> bool:
    """Add (or remove) a staff member's assignment to a provider; False when nothing changed.

    The API reads assignments on every request (``smart_auth.resource_server``), so a change
    takes effect at once, tokens already issued included.
    """
    if user.role != "staff":
        raise AccountError("only staff accounts work for providers")
    if not practitioner_ref.startswith("Practitioner/") or not FHIR_REF_RE.match(practitioner_ref):
        raise AccountError("expected a Practitioner/{id} reference")
    row = session.get(StaffAssignment, (user.id, practitioner_ref))
    if remove:
        if row is None:
            return False
        session.delete(row)
    else:
        if row is not None:
            return False
        session.add(StaffAssignment(user_id=user.id, practitioner_ref=practitioner_ref))
    session.flush()
    mailbox_users.recompute(session, user)  # the inbox follows the assignments, in the same transaction
    return True


def _username_base(first_name: str) -> str:
    folded = unicodedata.normalize("NFKD", first_name or "")
    letters = "".join(ch for ch in folded if "a" <= ch.lower() <= "z").lower()
    return letters[:20] or "patient"


def _unique_patient_username(session: Session, first_name: str) -> str:
    base = _username_base(first_name)
    for digits in (4, 4, 4, 5, 6, 8, 10):
        candidate = f"{base}{secrets.randbelow(10**digits):0{digits}d}"
        if find_by_username(session, candidate) is None:
            return candidate
    raise AccountError("could not find a free username; try again")


def one_time_password() -> str:
    return "".join(secrets.choice(OTP_ALPHABET) for _ in range(OTP_LENGTH))


def grant_portal_access(session: Session, settings: Settings, *, patient_id: str, first_name: str) -> PortalCredentials:
    """Create the portal account of Patient/{patient_id} (state none -> active).

    Refused (PortalStateError naming the state) when the patient already has an account:
    granting again must never replace the password the patient chose. The one-time
    password is returned once and stored only as a hash; the first login must change it.
    """
    if not FHIR_ID_RE.match(patient_id or ""):
        raise AccountError("not a valid Patient id")
    state = portal_state(session, patient_id)
    if state != PORTAL_NONE:
        raise PortalStateError(state)
    otp = one_time_password()
    user = UserAccount(
        id=uuid.uuid4().hex,
        username=_unique_patient_username(session, first_name),
        password_hash=passwords.hash_password(settings, otp),
        role="patient",
        fhir_user=f"Patient/{patient_id}",
        display_name=(first_name or "").strip()[:200],
        must_change_password=True,
        active=True,
        created_at=utcnow(),
    )
    session.add(user)
    session.flush()
    mailbox_users.recompute(session, user)  # earlier mail to the patient is in the new inbox
    return PortalCredentials(user.username, otp, user.id)


def reset_portal_password(session: Session, settings: Settings, *, patient_id: str) -> PortalCredentials:
    """A new one-time password for an active portal account (active -> active).

    The patient's browser sessions and every token they hold end at once; the next login
    must change the password. Refused (PortalStateError) for none and disabled.
    """
    if not FHIR_ID_RE.match(patient_id or ""):
        raise AccountError("not a valid Patient id")
    active = [u for u in _patient_accounts(session, patient_id) if u.active]
    if not active:
        raise PortalStateError(portal_state(session, patient_id))
    user = active[0]
    otp = one_time_password()
    user.password_hash = passwords.hash_password(settings, otp)
    user.must_change_password = True
    end_sessions_and_grants(session, user.id, "password-reset")
    session.flush()
    return PortalCredentials(user.username, otp, user.id)


def authenticate(
    session: Session,
    settings: Settings,
    username: str,
    password: str,
    address: str | None,
    device: str | None = None,
) -> UserAccount | None:
    """Check a username and password; None when they do not match (whatever the reason).

    ``device`` is the nonce of this browser's device cookie for this account, when it has
    one in good standing (``smart_auth.device_cookies``). Raises LoginThrottled when the
    attempt must wait (``smart_auth.throttle``); the password is then not even checked.
    Unknown users and inactive accounts cost one argon2 verification like everyone else,
    so timing does not tell whether a username exists. Successful logins upgrade old
    hashes. Failures and successes are audited (user id and address, never the username).
    The caller commits, including after a failure (the counters must persist).
    """
    name = (username or "")[:150]
    if device is not None and not throttle.device_in_good_standing(session, settings, device):
        device = None
    attempt = throttle.Attempt(name, address, device)
    refusal = throttle.check(session, settings, attempt)
    if refusal is not None:
        security_event(
            session,
            subtype="login",
            outcome="4",
            address=address,
            description=f"login refused: too many failed attempts ({refusal.reason})",
        )
        raise LoginThrottled(refusal.retry_after)
    password = password if isinstance(password, str) else ""
    user = find_by_username(session, username) if username and len(username) <= 150 else None
    ok = False
    if user is None or len(password) > passwords.MAX_LENGTH:
        passwords.burn_verify(settings, password[: passwords.MAX_LENGTH])
    else:
        ok = passwords.verify_password(settings, user.password_hash, password) and user.active
    if not ok:
        throttle.record_failure(session, settings, attempt)
        security_event(
            session,
            subtype="login",
            outcome="4",
            user_id=user.id if user else None,
            address=address,
            description="login failed",
        )
        return None
    assert user is not None
    throttle.record_success(session, attempt)
    if passwords.needs_rehash(settings, user.password_hash):
        user.password_hash = passwords.hash_password(settings, password)
    user.last_login_at = utcnow()
    security_event(
        session, subtype="login", outcome="0", user_id=user.id, address=address, description="login succeeded"
    )
    session.flush()
    return user


def change_password(
    session: Session, settings: Settings, user: UserAccount, current: str, new: str, address: str | None
) -> None:
    """Change a password after checking the current one; clears ``must_change_password``.

    Raises AccountError (wrong current password), PasswordPolicyError (weak new one) or
    LoginThrottled (too many wrong current passwords: this form must not become a
    way around the login throttle). The caller ends the user's other sessions.
    """
    attempt = throttle.Attempt(user.username, address)
    refusal = throttle.check(session, settings, attempt)
    if refusal is not None:
        raise LoginThrottled(refusal.retry_after)
    if not passwords.verify_password(settings, user.password_hash, current or ""):
        throttle.record_failure(session, settings, attempt)
        security_event(
            session,
            subtype="password-change",
            outcome="4",
            user_id=user.id,
            address=address,
            description="password change refused: wrong current password",
        )
        raise AccountError("The current password is not correct.")
    passwords.check_policy(new, user.username)
    if new == current:
        raise passwords.PasswordPolicyError("Choose a password different from the current one.")
    user.password_hash = passwords.hash_password(settings, new)
    user.must_change_password = False
    security_event(
        session,
        subtype="password-change",
        outcome="0",
        user_id=user.id,
        address=address,
        description="password changed",
    )
    session.flush()


def reauthenticate(session: Session, settings: Settings, user: UserAccount, password: str, address: str | None) -> bool:
    """F4: a signed-in user proves the password again before a security change (e.g. a new
    authenticator). Throttled like the password change; audited. Raises LoginThrottled."""
    attempt = throttle.Attempt(user.username, address)
    refusal = throttle.check(session, settings, attempt)
    if refusal is not None:
        raise LoginThrottled(refusal.retry_after)
    password = password if isinstance(password, str) else ""
    ok = len(password) <= passwords.MAX_LENGTH and passwords.verify_password(settings, user.password_hash, password)
    if not ok:
        throttle.record_failure(session, settings, attempt)
    security_event(
        session,
        subtype="reauthentication",
        outcome="0" if ok else "4",
        user_id=user.id,
        address=address,
        description="password confirmed again" if ok else "re-authentication failed: wrong password",
    )
    session.flush()
    return ok


def set_password(session: Session, settings: Settings, user: UserAccount, new: str, must_change: bool = False) -> None:
    """Operator reset (CLI): set a password that passes the policy, without the current one.

    Every session and token of the account ends.
    """
    passwords.check_policy(new, user.username)
    user.password_hash = passwords.hash_password(settings, new)
    user.must_change_password = must_change
    end_sessions_and_grants(session, user.id, "password-reset")
    session.flush()
