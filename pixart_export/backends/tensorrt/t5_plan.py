"""The text encoder's precision plan per TensorRT target, with a memory estimate for PixArt's real
T5-XXL encoder, computed from parameter counts.

- fp16 targets (trt-t4, trt-v100: 16 GB, no bf16): fp16 with only the overflow layers fp32: T5 v1.1's
  feed-forward output projection `wo` and the residual adds (`fp16.KNOWN_OVERFLOW`; transformers keeps
  `wo` fp32 for the same reason) plus whatever the build measures above the fp16-safe bound on the
  calibration prompts. fp32 as a whole cannot be the fallback there: T5-XXL's encoder alone is ~17.7 GiB
  in fp32 (`t5_memory`), more than the card.
- bf16 targets (trt-a100, trt-h100): bf16 everywhere but the normalisations (`bf16.py`; T5 was trained
  in bf16 and bf16 has fp32's range, so no overflow islands), verified by a cast simulation.

The estimate counts weights by the precision they are stored in (a weight of a layer kept fp32 is fp32
in the engine: TensorRT folds a Cast of a constant), the XL DiT and the VAE decoder in fp16, and a fixed
allowance for activations, workspace and the CUDA context (`ACTIVATION_ALLOWANCE_GIB`: an assumption
stated with its reasons, not a measurement; no GPU has run these engines), and calls a plan fitting when
it stays under `FIT_SHARE` of the card. "Released first" is the peak when the text encoder's engine is
released before the DiT's is loaded (one prompt encoding per image): on a 16 GB card T5-XXL's fp16 plan
fits only that way (all loaded: 15.0 GiB estimated on a 15.0 GiB T4). That is what `--low-memory` does
(`runtime.load(..., low_memory=True)`: the pipeline calls `TrtRunner.release`, which destroys the text
encoder's context and engine before the denoiser's engines are deserialized; tested on the fake GPU), so
the estimate says which mode a card needs (`run_with`, issue #23).
"""

from __future__ import annotations

from ...manifest import Precision

#: PixArt-alpha/delta's text encoder: the encoder of google/t5-v1_1-xxl (config.json of t5_ckpts).
T5_XXL = {
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "vocab_size": 32128,
    "relative_attention_num_buckets": 32,
}
#: Parameters of the XL DiT (PixArt-XL-2, `DiTConfig()`; benchmarks/results/export_xl.md) and of the
#: VAE decoder (Stable Diffusion's AutoencoderKL, `benchmarks/xl_model.SD_VAE`); tests count both.
DIT_XL_PARAMS = 611_347_616
VAE_DECODER_PARAMS = 49_490_199
#: Activations, TensorRT workspace and the CUDA context at the profile's largest case (1024 px): the
#: DiT's attention scores if TensorRT does not fuse attention are B x 16 x 4096 x 4096 fp16 = 0.5 GiB per
#: image (1 GiB at the T4's batch 2), the VAE decoder at 1024 px holds a few 128 x 1024 x 1024 fp16
#: maps (~1 GiB), and the context ~0.5 GiB; rounded up to 3 GiB.
ACTIVATION_ALLOWANCE_GIB = 3.0
#: A plan "fits" when its estimate stays below this share of the card: the allowance is an estimate, and
#: allocator fragmentation and other processes take their part.
FIT_SHARE = 0.9
GIB = 2**30
BYTES = {Precision.FP32: 4, Precision.FP16: 2, Precision.BF16: 2}


def t5_encoder_parameters(cfg: dict = T5_XXL) -> dict[str, int]:
    """Parameter count of a T5 v1.1 encoder (gated-GELU feed-forward, no biases) by weight group."""
    d, f, layers = cfg["d_model"], cfg["d_ff"], cfg["num_layers"]
    inner = cfg["num_heads"] * cfg["d_kv"]
    return {
        "embedding": cfg["vocab_size"] * d,
        "attention": layers * 4 * d * inner,  # q, k, v, o
        "ff_in": layers * 2 * d * f,  # wi_0, wi_1 (gated)
        "ff_out": layers * f * d,  # wo: the known fp16 overflow
        "norms": layers * 2 * d + d,
        "relative_bias": cfg["relative_attention_num_buckets"] * cfg["num_heads"],
    }


def plan(text_encoder: Precision) -> dict:
    """{precision, fp32 weight groups, why} of the text encoder for a target's planned precision."""
    if text_encoder == Precision.BF16:
        return {
            "precision": "bf16",
            "fp32_groups": ["norms"],
            "why": "T5 was trained in bf16; bf16 has fp32's range, so no overflow islands (bf16.py)",
        }
    return {
        "precision": "fp16",
        "fp32_groups": ["norms", "ff_out"],
        "why": "fp16 with the known overflow (T5 v1.1's `wo` and the residual adds) and any measured "
        "overflow fp32; fp32 as a whole does not fit a 16 GB card with T5-XXL",
    }


def t5_memory(p: dict, cfg: dict = T5_XXL) -> float:
    """GiB of the T5 encoder's weights under plan `p`."""
    low = BYTES[Precision(p["precision"])]
    return sum(n * (4 if g in p["fp32_groups"] else low) for g, n in t5_encoder_parameters(cfg).items()) / GIB


def run_with(all_loaded_gib: float, released_first_gib: float, device_gib: float) -> str | None:
    """How the pipeline must run on this card: "default" (every engine loaded at once fits), "--low-memory"
    (only with the text encoder released before the denoiser loads), or None (neither fits)."""
    if all_loaded_gib <= FIT_SHARE * device_gib:
        return "default"
    if released_first_gib <= FIT_SHARE * device_gib:
        return "--low-memory"
    return None


def memory_estimate(text_encoder: Precision, device_gib: float) -> dict:
    """The plan for T5-XXL on a card of `device_gib` usable GiB, with the whole pipeline's estimate."""
    p = plan(text_encoder)
    t5 = t5_memory(p)
    dit = DIT_XL_PARAMS * 2 / GIB
    vae = VAE_DECODER_PARAMS * 2 / GIB
    concurrent = t5 + dit + vae + ACTIVATION_ALLOWANCE_GIB
    sequential = max(t5 + 0.5, dit + vae + ACTIVATION_ALLOWANCE_GIB)  # 0.5: the CUDA context
    fp32_t5 = t5_memory({"precision": "fp32", "fp32_groups": []})
    return {
        **p,
        "model": "T5-XXL encoder (t5-v1_1-xxl), DiT XL-2, SD VAE decoder",
        "params": {
            "t5": sum(t5_encoder_parameters().values()),
            "dit": DIT_XL_PARAMS,
            "vae_decoder": VAE_DECODER_PARAMS,
        },
        "gib": {
            "t5": round(t5, 2),
            "t5_if_fp32": round(fp32_t5, 2),
            "dit_fp16": round(dit, 2),
            "vae_decoder_fp16": round(vae, 2),
            "activation_allowance": ACTIVATION_ALLOWANCE_GIB,
            "all_loaded": round(concurrent, 2),
            "text_encoder_released_first": round(sequential, 2),
            "device": device_gib,
        },
        "fits_all_loaded": concurrent <= FIT_SHARE * device_gib,
        "fits_text_encoder_released_first": sequential <= FIT_SHARE * device_gib,
        "run_with": run_with(concurrent, sequential, device_gib),
        "fp32_fallback_fits": fp32_t5 + 0.5 <= FIT_SHARE * device_gib,
        "fit_share": FIT_SHARE,
        "estimated_from": "parameter counts (t5_plan.py), not measured on a GPU",
    }
