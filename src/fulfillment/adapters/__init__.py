"""Adapters: SQLAlchemy tables, event store, job queue, repositories, services, carrier."""
