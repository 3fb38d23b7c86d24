"""Prompt-template suites: the file format and its errors, the paper conversion, and ``dfusion templates``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dfusion_bench import suite_sources
from dfusion_bench import suites as templates
from dfusion_bench.cli import templates as templates_cli
from dfusion_bench.errors import UserError
from dfusion_bench.suites import PromptEntry, Suite

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "templates" / "source" / "paper"
SHARED = REPO.parent / "shared" / "paper-templates"  # the steering side's copy beside the checkout
SHIPPED = ["paper-t1", "paper-t2", "paper-t3", "shapes-binding", "shapes-objects", "shapes-spatial"]


def _raw(index: int, part: str):
    return json.loads((PAPER / f"template{index}_{part}.json").read_text())


def _entry(prompt: str = "a cat eating a sandwich", items=("cat", "sandwich"), thresholds=(0.03, None)) -> PromptEntry:
    return PromptEntry(prompt, tuple(items), tuple(thresholds))


def _suite(train=("a cat eating a sandwich",), test=("a dog driving a car",), name: str = "mine") -> Suite:
    def entries(prompts):
        return tuple(PromptEntry(p, (p.split()[1],), (None,)) for p in prompts)

    return Suite(name=name, description="d", source="s", train=entries(train), test=entries(test))


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty templates folder that DFUSION_TEMPLATES points at."""
    monkeypatch.setenv("DFUSION_TEMPLATES", str(tmp_path))
    return tmp_path


# ------------------------------------------------------------------------------------------------------ entries


def test_entry_keeps_words_and_thresholds():
    entry = _entry()
    assert entry.items == ("cat", "sandwich")
    assert entry.thresholds == (0.03, None)
    assert entry.word_indices() == (1, 4)


@pytest.mark.parametrize(
    ("items", "thresholds", "problem"),
    [
        (("ca",), (None,), "not a word"),  # part of a word is not a word
        (("dog",), (None,), "not a word"),
        ((), (), "at least one item"),
        (("cat", "cat"), (None, None), "repeat"),
        (("cat", "sandwich"), (0.03,), "2 items but 1 thresholds"),
        (("cat",), (1.5,), "in [0, 1]"),
        (("cat",), (-0.1,), "in [0, 1]"),
        (("cat",), (True,), "in [0, 1]"),
        (("cat",), ("0.1",), "in [0, 1]"),
    ],
)
def test_entry_rejects_bad_items_and_thresholds(items, thresholds, problem):
    with pytest.raises(UserError, match=problem.replace("[", r"\[")):
        _entry(items=items, thresholds=thresholds)


def test_split_returns_train_or_test_and_rejects_other_names():
    suite = _suite()
    assert [e.prompt for e in suite.split("train")] == ["a cat eating a sandwich"]
    assert [e.prompt for e in suite.split("test")] == ["a dog driving a car"]
    with pytest.raises(UserError, match=r"^unknown split 'val'; use train or test$"):
        suite.split("val")


def test_suite_rejects_overlapping_splits_and_repeated_prompts():
    with pytest.raises(UserError, match="both train and test"):
        _suite(train=("a cat eating a sandwich",), test=("a cat eating a sandwich",))
    with pytest.raises(UserError, match="more than once"):
        _suite(train=("a cat eating a sandwich", "a cat eating a sandwich"))


# ------------------------------------------------------------------------------------------------------ files


def test_templates_dir_is_the_repository_folder_unless_the_environment_says_otherwise(monkeypatch, tmp_path):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    assert templates.templates_dir() == (REPO / "templates").resolve()
    monkeypatch.setenv("DFUSION_TEMPLATES", str(tmp_path))
    assert templates.templates_dir() == tmp_path


def test_list_suites_names_the_shipped_suites_sorted(monkeypatch):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    assert templates.list_suites() == SHIPPED


def test_list_suites_reads_the_folder_and_skips_subfolders(folder):
    templates.write_suite(_suite(name="zeta"), folder)
    templates.write_suite(_suite(name="alpha"), folder)
    (folder / "source").mkdir()
    (folder / "source" / "raw.json").write_text("[]")
    assert templates.list_suites() == ["alpha", "zeta"]


def test_missing_templates_folder_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DFUSION_TEMPLATES", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="does not exist"):
        templates.list_suites()


def test_written_suite_loads_back_by_name_and_by_path(folder):
    suite = _suite()
    path = templates.write_suite(suite, folder)
    assert path == folder / "mine.json"
    assert templates.load_suite("mine") == suite
    assert templates.load_suite(str(path)) == suite


def test_suite_file_is_indented_with_one_entry_per_line(folder):
    text = templates.dumps_suite(_suite(train=("a cat eating a sandwich", "a cow eating grass")))
    lines = text.splitlines()
    assert lines[1] == '  "name": "mine",'
    assert '    {"prompt": "a cow eating grass", "items": ["cow"], "thresholds": [null]}' in lines
    assert json.loads(text)["train"][1] == {"prompt": "a cow eating grass", "items": ["cow"], "thresholds": [None]}


def test_unknown_suite_is_one_line_naming_the_known_ones(monkeypatch):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    with pytest.raises(UserError) as info:
        templates.load_suite("paper-t4")
    message = str(info.value)
    assert "\n" not in message
    assert "unknown suite 'paper-t4'" in message
    assert all(name in message for name in SHIPPED)


def test_missing_suite_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no suite file"):
        templates.load_suite(str(tmp_path / "mine.json"))


def _good() -> dict:
    return _suite().to_json()


def _set(data: dict, path: tuple, value) -> dict:
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("test",), KeyError, "lacks key 'test'"),
        (("train", 0, "treshold"), [0.1], "unknown key 'treshold'"),
        (("train", 0, "items"), ["sandwiches"], r"train\[0\]: .*'sandwiches' is not a word"),
        (("test", 0, "thresholds"), [0.1, 0.2], r"test\[0\]: .*1 items but 2 thresholds"),
        (("train",), "a cat", "'train' must be a list"),
        (("train", 0, "items"), "cat", "'items' must be a list"),
        (("name",), 3, "'name' must be a string"),
    ],
)
def test_malformed_suite_file_is_one_line_naming_file_and_problem(tmp_path, path, value, problem):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(_set(_good(), path, value)))
    with pytest.raises(UserError, match=problem) as info:
        templates.load_suite(str(file))
    assert str(info.value).startswith(f"suite file {file}: ")
    assert "\n" not in str(info.value)


def test_invalid_json_names_file_and_line(tmp_path):
    file = tmp_path / "bad.json"
    file.write_text('{\n  "name": "bad",\n}')
    with pytest.raises(UserError, match=r"bad\.json: invalid JSON at line 3"):
        templates.load_suite(str(file))


def test_named_suite_must_carry_its_file_name(folder):
    (folder / "other.json").write_text(templates.dumps_suite(_suite(name="mine")))
    with pytest.raises(UserError, match="must equal the file name 'other'"):
        templates.load_suite("other")


def test_integer_thresholds_in_json_are_floats(tmp_path):
    file = tmp_path / "ints.json"
    file.write_text(json.dumps(_set(_good(), ("train", 0, "thresholds"), [0])))
    (entry,) = templates.load_suite(str(file)).train
    assert entry.thresholds == (0.0,) and isinstance(entry.thresholds[0], float)


# ------------------------------------------------------------------------------------------------------ paper


@pytest.mark.parametrize("index", [1, 2, 3])
def test_shipped_paper_suite_equals_a_fresh_conversion(index, monkeypatch):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    fresh = suite_sources.convert_paper_template(PAPER, index)
    assert fresh.name == f"paper-t{index}"
    assert (REPO / "templates" / f"paper-t{index}.json").read_text() == templates.dumps_suite(fresh)
    assert templates.load_suite(f"paper-t{index}") == fresh


@pytest.mark.parametrize("index", [1, 2, 3])
def test_paper_suite_keeps_every_raw_prompt_in_its_split(index):
    suite = templates.load_suite(str(REPO / "templates" / f"paper-t{index}.json"))
    for split in ("train", "test"):
        assert [e.prompt for e in suite.split(split)] == _raw(index, split)
    assert not {e.prompt for e in suite.train} & {e.prompt for e in suite.test}


@pytest.mark.parametrize("index", [1, 2, 3])
def test_paper_items_and_thresholds_are_the_raw_ones(index):
    suite = templates.load_suite(str(REPO / "templates" / f"paper-t{index}.json"))
    items, masks = _raw(index, "item"), _raw(index, "mask")
    for entry in suite.train + suite.test:
        if entry.prompt in items:
            words = entry.prompt.split(" ")
            assert entry.items == tuple(words[i] for i in items[entry.prompt])
            assert entry.word_indices() == tuple(items[entry.prompt])
            assert entry.thresholds == tuple(masks[entry.prompt])
        else:
            assert entry.items == suite_sources.rule_items(entry.prompt, index)
            assert entry.thresholds == (None,) * len(entry.items)


@pytest.mark.parametrize(("index", "derived"), [(1, 10), (2, 0), (3, 0)])
def test_only_prompts_without_raw_entries_get_auto_thresholds(index, derived):
    suite = templates.load_suite(str(REPO / "templates" / f"paper-t{index}.json"))
    auto = [e for e in suite.train + suite.test if None in e.thresholds]
    assert len(auto) == derived
    assert all(e in suite.test for e in auto)


@pytest.mark.parametrize("index", [1, 2, 3])
def test_grammar_rule_agrees_with_every_raw_item_index(index):
    items = _raw(index, "item")
    assert items
    for prompt, indices in items.items():
        words = prompt.split(" ")
        assert suite_sources.rule_items(prompt, index) == tuple(words[i] for i in indices), prompt


def test_rule_items_follow_each_templates_grammar():
    assert suite_sources.rule_items("a lion washing dishes", 1) == ("lion", "dishes")
    assert suite_sources.rule_items("a tiger riding a bike", 1) == ("tiger", "bike")
    assert suite_sources.rule_items("a black and woolen bus", 2) == ("bus",)
    assert suite_sources.rule_items("the dog on the left of the person", 3) == ("dog", "person")


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared raw paper files are not on this machine")
def test_paper_sources_are_verbatim_copies():
    names = sorted(p.name for p in SHARED.glob("*.json"))
    assert names == sorted(p.name for p in PAPER.glob("*.json"))
    for name in names:
        assert (PAPER / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_write_all_regenerates_every_shipped_suite(tmp_path):
    written = suite_sources.write_all(tmp_path)
    assert sorted(p.stem for p in written) == SHIPPED
    for path in written:
        assert path.read_text() == (REPO / "templates" / path.name).read_text(), path.name


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_list_prints_one_name_per_line(monkeypatch):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    result = CliRunner().invoke(templates_cli.app, ["list"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == SHIPPED


def test_cli_show_prints_header_and_the_chosen_split(monkeypatch):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(templates_cli.app, ["show", "paper-t1", "--split", "test"])
    assert result.exit_code == 0, result.output
    assert "D-Fusion paper template 1" in result.output
    assert "train: 40 prompts, test: 40 prompts" in result.output
    assert "a lion washing dishes" in result.output and "auto, auto" in result.output
    assert "a horse eating a sandwich" not in result.output  # a train prompt


def test_cli_show_without_split_shows_both(monkeypatch):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(templates_cli.app, ["show", "paper-t1"])
    assert result.exit_code == 0, result.output
    assert "a horse eating a sandwich" in result.output and "0.03, 0.005" in result.output
    assert "a lion washing dishes" in result.output


@pytest.fixture
def dfusion(monkeypatch: pytest.MonkeyPatch):
    """``dfusion_bench.cli.main`` with the templates group registered for this test only."""
    from dfusion_bench import cli

    monkeypatch.setattr(cli.app, "registered_groups", list(cli.app.registered_groups))
    cli.app.add_typer(templates_cli.app, name="templates")
    return cli.main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["templates", "show", "paper-t9"], "error: unknown suite 'paper-t9'; known suites: "),
        (["templates", "show", "paper-t1", "--split", "val"], "error: unknown split 'val'; use train or test"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_code_2(dfusion, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("DFUSION_TEMPLATES", raising=False)
    with pytest.raises(SystemExit) as info:
        dfusion(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert err.count("\n") == 1
