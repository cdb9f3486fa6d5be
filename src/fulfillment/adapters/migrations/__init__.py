"""Alembic migrations; run them with `fulfillment migrate` (see `adapters.migrate`)."""
