"""Patient-data commands (docs/security.md): `fulfillment keys generate|rotate`,
`fulfillment customers forget ID`, `fulfillment phi encrypt-existing`."""

from __future__ import annotations

import sys

import typer

from fulfillment.adapters.data_keys import DataKeys
from fulfillment.adapters.patient_data import locked
from fulfillment.adapters.phi_backfill import Progress, encrypt_existing
from fulfillment.adapters.phi_crypto import DEFAULT_MASTER_KEY_ID, CryptoError, MasterKeys
from fulfillment.entrypoints import cli_common as ui
from fulfillment.entrypoints.cli_help import Typer
from fulfillment.entrypoints.personal_data import forget_customer

keys_app = Typer(help="Master keys of patient data: generate, rotate.", no_args_is_help=True)
customers_app = Typer(help="Customers: erase their personal data.", no_args_is_help=True)
phi_app = Typer(help="Patient data at rest: seal what was written in plain text.")

#: Data keys re-wrapped per transaction by `keys rotate`.
REWRAP_BATCH = 500


@keys_app.command("generate")
def keys_generate(
    key_id: str = typer.Option(
        DEFAULT_MASTER_KEY_ID,
        "--id",
        metavar="ID",
        help="The new key's id (1-32 of A-Z a-z 0-9 _ . -); a rotation needs a new one.",
    ),
) -> None:
    """Print a new master key, `id:base64`, for FULFILLMENT_MASTER_KEY.

    To rotate: put the new key first and keep the old one after it
    (`new:...,old:...`), restart, run `fulfillment keys rotate`, then drop the old one.

    Examples:
    $ fulfillment keys generate
    $ fulfillment keys generate --id m2
    """
    try:
        typer.echo(MasterKeys.generate(key_id))
    except ValueError as exc:
        raise ui.fail(str(exc), 2) from exc


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Re-wrap every customer's data key under the current (first) master key of
    FULFILLMENT_MASTER_KEY. No event is rewritten; afterwards the older master keys
    may be removed from the setting.

    Example:
    $ FULFILLMENT_MASTER_KEY="m2:...,m1:..." fulfillment keys rotate
    """
    with ui.operator_app(catch_up=False) as app:
        masters = app.patient_data.masters
        if masters is None:
            raise ui.fail("FULFILLMENT_MASTER_KEY is not set: there is no master key to rotate to")
        total = 0
        while True:
            try:
                with app.engine.begin() as conn:
                    done = DataKeys(conn, masters).rewrap(REWRAP_BATCH)
            except CryptoError as exc:
                raise ui.fail(str(locked(exc))) from exc
            total += done
            if done < REWRAP_BATCH:
                break
    older = sorted(k for k in masters.keys if k != masters.current)
    ui.console.print(
        f"re-wrapped {total} data keys under master key {masters.current!r}"
        + (
            f"; {', '.join(repr(k) for k in older)} may now be removed from FULFILLMENT_MASTER_KEY"
            if older
            else ""
        ),
        soft_wrap=True,
    )


@customers_app.command("forget")
def customers_forget(
    customer_id: str = typer.Argument(..., metavar="CUSTOMER_ID", help="The customer."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Erase a customer's personal data: their running sagas are cancelled (reason
    `personal_data_erased`), then their data key is deleted, so the patient data of
    all their orders reads "\\[erased]" everywhere. Cannot be undone.

    Examples:
    $ fulfillment customers forget cust-42
    $ fulfillment customers forget cust-42 --yes
    """
    if not yes:
        if not sys.stdin.isatty():
            raise ui.fail("erasure cannot be undone: pass --yes to confirm", 2)
        typer.confirm(f"Erase the personal data of customer {customer_id!r} for good?", abort=True)
    with ui.operator_app(catch_up=True) as app:
        answer = forget_customer(app, customer_id, sender=ui.cli_sender())
    ui.console.print(
        f"customer {customer_id}: personal data erased ({answer['erased_orders']} orders)",
        soft_wrap=True,
    )


@phi_app.command("encrypt-existing")
def phi_encrypt_existing(
    batch: int = typer.Option(
        500, "--batch", min=1, max=10_000, metavar="N", help="Rows per transaction, 1 to 10000."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Scan the whole log again, not from where the last run stopped."
    ),
) -> None:
    """Seal the patient data written in plain text (before encryption, or while it was
    off), in place and in batches; interrupted, it goes on where it stopped.

    Examples:
    $ fulfillment phi encrypt-existing
    $ fulfillment phi encrypt-existing --batch 100 --restart
    """

    def report(progress: Progress) -> None:
        ui.errors.print(
            f"events up to position {progress.position}: {progress.events} sealed", style="dim"
        )

    with ui.operator_app(catch_up=False) as app:
        try:
            done = encrypt_existing(
                app.engine, app.patient_data, batch=batch, restart=restart, on_batch=report
            )
        except ValueError as exc:
            raise ui.fail(str(exc)) from exc
    ui.console.print(
        f"sealed the patient data of {done.events} events and {done.prescriptions} prescriptions",
        soft_wrap=True,
    )
