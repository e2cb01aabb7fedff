"""Report providers and the shared rate limiter, built once per worker process from the settings.

The API key lives in the worker's environment only: it is never staged, queued or stored.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from medbatch.config import Settings
from medbatch.worker.ratelimit import SharedRateLimiter

_lock = threading.Lock()
_providers: dict[tuple[str, str], Any] = {}
_limiter: SharedRateLimiter | None = None


def provider_for(settings: Settings, name: str, model: str) -> Any:
    """The provider ``name`` ("openai" or "offline") for ``model``, created on first use in this process."""
    from medbatch.ml.reports import make_provider

    key = (name, model)
    with _lock:
        if key not in _providers:
            if name == "openai":
                prices = json.loads(settings.llm_prices_json) if settings.llm_prices_json else None
                _providers[key] = make_provider(
                    "openai",
                    api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
                    base_url=settings.openai_base_url,
                    model=model,
                    temperature=settings.llm_temperature,
                    max_tokens=settings.llm_max_tokens,
                    timeout_s=settings.llm_timeout_s,
                    prices=prices,
                )
            else:
                _providers[key] = make_provider("offline")
        return _providers[key]


def shared_limiter(settings: Settings) -> SharedRateLimiter:
    """The LLM rate limiter every worker shares through the broker's Redis."""
    global _limiter
    with _lock:
        if _limiter is None:
            _limiter = SharedRateLimiter(
                settings.broker_url,
                name="llm",
                requests_per_minute=settings.llm_requests_per_minute,
                tokens_per_minute=settings.llm_tokens_per_minute,
            )
        return _limiter
