"""reference/train/package.py: the model card is written from the run's own records (figures with their
intervals, the issue's gates stated against them), and packaging replaces the destination with the
student's model folder, the teacher's DiT and the card; `tiny-teacher` loads that teacher DiT."""

from __future__ import annotations

import json
import shutil

import pytest

from reference import loading
from reference.errors import ModelError
from reference.train import package


def _score(mean: float) -> dict:
    return {"mean": mean, "lo": mean - 0.125, "hi": mean + 0.125}


def _row(key: str, name: str, nfe: int, single: float, seen: float, held: float) -> dict:
    pair = (seen + held) / 2
    return {
        "key": key,
        "name": name,
        "nfe": nfe,
        "all": _score((single + 4 * pair) / 5),
        "single": _score(single),
        "seen pair": _score(seen),
        "held-out pair": _score(held),
        "pair": _score(pair),
        "frechet": 3.25,
    }


def fake_run(root, with_vae: bool = True):
    stages = [("teacher", 1200, "loss"), ("lcd", 300, "loss")] + ([("vae", 600, "loss,l1,kl")] if with_vae else [])
    for stage, steps, cols in stages:
        d = root / stage
        d.mkdir(parents=True)
        n = len(cols.split(","))
        rows = [f"{i}," + ",".join([str(i)] * n) for i in range(1, steps + 1)]  # loss = step: means are exact
        (d / "loss.csv").write_text(f"step,{cols}\n" + "\n".join(rows) + "\n")
        summary = {"steps": steps, "elapsed_s": 600.0, "args": {"batch_size": "32", "lr": "0.0003", "threads": "1"}}
        if stage == "teacher":
            summary["args"].update(
                text_encoder="trained",
                snr_gamma="5.0",
                init="pixart",
                num_images="0",
                window="16",
                chunk="512",
                refresh="32",
            )
            summary["scenes_rendered"] = 12288
            (d / "replicas.json").write_text(json.dumps({"processes": 2, "sha256": ["a", "a"]}))
        if stage == "vae":
            summary["scaling_factor"] = 0.2937
        (d / "summary.json").write_text(json.dumps(summary))
    for stage in ("lcd", "teacher"):
        (root / stage / "model" / "transformer").mkdir(parents=True)
        (root / stage / "model" / "transformer" / "config.json").write_text(json.dumps({"who": stage}))
    results = root / "quality.json"
    results.write_text(
        json.dumps(
            {
                "meta": {"captions": 60, "seeds": 16},
                "results": [
                    _row("t25", "teacher DDIM 25 (CFG 5.5)", 50, 1.0, 0.875, 0.5),
                    _row("t4", "teacher DDIM 4 (CFG 5.5)", 8, 0.5, 0.25, 0.125),
                    _row("s4", "student LCM 4", 4, 1.0, 0.75, 0.5),
                ],
            }
        )
    )
    return results


def test_card_states_the_measured_figures_and_gates(tmp_path):
    results = fake_run(tmp_path / "run")
    card = package.model_card(tmp_path / "run", results)
    # loss means of steps 1..100 and 1101..1200
    assert "| teacher | 1200 | 32 | 0.0003 | 50.5000 | 1150.5000 | 10.0 min | 2 |" in card
    assert "| student LCM 4 | 4 | 0.700 [0.575, 0.825] | 1.000 [0.875, 1.125] | 0.750 [0.625, 0.875] |" in card
    assert "1/std of latents = 0.2937" in card and "Total 0.50 h" in card  # 3 x 600 s
    assert "min-SNR-5 loss weights, pixart initialisation" in card and "trained with the teacher" in card
    assert "a sliding window of 16 x 512 = 8192 scenes" in card and "12288 scenes rendered" in card
    assert "- teacher DDIM 25 seen pairs >= 0.80 (0.875 [0.750, 1.000]): met" in card
    assert "- student LCM 4 within 0.05 of teacher DDIM 25 on pairs (0.625 vs 0.688): NOT met" in card
    assert "ControlNet-Transformer trained on the teacher" in card


def test_card_of_a_fine_tuned_run_says_where_each_stage_started(tmp_path):
    """Issue #24's run: the teacher fine-tuned from another model on a set with free layouts, the student
    started from the shipped one: the card says so instead of 'pixart initialisation'."""
    results = fake_run(tmp_path / "run", with_vae=False)
    for stage, extra in (
        ("teacher", {"init_from": "runs/free/teacher-phase1/model", "num_images": "12288", "free_layout": "0.5"}),
        ("lcd", {"init_student": "tiny"}),
    ):
        path = tmp_path / "run" / stage / "summary.json"
        summary = json.loads(path.read_text())
        summary["args"].update(extra)
        path.write_text(json.dumps(summary))
    card = package.model_card(tmp_path / "run", results)
    assert "fine-tuned from `runs/free/teacher-phase1/model`" in card and "pixart initialisation" not in card
    assert "a fixed 12288 scenes of data set seed 0, 50% of them free-layout scenes" in card
    assert "LCD from the teacher, the student started from `tiny`" in card


def test_card_without_a_vae_stage_says_the_vae_was_reused(tmp_path):
    results = fake_run(tmp_path / "run", with_vae=False)
    card = package.model_card(tmp_path / "run", results)
    assert "previously shipped tiny VAE, reused" in card and "Total 0.33 h" in card


def test_packaging_replaces_the_destination_and_ships_the_teacher(tmp_path):
    results = fake_run(tmp_path / "run")
    out = tmp_path / "tiny"
    (out / "old").mkdir(parents=True)
    package.main(["--run", str(tmp_path / "run"), "--out", str(out), "--results", str(results)])
    assert json.loads((out / "transformer" / "config.json").read_text()) == {"who": "lcd"}
    assert json.loads((out / "teacher" / "transformer" / "config.json").read_text()) == {"who": "teacher"}
    assert (out / "MODEL_CARD.md").exists() and not (out / "old").exists()
    assert not list(tmp_path.glob(".tiny-*"))


def test_tiny_teacher_loads_the_teacher_dit_and_ddim_picks_it(tmp_path, monkeypatch):
    missing = tmp_path / "none" / "transformer"
    monkeypatch.setattr(loading, "TINY_TEACHER_DIT", missing)
    assert loading.model_for_sampler("tiny", "ddim") == "tiny"  # no teacher shipped: the student
    with pytest.raises(ModelError, match="tiny teacher is not shipped"):
        loading.load_model("tiny-teacher")
    teacher = tmp_path / "teacher" / "transformer"
    shutil.copytree(loading.TINY_DIR / "transformer", teacher)
    monkeypatch.setattr(loading, "TINY_TEACHER_DIT", teacher)
    assert loading.model_for_sampler("tiny", "ddim") == "tiny-teacher"
    assert loading.model_for_sampler("tiny", "lcm") == "tiny"
    assert loading.model_for_sampler("other", "ddim") == "other"
    model = loading.load_model("tiny-teacher")
    assert model.source == loading.TINY_DIR and model.dit.null_caption is not None
