"""Options defined once: every option of train, fuse and eval is one configuration field, documented in
docs/options.md, and a value outside its domain is refused in one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from dfusion_bench.cli import app, main
from dfusion_bench.cli.derive import command_leaves
from dfusion_bench.cli.reference import commands, replaced
from dfusion_bench.options import Leaf, Option, base_type, check

ROOT = Path(__file__).resolve().parent.parent

#: Options whose values are only known to be wrong when used (a suite or model that does not exist is refused when
#: loaded, before any work; tests/test_cli.py covers those) and flags, which have no domain.
FREE = {"--template", "--model", "--clip-model", "--clip-checkpoint", "--out", "--run"}
#: Out-of-domain values of the options whose domain is a rule rather than bounds or choices.
RULE_CASES = {
    "--threshold": "1.5",
    "--fuse-layers": ",",
    "--lora-targets": ",",
    "--adam-betas": "0.9",
    "--scorer": "aesthetic",
    "--device": "gpu0",
}
BASE = {
    "train": ["train", "--method", "ddpo"],
    "fuse": ["fuse", "--template", "shapes-objects", "--split", "train"],
    "eval": ["eval", "--template", "shapes-objects", "--split", "train"],
}


def _cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _bad_values(leaf: Leaf) -> list[str]:
    """Values outside ``leaf``'s domain, derived from its bounds and choices (rules: :data:`RULE_CASES`)."""
    opt, tp = leaf.option, base_type(leaf.type)
    if leaf.flag in RULE_CASES:
        return [RULE_CASES[leaf.flag]]
    out = []
    if opt.choices:
        out.append("nope")
    for bound, bad in ((opt.ge, -1), (opt.gt, 0), (opt.le, 1), (opt.lt, 0)):
        if bound is not None:
            out.append(str(int(bound) + bad) if tp is int else str(bound + bad))
    if tp is float:
        out.append("nan")
    return out


def _cases() -> list[tuple[str, str, str]]:
    cases = []
    for command, sections in commands().items():
        for leaf in command_leaves(sections):
            if leaf.flag in FREE or isinstance(leaf.option.default, bool):
                continue
            values = _bad_values(leaf)
            assert values, f"{command} {leaf.flag}: no domain; give it bounds, choices or a rule, or list it in FREE"
            cases += [(command, leaf.flag, v) for v in values]
    return cases


@pytest.mark.parametrize(("command", "flag", "value"), _cases())
def test_every_value_outside_an_options_domain_is_refused_before_any_work(capsys, tmp_path, command, flag, value):
    out = tmp_path / "out"
    code = _cli(*BASE[command], flag, value, "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2, (flag, value, err)
    assert err.count("\n") == 1 and flag in err and "Traceback" not in err, err
    assert not out.exists()  # nothing written


def test_each_option_is_one_field_and_the_command_line_is_derived_from_them() -> None:
    """The Typer command of train, fuse and eval has exactly one option per configuration field, with the field's
    flag; no flag is defined twice."""
    click_group = typer.main.get_command(app)
    for name, sections in commands().items():
        leaves = command_leaves(sections)
        assert len({leaf.path for leaf in leaves}) == len(leaves)
        command = click_group.commands[name]
        flags = {opt for p in command.params for opt in p.opts}
        expected = {leaf.flag for leaf in leaves}
        assert {p.name for p in command.params} == {leaf.path.replace(".", "__") for leaf in leaves}, name
        assert expected <= flags, expected - flags


def test_option_reference_is_up_to_date() -> None:
    text = (ROOT / "docs/options.md").read_text()
    assert replaced(text) == text, "run: python -m dfusion_bench.cli.reference --write docs/options.md"


def test_defaults_are_written_once() -> None:
    """Each shared default is a literal in one place of the package (the option that defines it)."""
    package = "\n".join(p.read_text() for p in (ROOT / "dfusion_bench").rglob("*.py"))
    for literal in ('"ViT-H-14"', '("mid_block", "up_blocks")', '("dpo", "ddpo", "pg")'):
        assert package.count(literal) == 1, literal


def test_domains_in_words_and_checks() -> None:
    assert Option(1, "x", ge=1).domain() == ">= 1"
    assert Option(1.0, "x", gt=0, le=1).domain() == "in (0, 1]"
    assert Option("a", "x", choices=("a", "b")).domain() == "one of a, b"
    assert Option(1.0, "x", gt=0).problem(float("nan")) == "must be a finite number"
    assert Option(1.0, "x", gt=0).problem(0.0) == "must be > 0"
    assert Option(2, "x", ge=1).problem(2) is None
    from dfusion_bench.settings import SamplerConfig

    assert check(SamplerConfig()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fusion", "--mask-resolution", "7"], "no cross-attention layer runs at 7x7"),
        (["--lora-targets", "nope"], "--lora-targets: no module named 'nope'"),
        (["--fusion", "--fuse-layers", "no_such_block"], "no self-attention layer matches no_such_block"),
    ],
)
def test_options_that_depend_on_the_model_are_checked_before_anything_is_written(capsys, tmp_path, args, needle):
    out = tmp_path / "run"
    code = _cli("train", "--method", "dpo", "--prompts", "1", "--samples-per-prompt", "4", *args, "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert not out.exists()
