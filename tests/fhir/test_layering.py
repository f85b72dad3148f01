"""The FHIR core knows no web framework, and the portal knows no storage."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "fhirserver.core.repository",
    "fhirserver.core.router",
    "fhirserver.core.access",
    "fhirserver.search.query",
    "fhirserver.webmail.operations",
    "fhirserver.rules",
    "notifier.tasks",
]


def _loaded_after_import(modules: list[str]) -> set[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_fhir_core_imports_no_web_framework():
    loaded = _loaded_after_import(CORE)
    assert not loaded & {"flask", "flask_sqlalchemy", "werkzeug", "portal_app"}, loaded


def test_core_rules_are_registered_whatever_is_imported_first():
    # The rules and operations are registered on first use of the repository, so every entry
    # point (web, worker, CLI) gets them; importing the app first must not trip an import cycle.
    for first in ("fhirserver.app", "fhirserver.wsgi", "fhirserver.webmail.rules", "fhirserver.core.interactions"):
        _loaded_after_import([first])
