"""Three defects, end to end in Chromium: logout, portal access, and GETs that wrote.

1. "Log out" ends every sign-in in one click: the browser goes straight to the portal's
   signed-out page (never the authorization server's "sign out?" page), the next "Sign in"
   asks for the password, and the old tokens are dead.
2. Portal access: the credentials sheet is POST-redirect-GET and shown once; a second grant
   is refused with the server's reason; "Reset portal password" asks first, then issues a new
   one-time password through the same sheet.
3. Opening a message does not mark it read; the page's form does, posted by mark-read.js
   (or by the button without script), and the badge and the Unread markers follow.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from portal_app.sessions import COOKIE_NAME
from tests.browser.conftest import Person, Stack
from tests.browser.test_webmail_flows import (
    assert_no_phi_in_any_url,
    badge,
    console_login,
    open_chart,
    portal_login,
    row,
    sign_in,
)
from tests.portal.portal_sessions import portal_store, realm_tokens
from tests.support import uid

pytestmark = pytest.mark.browser


def session_id(page: Page) -> str:
    """The portal session cookie of the page's browser context."""
    found = [c["value"] for c in page.context.cookies() if c["name"] == COOKIE_NAME]
    assert found, "the browser must hold a portal session cookie"
    return found[0]


def tokens_of(stack: Stack, page: Page, realm: str) -> dict[str, Any]:
    """The tokens the portal holds for this browser (read from its store, as the portal would)."""
    return realm_tokens(portal_store(stack.settings), session_id(page), realm)


def assert_tokens_dead(stack: Stack, tokens: dict[str, Any], client_id: str, secret: str, read: str) -> None:
    refreshed = requests.post(
        stack.url + "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(client_id, secret),
        timeout=30,
    )
    assert refreshed.status_code == 400 and refreshed.json().get("error") == "invalid_grant", refreshed.status_code
    api = requests.get(stack.url + read, headers={"Authorization": f"Bearer {tokens['access_token']}"}, timeout=30)
    assert api.status_code == 401, api.status_code


def patient_without_account(stack: Stack, providers: list[Person]) -> Person:
    """A Patient record (full demographics) that has no portal account yet."""
    family = f"Nguyen{uid()}"
    with stack.session() as session:
        stored = stack._repo(session).create(
            "Patient",
            {
                "resourceType": "Patient",
                "name": [{"use": "official", "family": family, "given": ["Mai"]}],
                "birthDate": "1975-06-01",
                "telecom": [
                    {"system": "phone", "value": "555-0142"},
                    {"system": "email", "value": f"mai.{uid()}@mail.example"},
                ],
                "address": [{"line": ["9 Elm St"], "city": "Springfield", "state": "IL", "postalCode": "62701"}],
                "generalPractitioner": [{"reference": p.ref} for p in providers],
            },
        )
        session.commit()
        email = stored.json()["telecom"][1]["value"]
    return Person("", "", f"Patient/{stored.res_id}", f"Mai {family}", email)


def sheet_credentials(page: Page) -> tuple[str, str]:
    username = page.locator("#sheet-username").inner_text().strip()
    password = page.locator("#sheet-password").inner_text().strip()
    assert username and password
    return username, password


def try_sign_in(new_page: Callable[[], Page], stack: Stack, username: str, password: str) -> Page:
    page = new_page()
    page.goto(stack.url + "/portal/login")
    sign_in(page, username, password)
    return page


# -- 1. one-click logout -------------------------------------------------------------------------


def test_one_click_logout_ends_every_sign_in(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None], visited_urls: list[str]
) -> None:
    dr = stack.provider()
    pat = stack.patient([dr])

    patient = new_page()
    portal_login(patient, stack.url + "/portal/", pat)
    patient_tokens = tokens_of(stack, patient, "patient")
    prov = new_page()
    console_login(prov, stack, dr)
    console_tokens = tokens_of(stack, prov, "console")

    for page, tokens, client, secret in (
        (patient, patient_tokens, "portal", stack.settings.portal_client_secret),
        (prov, console_tokens, "console", stack.settings.console_client_secret),
    ):
        page.get_by_role("button", name="Log out").click()
        # Straight to our own page: nothing to confirm, nowhere to stop while still signed in.
        expect(page.get_by_role("heading", name="You are signed out")).to_be_visible()
        assert page.url == stack.url + "/portal/signed-out"
        shot(page, f"1-signed-out-{client}")
        # Signing in again asks for the password (no instant way back in).
        face = "provider console" if client == "console" else "patient portal"
        page.get_by_role("link", name=f"Sign in to the {face}").click()
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        expect(page.get_by_label("Password", exact=True)).to_be_visible()
        assert page.url.startswith(stack.url + "/auth/login")
        assert_tokens_dead(stack, tokens, client, secret, f"/fhir/Patient/{pat.id}")
    assert not any("/auth/logout" in url for url in visited_urls), "the auth server's logout page was shown"

    # And the password still works as before.
    sign_in(patient, pat.username, pat.password)
    expect(patient.get_by_role("heading", name="Inbox")).to_be_visible()


# -- 2. portal access --------------------------------------------------------------------------


def test_grant_is_shown_once_refused_twice_and_reset_after_confirming(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None], visited_urls: list[str]
) -> None:
    dr = stack.provider()
    pat = patient_without_account(stack, [dr])
    prov = new_page()
    console_login(prov, stack, dr)
    open_chart(prov, pat)
    expect(prov.get_by_text("Reset portal password (you confirm first)")).to_be_visible()

    # Grant: POST, then the sheet's GET; a reload issues nothing and shows no password.
    prov.get_by_role("button", name="Grant portal access").click()
    expect(prov.get_by_role("heading", name=f"Portal access for {pat.name}")).to_be_visible()
    assert prov.url.endswith(f"/patients/{pat.id}/portal-sheet")
    first_user, first_password = sheet_credentials(prov)
    shot(prov, "1-sheet")
    prov.reload()
    expect(prov.get_by_role("heading", name="This sheet was shown once")).to_be_visible()
    assert first_password not in prov.content()
    shot(prov, "2-shown-once")
    prov.get_by_role("link", name="Back to the chart").click()

    # Granting again is refused with the server's reason, and the reset is offered.
    prov.get_by_role("button", name="Grant portal access").click()
    notice = prov.locator(".notice-portal-access")
    expect(notice).to_contain_text("already has an active portal account")
    expect(prov.locator("#sheet-password")).to_have_count(0)
    shot(prov, "3-second-grant-refused")

    # The reset asks first; Cancel changes nothing.
    notice.get_by_role("link", name="Reset portal password").click()
    expect(prov.get_by_role("heading", name=f"Reset the portal password of {pat.name}?")).to_be_visible()
    expect(prov.get_by_text("they will be emailed that it was reset. Continue?")).to_be_visible()
    shot(prov, "4-reset-confirm")
    prov.get_by_role("link", name="Cancel").click()
    expect(prov.get_by_role("heading", name=pat.name)).to_be_visible()

    # The first one-time password still works (neither the second grant nor the GET changed it).
    first = try_sign_in(new_page, stack, first_user, first_password)
    expect(first.get_by_label("One-time password")).to_be_visible()

    prov.get_by_role("link", name="Reset portal password").click()
    prov.get_by_role("button", name="Reset password").click()
    expect(prov.get_by_role("heading", name=f"New portal password for {pat.name}")).to_be_visible()
    user, password = sheet_credentials(prov)
    assert user == first_user and password != first_password
    shot(prov, "5-reset-sheet")
    prov.reload()
    expect(prov.get_by_role("heading", name="This sheet was shown once")).to_be_visible()
    assert password not in prov.content()

    # The old password fails; the new one-time password works and asks for a new password.
    old = try_sign_in(new_page, stack, user, first_password)
    expect(old.get_by_text("The username or password is not correct.")).to_be_visible()
    new = try_sign_in(new_page, stack, user, password)
    expect(new.get_by_label("One-time password")).to_be_visible()
    shot(new, "6-first-login-after-reset")
    # The patient is told by email that the password was reset; the email holds no password.
    mail = stack.mail.wait_for(pat.email, 1)[-1]
    assert password.encode() not in mail.raw and first_password.encode() not in mail.raw
    assert_no_phi_in_any_url(visited_urls, first_password, password, pat.name.split()[1])


# -- 3. reading without GETs that write ----------------------------------------------------------


def test_opening_a_message_marks_it_read_by_post_only(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None]
) -> None:
    dr = stack.provider()
    pat = stack.patient([dr])
    subject = f"Your appointment {uid()}"

    prov = new_page()
    console_login(prov, stack, dr)
    open_chart(prov, pat)
    prov.get_by_role("link", name="Write WebMail").click()
    prov.get_by_label("Subject").fill(subject)
    prov.get_by_label("Message").fill("See you on Monday.")
    prov.get_by_role("button", name="Send").click()
    expect(prov.get_by_text("Your message was sent.")).to_be_visible()

    patient = new_page()
    portal_login(patient, stack.url + "/portal/", pat)
    writes: list[str] = []
    patient.on("request", lambda r: writes.append(f"{r.method} {r.url}") if r.method == "POST" else None)
    patient.get_by_role("link", name=subject).click()
    expect(patient.locator("#read-status")).to_have_text("Marked as read.")
    expect(patient.get_by_role("button", name="Mark as read")).to_be_hidden()
    assert [w for w in writes if w.endswith("/mark-read")], "mark-read.js must POST the page's form"
    shot(patient, "1-message-read")
    patient.get_by_role("link", name="Back to inbox").click()
    expect(row(patient, subject)).not_to_contain_text("Unread")
    prov.reload()  # the chart: the patient has read it
    expect(row(prov, subject).locator(".tag-read")).to_have_text("Read")


def test_without_script_the_button_marks_read(
    stack: Stack, browser: Browser, shot: Callable[[Page, str], None]
) -> None:
    """No JS: opening a message leaves it unread (the GET writes nothing); the button does it,
    then the browser is back on the message."""
    dr = stack.provider()
    pat = stack.patient([dr])
    to_patient, to_provider = f"Prescription renewed {uid()}", f"Thank you {uid()}"
    contexts = [browser.new_context(java_script_enabled=False, viewport={"width": 1200, "height": 900}) for _ in "ab"]
    try:
        prov, patient = (ctx.new_page() for ctx in contexts)
        for page in (prov, patient):
            page.set_default_timeout(20_000)
        console_login(prov, stack, dr)
        open_chart(prov, pat)
        prov.get_by_role("link", name="Write WebMail").click()
        prov.get_by_label("Subject").fill(to_patient)
        prov.get_by_label("Message").fill("Your prescription was renewed.")
        prov.get_by_role("button", name="Send").click()
        expect(prov.get_by_text("Your message was sent.")).to_be_visible()

        portal_login(patient, stack.url + "/portal/", pat)
        patient.get_by_role("link", name=to_patient).click()
        expect(patient.get_by_role("button", name="Mark as read")).to_be_visible()
        patient.reload()  # a reload writes nothing either
        patient.get_by_role("link", name="Back to inbox").click()
        expect(row(patient, to_patient)).to_contain_text("Unread")
        patient.get_by_role("link", name=to_patient).click()
        patient.get_by_role("button", name="Mark as read").click()
        expect(patient.get_by_text("Marked as read.")).to_be_visible()
        expect(patient.get_by_role("heading", name=to_patient)).to_be_visible()  # back on the message
        expect(patient.get_by_role("button", name="Mark as read")).to_have_count(0)
        shot(patient, "1-no-script-marked-read")
        patient.get_by_role("link", name="Back to inbox").click()
        expect(row(patient, to_patient)).not_to_contain_text("Unread")

        patient.get_by_role("navigation", name="Main").get_by_role("link", name="Compose").click()
        patient.get_by_label("Subject").fill(to_provider)
        patient.get_by_label("Message").fill("Thanks!")
        patient.get_by_role("button", name="Send").click()
        expect(patient.get_by_text("Your message was sent.")).to_be_visible()

        prov.get_by_role("link", name="WebMail inbox").click()
        expect(badge(prov)).to_have_text("1")
        prov.get_by_role("link", name=to_provider).click()
        expect(badge(prov)).to_have_text("1")  # opening it wrote nothing
        prov.get_by_role("button", name="Mark as read").click()
        expect(prov.get_by_text("Marked as read.")).to_be_visible()
        assert re.search(r"/portal/console/messages/[^/?]+$", prov.url), prov.url
        expect(badge(prov)).to_have_text("0")
        expect(prov.get_by_role("button", name="Mark unread")).to_be_visible()
        shot(prov, "2-no-script-console")
    finally:
        for ctx in contexts:
            ctx.close()
