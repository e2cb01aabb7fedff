"""Building a report provider by name: ``offline`` or ``openai``."""

from __future__ import annotations

from typing import Any

from medbatch import defaults
from medbatch.errors import ModelMisconfigured
from medbatch.ml.reports.offline import OfflineProvider
from medbatch.ml.reports.openai_api import OpenAIProvider


def make_provider(name: str, **settings: Any) -> OfflineProvider | OpenAIProvider:
    """Build a provider by name.

    Args:
        name: ``"offline"`` (settings ignored) or ``"openai"`` (settings are :class:`OpenAIProvider`'s
            keyword arguments; ``api_key``/``base_url`` default to ``None``, ``model`` to
            :data:`medbatch.defaults.LLM_MODEL`).

    Raises:
        ModelMisconfigured: an unknown name or an unusable OpenAI configuration.
    """
    key = (name or "").strip().lower()
    if key == "offline":
        return OfflineProvider()
    if key == "openai":
        settings.setdefault("api_key", None)
        settings.setdefault("base_url", None)
        if not settings.get("model"):
            settings["model"] = defaults.LLM_MODEL
        try:
            return OpenAIProvider(**settings)
        except TypeError as exc:
            raise ModelMisconfigured(f"bad settings for the openai provider: {exc}") from None
    raise ModelMisconfigured(f"unknown report provider {name!r}: expected 'offline' or 'openai'")
