"""The three WebMail scenarios, end to end in Chromium: portal, console, auth server, API, email.

1. A provider writes; the patient gets an email without PHI, follows its link, signs in,
   reads and replies; the provider's Alerts badge rises and the reply shows in the inbox
   and in the chart.
2. A patient writes to their primary provider; the badge rises; reading clears it.
3. A provider creates a provider-contact record, grants portal access, and the receiving
   provider signs in with the one-time password, chooses a password, and messages go both ways.
Plus native provider-to-provider WebMail and logout (tests/browser/test_account_flows.py has
the one-click logout, portal-access and read-state defects in detail).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

import pytest
from playwright.sync_api import Page, expect

from tests import totp
from tests.browser.conftest import Person, Stack
from tests.support import uid

pytestmark = pytest.mark.browser
BADGE_WAIT = 20_000  # the badge polls every 5 s


# -- steps -----------------------------------------------------------------------------------


def sign_in(page: Page, username: str, password: str) -> None:
    """Fill the authorization server's login form (and the second-factor form of a provider)."""
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    if username in totp.SECRETS:  # providers: the authenticator code (tests/totp.py)
        expect(page.get_by_role("heading", name="Two-step sign-in")).to_be_visible()
        page.get_by_label("Code").fill(totp.code_for(username))
        page.get_by_role("button", name="Continue").click()


def console_login(page: Page, stack: Stack, who: Person) -> None:
    page.goto(stack.url + "/portal/console/")
    sign_in(page, who.username, who.password)
    expect(page.get_by_role("heading", name="WebMail inbox")).to_be_visible()


def portal_login(page: Page, url: str, who: Person) -> None:
    page.goto(url)
    page.get_by_role("link", name="Sign in").click()
    sign_in(page, who.username, who.password)
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()


def badge(page: Page) -> Any:
    return page.locator("#alerts-count")


def open_chart(page: Page, who: Person) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Patients").click()
    page.get_by_role("link", name=who.name).click()
    expect(page.get_by_role("heading", name=who.name)).to_be_visible()


def row(page: Page, text: str) -> Any:
    return page.get_by_role("row").filter(has_text=text)


def assert_no_phi_in_url(page: Page, *secrets: str) -> None:
    for s in secrets:
        assert s not in page.url


def assert_no_phi_in_any_url(urls: list[str], *values: str) -> None:
    """Nothing the user typed or was shown (subjects, bodies, names, credentials) went into a URL."""
    assert urls, "the browser must have made requests"
    for url in urls:
        plain = unquote_plus(url)
        for value in values:
            assert value not in plain, "a URL carries PHI or a credential"


def notification_link(stack: Stack, address: str, count: int, *phi: str) -> str:
    """The portal link of the newest notification email to ``address``; no PHI may be in it."""
    mails = stack.mail.wait_for(address, count)
    mail = mails[count - 1]
    decoded = str(mail.message["Subject"]) + "\n" + mail.text
    for value in phi:
        assert value not in decoded
        assert value.encode() not in mail.raw
    match = re.search(r"https?://[^\s<>\"]+", mail.text)
    assert match, "the email must carry the portal link"
    link = match.group(0)
    assert link.startswith(stack.url + "/portal/")
    return link


# -- 1. provider -> patient, patient replies -----------------------------------------------


def test_provider_writes_patient_reads_and_replies(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None], visited_urls: list[str]
) -> None:
    dr = stack.provider()
    pat = stack.patient([dr])
    subject = f"Lab results {uid()}"
    body = f"Your cholesterol is in range {uid()}."
    answer = f"Thank you, doctor {uid()}."

    prov = new_page()
    console_login(prov, stack, dr)
    expect(badge(prov)).to_have_text("0")
    open_chart(prov, pat)
    prov.get_by_role("link", name="Write WebMail").click()
    expect(prov.get_by_label("From")).to_have_value(dr.ref)
    prov.get_by_label("Subject").fill(subject)
    prov.get_by_label("Message").fill(body)
    shot(prov, "1-provider-compose")
    prov.get_by_role("button", name="Send").click()
    expect(prov.get_by_text("Your message was sent.")).to_be_visible()
    expect(row(prov, subject)).to_contain_text("Unread")
    assert_no_phi_in_url(prov, subject, body)

    link = notification_link(stack, pat.email, 1, subject, body, pat.name)

    patient = new_page()
    portal_login(patient, link, pat)
    expect(row(patient, subject)).to_contain_text("Unread")
    expect(row(patient, subject).locator("strong")).to_have_text(subject)
    shot(patient, "2-patient-inbox")
    patient.get_by_role("link", name=subject).click()
    expect(patient.get_by_role("heading", name=subject)).to_be_visible()
    expect(patient.get_by_text(body)).to_be_visible()
    expect(patient.locator(".message-header")).to_contain_text(dr.name)
    expect(patient.locator("#read-status")).to_have_text("Marked as read.")  # mark-read.js, by POST
    patient.get_by_role("link", name="Reply").click()
    expect(patient.get_by_label("Subject")).to_have_value(f"RE: {subject}")
    patient.get_by_label("Message").fill(answer)
    shot(patient, "3-patient-reply")
    patient.get_by_role("button", name="Send reply").click()
    expect(patient.get_by_text("Your reply was sent.")).to_be_visible()
    expect(row(patient, f"RE: {subject}")).to_contain_text("Unread")
    assert_no_phi_in_url(patient, subject, answer)

    # The provider's badge rises by itself (alerts.js polls), without a reload.
    expect(badge(prov)).to_have_text("1", timeout=BADGE_WAIT)
    expect(prov.locator("#alerts")).to_have_class(re.compile("alerts-active"))
    shot(prov, "4-provider-badge")
    prov.get_by_role("link", name="WebMail inbox").click()
    reply_row = row(prov, f"RE: {subject}")
    expect(reply_row).to_contain_text("Unread")
    expect(reply_row).to_contain_text(pat.name)
    open_chart(prov, pat)
    expect(row(prov, f"RE: {subject}")).to_be_visible()
    # The patient read the original: its status in the chart is Read.
    original = prov.get_by_role("row").filter(has=prov.get_by_role("link", name=subject, exact=True))
    expect(original.locator(".tag-read")).to_have_text("Read")
    shot(prov, "5-provider-chart")
    assert_no_phi_in_any_url(visited_urls, subject, body, answer, pat.name.split()[1], pat.email, pat.password)


# -- 2. patient -> primary provider --------------------------------------------------------


def test_patient_writes_to_primary_provider_and_reading_clears_the_badge(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None], visited_urls: list[str]
) -> None:
    dr = stack.provider()
    pat = stack.patient([dr])
    subject = f"Question about my dose {uid()}"
    body = f"Should I take it with food? {uid()}"

    prov = new_page()
    console_login(prov, stack, dr)
    expect(badge(prov)).to_have_text("0")

    patient = new_page()
    portal_login(patient, stack.url + "/portal/", pat)
    patient.get_by_role("navigation", name="Main").get_by_role("link", name="Compose").click()
    expect(patient.get_by_text(dr.name)).to_be_visible()  # the only primary provider: no choice
    patient.get_by_label("Subject").fill(subject)
    patient.get_by_label("Message").fill(body)
    shot(patient, "1-patient-compose")
    patient.get_by_role("button", name="Send").click()
    expect(patient.get_by_text("Your message was sent.")).to_be_visible()
    expect(row(patient, subject)).to_contain_text("Unread")

    expect(badge(prov)).to_have_text("1", timeout=BADGE_WAIT)
    shot(prov, "2-provider-badge")
    prov.get_by_role("link", name="WebMail inbox").click()
    expect(row(prov, subject)).to_contain_text("Unread")
    with prov.expect_response(lambda r: r.url.endswith("/mark-read") and r.request.method == "POST") as marked:
        prov.get_by_role("link", name=subject).click()
    expect(prov.get_by_text(body)).to_be_visible()
    assert marked.value.status == 200  # mark-read.js posted the page's form; the GET wrote nothing
    expect(badge(prov)).to_have_text("0")  # mark-read.js asks alerts.js to update the badge at once
    expect(prov.locator("#read-status")).to_have_text("Marked as read.")
    shot(prov, "3-provider-read")

    # Mark unread and read again from the inbox.
    prov.get_by_role("button", name="Mark unread").click()
    expect(badge(prov)).to_have_text("1")
    expect(row(prov, subject)).to_contain_text("Unread")
    row(prov, subject).get_by_role("button", name=re.compile("Mark read")).click()
    expect(badge(prov)).to_have_text("0")

    patient.get_by_role("link", name="Sent items").click()
    expect(row(patient, subject)).to_contain_text("Read")
    expect(row(patient, subject)).not_to_contain_text("Unread")

    # One click on Log out ends the portal session and the sign-in server's session.
    patient.get_by_role("button", name="Log out").click()
    expect(patient.get_by_role("heading", name="You are signed out")).to_be_visible()
    patient.goto(stack.url + "/portal/sent")
    expect(patient.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(patient.get_by_label("Password", exact=True)).to_be_visible()
    assert not any("/auth/logout" in url for url in visited_urls)
    assert_no_phi_in_any_url(visited_urls, subject, body, pat.name.split()[1], pat.password)


# -- 3. provider -> provider through a provider-contact record ------------------------------


def test_provider_contact_with_portal_access_messages_both_ways(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None], visited_urls: list[str]
) -> None:
    dr = stack.provider()
    family = f"Hopper{uid()}"
    contact_name = f"Grace {family}"
    contact_email = f"grace.{uid()}@clinic.example"
    new_password = f"Blue-river-stones-{uid()}"
    subject = f"Referral for a shared patient {uid()}"
    body = f"Could you see this patient next week? {uid()}"
    answer = f"Yes, send the records. {uid()}"

    prov = new_page()
    console_login(prov, stack, dr)
    prov.get_by_role("link", name="New provider contact").first.click()
    prov.get_by_label("First name").fill("Grace")
    prov.get_by_label("Last name").fill(family)
    prov.get_by_label("Birth date").fill("1970-12-09")
    prov.get_by_label("Phone").fill("555-0199")
    prov.get_by_label("Email").fill(contact_email)
    prov.get_by_label("Address line 1").fill("1 Navy Way")
    prov.get_by_label("City").fill("Arlington")
    prov.get_by_label("State").fill("VA")
    prov.get_by_label("Postal code").fill("22201")
    shot(prov, "1-contact-form")
    prov.get_by_role("button", name="Create record").click()
    expect(prov.get_by_text("The provider contact was created.")).to_be_visible()
    expect(prov.get_by_role("heading", name=contact_name)).to_be_visible()
    expect(prov.locator("h1 .tag")).to_have_text("Provider contact")

    with prov.expect_response(lambda r: r.url.endswith("/portal-sheet")) as info:
        prov.get_by_role("button", name="Grant portal access").click()
    sheet = info.value  # POST, then 303 to the sheet's GET (a reload re-posts nothing)
    assert sheet.status == 200 and sheet.request.method == "GET"
    assert sheet.headers["cache-control"] == "no-store"
    expect(prov.locator(".notice-warning")).to_contain_text("Shown once")
    username = prov.locator("#sheet-username").inner_text().strip()
    password = prov.locator("#sheet-password").inner_text().strip()
    portal_url = prov.locator(".credentials dd").first.inner_text().strip()
    assert username and password and portal_url.startswith(stack.url)
    assert_no_phi_in_url(prov, username, password)
    shot(prov, "2-grant-sheet")
    prov.emulate_media(media="print")
    expect(prov.locator(".site-header")).to_be_hidden()
    expect(prov.locator("#sheet-password")).to_be_visible()
    shot(prov, "2b-grant-sheet-print")
    prov.emulate_media(media="screen")
    prov.reload()  # shown once: the reload shows no password and issues none
    expect(prov.get_by_role("heading", name="This sheet was shown once")).to_be_visible()
    assert password not in prov.content()
    prov.get_by_role("link", name="Back to the chart").click()
    expect(prov.get_by_role("heading", name=contact_name)).to_be_visible()

    contact = new_page()
    contact.goto(portal_url)
    if contact.get_by_role("link", name="Sign in").count():
        contact.get_by_role("link", name="Sign in").click()
    sign_in(contact, username, password)
    # First login with a one-time password: the auth server asks for a new one.
    contact.get_by_label("One-time password").fill(password)
    contact.get_by_label("New password", exact=True).fill(new_password)
    contact.get_by_label("New password again").fill(new_password)
    shot(contact, "3-first-login-password")
    contact.get_by_role("button", name="Save and continue").click()
    expect(contact.get_by_role("heading", name="Inbox")).to_be_visible()

    # Contact -> provider
    contact.get_by_role("navigation", name="Main").get_by_role("link", name="Compose").click()
    expect(contact.get_by_text(dr.name)).to_be_visible()
    contact.get_by_label("Subject").fill(subject)
    contact.get_by_label("Message").fill(body)
    contact.get_by_role("button", name="Send").click()
    expect(contact.get_by_text("Your message was sent.")).to_be_visible()

    expect(badge(prov)).to_have_text("1", timeout=BADGE_WAIT)
    prov.get_by_role("link", name="WebMail inbox").click()
    expect(row(prov, subject)).to_contain_text(contact_name)
    prov.get_by_role("link", name=subject).click()
    expect(prov.get_by_text(body)).to_be_visible()
    prov.get_by_role("link", name="Reply").click()
    prov.get_by_label("Message").fill(answer)
    prov.get_by_role("button", name="Send reply").click()
    expect(prov.get_by_text("Your reply was sent.")).to_be_visible()

    # Provider -> contact: an email without PHI, then the reply in the contact's inbox.
    notification_link(stack, contact_email, 1, subject, answer, contact_name)
    contact.get_by_role("navigation", name="Main").get_by_role("link", name="Inbox", exact=True).click()
    expect(row(contact, f"RE: {subject}")).to_contain_text("Unread")
    contact.get_by_role("link", name=f"RE: {subject}").click()
    expect(contact.get_by_text(answer)).to_be_visible()
    expect(contact.locator("#read-status")).to_have_text("Marked as read.")
    shot(contact, "4-contact-reads-reply")
    contact.get_by_role("link", name="Back to inbox").click()
    expect(row(contact, f"RE: {subject}")).not_to_contain_text("Unread")
    assert_no_phi_in_any_url(
        visited_urls, subject, body, answer, family, contact_email, username, password, new_password
    )


# -- native provider -> provider ------------------------------------------------------------


def test_practitioner_to_practitioner_webmail(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None]
) -> None:
    dr1 = stack.provider()
    dr2 = stack.provider(given="Bea")
    subject = f"Curbside question {uid()}"
    body = f"What dose would you start with? {uid()}"

    one = new_page()
    console_login(one, stack, dr1)
    one.get_by_role("link", name="Write to a provider").first.click()
    one.get_by_label("To").select_option(label=dr2.name)
    one.get_by_label("Subject").fill(subject)
    one.get_by_label("Message").fill(body)
    one.get_by_role("button", name="Send").click()
    expect(one.get_by_text("Your message was sent.")).to_be_visible()
    expect(row(one, subject)).to_contain_text(dr2.name)

    two = new_page()
    console_login(two, stack, dr2)
    expect(badge(two)).to_have_text("1")
    two.get_by_role("link", name="Provider messages").click()
    expect(row(two, subject)).to_contain_text(dr1.name)
    expect(row(two, subject)).to_contain_text("Provider message")
    shot(two, "1-provider-messages")
    two.get_by_role("link", name=subject).click()
    expect(two.get_by_text(body)).to_be_visible()
    expect(badge(two)).to_have_text("0")
    two.get_by_role("link", name="Reply").click()
    two.get_by_label("Message").fill("Start low.")
    two.get_by_role("button", name="Send reply").click()
    expect(two.get_by_text("Your reply was sent.")).to_be_visible()

    expect(badge(one)).to_have_text("1", timeout=BADGE_WAIT)
    one.get_by_role("link", name="Provider messages").click()
    expect(row(one, f"RE: {subject}")).to_contain_text(dr2.name)
