"""reference/train/package.py: the model card is written from the run's own records, and packaging
replaces the destination with the student's model folder plus the card."""
from __future__ import annotations

import json

from reference.train import package


def fake_run(root):
    for stage, steps, cols in (("vae", 600, "loss,l1,kl"), ("teacher", 1200, "loss"), ("lcd", 300, "loss")):
        d = root / stage
        d.mkdir(parents=True)
        n = len(cols.split(","))
        rows = [f"{i}," + ",".join([str(i)] * n) for i in range(1, steps + 1)]  # loss = step: means are exact
        (d / "loss.csv").write_text(f"step,{cols}\n" + "\n".join(rows) + "\n")
        summary = {"steps": steps, "elapsed_s": 600.0, "args": {"batch_size": "32", "lr": "0.0003", "threads": "1"}}
        if stage == "teacher":
            summary["args"].update(text_encoder="trained", snr_gamma="5.0", init="pixart")
            (d / "replicas.json").write_text(json.dumps({"processes": 2, "sha256": ["a", "a"]}))
        if stage == "vae":
            summary["scaling_factor"] = 0.2937
        (d / "summary.json").write_text(json.dumps(summary))
    (root / "lcd" / "model" / "transformer").mkdir(parents=True)
    (root / "lcd" / "model" / "transformer" / "config.json").write_text("{}")
    results = root / "quality.json"
    results.write_text(json.dumps({"meta": {"captions": 36, "seeds": 4}, "results": [
        {"name": "student LCM 4", "nfe": 4, "all": 0.625, "single_all": 0.75, "pair_all": 0.5, "frechet": 3.25}]}))
    return results


def test_card_states_the_measured_figures(tmp_path):
    results = fake_run(tmp_path / "run")
    card = package.model_card(tmp_path / "run", results)
    assert "| teacher | 1200 | 32 | 0.0003 | 50.5000 | 1150.5000 | 10.0 min |" in card  # means of 1..100, 1101..1200
    assert "| student LCM 4 | 4 | 0.625 | 0.750 | 0.500 | 3.25 |" in card
    assert "1/std of latents = 0.2937" in card and "Total 0.50 h" in card  # 3 x 600 s
    assert "teacher 2 process(es) x 1 thread(s)" in card and "vae 1 process(es)" in card
    assert "min-SNR-5 loss weights, pixart initialisation" in card and "trained with the teacher" in card


def test_packaging_replaces_the_destination(tmp_path):
    results = fake_run(tmp_path / "run")
    out = tmp_path / "tiny"
    (out / "old").mkdir(parents=True)
    package.main(["--run", str(tmp_path / "run"), "--out", str(out), "--results", str(results)])
    assert (out / "transformer" / "config.json").exists() and (out / "MODEL_CARD.md").exists()
    assert not (out / "old").exists()
    assert not list(tmp_path.glob(".tiny-*"))
