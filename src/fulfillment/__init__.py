"""Fulfillment Saga: event-sourced order fulfillment for an online pharmacy."""

__version__ = "0.1.0"
