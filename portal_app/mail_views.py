"""What the patient portal's and the provider console's WebMail views do alike.

Both faces list messages the same way, change the read state by POST only, and send
through the API, showing a refusal on the form; only sign-in loss and outages go to the
error pages (``auth.call`` turns a 401 into a new sign-in).

Opening a message never marks it read: a GET must not write (prefetching, link scanners
and a reload would all "read" it). The message page carries a "Mark as read" form instead,
which static/mark-read.js submits in the background when the page opens; without script
the recipient presses the button.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from urllib.parse import quote

from flask import flash, jsonify, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response

from portal_app import auth, lookups
from portal_app.fhir_api import ApiError, FhirApi
from portal_app.forms import ReplyForm
from portal_app.webmail import (
    CATEGORY_TOKEN,
    MessageSummary,
    Page,
    general_practitioners,
    parse_message_bundle,
    quote_original,
    reply_message,
    reply_subject,
    summarize,
)

NOT_LINKED = "Your account is not linked to a provider, so it cannot send WebMail."
# A FHIR id (R4 "id" datatype): what the portal puts back into a URL it redirects to.
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def search_messages(client: FhirApi, params: list[tuple[str, str]]) -> Page:
    """WebMail matching ``params``, newest first (one page of 50)."""
    base = [("category", CATEGORY_TOKEN), ("_sort", "-sent"), ("_count", "50")]
    return parse_message_bundle(client.search("Communication", params + base))


def with_my_read_state(client: FhirApi, msg: MessageSummary, me: str | None) -> MessageSummary:
    """``msg`` (from a read, which carries no read state) with whether I have read it, from a
    search entry's read-state extension; unknown (None) when it cannot be had right now. Only
    asked for a message addressed to me: nobody else's read state concerns this page."""
    if not me or me not in msg.recipients:
        return msg
    try:
        page = parse_message_bundle(client.search("Communication", [("_id", msg.id)]))
    except ApiError as exc:
        if exc.status == 401:
            raise
        return msg
    found = next((m for m in page.messages if m.id == msg.id), None)
    return dataclasses.replace(msg, read_by_me=found.read_by_me) if found else msg


def change_read_state(realm: str, msg_id: str, op: str, done_url: str) -> Response:
    """POST ``$mark-read`` or ``$mark-unread`` for the signed-in user of ``realm``.

    mark-read.js asks for JSON (200, or the API's status and reason); a plain form post
    gets a flash and a 303 to ``done_url``.
    """
    as_json = request.accept_mimetypes.best == "application/json"
    try:
        if not FHIR_ID.fullmatch(msg_id):
            raise ApiError(404)  # not an id: nothing to ask the API
        auth.call(realm, lambda c: c.operation(f"Communication/{quote(msg_id, safe='')}/{op}"))
    except ApiError as exc:
        refusal(exc)  # sign-in loss and outages: the error pages
        if as_json:
            return _json(exc.status, {"error": exc.text})
        flash(exc.text, "error")
        return redirect(done_url, 303)
    if as_json:
        return _json(200, {"read": op == "$mark-read"})
    flash("Marked as read." if op == "$mark-read" else "Marked as unread.", "success")
    return redirect(done_url, 303)


def _json(status: int, body: dict[str, Any]) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def offer_primary_providers(
    client: FhirApi, patient_id: str, form: FlaskForm, field: Any
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Read the Patient and offer its primary providers in the select ``field`` of ``form`` (the
    first one chosen when the form is first shown); returns the Patient and the choices."""
    patient = client.read("Patient", patient_id)
    lookups.remember(patient)
    choices = [(ref, lookups.name(client, ref)) for ref in general_practitioners(patient)]
    field.choices = choices
    if not form.is_submitted() and choices:
        field.data = choices[0][0]
    return patient, choices


def refusal(exc: ApiError) -> list[str]:
    """An API refusal shown on the form; sign-in loss and outages go to the error pages."""
    if exc.status == 401 or exc.status >= 500:
        raise exc
    return [exc.text]


def send(client: FhirApi, body: dict[str, Any]) -> list[str]:
    """Create the Communication ``body``; the errors to show on the form ([] when it was sent)."""
    try:
        client.create("Communication", body)
    except ApiError as exc:
        return refusal(exc)
    return []


def reply_page(
    client: FhirApi, msg_id: str, me: str | None, *, template: str, done_endpoint: str, regarding: bool
) -> Response | tuple[str, int]:
    """The reply form to message ``msg_id``, prefilled on first show with "RE: subject" and the
    quoted original; once sent, a redirect to ``done_endpoint``. ``me`` is who replies (None: an
    account without a provider, which cannot send); ``regarding`` also names the patient."""
    original = client.read("Communication", msg_id)
    msg = summarize(original)
    people = lookups.names(client, [msg.sender, msg.patient if regarding else None, *msg.recipients])
    form = ReplyForm()
    if not form.is_submitted():
        form.subject.data = reply_subject(msg.subject_line)
        form.body.data = quote_original(msg, people.get(msg.sender or "", ""))
    errors: list[str] = []
    if not me:
        errors = [NOT_LINKED]
    elif form.validate_on_submit():
        errors = send(client, reply_message(original, me, form.body.data or "", form.subject.data))
        if not errors:
            flash("Your reply was sent.", "success")
            return redirect(url_for(done_endpoint), 303)
    status = 422 if form.is_submitted() else 200
    return render_template(template, form=form, msg=msg, people=people, errors=errors), status
