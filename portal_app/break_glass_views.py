"""Break-glass access from the provider console (/portal/console/break-glass).

A provider who must treat a patient outside their care in an emergency finds them by exact
identifier and birth date and says why. The form is POSTed (CSRF): the identifier, the
birth date and the reason travel in the body of the POST and of the API's
``Patient/$break-glass`` call, never in a URL. On a match the answer is a redirect to the
patient's chart (POST-redirect-GET; the URL holds the patient id only, as charts always do)
with a banner saying until when the access lasts. The API decides everything: who may,
what matches, the grant, the audit and the alert.
"""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import DateField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length

from portal_app import auth
from portal_app.fhir_api import ApiError, FhirApi
from portal_app.mail_views import FHIR_ID, refusal
from portal_app.webmail import format_when, parameters_value

REALM = "console"
REASON_MIN, REASON_MAX = 10, 500
NO_MATCH = "No patient matches this identifier and birth date."


class BreakGlassForm(FlaskForm):
    identifier_system = StringField(
        "Identifier system",
        validators=[DataRequired("Enter the identifier's system."), Length(max=255)],
        render_kw={"autocomplete": "off"},
    )
    identifier_value = StringField(
        "Identifier",
        validators=[DataRequired("Enter the identifier."), Length(max=255)],
        render_kw={"autocomplete": "off"},
    )
    birth_date = DateField("Birth date", validators=[DataRequired("Enter the birth date.")])
    reason = TextAreaField(
        "Reason",
        validators=[
            DataRequired("Say why you need this access."),
            Length(min=REASON_MIN, max=REASON_MAX, message=f"Give {REASON_MIN} to {REASON_MAX} characters."),
        ],
        render_kw={"rows": 4, "maxlength": REASON_MAX},
    )


def _request(client: FhirApi, form: BreakGlassForm) -> Response | list[str]:
    """Ask the API; a redirect to the chart on a match, else the errors to show on the form."""
    params = {
        "identifier": f"{(form.identifier_system.data or '').strip()}|{(form.identifier_value.data or '').strip()}",
        "birthdate": form.birth_date.data.isoformat() if form.birth_date.data else "",
        "reason": (form.reason.data or "").strip(),
    }
    try:
        result = client.operation("Patient/$break-glass", params=params)
    except ApiError as exc:
        return refusal(exc)
    found = [p for p in result.get("parameter") or [] if isinstance(p, dict)]
    patient = next((p.get("resource") for p in found if p.get("name") == "patient"), None)
    pid = patient.get("id") if isinstance(patient, dict) else None
    if parameters_value(result, "match") is not True or not isinstance(pid, str) or not FHIR_ID.fullmatch(pid):
        return [NO_MATCH]
    if parameters_value(result, "inCare") is True:
        flash("This patient is in your care: no break-glass access was needed.", "info")
    else:
        until = format_when(str(parameters_value(result, "expires") or ""))
        flash(
            f"Break-glass access until {until[11:] if len(until) > 11 else until}. "
            "It is audited, and the practice's administrators and the patient's providers have been told.",
            "warning",
        )
    return redirect(url_for("console.chart", pid=pid), 303)


def break_glass() -> Response | tuple[str, int]:
    """GET shows the form; POST asks the API and redirects to the chart on a match."""
    user = auth.current_user(REALM)
    if user is None:
        raise auth.LoginRequired(REALM)
    form = BreakGlassForm()
    errors: list[str] = []
    if form.validate_on_submit():
        outcome = auth.call(REALM, _request, form)
        if isinstance(outcome, Response):
            return outcome
        errors = outcome
    status = 422 if form.is_submitted() else 200
    return render_template("console/break_glass.html", form=form, errors=errors), status


def register(bp: Blueprint) -> None:
    """Add the page to the console blueprint (its sign-in, templates and context)."""
    bp.add_url_rule("/break-glass", "break_glass", break_glass, methods=["GET", "POST"])
