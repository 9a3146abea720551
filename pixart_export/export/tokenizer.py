"""Export stage for the tokenizer: the files the torch-free runtime tokenises with.

ByT5 (the tiny model) needs only its config (the added special tokens); its byte rule lives in
`runtime/tokenizer.py`. Any other tokenizer (T5's sentencepiece) must come as a `tokenizer.json`,
which transformers' tokenizers-backed classes write with `save_pretrained`; the runtime reads it
with the `tokenizers` package.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

TOKENIZER_DIR = "tokenizer"


def export_tokenizer(model, engine_dir: Path, max_length: int) -> dict:
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
    return {
        "kind": kind,
        "dir": TOKENIZER_DIR,
        "max_length": max_length,
        "pad_id": int(tokenizer.pad_token_id or 0),
        "class": type(tokenizer).__name__,
    }
