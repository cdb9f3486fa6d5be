"""Erasure of a customer's personal data (`DELETE /customers/{id}/personal-data`,
`fulfillment customers forget ID`), by crypto-shredding (adapters/patient_data.py).

The order of things:

1. Every saga still running for the customer is asked to stop, with the reason
   `personal_data_erased` (a saga past its pivot, or ended, is left as it is). It
   compensates on the workers, as a cancellation does.
2. The customer's data key is deleted. From then on every patient-data field of their
   orders reads ``"[erased]"``, everywhere; the events, their versions and positions
   stay as they are, so every saga still replays. A step that needs the data after
   that (a saga not stopped in time) fails with the same reason and compensates.

Idempotent: asked again, it cancels nothing more and deletes nothing more, and answers
the same count. The customer's next order gets a new key.
"""

from __future__ import annotations

from typing import Any

from fulfillment import views
from fulfillment.adapters.patient_data import erase_customer
from fulfillment.bootstrap import App
from fulfillment.domain.saga import TooLateToCancel
from fulfillment.domain.status import FailureReason
from fulfillment.service_layer.commands import CancelSaga
from fulfillment.service_layer.saga_engine import NotFound

REASON = FailureReason.PERSONAL_DATA_ERASED.value


def forget_customer(app: App, customer_id: str, *, sender: str) -> dict[str, Any]:
    """Stop the customer's running sagas, then delete their data key (see the module);
    `{"customer_id", "erased_orders": n}`, n their orders, whose data now read erased."""
    orders = views.orders_of_customer(app, customer_id)
    for order_id in orders:
        try:
            app.bus.handle(CancelSaga(order_id, REASON, None, sender), sender=sender)
        except (TooLateToCancel, NotFound):
            continue  # ended, past its pivot, or never started: nothing to stop
    erase_customer(app.engine, app.patient_data, customer_id)
    return {"customer_id": customer_id, "erased_orders": len(orders)}
