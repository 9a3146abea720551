"""Prompt -> T5 embeddings, as PixArt does: padded to 120 tokens, attention mask kept.

Follows diffusers' `PixArtAlphaPipeline.encode_prompt` without caption cleaning (which needs extra
packages and changes the text): tokenise with padding to `max_length`, truncation, special tokens,
run transformers' `T5EncoderModel` with the mask, and return the mask so the DiT can ignore padding.
"""

from __future__ import annotations

import torch

MAX_TEXT_LEN = 120  # PixArt-alpha/delta, arXiv 2310.00426 Sec. 3.1


def tokenize(tokenizer, prompts: list[str], max_length: int = MAX_TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids int64 [B,L], attention_mask int64 [B,L])."""
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return enc.input_ids.to(torch.int64), enc.attention_mask.to(torch.int64)


@torch.no_grad()
def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], max_length: int = MAX_TEXT_LEN
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds [B,L,C_text] float32, prompt_attention_mask int64 [B,L])."""
    ids, mask = tokenize(tokenizer, prompts, max_length)
    # CPU unless the caller moved the model (a streamed T5 has meta parameters and says where it runs)
    device = text_encoder.device if getattr(text_encoder, "streamed", False) else next(text_encoder.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    embeds = text_encoder(input_ids=ids, attention_mask=mask)[0]
    return embeds, mask
