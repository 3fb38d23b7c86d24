"""Typer commands derived from configuration classes, as TRL derives its command line from typed configs.

Every option field of the command's configuration classes (see :mod:`dfusion_bench.options`) becomes one Typer
option with the field's flag, default and help (its domain appended); the command's handler receives the parsed
values by dotted path and the set of paths the user typed. Nothing about an option is written here: a new field in
a configuration class is a new option of every command built from that class.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import typer

from dfusion_bench.options import Leaf, base_type, flag_forms, leaves

#: Where a value came from when the user gave it (typer's vendored click has its own ParameterSource class, so the
#: source is compared by name).
_GIVEN = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}


@dataclass(frozen=True)
class Given:
    """A command's options: every value by dotted path, and the paths the user gave explicitly."""

    values: dict[str, Any]
    explicit: frozenset[str]

    def section(self, prefix: str) -> dict[str, Any]:
        """The values under ``prefix.`` with the prefix removed."""
        return {k[len(prefix) + 1 :]: v for k, v in self.values.items() if k.startswith(prefix + ".")}


def command_leaves(sections: dict[str, type]) -> list[Leaf]:
    """The leaves of every section, paths prefixed by the section's name; flags must be unique in a command."""
    out = [
        Leaf(f"{name}.{leaf.path}", leaf.name, leaf.option, leaf.type)
        for name, cls in sections.items()
        for leaf in leaves(cls)
    ]
    flags = [leaf.flag for leaf in out]
    repeated = sorted({f for f in flags if flags.count(f) > 1})
    if repeated:
        raise ValueError(f"options defined twice in one command: {repeated}")
    return out


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(base_type(tp)) is tuple


def _element_type(tp: Any) -> type:
    args = [a for a in typing.get_args(base_type(tp)) if a is not Ellipsis]
    return args[0] if args else str


def _cli_type(leaf: Leaf) -> Any:
    if _is_tuple(leaf.type):
        return list[str] | None if leaf.option.multiple else str | None
    return leaf.type


def _cli_default(leaf: Leaf) -> Any:
    d = leaf.option.default
    if isinstance(d, tuple):
        return None if leaf.option.multiple else ",".join(map(str, d))
    return d


def _help(leaf: Leaf) -> str:
    domain = leaf.option.domain()
    return leaf.option.help + (f" [{domain}]" if domain else "")


def _typer_option(leaf: Leaf) -> Any:
    opt = leaf.option
    flags = flag_forms(leaf.name, opt)
    return typer.Option(
        ... if opt.required else _cli_default(leaf),
        flags,
        help=_help(leaf),
        metavar=opt.metavar,
        envvar=opt.envvar,
        show_default=opt.default is not None and not isinstance(opt.default, bool),
    )


def parse(leaf: Leaf, raw: Any) -> Any:
    """The field's value from what Typer parsed: comma-separated or repeated values become tuples of the field's
    element type; an absent value stays None (the field's default then applies)."""
    if raw is None or not _is_tuple(leaf.type):
        return raw
    parts = list(raw) if isinstance(raw, list | tuple) else [p.strip() for p in str(raw).split(",") if p.strip()]
    element = _element_type(leaf.type)
    try:
        return tuple(element(p) for p in parts)
    except ValueError:
        from dfusion_bench.errors import UserError

        raise UserError(f"{leaf.flag} {raw}: not a comma-separated list of {element.__name__}") from None


def _param_name(leaf: Leaf) -> str:
    return leaf.path.replace(".", "__")


def derived_command(
    name: str, doc: str, sections: dict[str, type], handler: Callable[[Given], None]
) -> Callable[..., None]:
    """A function Typer registers as command ``name``: one option per leaf of ``sections``; calls ``handler``."""
    all_leaves = command_leaves(sections)

    def command(ctx: typer.Context, **kwargs: Any) -> None:
        values, explicit = {}, set()
        for leaf in all_leaves:
            key = _param_name(leaf)
            value = parse(leaf, kwargs[key])
            values[leaf.path] = leaf.option.default if value is None and _is_tuple(leaf.type) else value
            if getattr(ctx.get_parameter_source(key), "name", None) in _GIVEN:
                explicit.add(leaf.path)
        handler(Given(values, frozenset(explicit)))

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    annotations: dict[str, Any] = {"ctx": typer.Context, "return": None}
    for leaf in all_leaves:
        key = _param_name(leaf)
        annotations[key] = _cli_type(leaf)
        params.append(
            inspect.Parameter(
                key, inspect.Parameter.KEYWORD_ONLY, default=_typer_option(leaf), annotation=_cli_type(leaf)
            )
        )
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__name__ = name.replace("-", "_")
    command.__doc__ = doc
    return command
