"""The patient portal (/portal/): inbox, read, reply, compose to my primary provider, sent items.

Patients never choose an arbitrary recipient: compose offers only the primary
providers on their own Patient record, and the API enforces the same rule.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, session, url_for
from werkzeug.wrappers import Response

from portal_app import auth, lookups
from portal_app.fhir_api import ApiError, FhirApi
from portal_app.forms import ActionForm, PatientComposeForm, ReplyForm
from portal_app.webmail import (
    CATEGORY_TOKEN,
    general_practitioners,
    new_message,
    parse_message_bundle,
    quote_original,
    reply_message,
    reply_subject,
    summarize,
)

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
    return {"realm": REALM, "user": auth.current_user(REALM), "action_form": ActionForm()}


# -- sign-in -------------------------------------------------------------------------------------


@bp.get("/login")
def login() -> Response:
    return auth.start_login(REALM)


@bp.get("/callback")
def callback() -> Response:
    return auth.finish_login(REALM)


@bp.post("/logout")
def logout() -> Response:
    return auth.logout()


@bp.get("/signed-out")
def signed_out() -> str:
    return render_template("signed_out.html")


# -- mail ----------------------------------------------------------------------------------------


def _list(client: FhirApi, params: list[tuple[str, str]]) -> Any:
    base = [("category", CATEGORY_TOKEN), ("_sort", "-sent"), ("_count", "50")]
    return parse_message_bundle(client.search("Communication", params + base))


@bp.get("/")
def inbox() -> Response | str:
    if auth.current_user(REALM) is None:
        timed_out = bool(session.pop("timed_out", False))
        return render_template("landing.html", timed_out=timed_out)
    _, me = _me()

    def work(client: FhirApi) -> str:
        page = _list(client, [("recipient", me)])
        people = lookups.names(client, (m.sender for m in page.messages))
        return render_template("patient/inbox.html", page=page, people=people)

    result: str = auth.call(REALM, work)
    return result


@bp.get("/sent")
def sent() -> str:
    _, me = _me()

    def work(client: FhirApi) -> str:
        page = _list(client, [("sender", me)])
        people = lookups.names(client, (r for m in page.messages for r in m.recipients))
        return render_template("patient/sent.html", page=page, people=people)

    result: str = auth.call(REALM, work)
    return result


@bp.get("/messages/<msg_id>")
def message(msg_id: str) -> str:
    _, me = _me()

    def work(client: FhirApi) -> str:
        comm = client.read("Communication", msg_id)
        msg = summarize(comm)
        if me in msg.recipients:
            try:
                client.operation(f"Communication/{msg.id}/$mark-read")
            except ApiError as exc:
                if exc.status == 401:
                    raise
        people = lookups.names(client, [msg.sender, *msg.recipients])
        return render_template("patient/message.html", msg=msg, people=people, me=me)

    result: str = auth.call(REALM, work)
    return result


@bp.route("/messages/<msg_id>/reply", methods=["GET", "POST"])
def reply(msg_id: str) -> Response | tuple[str, int] | str:
    _, me = _me()

    def work(client: FhirApi) -> Response | tuple[str, int] | str:
        original = client.read("Communication", msg_id)
        msg = summarize(original)
        people = lookups.names(client, [msg.sender, *msg.recipients])
        form = ReplyForm()
        if not form.is_submitted():
            form.subject.data = reply_subject(msg.subject_line)
            form.body.data = quote_original(msg, people.get(msg.sender or "", ""))
        errors: list[str] = []
        if form.validate_on_submit():
            body = reply_message(original, me, form.body.data or "", form.subject.data)
            try:
                client.create("Communication", body)
            except ApiError as exc:
                if exc.status == 401 or exc.status >= 500:
                    raise
                errors = [exc.text]
            else:
                flash("Your reply was sent.", "success")
                return redirect(url_for("patient.sent"), 303)
        status = 422 if form.is_submitted() else 200
        return render_template("patient/reply.html", form=form, msg=msg, people=people, errors=errors), status

    result: Response | tuple[str, int] = auth.call(REALM, work)
    return result


@bp.route("/compose", methods=["GET", "POST"])
def compose() -> Response | tuple[str, int]:
    user, me = _me()

    def work(client: FhirApi) -> Response | tuple[str, int]:
        patient = client.read("Patient", user.patient or "")
        lookups.remember(patient)
        providers = general_practitioners(patient)
        choices = [(ref, lookups.name(client, ref)) for ref in providers]
        form = PatientComposeForm()
        form.recipient.choices = choices
        if not form.is_submitted() and choices:
            form.recipient.data = choices[0][0]
        errors: list[str] = []
        if choices and form.validate_on_submit():
            body = new_message(me, [form.recipient.data], form.subject.data or "", form.body.data or "", me)
            try:
                client.create("Communication", body)
            except ApiError as exc:
                if exc.status == 401 or exc.status >= 500:
                    raise
                errors = [exc.text]
            else:
                flash("Your message was sent.", "success")
                return redirect(url_for("patient.sent"), 303)
        status = 422 if form.is_submitted() else 200
        return render_template("patient/compose.html", form=form, choices=choices, errors=errors), status

    result: Response | tuple[str, int] = auth.call(REALM, work)
    return result
