"""One declaration per setting: a dataclass field carries its default and its help text.

The CLI's flags (``argparse``) and Dagster's run config (``dg.Config``) are derived from such a
dataclass rather than copied from it, so a new field, a changed default or a better help line
reaches both. Plain Python: the Dagster side lives in ``orchestration/config.py``.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the one-line help the CLI and the UI show."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Option:
    """One field of an options dataclass, with its resolved type."""

    name: str
    type: Any  # int, float, str, bool or tuple[X, ...]
    optional: bool  # None is allowed
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def item_type(self) -> Any:
        """The element type of a tuple field, else the field's type."""
        return typing.get_args(self.type)[0] if typing.get_origin(self.type) is tuple else self.type


def options(cls: type, exclude: tuple[str, ...] = ()) -> list[Option]:
    """The fields of dataclass ``cls`` (annotations resolved), in declaration order."""
    hints = typing.get_type_hints(cls)
    return [_option(f, hints[f.name]) for f in fields(cls) if f.name not in exclude]


def _option(f: Field, hint: Any) -> Option:
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)
                and type(None) in args)
    base = next(a for a in args if a is not type(None)) if optional else hint
    default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return Option(f.name, base, optional, default, f.metadata.get("help", ""))


def add_options(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (),
                help_extra: dict[str, str] | None = None) -> None:
    """One flag per field, default ``None`` (= the dataclass's default, or a preset's)."""
    for opt in options(cls, exclude):
        text = f"{opt.help} (default: {_shown(opt.default)})"
        if help_extra and opt.name in help_extra:
            text = f"{text}; {help_extra[opt.name]}"
        if opt.type is bool:
            parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        elif typing.get_origin(opt.type) is tuple:
            parser.add_argument(opt.flag, nargs="+", type=opt.item_type, default=None, help=text)
        else:
            parser.add_argument(opt.flag, type=opt.type, default=None, help=text)


def given(values: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """The values that name a field of ``cls`` and are set (not None), as its keyword
    arguments: flags given on the command line (``vars(args)``), or a run config's dump."""
    names = {f.name for f in fields(cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()
            if k in names and v is not None}


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)
