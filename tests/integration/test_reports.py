"""Report generation: real workers (threads pool), the real openai client, a local OpenAI-compatible server."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Report
from medbatch.producer.submit import submit_records, submit_reports
from medbatch.producer.synthetic import write_patients
from tests.helpers import REPORT_FACTS_CSV, wait_for_job

pytestmark = pytest.mark.integration
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

IDENTIFIERS = [
    "Maria Gonzalez",
    "MRN-7731002",
    "221B Baker Street",
    "555-867-5309",
    "maria.g@example.org",
    "1961-03-14",
    "078-05-1120",
    "John Smith",
]


@pytest.fixture
def llm_env(llm):
    return {
        "MEDBATCH_LLM_PROVIDER": "openai",
        "MEDBATCH_OPENAI_API_KEY": "sk-test-not-a-secret",
        "MEDBATCH_OPENAI_BASE_URL": llm.base_url,
        "MEDBATCH_LLM_TIMEOUT_S": "2",
        "MEDBATCH_LLM_MAX_ATTEMPTS": "3",
        "MEDBATCH_REPORT_POLL_INTERVAL_S": "0.5",
    }


def _reports(db_url: str, job_id: int) -> list[Report]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(Report).where(Report.job_id == job_id).order_by(Report.item_id)))


@sqlite_only
def test_reports_online_with_429_500_and_refusal_and_no_identifier_leaves(
    db_url, sender, start_worker, llm, llm_env, tmp_path
):
    # Given a reports worker and a provider that first rate-limits, then fails, then refuses once
    start_worker("reports", pool="threads", concurrency=1, env=llm_env)
    llm.script("429", "500", "ok", "refusal", "ok")
    path = tmp_path / "facts.csv"
    path.write_text(REPORT_FACTS_CSV)
    # When a report job runs
    summary = submit_reports(
        database_url=db_url, send=sender, provider="openai", llm_model="gpt-4o-mini", path=path, batch_size=2
    )
    counts = wait_for_job(db_url, summary.job_id, timeout_s=120)
    # Then two reports are drafted, the refusal is an item error, and nothing identifying left the process
    reports = _reports(db_url, summary.job_id)
    assert counts["status"] == "completed_with_errors"
    assert len(reports) == 2 and counts["items_failed"] == 1
    with session_scope(db_url) as s:
        errors = list(repo.iter_errors(s, summary.job_id))
    assert "refus" in errors[0]["reason"].lower() and errors[0]["patient_ref"] == "MRN-7731003"
    for r in reports:
        assert r.provider == "openai" and r.prompt_version and r.requires_review
        assert r.tokens_in > 0 and r.tokens_out > 0 and r.latency_s > 0 and r.finish_reason == "stop"
        assert set(r.sections) == {"condition", "recommended_treatment", "follow_up"}
    sent = "\n".join(req.as_text() for req in llm.requests)
    assert len(llm.chat_requests) == 5
    for identifier in IDENTIFIERS:
        assert identifier not in sent
    assert "262" in sent and "31.4" in sent  # the clinical facts did reach the prompt


@sqlite_only
def test_report_from_earlier_job_carries_its_findings(db_url, sender, start_worker, llm, llm_env, tmp_path):
    start_worker("tabular,reports", pool="threads", concurrency=2, env=llm_env)
    risk = submit_records(
        write_patients(tmp_path / "r.csv", "risk", 6, seed=1), "risk", database_url=db_url, send=sender, batch_size=10
    )
    wait_for_job(db_url, risk.job_id)
    summary = submit_reports(
        database_url=db_url, send=sender, provider="openai", llm_model="gpt-4o-mini", from_job=risk.job_id, batch_size=3
    )
    counts = wait_for_job(db_url, summary.job_id, timeout_s=120)
    assert counts["items_done"] == 6
    prompts = [req.as_text() for req in llm.chat_requests]
    assert all("risk_label" in p and "risk_score" in p for p in prompts)
    assert all("SYN-" not in p for p in prompts)


@sqlite_only
def test_token_budget_stops_spending_and_says_so(db_url, sender, start_worker, llm, llm_env, tmp_path):
    start_worker("reports", pool="threads", concurrency=1, env=llm_env)
    path = tmp_path / "facts.csv"
    path.write_text(REPORT_FACTS_CSV)
    summary = submit_reports(
        database_url=db_url,
        send=sender,
        provider="openai",
        llm_model="gpt-4o-mini",
        path=path,
        batch_size=10,
        budget_tokens=1300,
    )
    counts = wait_for_job(db_url, summary.job_id, timeout_s=60)
    with session_scope(db_url) as s:
        reasons = [e["reason"] for e in repo.iter_errors(s, summary.job_id)]
    assert counts["items_done"] >= 1 and len(llm.chat_requests) == counts["items_done"]
    assert reasons and all("token budget of 1300 reached" in r for r in reasons)


@sqlite_only
def test_overnight_mode_goes_through_the_batch_api(db_url, sender, start_worker, llm, llm_env, tmp_path):
    start_worker("reports", pool="threads", concurrency=2, env=llm_env)
    llm.script("ok", "length", "ok")
    path = tmp_path / "facts.csv"
    path.write_text(REPORT_FACTS_CSV)
    summary = submit_reports(
        database_url=db_url,
        send=sender,
        provider="openai",
        llm_model="gpt-4o-mini",
        path=path,
        batch_size=2,
        mode="batch",
    )
    counts = wait_for_job(db_url, summary.job_id, timeout_s=120)
    reports = _reports(db_url, summary.job_id)
    assert counts["status"] == "completed_with_errors" and counts["items_failed"] == 1
    assert len(reports) == 2 and {r.mode for r in reports} == {"batch"}
    assert any(req.path.endswith("/files") for req in llm.requests)
    assert any(req.path.endswith("/batches") for req in llm.requests)
    with session_scope(db_url) as s:
        job = repo.get_job(s, summary.job_id)
        assert job.options["provider_batch"]["status"] == "completed"
    uploaded = "\n".join(req.as_text() for req in llm.requests)
    for identifier in IDENTIFIERS:
        assert identifier not in uploaded


@sqlite_only
def test_offline_provider_without_a_key(db_url, sender, start_worker, tmp_path):
    start_worker("reports", pool="threads", concurrency=2, env={"MEDBATCH_LLM_PROVIDER": "auto"})
    path = tmp_path / "facts.csv"
    path.write_text(REPORT_FACTS_CSV)
    summary = submit_reports(
        database_url=db_url, send=sender, provider="offline", llm_model="", path=path, batch_size=2
    )
    counts = wait_for_job(db_url, summary.job_id)
    reports = _reports(db_url, summary.job_id)
    assert counts["status"] == "completed" and len(reports) == 3
    assert all(r.provider == "offline" and r.text.startswith("OFFLINE TEMPLATE DRAFT") for r in reports)
    assert all(r.cost_usd == 0 for r in reports)


def test_shared_rate_limit_holds_across_workers(redis_url):
    """Two limiters (two workers) share one budget of requests per minute through Redis."""
    from medbatch.worker.ratelimit import SharedRateLimiter

    now = [60 * 20_000 + 20.0]  # 20 s into a minute
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    a, b = (
        SharedRateLimiter(
            redis_url, name="t", requests_per_minute=3, tokens_per_minute=10_000, sleep=sleep, clock=lambda: now[0]
        )
        for _ in range(2)
    )
    assert [a.acquire(10), b.acquire(10), a.acquire(10)] == [0, 0, 0]
    waited = b.acquire(10)  # the fourth request in the same minute waits for the next one
    assert waited == pytest.approx(40.0) and slept == [pytest.approx(40.0)]
