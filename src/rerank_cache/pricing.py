"""List prices of DashScope rerank models, for estimates of what the cache saves.

Prices are Alibaba Cloud Model Studio's published list prices in CNY per million tokens
(see ../shared/docs/dashscope-rerank-api.md); your contract may differ. They are used only
for estimates printed by ``rerank-cache stats`` and ``warm --dry-run``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["CURRENCY", "PRICE_PER_MILLION_TOKENS", "estimate_cost"]

CURRENCY = "CNY"

#: List price per million tokens, by model.
PRICE_PER_MILLION_TOKENS: Mapping[str, float] = {
    "gte-rerank-v2": 0.8,
    "gte-rerank": 0.8,
    "qwen3-rerank": 0.5,
    "qwen3-vl-rerank": 0.7,
    "qwen3.7-text-rerank": 0.5,
}


def estimate_cost(model: str, tokens: float) -> float | None:
    """Return the list price of ``tokens`` for ``model`` in :data:`CURRENCY`, or None.

    Example:
        >>> estimate_cost("gte-rerank-v2", 2_000_000)
        1.6
        >>> estimate_cost("unknown-model", 10) is None
        True
    """
    price = PRICE_PER_MILLION_TOKENS.get(model)
    return None if price is None else round(tokens * price / 1_000_000, 6)
