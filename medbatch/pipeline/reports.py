"""Draft medical reports for a batch of patients, one provider call per patient, each written as it lands.

Unlike the tabular batches, each report is committed on its own: a report is paid for, so a worker
that dies mid-batch must not throw away the ones already drafted. Re-delivery stays harmless: only
pending items are drafted, and every write is keyed by item.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from medbatch import defaults
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    PermanentError,
    RateLimited,
    RetryableError,
    WrongWorkload,
)
from medbatch.pipeline.common import item_failure, release_claim

log = logging.getLogger("medbatch.pipeline.reports")


class Limiter(Protocol):
    def acquire(self, tokens: int) -> float: ...
    def settle(self, reserved: int, actual: int) -> None: ...


@dataclass(frozen=True)
class CallPolicy:
    """How hard to try one report before it becomes an item error."""

    max_attempts: int = defaults.LLM_MAX_ATTEMPTS
    backoff_base_s: float = 1.0
    backoff_max_s: float = defaults.LLM_BACKOFF_MAX_S


def call_with_retries(call: Callable[[], Any], policy: CallPolicy, sleep: Callable[[float], None] = time.sleep) -> Any:
    """Run ``call``; on a rate limit wait what the server asked (Retry-After), on 5xx/timeouts back off.

    Raises:
        RetryableError: still failing after ``policy.max_attempts`` tries (the last error).
        PermanentError: at once; retrying cannot help.
    """
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return call()
        except RateLimited as exc:
            if attempt == policy.max_attempts:
                raise
            wait = exc.retry_after_s if exc.retry_after_s is not None else policy.backoff_base_s * 2 ** (attempt - 1)
        except RetryableError:
            if attempt == policy.max_attempts:
                raise
            wait = policy.backoff_base_s * 2 ** (attempt - 1)
        sleep(min(policy.backoff_max_s, wait) * (1 + random.random() * 0.1))
    raise AssertionError("unreachable")  # pragma: no cover


def report_rows(item: Any, draft: Any, mode: str = "online") -> tuple[dict, dict]:
    """The ``results`` row and the ``reports`` row for one drafted report."""
    result = {
        "item_id": item.id,
        "model_name": f"{draft.provider}:{draft.model}",
        "model_version": draft.prompt_version,
        "label": "draft_requires_review",
        "score": None,
        "detail": {"sections": draft.sections, "provider": draft.provider, "model": draft.model},
    }
    report = {
        "item_id": item.id,
        "provider": draft.provider,
        "model": draft.model,
        "prompt_version": draft.prompt_version,
        "mode": mode,
        "text": draft.text,
        "sections": draft.sections,
        "tokens_in": draft.tokens_in,
        "tokens_out": draft.tokens_out,
        "cost_usd": draft.cost_usd,
        "latency_s": draft.latency_s,
        "finish_reason": draft.finish_reason,
        "requires_review": True,
    }
    return result, report


def generate_batch(
    batch_id: int,
    *,
    database_url: str,
    max_attempts: int,
    provider_for: Callable[[str, str], Any],
    limiter: Limiter | None,
    policy: CallPolicy,
    estimate_tokens: int = 1200,
    sleep: Callable[[float], None] = time.sleep,
    expected_db: str | None = None,
) -> dict[str, Any]:
    """Draft a report for each pending item of ``batch_id`` with ``provider`` and persist each one.

    A job's token budget (``options.budget_tokens``) is checked before every call; once spent, the
    remaining items get an error saying so and nothing more is sent. May overshoot by at most one
    report per concurrently running call.

    Returns:
        A small summary: batch id, status, reports written, failures.
    """
    with session_scope(database_url) as s:
        repo.check_instance(s, expected_db)
        claim = repo.claim_batch(s, batch_id, max_attempts=max_attempts, workloads=("report",))
    if claim is None:
        return {"batch_id": batch_id, "status": "skipped"}
    budget = claim.options.get("budget_tokens")
    provider = provider_for(claim.model_name, claim.options.get("llm_model", ""))
    limiter = limiter if getattr(provider, "name", "") != "offline" else None  # a template costs nothing
    written = failed = 0
    try:
        with session_scope(database_url) as s:
            items = repo.load_pending_items(s, batch_id)
        for item in items:
            outcome: dict[str, Any]
            if budget is not None:
                with session_scope(database_url) as s:
                    spent = repo.tokens_spent(s, claim.job_id)
                if spent + estimate_tokens > budget:
                    outcome = {
                        "failures": [
                            item_failure(
                                item, f"token budget of {budget} reached ({spent} spent): not sent", stage="budget"
                            )
                        ]
                    }
                    failed += 1
                    with session_scope(database_url) as s:
                        repo.write_outcomes(s, job_id=claim.job_id, **outcome)
                    continue
            try:
                if limiter is not None:
                    limiter.acquire(estimate_tokens)
                draft = call_with_retries(lambda it=item: provider.generate(_facts(it.payload)), policy, sleep)
                if limiter is not None:
                    limiter.settle(estimate_tokens, draft.tokens_in + draft.tokens_out)
                result, report = report_rows(item, draft)
                outcome = {"results": [result], "reports": [report]}
                written += 1
            except (DatabaseUnavailable, BrokerUnavailable):
                raise  # our own services are away: hand the batch back, the task retries
            except PermanentError as exc:
                outcome = {"failures": [item_failure(item, str(exc))]}
                failed += 1
            except RetryableError as exc:  # the provider, still failing after every attempt
                reason = f"provider unavailable after {policy.max_attempts} attempts: {exc}"
                outcome = {"failures": [item_failure(item, reason)]}
                failed += 1
            with session_scope(database_url) as s:
                repo.write_outcomes(s, job_id=claim.job_id, **outcome)
        with session_scope(database_url) as s:
            repo.complete_batch(s, batch_id=batch_id, job_id=claim.job_id)
    except RetryableError as exc:
        release_claim(database_url, batch_id, str(exc))
        raise
    log.info("job %s batch %s: %d reports, %d failures", claim.job_id, batch_id, written, failed)
    return {"batch_id": batch_id, "status": "done", "results": written, "failures": failed}


def _facts(payload: dict[str, Any]) -> Any:
    from medbatch.ml.reports import PatientFacts, minimum_necessary

    # The payload was reduced to the minimum when staged; reduce again (defence in depth).
    facts = PatientFacts(**payload)
    return minimum_necessary({**facts.clinical, "age": facts.age, "sex": facts.sex, "findings": facts.findings})


# --------------------------------------------------------------------------- overnight mode (Batch API)


def _report_job(session, job_id: int) -> Any:
    """The report job ``job_id``; a job of another workload is refused unchanged (its items never reach a provider)."""
    job = repo.get_job(session, repo.check_row_id(job_id, "job id"))
    if job.workload != "report":
        raise WrongWorkload(f"job {job_id} is a {job.workload} job, not a report job: refused, nothing changed")
    return job


def _job_provider(job: Any, provider_for: Callable[[str, str], Any]) -> Any:
    return provider_for(job.model_name, (job.options or {}).get("llm_model", ""))


def submit_provider_batch(
    job_id: int, *, database_url: str, provider_for: Callable[[str, str], Any], expected_db: str | None = None
) -> dict[str, Any]:
    """Send every pending item of a job to the provider's Batch API as one JSONL upload.

    Idempotent: a job that already has a provider batch is not sent again (it would be paid twice).

    Returns:
        ``{"job_id", "provider_batch_id", "submitted": bool}``.
    """
    with session_scope(database_url) as s:
        repo.check_instance(s, expected_db)
        job = _report_job(s, job_id)
        existing = (job.options or {}).get("provider_batch", {}).get("id")
        if existing:
            return {"job_id": job_id, "provider_batch_id": existing, "submitted": False}
        provider = _job_provider(job, provider_for)
        items = repo.load_job_pending_items(s, job_id)
    lines = [provider.batch_request_line(f"item-{it.id}", _facts(it.payload)) for it in items]
    if not lines:
        with session_scope(database_url) as s:
            repo.finish_staging(s, job_id)
        return {"job_id": job_id, "provider_batch_id": None, "submitted": False}
    batch_id = provider.submit_batch(lines)
    with session_scope(database_url) as s:
        repo.update_job_options(
            s, job_id, provider_batch={"id": batch_id, "status": "submitted", "requests": len(lines)}
        )
        repo.mark_job_batches(s, job_id, "running")
    log.info("job %s: %d requests sent as provider batch %s", job_id, len(lines), batch_id)
    return {"job_id": job_id, "provider_batch_id": batch_id, "submitted": True}


def poll_provider_batch(
    job_id: int, *, database_url: str, provider_for: Callable[[str, str], Any], expected_db: str | None = None
) -> dict[str, Any]:
    """Check the job's provider batch; when it has ended, ingest every result and error by ``custom_id``.

    Returns:
        ``{"job_id", "status", "done": bool}``; ``done`` means nothing is left to poll for.
    """
    with session_scope(database_url) as s:
        repo.check_instance(s, expected_db)
        job = _report_job(s, job_id)
        info = dict((job.options or {}).get("provider_batch") or {})
        provider = _job_provider(job, provider_for)
    if not info.get("id"):
        return {"job_id": job_id, "status": "not_submitted", "done": True}
    state = provider.batch_status(info["id"])
    with session_scope(database_url) as s:
        repo.update_job_options(
            s, job_id, provider_batch={**info, "status": state["status"], "request_counts": state.get("request_counts")}
        )
    if state["status"] not in ("completed", "failed", "expired", "cancelled"):
        with session_scope(database_url) as s:
            repo.mark_job_batches(s, job_id, "running")  # a heartbeat: the reconciler leaves them be
        return {"job_id": job_id, "status": state["status"], "done": False}
    outcomes = provider.batch_results(info["id"]) if state["status"] == "completed" else {}
    with session_scope(database_url) as s:
        items = repo.load_job_pending_items(s, job_id)
    results, reports, failures = [], [], []
    for it in items:
        got = outcomes.get(f"item-{it.id}")
        if got is None:
            failures.append(item_failure(it, f"provider batch {info['id']} ended '{state['status']}' without a result"))
        elif isinstance(got, Exception):
            failures.append(item_failure(it, str(got)))
        else:
            result, report = report_rows(it, got, mode="batch")
            results.append(result)
            reports.append(report)
    with session_scope(database_url) as s:
        repo.write_outcomes(s, job_id=job_id, results=results, failures=failures, reports=reports)
        repo.mark_job_batches(s, job_id, "done")
        repo.finish_job_if_done(s, job_id)
    return {
        "job_id": job_id,
        "status": state["status"],
        "done": True,
        "results": len(results),
        "failures": len(failures),
    }
