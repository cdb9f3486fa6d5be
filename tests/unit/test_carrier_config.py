"""FULFILLMENT_CARRIER, FULFILLMENT_CARRIER_URL and FULFILLMENT_CARRIER_TOKEN: read, checked,
wired by bootstrap, and the token kept out of logs (docs/carriers.md)."""

from __future__ import annotations

import io
import logging

import pytest
import structlog

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.http_carrier import HttpCarrier
from fulfillment.bootstrap import carrier_of
from fulfillment.config import Settings
from fulfillment.observability.logging import configure_logging

TOKEN = "carrier-token-7f3a9c"
SECRET = "whsec-0123456789abcdef"
HTTP = {
    "FULFILLMENT_CARRIER": "http",
    "FULFILLMENT_CARRIER_URL": "https://api.carrier.example/v2",
    "FULFILLMENT_CARRIER_TOKEN": TOKEN,
    "FULFILLMENT_CARRIER_WEBHOOK_SECRET": SECRET,
}


def test_the_simulated_carrier_is_the_default() -> None:
    settings = Settings.from_env({})
    assert (settings.carrier, settings.carrier_url, settings.carrier_token) == (
        "simulated",
        None,
        None,
    )
    assert isinstance(carrier_of(settings), SimulatedCarrier)


def test_http_reads_the_url_and_token_and_bootstrap_builds_the_http_carrier() -> None:
    settings = Settings.from_env({**HTTP, "FULFILLMENT_CARRIER": " HTTP "})
    assert settings.carrier == "http"
    assert settings.carrier_url == "https://api.carrier.example/v2"
    settings.check_pickups_confirmable()
    carrier = carrier_of(settings)
    try:
        assert isinstance(carrier, HttpCarrier)
        assert carrier.confirms_pickup_at_booking is False
    finally:
        carrier.close()


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"FULFILLMENT_CARRIER": "fedex"}, "FULFILLMENT_CARRIER must be simulated or http"),
        ({"FULFILLMENT_CARRIER_URL": ""}, "needs FULFILLMENT_CARRIER_URL"),
        ({"FULFILLMENT_CARRIER_TOKEN": " "}, "needs FULFILLMENT_CARRIER_TOKEN"),
        ({"FULFILLMENT_CARRIER_URL": "http://carrier.example"}, "must be https://"),
    ],
)
def test_bad_carrier_settings_are_refused_saying_which(changes: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error) as raised:
        Settings.from_env({**HTTP, **changes})
    assert TOKEN not in str(raised.value)


def test_the_url_and_token_are_not_needed_by_the_simulated_carrier() -> None:
    settings = Settings.from_env({"FULFILLMENT_CARRIER_URL": "not checked"})
    assert settings.carrier == "simulated"


def test_a_process_running_sagas_with_the_http_carrier_needs_the_webhook_secret() -> None:
    settings = Settings.from_env({**HTTP, "FULFILLMENT_CARRIER_WEBHOOK_SECRET": ""})
    with pytest.raises(ValueError, match="FULFILLMENT_CARRIER_WEBHOOK_SECRET"):
        settings.check_pickups_confirmable()


def test_the_token_is_a_secret_never_shown() -> None:
    settings = Settings.from_env(HTTP)
    assert TOKEN in settings.api_secrets
    assert TOKEN not in repr(settings)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging(True, "INFO", secrets=settings.api_secrets, stream=stream)
        logging.getLogger("fulfillment.test").info("calling with Bearer %s", TOKEN)
    finally:  # the logging set-up as it was
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()
    assert "calling with" in stream.getvalue()
    assert TOKEN not in stream.getvalue()
