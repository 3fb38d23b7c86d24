"""How the shipped suites are made: the D-Fusion paper's raw template files converted, and the shapes-world suites
generated. Regenerate all of them with::

    python -m dfusion_bench.suite_sources [OUT_DIR]     # OUT_DIR defaults to the package's suites folder

The generation is deterministic; ``tests/test_templates.py`` and ``tests/test_world_suites.py`` check that the
shipped files equal a fresh generation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from dfusion_bench.errors import UserError
from dfusion_bench.suites import SUITES_DIR, PromptEntry, Suite, write_suite

PAPER_SOURCE = SUITES_DIR / "source" / "paper"

# ---------------------------------------------------------------------------------------------------------- paper

#: Word positions of the items in each paper template's grammar, used for prompts the raw item file lacks.
#: t1 "a <animal> <activity...> a <object>": the animal and the last word; t2 "a <color> and <material> <object>":
#: the object; t3 "the <obj> <relation> the <obj>": both objects.
PAPER_ITEM_RULES: dict[int, tuple[int, ...]] = {1: (1, -1), 2: (-1,), 3: (1, -1)}

_PAPER_DESCRIPTIONS = {
    1: "D-Fusion paper template 1, animal + activity ('a cat eating a sandwich'); items: the animal and the object "
    "of the activity. Test prompts hold unseen animal-activity pairs and, for 10 prompts, unseen activities.",
    2: "D-Fusion paper template 2, color + material ('a black and woolen bus'); item: the object. Test prompts hold "
    "unseen color-material-object combinations.",
    3: "D-Fusion paper template 3, spatial relation ('the dog on the left of the person'); items: both objects. "
    "Test prompts hold unseen object pairs and relations.",
}


def rule_items(prompt: str, index: int) -> tuple[str, ...]:
    """Items of a paper-template prompt by the template's grammar (:data:`PAPER_ITEM_RULES`)."""
    words = prompt.split(" ")
    return tuple(words[i] for i in PAPER_ITEM_RULES[index])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read paper file {path}: {exc}") from None


def _paper_entry(
    prompt: str, index: int, item_map: dict[str, list[int]], mask_map: dict[str, list[float]]
) -> PromptEntry:
    """Items at the raw word indices with the raw thresholds; the grammar rule and auto thresholds where absent."""
    if prompt not in item_map:
        items = rule_items(prompt, index)
        return PromptEntry(prompt, items, (None,) * len(items))
    words = prompt.split(" ")
    return PromptEntry(prompt, tuple(words[i] for i in item_map[prompt]), tuple(mask_map[prompt]))


def convert_paper_template(source_dir: Path, index: int, name: str | None = None) -> Suite:
    """Suite from the paper's ``template<index>_{train,test,item,mask}.json`` in ``source_dir``.

    ``item.json`` maps a prompt to 0-based word indices (split on spaces, no BOS) and ``mask.json`` to one threshold
    per item; prompts missing from them get their items by :data:`PAPER_ITEM_RULES` and ``null`` (auto) thresholds.
    """
    source_dir = Path(source_dir)
    raw = {part: _read_json(source_dir / f"template{index}_{part}.json") for part in ("train", "test", "item", "mask")}
    files = ", ".join(f"template{index}_{part}.json" for part in ("train", "test", "item", "mask"))
    return Suite(
        name=name or f"paper-t{index}",
        description=_PAPER_DESCRIPTIONS[index],
        source=f"Hu et al., D-Fusion (ICML 2025), raw files {files}, copied verbatim to templates/source/paper/",
        train=tuple(_paper_entry(p, index, raw["item"], raw["mask"]) for p in raw["train"]),
        test=tuple(_paper_entry(p, index, raw["item"], raw["mask"]) for p in raw["test"]),
    )


def paper_suites(source_dir: Path = PAPER_SOURCE) -> list[Suite]:
    """The three paper suites ``paper-t1``, ``paper-t2``, ``paper-t3``."""
    return [convert_paper_template(source_dir, index) for index in sorted(PAPER_ITEM_RULES)]


def write_all(folder: Path = SUITES_DIR) -> list[Path]:
    """Regenerate every shipped suite (paper and shapes world) into ``folder``."""
    from dfusion_bench.world.suites import shapes_suites

    return [write_suite(suite, folder) for suite in [*paper_suites(), *shapes_suites()]]


if __name__ == "__main__":
    for written in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else SUITES_DIR):
        print(written)
