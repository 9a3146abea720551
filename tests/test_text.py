"""reference.text: 120 tokens, padded to max length, mask kept; same as diffusers' encode_prompt."""

from __future__ import annotations

import torch
from diffusers import PixArtAlphaPipeline

from reference.loading import TINY_DIR, load_model
from reference.text import MAX_TEXT_LEN, encode_prompts, tokenize


def test_tokenize_pads_and_masks():
    model = load_model("tiny")
    ids, mask = tokenize(model.tokenizer, ["abc", "a much longer prompt " * 20])
    assert ids.shape == mask.shape == (2, MAX_TEXT_LEN) and ids.dtype == mask.dtype == torch.int64
    assert mask[0].sum() == 4  # three bytes and </s>
    assert mask[1].sum() == MAX_TEXT_LEN  # truncated to 120
    assert torch.all(ids[0, 4:] == model.tokenizer.pad_token_id)


def test_matches_diffusers_encode_prompt():
    model = load_model("tiny")
    pipe = PixArtAlphaPipeline.from_pretrained(str(TINY_DIR), local_files_only=True)
    prompts = ["a red circle", "two blue squares on a white background"]
    want, want_mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, clean_caption=False)
    got, got_mask = encode_prompts(model.tokenizer, model.text_encoder, prompts)
    assert torch.equal(got_mask, want_mask.to(torch.int64))
    # Same fp32 modules; T5's SDPA attention may take a different CPU kernel path per call, so we
    # allow float32 rounding (seen: 1.4e-6 on O(1) activations), far below any real difference.
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
