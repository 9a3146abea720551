"""Export stage for the tokenizer: the files the torch-free runtime tokenises with.

ByT5 (the tiny model) needs only its config (the added special tokens); its byte rule lives in
`runtime/tokenizer.py`. Any other tokenizer (T5's sentencepiece) must come as a `tokenizer.json`,
which transformers' tokenizers-backed classes write with `save_pretrained`; the runtime reads it
with the `tokenizers` package. Where `openvino-tokenizers` is installed (the `openvino` extra), the same
tokenizer is also written as an OpenVINO model (`openvino_tokenizer.xml/.bin`: prompt strings in,
input_ids and attention_mask padded to max_length out), which the C++ runtime runs; it is written only
when it gives the `tokenizers` package's ids on a set of probe prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import UserError

TOKENIZER_DIR = "tokenizer"
OV_TOKENIZER = "openvino_tokenizer.xml"  # and .bin beside it
# the OpenVINO tokenizer must give these the `tokenizers` package's ids, or it is not written
PROBE_PROMPTS = [
    "a red circle above a blue square",
    "",
    " ",
    "  two  spaces  and a trailing one ",
    "naïve café — “quotes” ÀÉÎ",
    "東京の夜景、ネオン",
    "emoji 🎨🙂 and 🇫🇷",
    "tab\tnewline\nend",
    "special </s> <pad> <unk> inside",
    "an over-long prompt " * 80,
]


def export_tokenizer(model, engine_dir: Path, max_length: int, log: Callable[[str], None] = print) -> dict:
    """Write `engine_dir/tokenizer/` and return the manifest's "tokenizer" entry."""
    out = Path(engine_dir) / TOKENIZER_DIR
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = model.tokenizer
    tokenizer.save_pretrained(str(out))
    kind = "byt5" if type(tokenizer).__name__ == "ByT5Tokenizer" else "tokenizers"
    if kind == "tokenizers" and not (out / "tokenizer.json").exists():
        raise UserError(
            f"tokenizer {type(tokenizer).__name__} wrote no tokenizer.json; the torch-free runtime "
            "needs one (a tokenizers-backed T5 tokenizer)"
        )
    pad_id = int(tokenizer.pad_token_id or 0)
    if kind == "tokenizers":
        export_openvino_tokenizer(out, max_length, pad_id, log)
    return {
        "kind": kind,
        "dir": TOKENIZER_DIR,
        "max_length": max_length,
        "pad_id": pad_id,
        "class": type(tokenizer).__name__,
    }


def export_openvino_tokenizer(folder: Path, max_length: int, pad_id: int, log: Callable[[str], None] = print) -> bool:
    """Write `folder/openvino_tokenizer.xml/.bin` from `folder/tokenizer.json`: the runtime's JsonTokenizer
    (truncation to max_length, padding with pad_id to max_length) as an OpenVINO model. False, with a log
    line, where openvino-tokenizers is not installed or its model gives other ids than the `tokenizers`
    package on the probe prompts (then the C++ runtime refuses the folder; the Python runtime runs it)."""
    try:
        import openvino as ov
        import openvino_tokenizers
    except ImportError:
        log("      no OpenVINO tokenizer model: openvino-tokenizers is not installed (the C++ runtime needs it)")
        return False
    import numpy as np
    from transformers import PreTrainedTokenizerFast

    from ..runtime.tokenizer import JsonTokenizer

    folder = Path(folder)
    reference = JsonTokenizer(folder / "tokenizer.json", max_length, pad_id)
    fast = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), pad_token=reference.tok.id_to_token(pad_id)
    )
    model = openvino_tokenizers.convert_tokenizer(fast, max_length=max_length, use_max_padding=True, truncation=True)
    compiled = ov.Core().compile_model(model, "CPU")
    result = compiled([ov.Tensor(np.array(PROBE_PROMPTS))])
    got = {o.get_any_name(): np.asarray(result[o], np.int64) for o in compiled.outputs}
    ids, mask = reference(PROBE_PROMPTS)
    if not (
        got.get("input_ids") is not None
        and got["input_ids"].shape == ids.shape
        and (got["input_ids"] == ids).all()
        and (got.get("attention_mask") == mask).all()
    ):
        log(
            "      no OpenVINO tokenizer model: openvino-tokenizers' conversion of this tokenizer.json gives other "
            "ids than the tokenizers package (the C++ runtime will refuse this folder)"
        )
        return False
    ov.save_model(model, str(folder / OV_TOKENIZER), compress_to_fp16=False)
    return True
