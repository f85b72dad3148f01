"""F3 in Chromium: a provider sets up TOTP at the first sign-in and signs in with it later.

Everything goes through the real pages of the running stack (PostgreSQL, gunicorn-like live
server): the console sends the provider to the login page, the password leads to the set-up
page (QR code drawn inline, the key in text for manual entry), a code from the key confirms
it, the recovery codes are shown once, and the console opens. A second sign-in asks for the
authenticator code and refuses a replayed one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests import totp
from tests.browser.conftest import Stack
from tests.browser.test_webmail_flows import sign_in

pytestmark = pytest.mark.browser


def test_F3_provider_enrols_and_signs_in_with_totp_in_the_browser(
    stack: Stack, new_page: Callable[[], Page], shot: Callable[[Page, str], None], visited_urls: list[str]
) -> None:
    dr = stack.provider(enrol_mfa=False)
    page = new_page()
    page.goto(stack.url + "/portal/console/")
    sign_in(page, dr.username, dr.password)

    expect(page.get_by_role("heading", name="Set up two-step sign-in")).to_be_visible()
    expect(page.locator(".qr svg")).to_be_visible()
    secret = page.locator("#mfa-secret").inner_text().replace(" ", "")
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)
    shot(page, "enrol")
    confirmation = totp.enrol_code(secret, dr.username)
    page.get_by_label("Code from the app").fill(confirmation)
    page.get_by_role("button", name="Confirm").click()

    expect(page.get_by_role("heading", name="Your recovery codes")).to_be_visible()
    codes = [c.strip() for c in page.locator("#recovery-codes code").all_inner_texts()]
    assert len(codes) == 10
    shot(page, "recovery-codes")
    page.get_by_role("link", name=re.compile("continue")).click()
    expect(page.get_by_role("heading", name="WebMail inbox")).to_be_visible()
    # The secret never travelled in a URL (the QR code is drawn in the page, not fetched).
    assert not any(secret in url or "otpauth" in url for url in visited_urls)

    # Later, in a new browser: password, then the authenticator code.
    again = new_page()
    again.goto(stack.url + "/portal/console/")
    expect(again.get_by_role("heading", name="Sign in")).to_be_visible()
    again.get_by_label("Username").fill(dr.username)
    again.get_by_label("Password", exact=True).fill(dr.password)
    again.get_by_role("button", name="Sign in").click()
    expect(again.get_by_role("heading", name="Two-step sign-in")).to_be_visible()
    # The code that confirmed the set-up was used once: replayed, it is refused.
    again.get_by_label("Code").fill(confirmation)
    again.get_by_role("button", name="Continue").click()
    expect(again.get_by_role("alert")).to_contain_text("used already")
    again.get_by_label("Code").fill(totp.code_for(dr.username))
    again.get_by_role("button", name="Continue").click()
    expect(again.get_by_role("heading", name="WebMail inbox")).to_be_visible()
    shot(again, "signed-in")
