"""A cheap CPU proxy for the teacher's text pathway: can a caption-reading network put each colour and
shape where the caption says, with a given text encoder?

The teacher must learn, from the diffusion loss alone, to paint object a's colour and shape in the top
(left) half and object b's in the bottom (right) half. This proxy keeps only that part of the job: a
"painter" of 16 learned cell queries (a 4x4 grid) with PixArt's caption projection and `--blocks`
blocks of self-attention, cross-attention to the text encoder's output and an MLP (the DiT's structure,
without the image) predicts each cell's colour and shape as a classification (cross-entropy, a clean
signal; the diffusion loss is far noisier, so a text encoder that fails here is not expected to do
better in the teacher; one that succeeds here is necessary, not sufficient).
The text encoder trains with it from random, as in the teacher. Captions come from the training
distribution (`data.sample_labels`, both phrasings "A above B" / "B below A", half with the background
phrase); the score is binding accuracy, the share of captions whose two halves get every attribute
right, on the canonical captions of the seen and held-out pairs of `data.eval_groups` and on the
seen pairs' reversed phrasing. `text_probe.measure` runs on the trained encoder at the end.

Text encoders (`--encoder`): `t5` (a T5 like `reference.tiny`'s, `--t5-layers`, `--t5-ff`,
`--t5-buckets` relative-position buckets), `frozen` (the same T5, random and never trained), and
`--aux-role W`: an auxiliary per-token loss on the T5 output (is this byte in a colour or shape word of
object a, of object b, or neither), weight W: the caption-parsing signal a pre-trained language model
brings and the miniature's random T5 lacks.

    python -m reference.train.binding_proxy --steps 1500 --t5-layers 2 [--aux-role 1] [--out runs/proxy/x.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import data

TEXT_LEN = 80  # every training caption fits (the longest is 73 bytes + EOS)


def cell_targets(labels: list[data.Labels]) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour [B,16], shape [B,16]) of each cell of a 4x4 grid: object a in the top (left) half, b in the
    other; single shapes fill the grid."""
    colour = torch.zeros(len(labels), 4, 4, dtype=torch.int64)
    shape = torch.zeros_like(colour)
    for i, lab in enumerate(labels):
        colour[i], shape[i] = lab.colour_a, lab.shape_a
        if lab.layout == 1:
            colour[i, 2:], shape[i, 2:] = lab.colour_b, lab.shape_b
        elif lab.layout == 2:
            colour[i, :, 2:], shape[i, :, 2:] = lab.colour_b, lab.shape_b
    return colour.view(len(labels), 16), shape.view(len(labels), 16)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.q, self.kv, self.out = heads, nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x, context, bias=None):
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.cross = Attention(d, heads), Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))

    def forward(self, x, text, bias):
        h = self.n1(x)
        x = x + self.attn(h, h)
        x = x + self.cross(self.n2(x), text, bias)
        return x + self.mlp(self.n3(x))


class Painter(nn.Module):
    """Cell queries -> (colour logits [B,16,4], shape logits [B,16,3]) from text tokens [B,L,C_text]."""

    def __init__(self, text_dim: int, d: int = 128, blocks: int = 6, heads: int = 4):
        super().__init__()
        self.cells = nn.Parameter(torch.randn(16, d) * 0.02)
        self.proj = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 4 + 3)

    def forward(self, text, mask):
        text = self.proj(text)
        bias = ((mask == 0) * -1e4).to(text.dtype)[:, None, None, :]
        x = self.cells[None].expand(len(text), -1, -1)
        for block in self.blocks:
            x = block(x, text, bias)
        out = self.head(self.norm(x))
        return out[..., :4], out[..., 4:]


def make_t5(layers: int, ff: int, buckets: int, seed: int):
    from transformers import T5Config, T5EncoderModel

    from ..tiny import TINY_T5

    torch.manual_seed(seed)
    config = {**TINY_T5, "num_layers": layers, **({"d_ff": ff} if ff else {})}
    if buckets:
        config["relative_attention_num_buckets"] = buckets
    return T5EncoderModel(T5Config(**config))


@torch.no_grad()
def binding_accuracy(t5, painter, tokenizer, labels: list[data.Labels], variant: int) -> float:
    from ..text import tokenize

    captions = [data.caption(lab, variant) for lab in labels]
    ids, mask = tokenize(tokenizer, captions, TEXT_LEN)
    colour, shape = painter(t5(input_ids=ids, attention_mask=mask)[0], mask)
    tc, ts = cell_targets(labels)
    right = (colour.argmax(-1) == tc) & (shape.argmax(-1) == ts)  # per cell
    return float(right.all(dim=1).float().mean())


def main(argv=None) -> None:
    from ..text import tokenize
    from . import text_probe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", choices=("t5", "frozen"), default="t5")
    parser.add_argument("--t5-layers", type=int, default=2)
    parser.add_argument("--t5-ff", type=int, default=0)
    parser.add_argument("--t5-buckets", type=int, default=0, help="relative-position buckets (default: TINY_T5's)")
    parser.add_argument("--aux-role", type=float, default=0.0, help="weight of the per-token role loss (default 0)")
    parser.add_argument("--blocks", type=int, default=6, help="painter blocks (default 6, the tiny DiT's)")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--out", type=Path, default=None, help="JSON of the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import ByT5Tokenizer

    tokenizer = ByT5Tokenizer()
    t5 = make_t5(args.t5_layers, args.t5_ff, args.t5_buckets, args.seed)
    torch.manual_seed(args.seed + 1)
    painter = Painter(t5.config.d_model, blocks=args.blocks)
    role_head = nn.Linear(t5.config.d_model, 3)
    params = list(painter.parameters()) + list(role_head.parameters())
    if args.encoder == "t5":
        params += list(t5.parameters())
    else:
        t5.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=args.lr)
    groups = data.eval_groups()
    seen = [lab for _, lab in groups["seen pair"]]
    held = [lab for _, lab in groups["held-out pair"]]
    single = [lab for _, lab in groups["single"]]
    # a pool of draws from the training distribution, tokenized once (the slow tokenizer is Python)
    rng = np.random.default_rng([args.seed, 7])
    drawn = [data._draw_caption(rng, False) for _ in range(20000)]
    unique = sorted({c: lab for c, lab in drawn}.items())
    row_of = {c: i for i, (c, _) in enumerate(unique)}
    draws = np.asarray([row_of[c] for c, _ in drawn])
    all_ids, all_mask = tokenize(tokenizer, [c for c, _ in unique], TEXT_LEN)
    all_colour, all_shape = cell_targets([lab for _, lab in unique])
    all_role = torch.from_numpy(data.word_roles([c for c, _ in unique], TEXT_LEN))
    history, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        rows = torch.from_numpy(
            draws[np.random.default_rng([args.seed, step, 7]).integers(0, len(draws), args.batch_size)]
        )
        ids, mask, tc, ts = all_ids[rows], all_mask[rows], all_colour[rows], all_shape[rows]
        hidden = t5(input_ids=ids, attention_mask=mask)[0]
        colour, shape = painter(hidden, mask)
        loss = nn.functional.cross_entropy(colour.reshape(-1, 4), tc.reshape(-1))
        loss = loss + nn.functional.cross_entropy(shape.reshape(-1, 3), ts.reshape(-1))
        if args.aux_role > 0:
            aux = nn.functional.cross_entropy(
                role_head(hidden).reshape(-1, 3), all_role[rows].reshape(-1), reduction="none"
            )
            loss = loss + args.aux_role * (aux * mask.reshape(-1)).sum() / mask.sum()
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / 100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.eval_every == 0 or step == args.steps:
            t5.eval(), painter.eval()
            row = {
                "step": step,
                "loss": float(loss.detach()),
                "seen pair": binding_accuracy(t5, painter, tokenizer, seen, 0),
                "seen pair, reversed phrasing": binding_accuracy(t5, painter, tokenizer, seen, 1),
                "held-out pair": binding_accuracy(t5, painter, tokenizer, held, 0),
                "single": binding_accuracy(t5, painter, tokenizer, single, 0),
                "elapsed_s": round(time.time() - t0, 1),
            }
            t5.train(), painter.train()
            history.append(row)
            print(json.dumps(row), flush=True)
    t5.eval()
    probe = text_probe.measure(tokenizer, t5)
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "history": history,
        "text_probe_object": probe["T5 output: object"],
        "text_probe_order": probe["T5 output: mention order"],
        "steps_per_s": args.steps / (time.time() - t0),
    }
    print(json.dumps({k: result[k] for k in ("text_probe_object", "text_probe_order")}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
