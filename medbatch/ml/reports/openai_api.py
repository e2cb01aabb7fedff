"""The OpenAI provider: Chat Completions (and the Batch API) of OpenAI or any OpenAI-compatible server.

The official ``openai`` SDK is imported inside the provider, so importing this module stays cheap.
HTTP and SDK errors are mapped onto medbatch's error tree; error messages never carry prompt or
record contents, only status codes and API error codes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from medbatch import defaults
from medbatch.errors import (
    BatchNotFinished,
    InvalidInput,
    InvalidModelOutput,
    ModelMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)
from medbatch.ml.reports.costs import BATCH_DISCOUNT, estimate_cost
from medbatch.ml.reports.facts import PatientFacts
from medbatch.ml.reports.prompt import _REFUSAL, PROMPT_VERSION, ReportDraft, build_messages, parse_sections

BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_COMPLETION_WINDOW = "24h"
OPENAI_HOST = "api.openai.com"


def _retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _error_code(body: Any) -> str:
    """The ``code``/``type`` of an API error body, never its free-text message (it may echo input)."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return ""
    parts = [str(error[k]) for k in ("code", "type") if error.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def _get(obj: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(obj, Mapping):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


class OpenAIProvider:
    """Reports from the Chat Completions API of OpenAI or any OpenAI-compatible server.

    Args:
        api_key: the key; ``None`` lets the SDK read ``OPENAI_API_KEY``.
        base_url: e.g. ``http://localhost:8000/v1`` for vLLM; ``None`` lets the SDK read
            ``OPENAI_BASE_URL`` and otherwise use OpenAI.
        model: model name as the server knows it.
        temperature: sampling temperature.
        max_tokens: output token cap per report. Sent as ``max_completion_tokens`` to OpenAI (which
            rejects ``max_tokens`` for newer models) and as ``max_tokens`` to other servers.
        timeout_s: seconds per HTTP request before :class:`ProviderUnavailable`.
        prices: price table for :func:`estimate_cost`; ``None`` uses :data:`PRICES_PER_MTOK`.

    Raises:
        ModelMisconfigured: the ``openai`` package is missing or no API key is available.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        model: str,
        temperature: float = defaults.LLM_TEMPERATURE,
        max_tokens: int = defaults.LLM_MAX_TOKENS,
        timeout_s: float = defaults.LLM_TIMEOUT_S,
        prices: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - openai is a dependency
            raise ModelMisconfigured("the openai provider needs the 'openai' package") from exc
        if not model:
            raise ModelMisconfigured("the openai provider needs a model name")
        self._openai = openai
        try:
            self._client = openai.OpenAI(
                api_key=api_key or None, base_url=base_url or None, timeout=timeout_s, max_retries=0
            )
        except openai.OpenAIError as exc:
            raise ModelMisconfigured(f"cannot configure the OpenAI client: {exc}") from None
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.prices = prices
        self.base_url = str(self._client.base_url)
        is_openai = self._client.base_url.host == OPENAI_HOST
        self._max_tokens_param = "max_completion_tokens" if is_openai else "max_tokens"

    # ------------------------------------------------------------------ one report
    def _request_body(self, facts: PatientFacts) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": build_messages(facts),
            "temperature": self.temperature,
            self._max_tokens_param: self.max_tokens,
        }

    def generate(self, facts: PatientFacts) -> ReportDraft:
        """Write one report with a chat completion.

        Raises:
            RateLimited: HTTP 429; ``retry_after_s`` from the ``Retry-After`` header when sent.
            ProviderUnavailable: HTTP 5xx/408/409, a timeout or a connection failure.
            ProviderRejected: any other HTTP 4xx (bad key, unknown model, bad request).
            InvalidModelOutput: a refusal, an empty or truncated answer, missing sections, a malformed body.
        """
        body = self._request_body(facts)
        started = time.perf_counter()
        try:
            completion = self._client.chat.completions.create(**body)
        except Exception as exc:  # mapped onto medbatch's error tree; unknown errors re-raised as they are
            raise self._map_error(exc) from None
        latency_s = time.perf_counter() - started
        if not hasattr(completion, "model_dump"):  # a non-JSON 200 comes back from the SDK as text
            raise InvalidModelOutput("provider returned a body that is not a chat completion", reason="malformed")
        return self._draft(completion.model_dump(), latency_s=latency_s, discount=1.0)

    def _map_error(self, exc: Exception) -> Exception:
        openai = self._openai
        if isinstance(exc, openai.RateLimitError):
            return RateLimited(
                f"provider rate limit (HTTP 429){_error_code(exc.body)}", _retry_after_s(exc.response.headers)
            )
        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(f"provider timed out after {self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            return ProviderUnavailable(f"cannot connect to the provider at {self.base_url}")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status >= 500 or status in (408, 409):
                return ProviderUnavailable(f"provider error HTTP {status}{_error_code(exc.body)}")
            return ProviderRejected(f"provider rejected the request: HTTP {status}{_error_code(exc.body)}", status)
        if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
            return InvalidModelOutput("provider returned a malformed response body", reason="malformed")
        return exc

    def _draft(self, body: Any, *, latency_s: float, discount: float) -> ReportDraft:
        """A draft from one chat-completion body (a dict), or :class:`InvalidModelOutput`."""
        if not isinstance(body, Mapping) or not isinstance(_get(body, "choices", 0), Mapping):
            raise InvalidModelOutput("provider returned a body that is not a chat completion", reason="malformed")
        message = _get(body, "choices", 0, "message") or {}
        finish_reason = str(_get(body, "choices", 0, "finish_reason") or "unknown")
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(message, Mapping) and message.get("refusal"):
            raise InvalidModelOutput("the model refused to write the report", reason="refusal")
        if finish_reason == "content_filter":
            raise InvalidModelOutput("the provider's content filter stopped the report", reason="content_filter")
        if not isinstance(content, str) or not content.strip():
            raise InvalidModelOutput("the model returned an empty report", reason="empty")
        if finish_reason == "length":
            raise InvalidModelOutput(
                f"the report was cut off at the token limit ({self.max_tokens} tokens)", reason="truncated"
            )
        try:
            sections = parse_sections(content)
        except InvalidModelOutput:
            if _REFUSAL.match(content):
                raise InvalidModelOutput("the model refused to write the report", reason="refusal") from None
            raise
        tokens_in = int(_get(body, "usage", "prompt_tokens") or 0)
        tokens_out = int(_get(body, "usage", "completion_tokens") or 0)
        model = str(body.get("model") or self.model)
        cost = estimate_cost(model, tokens_in, tokens_out, self.prices)
        if cost is None and model != self.model:  # servers may answer with a snapshot name the table lacks
            cost = estimate_cost(self.model, tokens_in, tokens_out, self.prices)
        return ReportDraft(
            text=content.strip(),
            sections=sections,
            provider=self.name,
            model=model,
            prompt_version=PROMPT_VERSION,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=None if cost is None else round(cost * discount, 8),
            latency_s=latency_s,
            finish_reason=finish_reason,
        )

    # ------------------------------------------------------------------ Batch API (overnight mode)
    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self._map_error(exc) from None

    def batch_request_line(self, custom_id: str, facts: PatientFacts) -> dict[str, Any]:
        """One line of a Batch API input file: the same request :meth:`generate` sends, tagged ``custom_id``."""
        return {"custom_id": str(custom_id), "method": "POST", "url": BATCH_ENDPOINT, "body": self._request_body(facts)}

    def submit_batch(self, lines: list[dict[str, Any]]) -> str:
        """Upload ``lines`` as JSONL (purpose ``batch``) and start a 24 h batch; returns the batch ID.

        Raises:
            InvalidInput: no lines, or ``custom_id`` values that are not unique.
            RateLimited, ProviderUnavailable, ProviderRejected: as for :meth:`generate`.
        """
        ids = [line.get("custom_id") for line in lines]
        if not lines:
            raise InvalidInput("a batch needs at least one request")
        if len(set(ids)) != len(ids) or None in ids:
            raise InvalidInput("every batch line needs a unique custom_id")
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        uploaded = self._call(
            self._client.files.create, file=("medbatch-reports.jsonl", data, "application/jsonl"), purpose="batch"
        )
        batch = self._call(
            self._client.batches.create,
            input_file_id=uploaded.id,
            endpoint=BATCH_ENDPOINT,
            completion_window=BATCH_COMPLETION_WINDOW,
        )
        return batch.id

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """``{"status", "request_counts": {"total", "completed", "failed"}, "output_file_id", "error_file_id"}``.

        ``status`` is the API's: validating, in_progress, finalizing, completed, failed, expired,
        cancelling, cancelled.
        """
        batch = self._call(self._client.batches.retrieve, batch_id)
        counts = batch.request_counts.model_dump() if batch.request_counts is not None else {}
        return {
            "status": batch.status,
            "request_counts": counts,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
        }

    def batch_results(self, batch_id: str) -> dict[str, ReportDraft | InvalidModelOutput]:
        """Results of a finished batch by ``custom_id``: a draft, or the reason the line failed.

        Costs carry :data:`BATCH_DISCOUNT`. Lines of an expired or cancelled batch that never ran are
        absent from the result: the caller submits them again.

        Raises:
            BatchNotFinished: the batch is still validating, running or finalizing.
            ProviderRejected: the batch itself failed (for example, its input file was invalid).
        """
        batch = self._call(self._client.batches.retrieve, batch_id)
        if batch.status in ("validating", "in_progress", "finalizing", "cancelling"):
            raise BatchNotFinished(f"batch {batch_id} is {batch.status}")
        if batch.status == "failed":
            codes = sorted({e.code for e in (batch.errors.data or [])} - {None}) if batch.errors else []
            raise ProviderRejected(f"batch {batch_id} failed{' (' + ', '.join(codes) + ')' if codes else ''}")
        results: dict[str, ReportDraft | InvalidModelOutput] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = self._call(self._client.files.content, file_id).text
            for raw in text.splitlines():
                if raw.strip():
                    custom_id, result = self._batch_line(raw)
                    if custom_id is not None:
                        results.setdefault(custom_id, result)
        return results

    def _batch_line(self, raw: str) -> tuple[str | None, ReportDraft | InvalidModelOutput]:
        try:
            line = json.loads(raw)
        except ValueError:
            return None, InvalidModelOutput("unreadable batch output line", reason="malformed")
        custom_id = line.get("custom_id") if isinstance(line, Mapping) else None
        if custom_id is None:
            return None, InvalidModelOutput("batch output line without custom_id", reason="malformed")
        error, response = line.get("error"), line.get("response")
        if error:
            code = error.get("code") if isinstance(error, Mapping) else None
            return custom_id, InvalidModelOutput(f"batch request failed ({code or 'error'})", reason="batch_error")
        status = _get(response, "status_code")
        if status != 200:
            code = _error_code(_get(response, "body"))
            return custom_id, InvalidModelOutput(f"batch request failed: HTTP {status}{code}", reason="batch_error")
        try:
            return custom_id, self._draft(_get(response, "body"), latency_s=0.0, discount=BATCH_DISCOUNT)
        except InvalidModelOutput as exc:
            return custom_id, exc
