"""Prompt words the built-in `tiny` has never read: it was trained on captions of coloured shapes only
(`reference.train.data.VOCABULARY`), so an unknown word ("purple", "star") is silently drawn as
something it knows. Callers warn with `tiny_prompt_warning`."""

from __future__ import annotations

from pathlib import Path

from .train.data import VOCABULARY, unknown_words

TINY_SPECS = ("tiny", "tiny-teacher")


def tiny_prompt_warning(spec: str | Path, prompt: str) -> str | None:
    """A one-line warning when `spec` is the built-in tiny and `prompt` has words outside its training
    vocabulary; None otherwise."""
    if str(spec) not in TINY_SPECS:
        return None
    unknown = unknown_words(prompt)
    if not unknown:
        return None
    return (
        f"warning: the built-in tiny model never saw {', '.join(repr(w) for w in unknown)} in training; it knows "
        f"only: {' '.join(sorted(VOCABULARY))}"
    )
