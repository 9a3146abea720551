"""The TensorRT bundles' T5 stage at full size: T5-XXL (runs/full-size, fp32 safetensors, 17.7 GiB)
written block by block in a trt-* plan's precision and verified against the streamed fp32 reference
(`pixart_export/backends/tensorrt/t5_blockwise.py`), as `build --target trt-t4` runs it in its fp16 stage,
on the same prompts (the first `prepare.CALIBRATION_COUNT` calibration prompts for the ranges, the first
`prepare.HELD_OUT_COUNT` held-out prompts for the check), with each phase's wall time and peak RSS.

The whole bundle build at full size also exports, verifies and converts the XL DiT and the VAE; this
measures the T5 stage alone (the part a 24 GiB machine could not do before).

    nice -n 19 .venv/bin/python benchmarks/t5_blockwise_full.py --precision fp16 --out runs/t5-blockwise
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _feeds(tokenizer, prompts: list[str], batch: int = 2) -> list[dict]:
    from reference.text import tokenize

    out = []
    for i in range(0, len(prompts), batch):
        ids, mask = tokenize(tokenizer, prompts[i : i + batch])
        out.append({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "full-size")
    parser.add_argument("--precision", choices=["fp16", "bf16"], default="fp16")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "t5-blockwise")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "t5_blockwise_full.json")
    parser.add_argument("--keep", action="store_true", help="keep the written graph (9.5 GiB in fp16)")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from pixart_export.backends.tensorrt import t5_blockwise
    from pixart_export.backends.tensorrt.prepare import CALIBRATION_COUNT, HELD_OUT_COUNT
    from pixart_export.calibration import CALIBRATION_PROMPTS, HELD_OUT_PROMPTS, read_prompts
    from pixart_export.manifest import Precision
    from pixart_export.resources import _vm_hwm, current_rss, reset_peak
    from reference.t5_streamed import StreamedT5Encoder, fp32_bytes

    precision = Precision(args.precision)
    folder = args.model / "text_encoder"
    tokenizer = AutoTokenizer.from_pretrained(str(args.model / "tokenizer"), local_files_only=True)
    calib = _feeds(tokenizer, read_prompts(CALIBRATION_PROMPTS)[:CALIBRATION_COUNT])
    held = _feeds(tokenizer, read_prompts(HELD_OUT_PROMPTS)[:HELD_OUT_COUNT])
    streamed = StreamedT5Encoder(folder)
    width = streamed.config.d_model
    shapes = {"input_ids": ["B", 120], "attention_mask": ["B", 120], "prompt_embeds": ["B", 120, width]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"text_encoder.{precision}.onnx"
    result = {
        "model": str(folder),
        "parameters": streamed.num_parameters(),
        "fp32_gib": round(fp32_bytes(folder) / 2**30, 2),
        "precision": str(precision),
        "calibration_prompts": CALIBRATION_COUNT,
        "held_out_prompts": HELD_OUT_COUNT,
        "rss_before_gib": round(current_rss() / 2**30, 2),
    }

    def log(message: str) -> None:
        print(f"{message} (rss {current_rss() / 2**30:.2f} GiB)", flush=True)

    reset_peak()
    started = time.perf_counter()
    info = t5_blockwise.build(streamed, path, precision, calib, args.out / "pieces", shapes, log=log)
    result["build"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round((_vm_hwm() or 0) / 2**30, 2),
        "files_gib": round(sum((args.out / f).stat().st_size for f in info["files"]) / 2**30, 2),
        "kept_fp32": len(info["kept_fp32"]),
        "kept_fp32_measured": sum(why.startswith("measured") for why in info["kept_fp32"].values()),
        "casts": info["casts"],
        "max_activation": info["max_activation"],
    }
    print(json.dumps(result["build"]), flush=True)
    reset_peak()
    started = time.perf_counter()
    row, per_block = t5_blockwise.verify(streamed, path, precision, held, args.out / "pieces")
    result["verify"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round((_vm_hwm() or 0) / 2**30, 2),
        "rel_l2": row["rel_l2"],
        "max_abs": row["max_abs"],
        "tol_rel_l2": row["tol_rel_l2"],
        "ok": row["ok"],
        "per_block_rel_l2": per_block,
    }
    print(json.dumps(result["verify"]), flush=True)
    if not args.keep:
        for f in info["files"]:
            (args.out / f).unlink(missing_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
