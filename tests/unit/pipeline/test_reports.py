"""The reports pipeline called directly (no broker, no worker) against a local OpenAI-compatible server."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch
from medbatch.producer.submit import submit_reports
from tests.helpers import REPORT_FACTS_CSV

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@sqlite_only
def test_provider_still_failing_after_every_attempt_becomes_an_item_error(db_url, llm, tmp_path):
    """5xx and timeouts are retried with backoff, then recorded with a reason; the rest of the batch goes on."""
    from medbatch.ml.reports import make_provider
    from medbatch.pipeline.reports import CallPolicy, generate_batch

    path = tmp_path / "facts.csv"
    path.write_text(REPORT_FACTS_CSV)
    summary = submit_reports(
        database_url=db_url, send=lambda *a: None, provider="openai", llm_model="gpt-4o-mini", path=path, batch_size=10
    )
    llm.script("500", "timeout", "500")  # the first report fails three times, the others succeed
    provider = make_provider("openai", api_key="sk-test", base_url=llm.base_url, model="gpt-4o-mini", timeout_s=0.5)
    slept: list[float] = []
    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    out = generate_batch(
        batch_id,
        database_url=db_url,
        max_attempts=5,
        provider_for=lambda *_: provider,
        limiter=None,
        policy=CallPolicy(max_attempts=3, backoff_base_s=0.01),
        sleep=slept.append,
    )
    with session_scope(db_url) as s:
        errors = list(repo.iter_errors(s, summary.job_id))
        counts = repo.job_counts(s, summary.job_id)
    assert out == {"batch_id": batch_id, "status": "done", "results": 2, "failures": 1}
    assert len(slept) == 2 and slept[1] > slept[0]  # exponential backoff between the three tries
    assert "provider unavailable after 3 attempts" in errors[0]["reason"]
    assert counts["status"] == "completed_with_errors"
