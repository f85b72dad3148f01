"""The provider console (/portal/console/): WebMail inbox and alerts, patients and their chart,
writing to patients and to other providers, provider-contact records and portal access.

Every page asks the API with the provider's own token; the API's WebMail rules decide
what may be sent (it answers 422 with an OperationOutcome that is shown as is).
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.wrappers import Response

from portal_app import auth, break_glass_views, launch_api, lookups
from portal_app.fhir_api import ApiError, FhirApi, created_id
from portal_app.forms import (
    ActionForm,
    ConsoleComposeForm,
    PatientSearchForm,
    ProviderComposeForm,
    ProviderContactForm,
)
from portal_app.mail_views import (
    FHIR_ID,
    NOT_LINKED,
    change_read_state,
    offer_primary_providers,
    refusal,
    reply_page,
    search_messages,
    send,
    with_my_read_state,
)
from portal_app.webmail import (
    bundle_resources,
    format_address,
    format_name,
    general_practitioners,
    is_provider_contact,
    new_message,
    parameters_value,
    provider_contact_patient,
    summarize,
    telecom,
)

REALM = "console"
CLIENT_ID = re.compile(r"[A-Za-z0-9\-._~]{1,100}")
ORIGIN_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
CONSOLE_ROLES = frozenset({"provider", "staff", "admin"})
bp = Blueprint("console", __name__, url_prefix="/console")


def _user() -> auth.User:
    user = auth.current_user(REALM)
    if user is None:
        raise auth.LoginRequired(REALM)
    if user.role not in CONSOLE_ROLES and not user.practitioner:
        raise auth.WrongAccount(REALM)
    return user


def _unread_count() -> int | None:
    """The Alerts badge: unread WebMail for me, or None when it cannot be had right now."""
    try:
        body = auth.call(REALM, lambda c: c.operation("Communication/$unread-count", method="GET"))
    except (ApiError, auth.LoginRequired):
        return None
    value = parameters_value(body, "count")
    return value if isinstance(value, int) else None


@bp.context_processor
def _inject() -> dict[str, Any]:
    return {
        "realm": REALM,
        "user": auth.current_user(REALM),
        # formdata=None: the button forms only need a CSRF token, and reading the posted form
        # here would raise again while the error page of a too-large request is rendered.
        "action_form": ActionForm(formdata=None),
        "unread_count": _unread_count,
    }


def _safe_back(default: str) -> str:
    """Where a button form returns to: a console path only (never an open redirect)."""
    back = request.form.get("back", "")
    prefix = url_for("console.inbox")
    # isprintable(): a line break in a Location header is a 500 (and header injection).
    if back.startswith(prefix) and "//" not in back and "\\" not in back and back.isprintable():
        return back
    return default


# -- sign-in and alerts --------------------------------------------------------------------------

auth.add_sign_in_routes(bp, REALM)  # /login, /callback, /logout
break_glass_views.register(bp)  # /break-glass: emergency access to a patient outside one's care


@bp.get("/alerts.json")
def alerts_json() -> tuple[Response, int] | Response:
    """The badge count for alerts.js. Read-only: it never refreshes a token (the session is
    not saved for this endpoint, so a rotated refresh token would be lost); an expired
    token just gives no count until the next page load refreshes it."""
    if auth.current_user(REALM) is None:
        return jsonify({"error": "signed-out"}), 401
    if auth.token_expired(REALM):
        return jsonify({"count": None})
    count = _unread_count()
    if count is None and auth.current_user(REALM) is None:
        return jsonify({"error": "signed-out"}), 401
    return jsonify({"count": count})


# -- WebMail -------------------------------------------------------------------------------------


def _mail_list(template: str, params_for: Any, only_practitioners: bool = False) -> str:
    user = _user()

    def work(client: FhirApi) -> str:
        me = user.practitioner
        page = search_messages(client, params_for(me)) if me else None
        if page and only_practitioners:
            page.messages = [m for m in page.messages if m.is_from_practitioner()]
        refs: list[str | None] = []
        for m in page.messages if page else []:
            refs += [m.sender, m.patient, *m.recipients]
        people = lookups.names(client, refs)
        return render_template(template, page=page, people=people, me=me)

    result: str = auth.call(REALM, work)
    return result


@bp.get("/")
def inbox() -> str:
    return _mail_list("console/inbox.html", lambda me: [("recipient", me)])


@bp.get("/provider-messages")
def provider_messages() -> str:
    return _mail_list("console/provider_messages.html", lambda me: [("recipient", me)], only_practitioners=True)


@bp.get("/sent")
def sent() -> str:
    return _mail_list("console/sent.html", lambda me: [("sender", me)])


@bp.get("/messages/<msg_id>")
def message(msg_id: str) -> str:
    user = _user()

    def work(client: FhirApi) -> str:
        msg = with_my_read_state(client, summarize(client.read("Communication", msg_id)), user.practitioner)
        people = lookups.names(client, [msg.sender, msg.patient, *msg.recipients])
        return render_template("console/message.html", msg=msg, people=people, me=user.practitioner)

    result: str = auth.call(REALM, work)
    return result


def _mark(msg_id: str, op: str) -> Response:
    _user()
    return change_read_state(REALM, msg_id, op, _safe_back(url_for("console.inbox")))


@bp.post("/messages/<msg_id>/mark-read")
def mark_read(msg_id: str) -> Response:
    return _mark(msg_id, "$mark-read")


@bp.post("/messages/<msg_id>/mark-unread")
def mark_unread(msg_id: str) -> Response:
    return _mark(msg_id, "$mark-unread")


@bp.route("/messages/<msg_id>/reply", methods=["GET", "POST"])
def reply(msg_id: str) -> Response | tuple[str, int]:
    user = _user()
    result: Response | tuple[str, int] = auth.call(
        REALM,
        reply_page,
        msg_id,
        user.practitioner,
        template="console/reply.html",
        done_endpoint="console.inbox",
        regarding=True,
    )
    return result


@bp.route("/compose", methods=["GET", "POST"])
def compose_provider() -> Response | tuple[str, int]:
    """Provider to provider: a Communication without a patient."""
    user = _user()

    def work(client: FhirApi) -> Response | tuple[str, int]:
        me = user.practitioner
        found = bundle_resources(client.search("Practitioner", [("_count", "200")]), "Practitioner")
        choices = sorted(
            (
                (f"Practitioner/{p['id']}", format_name(p) or "Provider")
                for p in found
                if f"Practitioner/{p['id']}" != me
            ),
            key=lambda c: c[1].lower(),
        )
        form = ProviderComposeForm()
        form.recipient.choices = [("", "Choose a provider"), *choices]
        errors: list[str] = []
        if not me:
            errors = [NOT_LINKED]
        elif form.validate_on_submit():
            body = new_message(me, [form.recipient.data], form.subject.data or "", form.body.data or "")
            errors = send(client, body)
            if not errors:
                flash("Your message was sent.", "success")
                return redirect(url_for("console.sent"), 303)
        status = 422 if form.is_submitted() else 200
        return render_template("console/compose_provider.html", form=form, errors=errors), status

    result: Response | tuple[str, int] = auth.call(REALM, work)
    return result


# -- patients ------------------------------------------------------------------------------------


@bp.route("/patients", methods=["GET", "POST"])
def patients() -> str:
    """My patients (general-practitioner = me); the name filter is POSTed, never put in a URL."""
    user = _user()
    form = PatientSearchForm()

    def work(client: FhirApi) -> str:
        params: list[tuple[str, str]] = [("_count", "200")]
        if user.practitioner:
            params.append(("general-practitioner", user.practitioner))
        if form.validate_on_submit() and form.name.data:
            params.append(("name", form.name.data.strip()))
        rows = sorted(
            bundle_resources(client.search("Patient", params), "Patient"),
            key=lambda p: format_name(p).lower(),
        )
        return render_template("console/patients.html", form=form, patients=rows, format_name=format_name)

    result: str = auth.call(REALM, work)
    return result


@bp.get("/patients/<pid>")
def chart(pid: str) -> str:
    user = _user()

    def work(client: FhirApi) -> str:
        patient = client.read("Patient", pid)
        lookups.remember(patient)
        page = search_messages(client, [("subject", f"Patient/{pid}")])
        refs: list[str | None] = []
        for m in page.messages:
            refs += [m.sender, *m.recipients]
        providers = general_practitioners(patient)
        people = lookups.names(client, [*refs, *providers])
        apps, apps_error = _smart_apps(client)
        return render_template(
            "console/chart.html",
            apps=apps,
            apps_error=apps_error,
            patient=patient,
            name=format_name(patient) or "Patient",
            phone=telecom(patient, "phone"),
            email=telecom(patient, "email"),
            address=format_address(patient),
            provider_contact=is_provider_contact(patient),
            providers=providers,
            page=page,
            people=people,
            me=user.practitioner,
            portal_reset_url=url_for("console.reset_password", pid=pid),  # offered with a 409's flash
        )

    result: str = auth.call(REALM, work)
    return result


def _smart_apps(client: FhirApi) -> tuple[list[launch_api.SmartApp], str | None]:
    """The apps the chart offers to launch (SMART EHR launch), or why they cannot be listed.

    The Launch forms end in a redirect to the app, which the page's CSP ``form-action``
    must allow: the view names the apps' origins for the security headers.
    """
    try:
        apps = launch_api.apps(client)
    except ApiError as exc:
        if exc.status == 401:
            raise
        return [], "The list of apps cannot be shown right now."
    g.form_action_extra = sorted({origin for a in apps if (origin := _origin(a.launch_url))})
    return apps, None


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    # Only host[:port] characters: the origin goes into a CSP header.
    if parts.scheme not in ("http", "https") or not ORIGIN_HOST.fullmatch(parts.netloc):
        return None
    return f"{parts.scheme}://{parts.netloc}"


@bp.post("/patients/<pid>/launch")
def launch_app(pid: str) -> Response:
    """Launch a SMART app for this chart's patient: the server mints a launch bound to this
    user, sign-in, app and patient; the browser goes to the app's launch URL with it."""
    _user()
    _check_pid(pid)
    client_id = request.form.get("client_id", "")
    if not CLIENT_ID.fullmatch(client_id):
        abort(400)

    def work(client: FhirApi) -> Response:
        try:
            url = launch_api.launch(client, client_id, pid)
        except ApiError as exc:
            if exc.status == 401:  # the sign-in ended: sign in again, then back to this chart
                auth.remember_destination(REALM, url_for("console.chart", pid=pid))
                raise
            flash("The app could not be launched for this patient." if exc.status != 503 else exc.text, "error")
            return redirect(url_for("console.chart", pid=pid), 303)
        return redirect(url, 303)

    response: Response = auth.call(REALM, work)
    return response


@bp.route("/patients/<pid>/compose", methods=["GET", "POST"])
def compose_patient(pid: str) -> Response | tuple[str, int]:
    """Write to a patient; From is one of the patient's primary providers (the first by default)."""
    _user()

    def work(client: FhirApi) -> Response | tuple[str, int]:
        form = ConsoleComposeForm()
        patient, choices = offer_primary_providers(client, pid, form, form.sender)
        errors: list[str] = []
        if not choices:
            errors = ["This patient has no primary provider on record, so WebMail cannot be sent."]
        elif form.validate_on_submit():
            me = f"Patient/{pid}"
            body = new_message(form.sender.data, [me], form.subject.data or "", form.body.data or "", me)
            errors = send(client, body)
            if not errors:
                flash("Your message was sent.", "success")
                return redirect(url_for("console.chart", pid=pid), 303)
        status = 422 if form.is_submitted() else 200
        return render_template(
            "console/compose_patient.html",
            form=form,
            patient=patient,
            name=format_name(patient) or "Patient",
            errors=errors,
            can_send=bool(choices),
        ), status

    result: Response | tuple[str, int] = auth.call(REALM, work)
    return result


# -- portal access: a one-time password, shown once ---------------------------------------------
#
# The credentials travel POST -> session -> one GET: the POST calls the operation and keeps
# its answer in the server-side session (never in a URL or a cookie value), then redirects
# to the sheet, whose first GET takes them out of the session. A reload, the back button or
# a second tab get the "shown once" page: nothing is issued again and the password is gone.

SHEET_SECONDS = 600  # a sheet never fetched (closed tab) does not wait in the session longer


def _check_pid(pid: str) -> None:
    """A patient id the portal will put in a session key or a URL (the API checks the rest)."""
    if not FHIR_ID.fullmatch(pid):
        abort(404)


def _keep_sheet(pid: str, name: str, result: dict[str, Any], reset: bool) -> None:
    now = time.time()
    sheets = {k: v for k, v in _sheets().items() if now - float(v.get("t", 0)) < SHEET_SECONDS}
    sheets[pid] = {
        "t": now,
        "name": name,
        "reset": reset,
        "username": str(parameters_value(result, "username") or ""),
        "password": str(parameters_value(result, "password") or ""),
        "portal_url": str(parameters_value(result, "portalUrl") or ""),
    }
    session["portal_sheets"] = sheets


def _sheets() -> dict[str, dict[str, Any]]:
    found = session.get("portal_sheets")
    return {k: v for k, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}


def _take_sheet(pid: str) -> dict[str, Any] | None:
    """The credentials waiting for this patient's sheet, removed from the session as they are read."""
    sheets = _sheets()
    sheet = sheets.pop(pid, None)
    session["portal_sheets"] = sheets
    if sheet is None or time.time() - float(sheet.get("t", 0)) >= SHEET_SECONDS:
        return None
    return sheet


def _portal_operation(pid: str, op: str, reset: bool) -> Response:
    """Run $grant-portal-access or $reset-portal-password; on success the sheet, on a refusal
    the chart with the server's reason (a 409 names the account's state; after a grant the
    chart offers the reset with it)."""
    _user()
    _check_pid(pid)

    def work(client: FhirApi) -> Response:
        patient = client.read("Patient", pid)
        try:
            result = client.operation(f"Patient/{pid}/{op}")
        except ApiError as exc:
            for text in refusal(exc):
                flash(text, "portal-access" if exc.status == 409 and not reset else "error")
            return redirect(url_for("console.chart", pid=pid), 303)
        _keep_sheet(pid, format_name(patient) or "Patient", result, reset)
        return redirect(url_for("console.portal_sheet", pid=pid), 303)

    response: Response = auth.call(REALM, work)
    return response


@bp.post("/patients/<pid>/grant-access")
def grant_access(pid: str) -> Response:
    """Create the patient's portal account; the one-time password goes to the shown-once sheet."""
    return _portal_operation(pid, "$grant-portal-access", reset=False)


@bp.route("/patients/<pid>/reset-password", methods=["GET", "POST"])
def reset_password(pid: str) -> Response | str:
    """GET asks to confirm (a GET never changes anything); the POST replaces the password."""
    if request.method == "POST":
        return _portal_operation(pid, "$reset-portal-password", reset=True)
    _user()
    _check_pid(pid)
    patient = auth.call(REALM, lambda c: c.read("Patient", pid))
    return render_template("console/reset_confirm.html", patient=patient, name=format_name(patient) or "Patient")


@bp.get("/patients/<pid>/portal-sheet")
def portal_sheet(pid: str) -> tuple[str, int]:
    """The credentials sheet, once; afterwards (reload, back, another tab) a page that says so."""
    _user()
    _check_pid(pid)
    sheet = _take_sheet(pid)
    if sheet is None:
        return render_template("console/sheet_gone.html", pid=pid), 410
    return render_template("console/grant_sheet.html", pid=pid, **sheet), 200


@bp.route("/provider-contacts/new", methods=["GET", "POST"])
def new_provider_contact() -> Response | tuple[str, int]:
    """A Patient record for a receiving provider, with me as primary provider, tagged provider-contact."""
    user = _user()
    form = ProviderContactForm()
    errors: list[str] = []
    if not user.practitioner:
        errors = ["Your account is not linked to a provider."]
    elif form.validate_on_submit():
        body = provider_contact_patient(
            first_name=form.first_name.data or "",
            last_name=form.last_name.data or "",
            birth_date=form.birth_date.data.isoformat() if form.birth_date.data else "",
            phone=form.phone.data or "",
            email=form.email.data or "",
            lines=[form.line1.data or "", form.line2.data or ""],
            city=form.city.data or "",
            state=form.state.data or "",
            postal_code=form.postal_code.data or "",
            primary_provider=user.practitioner,
        )
        try:
            created = auth.call(REALM, lambda c: c.create("Patient", body))
        except ApiError as exc:
            errors = refusal(exc)
        else:
            pid = created_id(created)
            if pid:
                flash("The provider contact was created. You can now grant portal access.", "success")
                return redirect(url_for("console.chart", pid=pid), 303)
            errors = ["The record was created but the server did not say where."]
    status = 422 if form.is_submitted() else 200
    return render_template("console/provider_contact.html", form=form, errors=errors), status
