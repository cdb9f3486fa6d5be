"""The API keys' roles: `allowed(role, method, path)` for every row of docs/api.md's table,
for every role, written out here independently of api_roles.POLICY."""

from __future__ import annotations

import pytest

from fulfillment.config import ROLES
from fulfillment.entrypoints.api_roles import PHI_READERS, allowed, may_read_phi

ALL = {"viewer", "client", "pharmacist", "operator", "admin"}
PHI = {"pharmacist", "operator", "admin"}
ORDERING = {"client", "operator", "admin"}
VERIFYING = {"pharmacist", "admin"}
OPERATING = {"operator", "admin"}
ADMIN = {"admin"}

#: (method, a path the row covers, the roles allowed): docs/api.md, Authentication.
TABLE = [
    # Reads without patient data.
    ("GET", "/orders", ALL),
    ("GET", "/orders/o-1", ALL),
    ("GET", "/sagas", ALL),
    ("GET", "/sagas/s-1", ALL),
    ("GET", "/sagas/s-1/timeline", ALL),
    ("GET", "/inventory", ALL),
    ("GET", "/inventory/ASPIRIN", ALL),
    ("GET", "/inventory/ASPIRIN/lots", ALL),
    ("GET", "/inventory/ASPIRIN/lots/L-7", ALL),
    ("GET", "/inventory/ASPIRIN/lots/L-7/orders", ALL),  # a recall
    ("GET", "/metrics", ALL),
    ("GET", "/api/dashboard/overview", ALL),
    ("GET", "/api/dashboard/orders", ALL),
    ("GET", "/api/dashboard/orders/o-1/timeline", ALL),
    ("GET", "/openapi.json", ALL),
    # Reads of patient data.
    ("GET", "/events", PHI),
    ("GET", "/orders/o-1/events", PHI),
    ("GET", "/orders/o-1/fhir", PHI),
    # Orders.
    ("POST", "/orders", ORDERING),
    ("POST", "/orders/o-1/cancel", ORDERING),
    ("POST", "/orders/o-1/verification", VERIFYING),
    # Operations.
    ("PUT", "/inventory/ASPIRIN", OPERATING),
    ("PUT", "/inventory/ASPIRIN/lots/L-7", OPERATING),
    ("POST", "/sagas/s-1/signals/approve", OPERATING),
    ("POST", "/sagas/s-1/retry", OPERATING),
    ("POST", "/sagas/s-1/compensations/release_inventory/retry", OPERATING),
    # Erasure.
    ("DELETE", "/customers/cust-1/personal-data", ADMIN),
]


def test_the_roles_are_the_five_of_the_contract() -> None:
    assert set(ROLES) == ALL
    assert PHI_READERS == PHI
    assert [r for r in ROLES if may_read_phi(r)] == ["pharmacist", "operator", "admin"]


@pytest.mark.parametrize("role", sorted(ALL))
@pytest.mark.parametrize(("method", "path", "roles"), TABLE)
def test_every_row_for_every_role(role: str, method: str, path: str, roles: set[str]) -> None:
    assert allowed(role, method, path) is (role in roles)


@pytest.mark.parametrize("role", sorted(ALL))
@pytest.mark.parametrize(("path", "roles"), [(p, r) for m, p, r in TABLE if m == "GET"])
def test_head_is_allowed_as_get_is(role: str, path: str, roles: set[str]) -> None:
    assert allowed(role, "HEAD", path) is (role in roles)


def test_methods_are_compared_without_case() -> None:
    assert allowed("viewer", "get", "/orders") is True
    assert allowed("viewer", "post", "/orders") is False


def test_ids_with_dots_and_odd_characters_are_one_segment() -> None:
    assert allowed("viewer", "GET", "/orders/o.1 with spaces@x") is True
    assert allowed("viewer", "GET", "/orders/o.1/events") is False
    assert allowed("client", "POST", "/orders/a:b/cancel") is True


@pytest.mark.parametrize("role", sorted(ALL))
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/health"),  # open: the guard never asks
        ("GET", "/nowhere"),
        ("GET", "/"),
        ("GET", "/ordersx"),
        ("GET", "/orders/"),
        ("GET", "/orders/o-1/unknown"),
        ("GET", "/orders/o-1/events/extra"),
        ("GET", "/eventsx"),
        ("GET", "/customers/cust-1/personal-data"),
        ("PATCH", "/orders"),
        ("DELETE", "/orders/o-1"),
        ("PUT", "/orders"),
        ("POST", "/inventory/ASPIRIN"),
        ("DELETE", "/inventory/ASPIRIN"),
        ("POST", "/sagas"),
        ("POST", "/sagas/s-1"),
        ("POST", "/customers/cust-1/personal-data"),
        ("POST", "/events"),
        ("OPTIONS", "/orders"),
    ],
)
def test_a_method_and_path_of_no_row_is_left_to_the_application(
    role: str, method: str, path: str
) -> None:
    assert allowed(role, method, path) is None
