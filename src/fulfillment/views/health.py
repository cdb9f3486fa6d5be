"""Is the service able to answer: the database (`GET /health`) and the projections' lag."""

from __future__ import annotations

from sqlalchemy import text

from fulfillment.adapters.db import read_connection
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App


class NotReady(Exception):
    """The server waits for its database, or migrates it (`App.not_ready` says which)."""


def check_database(app: App) -> None:
    """Returns when the database answers a query; raises (SQLAlchemy errors) otherwise,
    and NotReady while the server waits for its database or migrates it."""
    if app.not_ready is not None:
        raise NotReady(app.not_ready)
    with read_connection(app.engine) as conn:
        conn.execute(text("SELECT 1"))


def projection_status(app: App) -> dict[str, dict[str, int]]:
    """Per projection: `checkpoint`, `head`, `lag` (head minus checkpoint), `behind` (events)."""
    projector = Projector(app.engine, app.mapper)
    return {projector.name: projector.lag().as_dict()}
