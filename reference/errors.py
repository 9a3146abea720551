"""Typed errors of the reference: each one's message names the problem and what to do about it."""

from __future__ import annotations


class ModelError(ValueError):
    """A model folder or file that cannot be used (missing, unknown layout, bad config)."""


class WeightsError(ModelError):
    """Weights that do not match the model: unreadable, or missing / unexpected / mis-shaped keys."""

    @classmethod
    def from_mismatch(
        cls, where: str, missing: list[str], unexpected: list[str], misshaped: list[tuple[str, tuple, tuple]]
    ) -> "WeightsError":
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_few(unexpected)}")
        if misshaped:
            parts.append(
                f"mis-shaped {len(misshaped)}: "
                + _few([f"{k} (file {tuple(got)}, model {tuple(want)})" for k, got, want in misshaped])
            )
        return cls(f"{where}: weights do not match the model; " + "; ".join(parts))


def _few(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
