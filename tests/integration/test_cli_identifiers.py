"""The CLI's SKUs and lot names follow the rules of the API's (entrypoints/identifiers.py):
`inventory set` and `inventory lot` store the NFC spelling and refuse look-alikes, saying
why, with exit status 2 and nothing changed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fulfillment import views
from fulfillment.bootstrap import App

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

NFD, NFC = "Ame\u0301lie", "Am\u00e9lie"


def test_inventory_set_and_lot_store_the_nfc_spelling(
    app: App, run_cli: Callable[..., str]
) -> None:
    run_cli("inventory", "set", NFD, "5")
    out = run_cli("inventory", "lot", NFD, "L\u0301-1", "7", "--expires-on", "2099-01-31")
    assert NFC in out and "\u0139-1" in out  # the lot's NFC spelling: L with acute
    level = views.get_inventory(app, NFC)
    assert level is not None and level["on_hand"] == 12
    assert sorted(lot["lot"] for lot in level["lots"]) == ["default", "\u0139-1"]
    assert views.get_inventory(app, NFD) is None


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (("set", "AMOX-500 ", "5"), "SKU must not begin or end with a space"),
        (("set", "\u202eabc", "5"), "SKU must not contain U+202E RIGHT-TO-LEFT OVERRIDE"),
        (("set", "AMOX\u200b-500", "5"), "U+200B ZERO WIDTH SPACE"),
        (("lot", "AMOX-500", "L\ufeff1", "5", "--expires-on", "2099-01-31"), "lot must not"),
    ],
)
def test_a_look_alike_sku_or_lot_is_refused_saying_why(
    app: App, run_cli: Callable[..., str], args: tuple[str, ...], why: str
) -> None:
    out = run_cli("inventory", *args, expect=2)
    assert why in " ".join(out.split())
    assert views.get_inventory(app, "AMOX-500") is None
