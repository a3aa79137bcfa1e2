"""Dagster run-config classes derived from the core's option dataclasses (``core.options``).

A ``dg.Config`` that mirrors a core dataclass is built from its fields (same names, defaults
and help text, shown as descriptions in the Launchpad), so the two cannot drift apart.
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field, create_model

from al_assets.core.options import Option, given, options

T = TypeVar("T")


def config_fields(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """pydantic field definitions of dataclass ``cls`` (tuples become lists, as Dagster asks)."""
    return {opt.name: (_annotation(opt), _field(opt)) for opt in options(cls, exclude)}


def derived_config(name: str, cls: type, exclude: tuple[str, ...] = (),
                   base: type[dg.Config] = dg.Config) -> type[dg.Config]:
    """A ``dg.Config`` subclass named ``name`` with one field per field of ``cls``."""
    return create_model(name, __base__=base, __module__=base.__module__,
                        **config_fields(cls, exclude))


def dataclass_of(config: dg.Config, cls: type[T]) -> T:
    """The core dataclass ``cls`` from a run config derived from it (lists back to tuples)."""
    return cls(**given(config.model_dump(), cls))


def _annotation(opt: Option) -> Any:
    kind = list[opt.item_type] if typing.get_origin(opt.type) is tuple else opt.type
    return kind | None if opt.optional else kind


def _field(opt: Option) -> Any:
    if isinstance(opt.default, tuple):
        items = list(opt.default)
        return Field(default_factory=lambda: list(items), description=opt.help or None)
    return Field(default=opt.default, description=opt.help or None)
