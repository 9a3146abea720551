"""reference/train/text_probe.py: word spans are the words' byte tokens, and the context-free control
scores chance (the same word stands for either object)."""

from __future__ import annotations

import numpy as np

from reference.loading import load_model
from reference.text import tokenize
from reference.train import data, text_probe


def test_spans_are_the_words_byte_tokens():
    tokenizer = load_model("tiny").tokenizer
    caption = "a blue square below a red circle on a white background"
    ids, _ = tokenize(tokenizer, [caption])
    for m in text_probe.THING.finditer(caption):
        for group in (1, 2):
            start, end = m.span(group)
            assert bytes(int(v) - 3 for v in ids[0, start:end]) == m.group(group).encode()  # ByT5: byte + 3


def test_roles_follow_the_relation_and_the_control_is_chance():
    model = load_model("tiny")
    x, roles, orders, kinds, combos = text_probe.word_features(model.tokenizer, model.text_encoder, contextual=False)
    pairs = [c for c in data.training_captions() if " above " in c or " below " in c or " of " in c]
    assert len(x) == 4 * len(pairs)  # colour and shape word of both objects
    assert 0.45 < roles.mean() < 0.55 and orders.mean() == 0.5 and 0.3 < combos.mean() < 0.7
    assert not np.array_equal(roles, orders)  # "B below A" names object b first
    colour = kinds == 0
    acc = text_probe.probe_accuracy(x[colour], roles[colour], combos[colour] == 0)
    assert 0.4 < acc < 0.6, acc
