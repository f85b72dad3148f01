"""The thin Flask adapter over the FHIR core."""
