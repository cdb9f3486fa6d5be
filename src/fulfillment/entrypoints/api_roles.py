"""Who may do what over HTTP: THE policy of the API keys' roles (docs/api.md).

Each row of `POLICY` is (method, path, roles): a path template (`{name}` stands for one
path segment) or, for a whole subtree, a regular expression (a `re.Pattern`). `allowed`
answers for one request; the bearer-key guard (`api_errors.BearerAuth`) enforces it
before any route runs:

* True: a row for the method and path lists the role;
* False: rows for the method and path exist, none lists the role: 403, whether or not a
  route serves it yet;
* None: no row for the method and path: the application answers as without roles (404
  for an unknown path, 405 for a method no route serves). A route that serves a request
  no row covers is refused to every role but `admin` (the guard checks; a route missing
  here fails closed, and tests/unit/test_api_roles.py fails).

HEAD is allowed as GET is. The open paths (`/health`, the dashboard's static shell and
the signed carrier webhook) need no key and no role; they are not rows here.
"""

from __future__ import annotations

import re
from typing import Final

from fulfillment.config import ADMIN, ROLES

#: Open paths that authenticate their requests themselves: the carrier's webhook carries
#: an HMAC signature (entrypoints/webhook_signature.py) instead of a bearer key.
SIGNED_PATHS: Final = ("/webhooks/carrier",)

VIEWER, CLIENT, PHARMACIST, OPERATOR = "viewer", "client", "pharmacist", "operator"
assert (VIEWER, CLIENT, PHARMACIST, OPERATOR, ADMIN) == ROLES

EVERYONE: Final = frozenset(ROLES)
#: The roles that may read patient data: a prescription (patient, prescriber), an address.
PHI_READERS: Final = frozenset({PHARMACIST, OPERATOR, ADMIN})
_ORDERING: Final = frozenset({CLIENT, OPERATOR, ADMIN})
_VERIFYING: Final = frozenset({PHARMACIST, ADMIN})
_OPERATING: Final = frozenset({OPERATOR, ADMIN})
_ADMIN_ONLY: Final = frozenset({ADMIN})

#: A path under which GET reads no patient data (any depth below it).
_SUBTREE = r"(?:/.*)?"

#: THE table: (method, path template or pattern, roles allowed).
POLICY: Final[tuple[tuple[str, str | re.Pattern[str], frozenset[str]], ...]] = (
    # Reads without patient data.
    ("GET", "/orders", EVERYONE),
    ("GET", "/orders/{order_id}", EVERYONE),
    ("GET", re.compile("/sagas" + _SUBTREE), EVERYONE),
    ("GET", re.compile("/inventory" + _SUBTREE), EVERYONE),  # stock, lots, recalls
    ("GET", "/metrics", EVERYONE),
    ("GET", re.compile("/api/dashboard" + _SUBTREE), EVERYONE),  # the timeline drops PHI
    ("GET", "/openapi.json", EVERYONE),  # the API's description, no data
    # Reads of patient data.
    ("GET", "/events", PHI_READERS),
    ("GET", "/orders/{order_id}/events", PHI_READERS),
    ("GET", "/orders/{order_id}/fhir", PHI_READERS),
    # Placing and cancelling orders.
    ("POST", "/orders", _ORDERING),
    ("POST", "/orders/{order_id}/cancel", _ORDERING),
    # A pharmacist's verification of an order's prescription.
    ("POST", "/orders/{order_id}/verification", _VERIFYING),
    # Operations: stock, signals to sagas, retries (any POST under a saga).
    ("PUT", "/inventory/{sku}", _OPERATING),
    ("PUT", "/inventory/{sku}/lots/{lot}", _OPERATING),
    ("POST", re.compile(r"/sagas/[^/]+/.+"), _OPERATING),
    # Erasure of a customer's personal data.
    ("DELETE", "/customers/{customer_id}/personal-data", _ADMIN_ONLY),
)


def _pattern(path: str | re.Pattern[str]) -> re.Pattern[str]:
    if isinstance(path, re.Pattern):
        return path
    parts = re.split(r"(\{[^/{}]+\})", path)
    return re.compile(
        "".join("[^/]+" if p.startswith("{") and p.endswith("}") else re.escape(p) for p in parts)
    )


_COMPILED: Final = tuple((method, _pattern(path), roles) for method, path, roles in POLICY)


def allowed(role: str, method: str, path: str) -> bool | None:
    """May `role` send `method` to `path`? None: no row covers the method at this path."""
    method = method.upper()
    if method == "HEAD":
        method = "GET"
    verdict: bool | None = None
    for row_method, pattern, roles in _COMPILED:
        if row_method == method and pattern.fullmatch(path):
            if role in roles:
                return True
            verdict = False
    return verdict


def may_read_phi(role: str) -> bool:
    """May `role` see patient data (prescriptions, addresses)?"""
    return role in PHI_READERS
