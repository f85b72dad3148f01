"""The portal's forms: field rules and the CSRF token (Flask-WTF), nothing else.

Validation here only gives users quick, clear feedback; the API applies the real
rules and its OperationOutcome is shown when it refuses.
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, Optional, Regexp, ValidationError

from portal_app.webmail import MAX_BODY, MAX_SUBJECT

# A plain pattern (no email_validator dependency); the API and the notifier do the real checks.
EMAIL_CHECK = Regexp(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", message="Enter a valid email address.")


def _subject() -> StringField:
    return StringField(
        "Subject",
        validators=[DataRequired("Enter a subject."), Length(max=MAX_SUBJECT)],
        render_kw={"maxlength": MAX_SUBJECT, "autocomplete": "off"},
    )


def _body() -> TextAreaField:
    return TextAreaField(
        "Message",
        validators=[DataRequired("Enter a message."), Length(max=MAX_BODY)],
        render_kw={"rows": 12, "maxlength": MAX_BODY},
    )


class ActionForm(FlaskForm):
    """A button-only form (mark read, grant access, log out): just the CSRF token."""


class PatientComposeForm(FlaskForm):
    recipient = SelectField("To", validators=[DataRequired("Choose a provider.")], choices=[])
    subject = _subject()
    body = _body()


class ReplyForm(FlaskForm):
    subject = _subject()
    body = _body()


class ConsoleComposeForm(FlaskForm):
    """A provider writes to a patient: From is one of the patient's primary providers."""

    sender = SelectField("From", validators=[DataRequired("Choose the sending provider.")], choices=[])
    subject = _subject()
    body = _body()


class ProviderComposeForm(FlaskForm):
    """A provider writes to another provider (no patient)."""

    recipient = SelectField("To", validators=[DataRequired("Choose a provider.")], choices=[])
    subject = _subject()
    body = _body()


class PatientSearchForm(FlaskForm):
    name = StringField("Name", validators=[Optional(), Length(max=100)], render_kw={"autocomplete": "off"})


def _no_future(form: FlaskForm, field: DateField) -> None:
    from datetime import date

    if field.data and field.data > date.today():
        raise ValidationError("The birth date cannot be in the future.")


class ProviderContactForm(FlaskForm):
    """The receiving provider's own record, so that they can use the portal (reference scenario 3)."""

    first_name = StringField("First name", validators=[DataRequired("Enter the first name."), Length(max=100)])
    last_name = StringField("Last name", validators=[DataRequired("Enter the last name."), Length(max=100)])
    birth_date = DateField("Birth date", validators=[DataRequired("Enter the birth date (YYYY-MM-DD)."), _no_future])
    phone = StringField(
        "Phone",
        validators=[
            DataRequired("Enter a phone number."),
            Regexp(r"^[0-9+()\-.\s]{7,25}$", message="Enter a valid phone number."),
        ],
        render_kw={"autocomplete": "off", "inputmode": "tel"},
    )
    email = StringField("Email", validators=[DataRequired("Enter an email address."), Length(max=200), EMAIL_CHECK])
    line1 = StringField("Address line 1", validators=[DataRequired("Enter the address."), Length(max=200)])
    line2 = StringField("Address line 2", validators=[Optional(), Length(max=200)])
    city = StringField("City", validators=[DataRequired("Enter the city."), Length(max=100)])
    state = StringField("State", validators=[DataRequired("Enter the state."), Length(max=50)])
    postal_code = StringField(
        "Postal code",
        validators=[
            DataRequired("Enter the postal code."),
            Regexp(r"^[A-Za-z0-9\- ]{3,12}$", message="Enter a valid postal code."),
        ],
    )
