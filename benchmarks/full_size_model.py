#!/usr/bin/env python3
"""The real model at full size, with random weights: PixArt-XL's DiT, T5-XXL, the SD VAE (no download).

What `xl_model.py` makes, except for the text encoder, which here is t5-v1_1-xxl's configuration
(24 layers, d_model 4096, d_ff 10240, 64 heads, gated GELU, vocabulary 32128: 4,762,310,656
parameters, 17.7 GiB in fp32), initialised at the scale transformers' `T5PreTrainedModel._init_weights`
uses (so activations have the magnitudes of an untrained T5 of that size, not of a trained one). It is
written the way the public PixArt folders store it: fp32 safetensors shards with a
`model.safetensors.index.json` (`--t5-dtype bf16` writes a bf16 copy instead, which the loader takes
too). The tensors are drawn and written one shard at a time, so making it needs about 2 GiB, not 18.

The tokenizer is ByT5's (bytes; no vocabulary file can be downloaded here), so token ids are < 384
of the 32128 rows: the cost of the embedding lookup is the same, the text is not T5's SentencePiece.

    .venv/bin/python benchmarks/full_size_model.py runs/full-size            # ~19 GB on disk
    .venv/bin/python benchmarks/full_size_model.py runs/t5-2l --t5-layers 2  # a narrow test copy
    .venv/bin/python benchmarks/full_size_model.py runs/full-size-1024 --size 1024 --text-encoder-from runs/full-size
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: google/t5-v1_1-xxl's encoder configuration (the one PixArt-alpha/delta use).
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": True,
    "tie_word_embeddings": False,
    "use_cache": False,
    "model_type": "t5",
    "architectures": ["T5EncoderModel"],
}
#: shard size of the written safetensors (the public folders use ~5 GB; smaller bounds our memory)
SHARD_BYTES = 2 * 2**30


def init_std(name: str, shape: tuple[int, ...], cfg: dict) -> float | None:
    """The normal std `T5PreTrainedModel._init_weights` gives tensor `name` (None: layer norm, ones)."""
    f = cfg["initializer_factor"]
    d, kv, heads, ff = cfg["d_model"], cfg["d_kv"], cfg["num_heads"], cfg["d_ff"]
    leaf = name.rsplit(".", 2)[-2]
    if "layer_norm" in name:
        return None
    if name in ("shared.weight", "encoder.embed_tokens.weight"):
        return f * 1.0
    table = {
        "q": f * (d * kv) ** -0.5,
        "k": f * d**-0.5,
        "v": f * d**-0.5,
        "o": f * (heads * kv) ** -0.5,
        "relative_attention_bias": f * d**-0.5,
        "wi_0": f * d**-0.5,
        "wi_1": f * d**-0.5,
        "wo": f * ff**-0.5,
    }
    if leaf not in table:
        raise KeyError(f"no initialisation rule for {name} {shape}")
    return table[leaf]


def t5_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of `T5EncoderModel(cfg)`'s state dict, without allocating it (meta device)."""
    import torch
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**cfg))
    # the encoder's embedding is tied to `shared`: stored once, as the public checkpoints store it
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def write_t5(out: Path, cfg: dict, dtype: str = "fp32", seed: int = 0, log=print) -> int:
    """Write a randomly initialised T5 encoder folder (config.json, shards, index); returns its parameters."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    out.mkdir(parents=True)
    shapes = t5_tensor_shapes(cfg)
    gen = torch.Generator().manual_seed(seed)
    shards: list[dict[str, tuple[int, ...]]] = [{}]
    size = 0
    for name, shape in shapes.items():
        nbytes = torch.Size(shape).numel() * torch_dtype.itemsize
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][name] = shape
        size += nbytes
    weight_map, total, params = {}, 0, 0
    for i, names in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in names.items():
            std = init_std(name, shape, cfg)
            t = torch.ones(shape) if std is None else torch.empty(shape).normal_(0.0, std, generator=gen)
            tensors[name] = t.to(torch_dtype)
            weight_map[name] = file
            params += t.numel()
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        total += (out / file).stat().st_size
        log(f"  {file}: {len(names)} tensors, {(out / file).stat().st_size / 2**30:.2f} GiB")
        del tensors
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1)
    )
    config = {**cfg, "num_decoder_layers": cfg["num_layers"], "torch_dtype": {"fp32": "float32"}.get(dtype, "bfloat16")}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return params


def make_full_size(
    out: Path,
    seed: int = 0,
    t5_layers: int | None = None,
    t5_dtype: str = "fp32",
    log=print,
    size: int = 512,
    text_encoder_from: Path | None = None,
) -> Path:
    """The full-size folder (DiT and VAE as `xl_model.make_xl`, T5 at XXL size); made once, reused.
    `size` 1024: the DiT is PixArt-XL-2-1024-MS. `text_encoder_from`: hard-link that folder's
    text_encoder/ files instead of drawing a T5 (the same 17.7 GiB are not written twice)."""
    from benchmarks.xl_model import write_tokenizer_vae_scheduler, write_xl_dit

    out = Path(out)
    if (out / "model_index.json").exists():
        log(f"{out}: exists (delete it to make it again)")
        return out
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.perf_counter()
    if text_encoder_from:
        (tmp / "text_encoder").mkdir(parents=True)
        for f in sorted((Path(text_encoder_from) / "text_encoder").iterdir()):
            (tmp / "text_encoder" / f.name).hardlink_to(f)
        log(f"text_encoder: hard links to {text_encoder_from}/text_encoder")
    else:
        cfg = dict(T5_XXL, **({"num_layers": t5_layers} if t5_layers else {}))
        log(f"text_encoder: T5 {cfg['num_layers']} layers x d_model {cfg['d_model']}, {t5_dtype}")
        params = write_t5(tmp / "text_encoder", cfg, t5_dtype, seed, log)
        log(f"  {params:,} parameters")
    log(f"transformer: PixArt-XL-2 {size} px, {write_xl_dit(tmp / 'transformer', seed, size):,} parameters")
    write_tokenizer_vae_scheduler(tmp)
    tmp.rename(out)
    log(f"wrote {out} in {time.perf_counter() - started:.0f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--t5-layers", type=int, default=None, help="fewer T5 layers (tests); default 24")
    parser.add_argument("--t5-dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, choices=(512, 1024), default=512, help="the DiT: XL-2-512 or XL-2-1024-MS")
    parser.add_argument("--text-encoder-from", type=Path, help="hard-link the T5 of this full-size folder")
    args = parser.parse_args()
    make_full_size(
        args.out, args.seed, args.t5_layers, args.t5_dtype, size=args.size, text_encoder_from=args.text_encoder_from
    )


if __name__ == "__main__":
    main()
