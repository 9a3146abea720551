"""Does the text encoder tell the DiT which object a colour belongs to? A linear probe on T5 outputs.

The DiT reads captions only through cross-attention over T5's output tokens, and T5 has no absolute
position embeddings (relative attention bias only), so the DiT cannot see word order by itself: in
"a red circle above a blue square" it learns that red belongs on top only if T5's output at "red"
says so. This probe measures that. For every two-shape training caption it takes T5's output at each
colour word and at each shape word (mean over the word's byte tokens) and asks a logistic regression
which object of the scene the word describes: the top/left one (object a) or the bottom/right one
(object b). Captions state either object first ("A above B", "B below A"), so the word alone, or its
position, does not decide it; the context does. Trained on the captions of half the combinations,
scored on the other half (accuracy; 0.5 is chance). A second probe asks only which mention the word is
in (first or second), which is what T5's relative attention has to work out before the object can be.
The T5 input embeddings (no context) are the control: they should score chance.

    python -m reference.train.text_probe tiny runs/gpu/t5x2-b512/model [--random]
"""

from __future__ import annotations

import argparse
import json
import re
import zlib

import numpy as np
import torch

from ..text import encode_prompts, tokenize
from . import data

THING = re.compile(r"a (\w+) (\w+)")


def word_features(tokenizer, text_encoder, contextual: bool = True):
    """(features [N,C], role [N] 0/1, order [N] 0/1, kind [N] 0 colour / 1 shape, combination half [N]) over
    the two-shape training captions; role 1 = the word describes object b (bottom / right), order 1 = the
    word is in the second-mentioned object."""
    captions = [c for c in data.training_captions() if " above " in c or " below " in c or " of " in c]
    if contextual:
        embeds, _ = encode_prompts(tokenizer, text_encoder, captions)
    else:
        ids, _ = tokenize(tokenizer, captions)
        embeds = text_encoder.get_input_embeddings()(ids).detach()
    feats, roles, orders, kinds, combos = [], [], [], [], []
    for i, text in enumerate(captions):
        first_is_a = " above " in text or " to the left of " in text
        mentions = list(THING.finditer(text))
        key = tuple(sorted(m.group(1) + " " + m.group(2) for m in mentions))
        for order, m in enumerate(mentions[:2]):
            role = order if first_is_a else 1 - order
            for kind, group in ((0, 1), (1, 2)):
                start, end = m.span(group)  # byte-level tokens: character i is token i (ASCII captions)
                feats.append(embeds[i, start:end].mean(0))
                roles.append(role)
                orders.append(order)
                kinds.append(kind)
                combos.append(zlib.crc32(" | ".join(key).encode()) % 2)
    return torch.stack(feats), np.asarray(roles), np.asarray(orders), np.asarray(kinds), np.asarray(combos)


def probe_accuracy(x: torch.Tensor, y: np.ndarray, train: np.ndarray, steps: int = 300, seed: int = 0) -> float:
    """Held-out accuracy of a logistic regression (standardised features, L2 1e-3, LBFGS)."""
    torch.manual_seed(seed)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    z = (x - mu) / sd
    target = torch.from_numpy(y).float()
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    tr = torch.from_numpy(train)

    def closure():
        opt.zero_grad()
        logits = z[tr] @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target[tr]) + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = ((z[~tr] @ w + b) > 0).float()
    return float((pred == target[~tr]).float().mean())


def measure(tokenizer, text_encoder) -> dict:
    """Held-out probe accuracies: which object (role) and which mention (order), colour and shape words."""
    out = {}
    for name, contextual in (("T5 output", True), ("input embedding (control)", False)):
        with torch.no_grad():
            x, roles, orders, kinds, combos = word_features(tokenizer, text_encoder, contextual)
        train = combos == 0
        for label, y in (("object", roles), ("mention order", orders)):
            out[f"{name}: {label}"] = {
                kind: probe_accuracy(x[kinds == k], y[kinds == k], train[kinds == k])
                for k, kind in ((0, "colour words"), (1, "shape words"))
            }
    return out


def main(argv=None) -> None:
    from ..loading import load_model
    from ..tiny import TINY_T5

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model specs or folders whose text encoder is probed")
    parser.add_argument("--random", action="store_true", help="also probe a random T5 of the tiny config")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for spec in args.models:
        model = load_model(spec)
        results[spec] = measure(model.tokenizer, model.text_encoder.eval())
    if args.random:
        from transformers import T5Config, T5EncoderModel

        torch.manual_seed(0)
        results["random T5 (tiny config)"] = measure(
            load_model(args.models[0]).tokenizer, T5EncoderModel(T5Config(**TINY_T5)).eval()
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
