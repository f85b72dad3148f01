"""The FHIR core: plain Python over a SQLAlchemy session. Nothing in here imports Flask."""
