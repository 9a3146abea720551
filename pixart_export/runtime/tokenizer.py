"""Prompt -> (input_ids, attention_mask) without PyTorch.

Why not transformers' tokenizer classes: importing `transformers` probes for torch at import time
(`transformers.utils.generic` calls `is_torch_available()` -> `importlib.util.find_spec("torch")`)
and pulls in a large import graph; an edge host should need neither. Two kinds cover PixArt:

- `byt5` (the built-in tiny model): ByT5 is bytes, so the tokenizer is a few lines: UTF-8 byte + 3
  (ids 0/1/2 are pad/eos/unk), the added special tokens (`</s>`, `<pad>`, `<unk>`, `<extra_id_N>`)
  matched in the text first, truncated to L-1 tokens, `</s>` appended, padded with 0 to L. A test
  holds it equal to transformers' `ByT5Tokenizer` on tricky prompts.
- `tokenizers` (T5 / sentencepiece models): the `tokenizer.json` that the build writes from the
  model's fast tokenizer, run by the Rust `tokenizers` package (no torch), with padding and
  truncation to L set from the manifest.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

PAD, EOS, UNK = 0, 1, 2
BYTE_OFFSET = 3


class ByT5Tokenizer:
    def __init__(self, added_tokens: dict[str, int], max_length: int):
        self.max_length = max_length
        self.added = added_tokens
        names = sorted(added_tokens, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")") if names else None

    @classmethod
    def from_folder(cls, folder: Path, max_length: int) -> "ByT5Tokenizer":
        config = json.loads((Path(folder) / "tokenizer_config.json").read_text())
        added = {v["content"]: int(k) for k, v in config.get("added_tokens_decoder", {}).items()}
        return cls(added, max_length)

    def encode_one(self, text: str) -> list[int]:
        ids: list[int] = []
        pieces = self._split.split(text) if self._split else [text]
        for piece in pieces:
            if piece in self.added:
                ids.append(self.added[piece])
            elif piece:
                ids.extend(b + BYTE_OFFSET for b in piece.encode("utf-8"))
        return ids[: self.max_length - 1] + [EOS]

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(prompts), self.max_length), PAD, np.int64)
        mask = np.zeros((len(prompts), self.max_length), np.int64)
        for row, text in enumerate(prompts):
            tokens = self.encode_one(text)
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return ids, mask


class JsonTokenizer:
    """A `tokenizer.json` (e.g. T5's sentencepiece unigram), via the `tokenizers` package."""

    def __init__(self, path: Path, max_length: int, pad_id: int = PAD):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tok.enable_truncation(max_length)
        self.tok.enable_padding(length=max_length, pad_id=pad_id)
        self.max_length = max_length

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tok.encode_batch(prompts)
        return (np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64))


def load_tokenizer(folder: Path, info):
    """`info` is the manifest's `TokenizerRecord` (kind, dir, max_length, pad_id)."""
    from ..manifest import EngineError

    path = Path(folder) / info.dir
    try:
        if info.kind == "byt5":
            return ByT5Tokenizer.from_folder(path, info.max_length)
        if info.kind == "tokenizers":
            return JsonTokenizer(path / "tokenizer.json", info.max_length, info.pad_id)
    except (OSError, ValueError, KeyError) as exc:
        raise EngineError(f"{path}: tokenizer files not readable ({exc}); rebuild the engine") from None
    raise EngineError(f"unknown tokenizer kind {info.kind!r} in the manifest; rebuild the engine with this version")
