"""What a report costs: list prices per million tokens and the Batch API discount."""

from __future__ import annotations

from collections.abc import Mapping

BATCH_DISCOUNT = 0.5
"""Batch API requests are billed at half the synchronous price."""
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
"""Default (input, output) list prices in USD per million tokens. Pass your own table (contract prices,
self-hosted models at 0.0) to override; a model in no table gets ``cost_usd=None``, never a guess."""


def estimate_cost(
    model: str, tokens_in: int, tokens_out: int, prices: Mapping[str, tuple[float, float]] | None = None
) -> float | None:
    """Estimated cost in USD of one call, from a per-million-token price table.

    A model matches its own entry, else the longest entry it extends with ``-`` (dated snapshots such
    as ``gpt-4o-mini-2024-07-18`` use ``gpt-4o-mini``). Returns ``None`` for a model in no entry.
    """
    table = PRICES_PER_MTOK if prices is None else prices
    entry = table.get(model)
    if entry is None:
        candidates = [k for k in table if model.startswith(k + "-")]
        if not candidates:
            return None
        entry = table[max(candidates, key=len)]
    price_in, price_out = entry
    return round((tokens_in * price_in + tokens_out * price_out) / 1_000_000, 8)
