"""The patient portal (/portal/): inbox, read, reply, compose to my primary provider, sent items.

Patients never choose an arbitrary recipient: compose offers only the primary
providers on their own Patient record, and the API enforces the same rule.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, session, url_for
from werkzeug.wrappers import Response

from portal_app import auth, lookups
from portal_app.fhir_api import FhirApi
from portal_app.forms import ActionForm, PatientComposeForm
from portal_app.mail_views import (
    FHIR_ID,
    change_read_state,
    offer_primary_providers,
    reply_page,
    search_messages,
    send,
    with_my_read_state,
)
from portal_app.webmail import new_message, summarize

REALM = "patient"
bp = Blueprint("patient", __name__)


def _me() -> tuple[auth.User, str]:
    user = auth.current_user(REALM)
    if user is None:
        raise auth.LoginRequired(REALM)
    if not user.patient:
        raise auth.WrongAccount(REALM)
    return user, f"Patient/{user.patient}"


@bp.context_processor
def _inject() -> dict[str, Any]:
    # formdata=None: the button forms only need a CSRF token, and reading the posted form
    # here would raise again while the error page of a too-large request is rendered.
    return {"realm": REALM, "user": auth.current_user(REALM), "action_form": ActionForm(formdata=None)}


# -- sign-in -------------------------------------------------------------------------------------

auth.add_sign_in_routes(bp, REALM)  # /login, /callback, /logout


@bp.get("/signed-out")
def signed_out() -> str:
    return render_template("signed_out.html")


# -- mail ----------------------------------------------------------------------------------------


@bp.get("/")
def inbox() -> Response | str:
    if auth.current_user(REALM) is None:
        timed_out = bool(session.pop("timed_out", False))
        return render_template("landing.html", timed_out=timed_out)
    _, me = _me()

    def work(client: FhirApi) -> str:
        page = search_messages(client, [("recipient", me)])
        people = lookups.names(client, (m.sender for m in page.messages))
        return render_template("patient/inbox.html", page=page, people=people)

    result: str = auth.call(REALM, work)
    return result


@bp.get("/sent")
def sent() -> str:
    _, me = _me()

    def work(client: FhirApi) -> str:
        page = search_messages(client, [("sender", me)])
        people = lookups.names(client, (r for m in page.messages for r in m.recipients))
        return render_template("patient/sent.html", page=page, people=people)

    result: str = auth.call(REALM, work)
    return result


@bp.get("/messages/<msg_id>")
def message(msg_id: str) -> str:
    _, me = _me()

    def work(client: FhirApi) -> str:
        msg = with_my_read_state(client, summarize(client.read("Communication", msg_id)), me)
        people = lookups.names(client, [msg.sender, *msg.recipients])
        return render_template("patient/message.html", msg=msg, people=people, me=me)

    result: str = auth.call(REALM, work)
    return result


@bp.post("/messages/<msg_id>/mark-read")
def mark_read(msg_id: str) -> Response:
    """The message page's "Mark as read" form (mark-read.js posts it when the page opens)."""
    _me()
    done = url_for("patient.message", msg_id=msg_id) if FHIR_ID.fullmatch(msg_id) else url_for("patient.inbox")
    return change_read_state(REALM, msg_id, "$mark-read", done)


@bp.route("/messages/<msg_id>/reply", methods=["GET", "POST"])
def reply(msg_id: str) -> Response | tuple[str, int] | str:
    _, me = _me()
    result: Response | tuple[str, int] = auth.call(
        REALM, reply_page, msg_id, me, template="patient/reply.html", done_endpoint="patient.sent", regarding=False
    )
    return result


@bp.route("/compose", methods=["GET", "POST"])
def compose() -> Response | tuple[str, int]:
    user, me = _me()

    def work(client: FhirApi) -> Response | tuple[str, int]:
        form = PatientComposeForm()
        _, choices = offer_primary_providers(client, user.patient or "", form, form.recipient)
        errors: list[str] = []
        if choices and form.validate_on_submit():
            body = new_message(me, [form.recipient.data], form.subject.data or "", form.body.data or "", me)
            errors = send(client, body)
            if not errors:
                flash("Your message was sent.", "success")
                return redirect(url_for("patient.sent"), 303)
        status = 422 if form.is_submitted() else 200
        return render_template("patient/compose.html", form=form, choices=choices, errors=errors), status

    result: Response | tuple[str, int] = auth.call(REALM, work)
    return result
