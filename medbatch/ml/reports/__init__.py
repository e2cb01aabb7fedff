"""Medical report drafts from a language model, behind one provider interface.

Two providers share one contract, ``generate(facts) -> ReportDraft``:

* ``offline``: a deterministic template filled from the facts. It needs no key and no network; every
  report it writes starts with :data:`OFFLINE_LABEL` so nobody mistakes it for a model's text.
* ``openai``: the official ``openai`` SDK (imported inside the provider, so importing this module
  stays cheap). It works against OpenAI and any OpenAI-compatible server (vLLM, Ollama) through
  ``base_url``; ``api_key``/``base_url`` left as ``None`` fall back to the SDK's own
  ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` handling. The SDK's retries are switched off: the pipeline
  (``medbatch.pipeline.reports.call_with_retries``) retries :class:`ProviderUnavailable` and ``RateLimited``
  per report with its own backoff (honouring ``Retry-After``) and cap (``llm_max_attempts``); a report
  still failing after the last try becomes an item error, not a task retry.

A report has three sections, in this order: Condition, Recommended treatment, Follow-up.

Minimum necessary (HIPAA): :func:`minimum_necessary` is the only way a record becomes
:class:`PatientFacts`, and only facts reach a prompt. It keeps an allow-list of clinical fields,
turns a date of birth into an age in whole years (ages over 89 become 90, as Safe Harbor requires),
scrubs allow-listed free text of contact details, record numbers, URLs and dates, and drops
everything else. Error messages never include prompt or record contents.

This package is plain Python: it imports no Celery, Redis or SQLAlchemy. Modules by responsibility:
``facts`` (minimum necessary), ``prompt`` (prompt, draft, section parsing), ``costs``, ``offline`` and
``openai_api`` (the two providers), ``providers`` (:func:`make_provider`). The provider errors live in
:mod:`medbatch.errors`. Everything callers use is re-exported here.
"""

from medbatch.errors import BatchNotFinished, InvalidModelOutput, ProviderRejected, ProviderUnavailable
from medbatch.ml.reports.costs import BATCH_DISCOUNT, PRICES_PER_MTOK, estimate_cost
from medbatch.ml.reports.facts import (
    ALLOWED_FIELDS,
    ALLOWED_FINDINGS,
    BIRTH_DATE_FIELDS,
    FREE_TEXT_MAX_CHARS,
    IDENTIFIER_FIELDS,
    REDACTED,
    SAFE_HARBOR_MAX_AGE,
    PatientFacts,
    minimum_necessary,
)
from medbatch.ml.reports.offline import OFFLINE_LABEL, OFFLINE_MODEL, OfflineProvider
from medbatch.ml.reports.openai_api import BATCH_COMPLETION_WINDOW, BATCH_ENDPOINT, OPENAI_HOST, OpenAIProvider
from medbatch.ml.reports.prompt import PROMPT_VERSION, SYSTEM_PROMPT, ReportDraft, build_messages, parse_sections
from medbatch.ml.reports.providers import make_provider

__all__ = [
    "ALLOWED_FIELDS",
    "ALLOWED_FINDINGS",
    "BATCH_COMPLETION_WINDOW",
    "BATCH_DISCOUNT",
    "BATCH_ENDPOINT",
    "BIRTH_DATE_FIELDS",
    "FREE_TEXT_MAX_CHARS",
    "IDENTIFIER_FIELDS",
    "OFFLINE_LABEL",
    "OFFLINE_MODEL",
    "OPENAI_HOST",
    "PRICES_PER_MTOK",
    "PROMPT_VERSION",
    "REDACTED",
    "SAFE_HARBOR_MAX_AGE",
    "SYSTEM_PROMPT",
    "BatchNotFinished",
    "InvalidModelOutput",
    "OfflineProvider",
    "OpenAIProvider",
    "PatientFacts",
    "ProviderRejected",
    "ProviderUnavailable",
    "ReportDraft",
    "build_messages",
    "estimate_cost",
    "make_provider",
    "minimum_necessary",
    "parse_sections",
]
