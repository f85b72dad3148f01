"""Accounts: creation rules, portal access, lookups, and login with throttling."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from fhirserver.core.ports import PORTAL_ACTIVE, PORTAL_DISABLED, PORTAL_NONE, PortalStateError
from fhirserver.models import AuditLogRow
from smart_auth import accounts, passwords
from smart_auth.accounts import AccountError
from smart_auth.models import LoginThrottle, UserAccount
from tests.auth.support import PASSWORD, make_user, random_address
from tests.support import uid


def test_create_user_lowercases_and_refuses_duplicates(db_session, settings) -> None:
    name = f"MixedCase{uid()}"
    user = accounts.create_user(
        db_session,
        username=name,
        password=PASSWORD,
        role="provider",
        settings=settings,
        fhir_user=f"Practitioner/{uid()}",
    )
    db_session.commit()
    assert user.username == name.lower()
    assert accounts.find_by_username(db_session, name.upper()).id == user.id
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    with pytest.raises(AccountError, match="taken"):
        accounts.create_user(db_session, username=name.upper(), password=PASSWORD, role="provider", settings=settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "superuser"}, "role"),
        ({"role": "patient", "fhir_user": "Practitioner/x1"}, "linked to a Patient"),
        ({"role": "provider", "fhir_user": "Patient/x1"}, "linked to a Practitioner"),
        ({"role": "admin", "fhir_user": "Patient/x1"}, "cannot be linked"),
        ({"role": "patient", "fhir_user": "Patient/../x"}, "fhir_user"),
        ({"role": "provider", "staff_of": ("Practitioner/a",)}, "only staff"),
        ({"role": "staff", "staff_of": ("Patient/a",)}, "staff_of"),
        ({"role": "patient", "username": "x"}, "username"),
        ({"role": "patient", "username": "has space"}, "username"),
    ],
)
def test_create_user_validation(db_session, settings, kwargs, message) -> None:
    args = {"username": f"u{uid()}", "password": PASSWORD, "settings": settings, **kwargs}
    with pytest.raises(AccountError, match=message):
        accounts.create_user(db_session, **args)


def test_create_user_applies_password_policy(db_session, settings) -> None:
    name = f"pol{uid()}"
    with pytest.raises(passwords.PasswordPolicyError):
        accounts.create_user(db_session, username=name, password=f"{name}!!", role="patient", settings=settings)
    with pytest.raises(passwords.PasswordPolicyError):
        accounts.create_user(db_session, username=name, password="password1", role="patient", settings=settings)


def test_staff_providers_and_users_for(db_session, settings) -> None:
    doc = f"Practitioner/{uid()}"
    other = f"Practitioner/{uid()}"
    staff = make_user(db_session, settings, role="staff", staff_of=(doc, other), prefix="staff")
    provider = make_user(db_session, settings, role="provider", fhir_user=doc, prefix="dr")
    assert accounts.staff_providers(db_session, staff.id) == sorted([doc, other])
    assert [u.id for u in accounts.users_for(db_session, doc)] == [provider.id]
    assert accounts.get_user(db_session, provider.id).username == provider.username
    assert accounts.get_user(db_session, "nope") is None


def test_portal_account_states_none_active_disabled(db_session, settings) -> None:
    """Defect 1 at the account level: granting again is refused, resetting is its own step."""
    pid = f"pat{uid()}"
    assert accounts.portal_state(db_session, pid) == PORTAL_NONE
    with pytest.raises(PortalStateError) as none:
        accounts.reset_portal_password(db_session, settings, patient_id=pid)
    assert none.value.state == PORTAL_NONE
    creds = accounts.grant_portal_access(db_session, settings, patient_id=pid, first_name="Zoë-Ann")
    db_session.commit()
    assert re.fullmatch(r"zoeann\d{4,}", creds.username), creds.username
    assert len(creds.password) == 10 and not set(creds.password) & set("0O1lI")
    assert accounts.portal_state(db_session, pid) == PORTAL_ACTIVE
    (user,) = accounts.users_for(db_session, f"Patient/{pid}")
    assert user.id == creds.user_id and user.username == creds.username and user.role == "patient"
    assert user.must_change_password and user.active and creds.password not in user.password_hash
    assert accounts.authenticate(db_session, settings, creds.username, creds.password, random_address())

    # The patient chose a password: granting again must not replace it.
    accounts.set_password(db_session, settings, user, "my own calm river")
    db_session.commit()
    with pytest.raises(PortalStateError) as active:
        accounts.grant_portal_access(db_session, settings, patient_id=pid, first_name="Zoë-Ann")
    assert active.value.state == PORTAL_ACTIVE
    assert accounts.authenticate(db_session, settings, creds.username, "my own calm river", random_address())

    # A reset keeps the username, sets a new one-time password and asks for a change again.
    reset = accounts.reset_portal_password(db_session, settings, patient_id=pid)
    db_session.commit()
    assert reset.username == creds.username and reset.password != creds.password
    db_session.refresh(user)
    assert user.must_change_password and user.active
    assert accounts.authenticate(db_session, settings, creds.username, "my own calm river", random_address()) is None
    assert accounts.authenticate(db_session, settings, creds.username, reset.password, random_address())

    accounts.set_active(db_session, user, False)
    db_session.commit()
    assert accounts.portal_state(db_session, pid) == PORTAL_DISABLED
    for call in (accounts.grant_portal_access, accounts.reset_portal_password):
        kwargs = {"first_name": "Zoë-Ann"} if call is accounts.grant_portal_access else {}
        with pytest.raises(PortalStateError) as disabled:
            call(db_session, settings, patient_id=pid, **kwargs)
        assert disabled.value.state == PORTAL_DISABLED
    accounts.set_active(db_session, user, True)
    assert accounts.portal_state(db_session, pid) == PORTAL_ACTIVE
    assert len(accounts.users_for(db_session, f"Patient/{pid}")) == 1
    db_session.rollback()


def test_grant_portal_access_fallback_name_and_bad_id(db_session, settings) -> None:
    creds = accounts.grant_portal_access(db_session, settings, patient_id=f"p{uid()}", first_name="李")
    assert re.fullmatch(r"patient\d{4,}", creds.username)
    with pytest.raises(AccountError):
        accounts.grant_portal_access(db_session, settings, patient_id="../etc", first_name="Ann")
    db_session.rollback()


def test_authenticate_success_failure_and_same_outcome_for_unknown_user(db_session, settings) -> None:
    user = make_user(db_session, settings)
    addr = random_address()
    assert accounts.authenticate(db_session, settings, user.username.upper(), PASSWORD, addr).id == user.id
    assert accounts.authenticate(db_session, settings, user.username, "wrong password!", addr) is None
    assert accounts.authenticate(db_session, settings, f"ghost{uid()}", "wrong password!", addr) is None
    user.active = False
    db_session.commit()
    assert accounts.authenticate(db_session, settings, user.username, PASSWORD, addr) is None


def test_throttle_keys_hold_no_usernames_or_addresses(db_session, settings) -> None:
    name, addr = f"secretname{uid()}", random_address()
    accounts.authenticate(db_session, settings, name, "not the password", addr)
    db_session.commit()
    keys = list(db_session.execute(select(LoginThrottle.key)).scalars())
    assert keys and not any(name in k or addr in k for k in keys)


def test_successful_login_rehashes_with_new_parameters(db_session, settings) -> None:
    user = make_user(db_session, settings)
    old = user.password_hash
    stronger = settings.with_(argon2_time_cost=2, argon2_memory_kib=2048)
    assert accounts.authenticate(db_session, stronger, user.username, PASSWORD, random_address()) is not None
    db_session.commit()
    db_session.refresh(user)
    assert user.password_hash != old and "m=2048,t=2" in user.password_hash
    assert user.last_login_at is not None


def test_login_events_are_audited_without_usernames(db_session, settings) -> None:
    user = make_user(db_session, settings)
    before = db_session.execute(select(AuditLogRow.event_id)).scalars()
    seen = set(before)
    accounts.authenticate(db_session, settings, user.username, "wrong password!", random_address())
    accounts.authenticate(db_session, settings, user.username, PASSWORD, random_address())
    db_session.commit()
    rows = db_session.execute(select(AuditLogRow)).scalars()
    new = [r for r in rows if r.event_id not in seen]
    bodies = [r.content.decode() for r in new]
    assert len([b for b in bodies if '"code":"login"' in b]) == 2
    assert all(user.username not in b and PASSWORD not in b for b in bodies)
    assert any(user.id in b and '"outcome":"0"' in b for b in bodies)
    assert any('"outcome":"4"' in b for b in bodies)


def test_change_password(db_session, settings) -> None:
    user = make_user(db_session, settings, must_change=True)
    addr = random_address()
    with pytest.raises(AccountError):
        accounts.change_password(db_session, settings, user, "wrong current", "a brand new secret", addr)
    with pytest.raises(passwords.PasswordPolicyError):
        accounts.change_password(db_session, settings, user, PASSWORD, "short", addr)
    with pytest.raises(passwords.PasswordPolicyError):
        accounts.change_password(db_session, settings, user, PASSWORD, PASSWORD, addr)
    accounts.change_password(db_session, settings, user, PASSWORD, "a brand new secret", addr)
    db_session.commit()
    fresh = db_session.get(UserAccount, user.id)
    assert not fresh.must_change_password
    assert accounts.authenticate(db_session, settings, user.username, "a brand new secret", addr) is not None
