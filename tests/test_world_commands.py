"""The world's measurement commands run end to end (on a barely trained world pipeline: numbers are not judged)."""

from __future__ import annotations

import pandas as pd
import pytest

from dfusion_bench.cli import main


def _ok(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None)


@pytest.mark.slow
def test_study_writes_its_tables(tmp_path, world_dir) -> None:
    out = tmp_path / "study"
    _ok("world", "study", "--template", "shapes-spatial", "--out", str(out), "--model", str(world_dir),
        "--prompts", "1", "--per-prompt", "8", "--variants", "paper,fixed:0.05,mask16")  # fmt: skip
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.variant) <= {"paper", "fixed:0.05", "mask16"}
    for column in ("target_beats_base", "psnr_target_base", "ssim_reference_base", "mask_area"):
        assert column in summary.columns
    assert (out / "summary.md").read_text().startswith("|")
    assert {"triples.csv", "masks.csv", "samples.csv", "run.json"} <= {p.name for p in out.iterdir()}


def test_study_refuses_a_pipeline_outside_the_world(capsys, tmp_path, tiny_dir) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["world", "study", "--template", "shapes-objects", "--out", str(tmp_path / "o"), "--model", str(tiny_dir)])
    assert exc.value.code == 2 and "not a shapes-world pipeline" in capsys.readouterr().err


def test_text_probe_edits_change_one_word_each() -> None:
    from dfusion_bench.studies.text_probe import edited_prompts

    prompt = "a big red circle above a small blue square"
    edits = dict(edited_prompts(prompt))
    assert edits["relation: opposite"] == "a big red circle below a small blue square"
    assert len(edits) == 7
    for edited in edits.values():
        changed = [(a, b) for a, b in zip(prompt.split(), edited.split(), strict=True) if a != b]
        assert len(changed) == 1
    # no relation, sizes or second colour to edit: only what the prompt says
    assert sorted(dict(edited_prompts("a red circle and a square"))) == [
        "first object: color", "first object: shape", "second object: shape"
    ]  # fmt: skip


def test_text_probe_finds_a_word_the_encoder_cannot_tell_apart(world_dir) -> None:
    import torch

    from dfusion_bench.models.choice import ModelChoice
    from dfusion_bench.studies.text_probe import edit_distances, probe_summary

    pipe = ModelChoice.check(world_dir).load(torch.device("cpu"), torch.float32)
    prompts = ["a red circle above a blue square", "a green triangle below a small cyan circle"]
    before = probe_summary(edit_distances(pipe, prompts)).set_index("edit")
    assert (before.l2_sum > 0).all()
    embeddings = pipe.text_encoder.get_input_embeddings().weight
    above, below = (pipe.tokenizer.convert_tokens_to_ids(f"{w}</w>") for w in ("above", "below"))
    with torch.no_grad():
        embeddings[below] = embeddings[above]  # the encoder can no longer tell "below" from "above"
    after = probe_summary(edit_distances(pipe, prompts)).set_index("edit")
    assert after.loc["relation: opposite", "l2_sum"] == 0.0
    assert after.loc["relation: opposite", "relative_to_color"] == 0.0
    assert (after.drop(index="relation: opposite").l2_sum > 0).all()  # every other word still moves it


def test_text_probe_command_writes_its_tables(tmp_path, world_dir) -> None:
    out = tmp_path / "probe"
    _ok("world", "text-probe", "--out", str(out), "--model", str(world_dir))
    summary = pd.read_csv(out / "probe.csv")
    assert summary.edit.iloc[0] == "relation: opposite" and summary.n_prompts.iloc[0] == 80
    assert len(pd.read_csv(out / "distances.csv")) == summary.n_prompts.sum()
    assert {"probe.md", "run.json"} <= {p.name for p in out.iterdir()}


def test_quality_per_prompt_rows_average_each_prompts_samples() -> None:
    import torch

    from dfusion_bench.evaluation import EvalResult
    from dfusion_bench.studies.quality import per_prompt_table

    table = pd.DataFrame(
        {
            "prompt_index": [1, 1, 0, 0, 0],
            "prompt": ["b", "b", "a", "a", "a"],
            "score": [1.0, 0.5, 0.0, 1.0, 0.5],
            "aligned": [True, False, False, True, False],
        }
    )
    rows = per_prompt_table(EvalResult(table, {}, torch.zeros(5, 3, 2, 2), 2), "shapes-objects", "train")
    assert rows["prompt"].tolist() == ["a", "b"]
    assert rows["n_images"].tolist() == [3, 2]
    assert rows["mean_score"].tolist() == pytest.approx([0.5, 0.75])
    assert rows["aligned_rate"].tolist() == pytest.approx([1 / 3, 0.5])
    assert set(rows["split"]) == {"train"} and set(rows["prompts"]) == {"shapes-objects"}
