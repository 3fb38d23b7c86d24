"""Options defined once: every configuration field carries its flag, help, default, domain and source.

A field made with :meth:`Option.field` keeps its :class:`Option` in the dataclass field's metadata. From there:

- :func:`check` validates an instance against every field's domain. Each configuration's ``__post_init__`` calls it,
  so a bad value is refused the same way from the command line, from Python and from a stored ``config.json``, and
  before any work starts;
- :func:`leaves` walks a (nested) configuration class down to its option fields, each with its dotted path
  (``optim.lr``) — what :mod:`dfusion_bench.cli.derive` turns into Typer options, and what ``--resume`` compares;
- :func:`reference` renders the option reference in the README.

An option's *domain* is its bounds (``ge``, ``gt``, ``le``, ``lt``), its ``choices``, or a ``rule`` (a function
returning the problem with a value, or None); a float must also be finite. ``None`` is accepted where the field's
default is ``None`` (it means "derived": the model's learning rate, all prompts, ...).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

KEY = "dfusion_option"


@dataclass(frozen=True)
class Option:
    """One option: what it means, its default, where the default comes from, and which values it takes."""

    default: Any
    help: str
    flag: str | None = None
    """The command-line flag; default ``--`` + the field's name with dashes. Booleans get ``--x/--no-x`` unless
    ``flag`` names both forms (``--pg-full-batch/--pg-minibatches``)."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    rule: Callable[[Any], str | None] | None = None
    """A check beyond bounds and choices: the problem with a value (e.g. ``"must be 'suite', 'auto' or a number"``),
    or None when it is fine."""
    domain_text: str | None = None
    """How ``rule``'s domain reads in help and in the reference."""
    source: str | None = None
    """Where the default comes from (a paper, an anchor's code, a measurement here)."""
    multiple: bool = False
    """A tuple field given by repeating the flag (``--scorer a --scorer b``) rather than as a comma-separated list."""
    metavar: str | None = None
    envvar: str | None = None
    required: bool = False
    """The command line must give it (its default is None)."""

    def but(self, **changes: Any) -> Option:
        """This option with some attributes changed (another command's default, say)."""
        return dataclasses.replace(self, **changes)

    def field(self) -> Any:
        """The dataclass field of this option (its default, and the option in the field's metadata)."""
        return dataclasses.field(default=self.default, metadata={KEY: self})

    def domain(self) -> str:
        """The domain in words, e.g. ``> 0``, ``in [0, 1]``, ``one of dpo, ddpo, pg``; empty when unrestricted."""
        if self.domain_text:
            return self.domain_text
        if self.choices:
            return "one of " + ", ".join(self.choices)
        low = f"[{_num(self.ge)}" if self.ge is not None else (f"({_num(self.gt)}" if self.gt is not None else None)
        high = f"{_num(self.le)}]" if self.le is not None else (f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""

    def problem(self, value: Any, noun: str = "value") -> str | None:
        """What is wrong with ``value`` (None when it lies in the domain); ``noun`` names the option in a message
        about an unknown choice."""
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                return "must be a finite number"
            if self.choices is not None and v not in self.choices:
                return f"unknown {noun} {v!r}; use {self.domain()}"
            if isinstance(v, int | float) and not isinstance(v, bool) and not _within(self, v):
                return f"must be {self.domain()}"
        if self.rule is not None:
            return self.rule(value)
        return None


def _num(x: float) -> str:
    return f"{x:g}"


def _within(opt: Option, v: float) -> bool:
    """Whether ``v`` satisfies every bound (written so that NaN satisfies none)."""
    return (
        (opt.ge is None or v >= opt.ge)
        and (opt.gt is None or v > opt.gt)
        and (opt.le is None or v <= opt.le)
        and (opt.lt is None or v < opt.lt)
    )


def option_of(f: dataclasses.Field) -> Option | None:
    return f.metadata.get(KEY)


def flag_of(name: str, opt: Option) -> str:
    """The flag of a field: ``opt.flag``, or ``--`` + the name with dashes (the first form of a bool pair)."""
    return (opt.flag or "--" + name.replace("_", "-")).split("/")[0]


def check(obj: Any) -> list[str]:
    """Every field of ``obj`` whose value lies outside its option's domain, as ``"--flag VALUE: problem"``."""
    problems = []
    for f in dataclasses.fields(obj):
        opt = option_of(f)
        if opt is None:
            continue
        value = getattr(obj, f.name)
        if value is None and opt.default is None:
            continue
        flag = flag_of(f.name, opt)
        problem = "must be given" if value is None else opt.problem(value, flag[2:].replace("-", " "))
        if problem and problem.startswith("unknown "):  # the problem names the value itself
            problems.append(f"{flag}: {problem}")
        elif problem:
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            problems.append(f"{flag} {shown}: {problem}")
    return problems


def raise_problems(obj: Any, extra: list[str] | None = None) -> None:
    """Raise one :class:`~dfusion_bench.errors.UserError` listing :func:`check`'s problems and ``extra``."""
    problems = check(obj) + (extra or [])
    if problems:
        from dfusion_bench.errors import UserError

        raise UserError("; ".join(problems))


@dataclass(frozen=True)
class Leaf:
    """An option field reached from a configuration class: its dotted path, option and value type."""

    path: str
    name: str
    option: Option
    type: Any

    @property
    def flag(self) -> str:
        return flag_of(self.name, self.option)


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def leaves(cls: type, prefix: str = "") -> Iterator[Leaf]:
    """The option fields of ``cls`` and of its nested configuration classes, depth first, in field order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_config(tp):
            yield from leaves(tp, f"{prefix}{f.name}.")
        elif option_of(f) is not None:
            yield Leaf(f"{prefix}{f.name}", f.name, option_of(f), tp)


def base_type(tp: Any) -> Any:
    """``int`` of ``int | None``; tuples and plain types as they are."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of ``cls`` from dotted-path values (``{"optim.lr": 1e-3}``); missing paths take defaults."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_config(tp):
            inner = {k[len(f.name) + 1 :]: v for k, v in values.items() if k.startswith(f.name + ".")}
            if inner:
                kwargs[f.name] = build(tp, inner)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
    return cls(**kwargs)


def from_tree(cls: type, tree: dict[str, Any]) -> Any:
    """An instance of ``cls`` from nested dicts such as ``dataclasses.asdict`` and JSON give (lists as tuples);
    missing fields take their defaults, unknown ones raise TypeError."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in tree.items():
        tp = hints.get(key)
        if _is_config(tp) and isinstance(value, dict):
            kwargs[key] = from_tree(tp, value)
        else:
            kwargs[key] = _tuples(value)
    return cls(**kwargs)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists as tuples, so stored and fresh values compare)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def flag_forms(name: str, opt: Option) -> str:
    """The flag as Typer takes it: ``opt.flag`` as written, or for a field without one ``--name`` (a boolean:
    ``--name/--no-name``)."""
    if opt.flag:
        return opt.flag
    flag = "--" + name.replace("_", "-")
    return f"{flag}/--no-{flag[2:]}" if isinstance(opt.default, bool) else flag


def _default_text(leaf: Leaf) -> str:
    d = leaf.option.default
    if leaf.option.required:
        return "required"
    if isinstance(d, bool):
        forms = flag_forms(leaf.name, leaf.option).split("/")
        return forms[0] if d else (forms[1] if len(forms) > 1 else "off")
    if d is None:
        return "—"
    if isinstance(d, tuple):
        return ",".join(map(str, d))
    return str(d)


def reference(commands: dict[str, list[Leaf]]) -> str:
    """Markdown: one table per command, one row per option (flag, default, domain, meaning and source)."""
    out = []
    for command, rows in commands.items():
        out += [f"**`dfusion {command}`**", "", "| option | default | domain | meaning |", "|---|---|---|---|"]
        for leaf in rows:
            opt = leaf.option
            text = opt.help + (f" Source: {opt.source}." if opt.source else "")
            flag = flag_forms(leaf.name, opt)
            default = _default_text(leaf)
            default = default if default in ("required", "—") else f"`{default}`"
            out.append(f"| `{flag}` | {default} | {opt.domain()} | {text.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)
