"""How `fulfillment ... --help` names what a command takes: `SKU ON_HAND`, `--limit N`.

Typer's own help shows each value's Python type (`<str>`, `<int range> [x>=0]`, and
`<bool>` even for a flag such as `--help`) and writes a required argument `{sku}` in the
usage line. The command line's groups are `Typer`s of this module instead: their
commands show a value by its metavar (the `metavar=` given, else `N` for an option's
integer, else the parameter's name in capitals), a flag without one, and the usage as
`fulfillment inventory set [OPTIONS] SKU ON_HAND`. Ranges are said in the help texts,
in words. Each command's help ends with examples (`Examples:`, one `$ ...` a line).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import typer
from typer._click import Context, Parameter
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from fulfillment.views.common import MAX_LIMIT

F = TypeVar("F", bound=Callable[..., Any])


def limit_option(default: int) -> Any:
    """The `--limit N` option of a listing: 1 to MAX_LIMIT rows, `default` without it."""
    return typer.Option(
        default,
        "--limit",
        "-n",
        min=1,
        max=MAX_LIMIT,
        metavar="N",
        help=f"Rows to show, 1 to {MAX_LIMIT}.",
    )


def cursor_option() -> Any:
    """The `--cursor CURSOR` option of a paged listing."""
    return typer.Option(
        None, "--cursor", metavar="CURSOR", help="Where the previous page said the next starts."
    )


def metavar_of(param: TyperArgument | TyperOption) -> str:
    """The metavar given, else `N` for an option's integer, else the parameter's name in
    capitals (`on_hand` -> `ON_HAND`)."""
    if param.metavar:
        return param.metavar
    if isinstance(param, TyperOption) and param.type_descriptor.annotation is int:
        return "N"
    return (param.name or "value").upper()


class _Argument(TyperArgument):
    """An argument named by its metavar, without a type: `SKU`, `[LOT]`, `IDS...`."""

    @property
    def display_name_raw(self) -> str:
        return metavar_of(self)

    def display_type_rich(self, ctx: Context) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def _get_number_range_help_str(self) -> str | None:
        return None  # the help text says it in words


class _Option(TyperOption):
    """An option with its value's metavar (`--limit N`); a flag with none."""

    def display_type_rich(self, ctx: Context) -> str | None:
        if self.is_flag or self.count:
            return None
        return metavar_of(self) + ("..." if self.nargs != 1 else "")

    def _get_number_range_help_str(self) -> str | None:
        return None  # the help text says it in words


def _named(params: list[Parameter]) -> list[Parameter]:
    """`params`, each shown by its metavar (its class becomes this module's subclass,
    which changes how help shows it and nothing else)."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option
    return params


class HelpCommand(TyperCommand):
    """A command whose help names its values by metavar."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _named(super().get_params(ctx))


class HelpGroup(TyperGroup):
    """A group whose help names its options by metavar."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        return _named(super().get_params(ctx))


class Typer(typer.Typer):
    """`typer.Typer` whose group and commands show their help with metavars."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", HelpGroup)
        super().__init__(**kwargs)

    def command(
        self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        return super().command(name, cls=cls or HelpCommand, **kwargs)
