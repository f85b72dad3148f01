"""Definitions taken from the FHIR R4 specification, in the project's own form (data, not code).

Derived once from ``../shared/reference/fhir-r4/`` and committed: the server never reads the
specification files at run time. ``tests/fhir/test_definitions.py`` compares each file with
its source where that folder is present.
"""
