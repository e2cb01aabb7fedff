"""Staging a CSV's validated rows: the same items on either database, and every send recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.repository.staging import ItemColumns
from medbatch.db.session import get_engine, session_scope
from medbatch.db.tables import Batch, BatchStatus, Item
from medbatch.errors import BrokerUnavailable
from medbatch.producer.chunks import RecordChunk
from medbatch.producer.staging import stage_job

# Patient ids and payloads that each escaping layer could get wrong: quotes, backslashes, tabs, line breaks,
# COPY's null marker as text, non-ASCII, SQL and JSON syntax, a missing id.
AWKWARD_REFS = ['O"Brien', "back\\slash", "tab\there", "line\nbreak", "\\N", None, "Zoë 患者", "x'); DROP", "[1,2]"]


def _columns(rows: list[int], source: str = "/data/night's file.csv") -> ItemColumns:
    refs = [AWKWARD_REFS[i % len(AWKWARD_REFS)] for i in range(len(rows))]
    payloads = [json.dumps({"age": 40 + i, "note": f"é\\\t{i}", "bmi": 21.5 + i / 10}) for i in range(len(rows))]
    return ItemColumns(source, np.asarray(rows, dtype=np.int64), refs, payloads)


def _job(url: str) -> int:
    with session_scope(url) as s:
        return repo.create_job(s, workload="risk", source_uri="f.csv", model_name="risk", model_version="1")


def test_item_columns_stage_as_the_same_rows_on_either_database(db_url):
    # Given 7 validated rows with awkward ids and payloads, staged as batches of 3
    job = _job(db_url)
    items = _columns([2, 3, 5, 8, 13, 21, 34])
    with session_scope(db_url) as s:
        batch_ids = repo.stage_batches(s, job_id=job, first_seq=4, queue="tabular", items=items, batch_size=3)
    # Then each row is one item, in order, in its batch, with every field as given
    with session_scope(db_url) as s:
        staged = s.execute(select(Item).order_by(Item.id)).scalars().all()
        seqs = dict(s.execute(select(Batch.id, Batch.seq)).all())
    assert [seqs[b] for b in batch_ids] == [4, 5, 6]
    assert [it.batch_id for it in staged] == [batch_ids[0]] * 3 + [batch_ids[1]] * 3 + [batch_ids[2]]
    assert [it.item_key for it in staged] == [f"row:{r}" for r in items.source_rows.tolist()]
    assert [it.source_row for it in staged] == items.source_rows.tolist()
    assert [it.patient_ref for it in staged] == items.patient_refs
    assert [it.payload for it in staged] == [json.loads(p) for p in items.payloads]
    assert {it.source_uri for it in staged} == {"/data/night's file.csv"}
    assert {it.job_id for it in staged} == {job} and {it.status for it in staged} == {"pending"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_nul_character_in_a_patient_id_is_kept_whole_on_sqlite(db_url):
    # Given a chunk one of whose ids holds a NUL character (SQLite's json_extract would end the text there)
    job = _job(db_url)
    items = ItemColumns("f.csv", np.asarray([2, 3], dtype=np.int64), ["A\x00B", "C"], ['{"age": 1}', '{"age": 2}'])
    with session_scope(db_url) as s:
        repo.stage_batches(s, job_id=job, first_seq=0, queue="tabular", items=items, batch_size=10)
    # Then it is stored as given, with its neighbour
    with session_scope(db_url) as s:
        assert list(s.scalars(select(Item.patient_ref).order_by(Item.id))) == ["A\x00B", "C"]


def _chunks(n: int, per: int) -> list[RecordChunk]:
    return [RecordChunk(items=_columns(list(range(2 + k * per, 2 + (k + 1) * per)))) for k in range(n)]


def _stage(url: str, chunks: list[RecordChunk], send):
    """Stage ``chunks`` as a risk job in batches of two, sending with ``send``."""
    return stage_job(
        database_url=url,
        workload="risk",
        source="f.csv",
        model=("risk", "1"),
        options={},
        chunks=chunks,
        batch_size=2,
        send=send,
    )


def _statuses(url: str, job: int) -> list[str]:
    with session_scope(url) as s:
        return list(s.scalars(select(Batch.status).where(Batch.job_id == job).order_by(Batch.seq)))


def test_every_sent_batch_is_recorded_as_sent_by_the_end_of_staging(sqlite_url):
    # Given a sender that remembers, at each send, how the earlier batches stood in the database
    seen: list[list[str]] = []

    def send(_task, _queue, batch_id):
        with session_scope(sqlite_url) as s:
            job = s.scalar(select(Batch.job_id).where(Batch.id == batch_id))
        seen.append(_statuses(sqlite_url, job))

    # When three chunks of three rows are staged in batches of two (the last batch, of one row, at the end)
    summary = _stage(sqlite_url, _chunks(3, 3), send)
    # Then every batch was sent once and ends recorded as queued, with its time
    assert summary.batches == summary.batches_sent == 5
    assert _statuses(sqlite_url, summary.job_id) == [BatchStatus.QUEUED.value] * 5
    with session_scope(sqlite_url) as s:
        assert None not in s.scalars(select(Batch.queued_at).where(Batch.job_id == summary.job_id)).all()
    # And a chunk's sends were recorded by the time the next chunk's batches went out
    assert seen[1][:1] == [BatchStatus.QUEUED.value] and seen[3][:3] == [BatchStatus.QUEUED.value] * 3


def test_a_broker_lost_mid_staging_leaves_exactly_the_sent_batches_recorded(sqlite_url):
    # Given a broker that goes away at the fourth message
    calls = []

    def send(_task, _queue, batch_id):
        calls.append(batch_id)
        if len(calls) >= 4:
            raise BrokerUnavailable("connection refused")

    # When three chunks of two batches each are staged
    with pytest.raises(BrokerUnavailable, match="but 3 of 6 batches could not be sent"):
        _stage(sqlite_url, _chunks(3, 4), send)
    # Then all six batches are staged, the three sent are queued and the rest wait as pending for `resume`
    with session_scope(sqlite_url) as s:
        job = s.scalar(select(Batch.job_id))
    assert _statuses(sqlite_url, job) == [BatchStatus.QUEUED.value] * 3 + [BatchStatus.PENDING.value] * 3


def test_a_batch_a_worker_claims_before_its_send_is_recorded_keeps_its_state_and_a_queued_at(db_url):
    # Given a worker so quick that it claims every batch as soon as its message is out
    def send(_task, _queue, batch_id):
        with session_scope(db_url) as s:
            repo.claim_batch(s, batch_id, max_attempts=3)

    summary = _stage(db_url, _chunks(2, 4), send)
    # Then each stays running (not queued again) and has a queued_at, no later than its claim
    with session_scope(db_url) as s:
        rows = s.execute(select(Batch.status, Batch.queued_at, Batch.started_at).where(Batch.job_id == summary.job_id))
        rows = rows.all()
    assert len(rows) == 4 and {r.status for r in rows} == {BatchStatus.RUNNING.value}
    assert all(r.queued_at is not None and r.queued_at <= r.started_at for r in rows)


def _night(rejected_at: int) -> list[RecordChunk]:
    """Four chunks of three rows (batches of two: the odd row carries over), one rejected row in each; the chunk
    ``rejected_at`` holds only a rejection (no items)."""
    chunks = []
    for k in range(4):
        rows = [] if k == rejected_at else list(range(2 + 3 * k, 5 + 3 * k))
        bad = [{"source_uri": "f.csv", "source_row": 100 + k, "patient_ref": None, "reason": "age 'x' is not a number"}]
        chunks.append(RecordChunk(items=_columns(rows) if rows else [], rejected=bad))
    return chunks


def _staged_once(url: str, summary, rows: int) -> None:
    """Every row staged once, every batch numbered once and sent, every rejection recorded once."""
    with session_scope(url) as s:
        keys = list(s.scalars(select(Item.item_key).where(Item.job_id == summary.job_id)))
        seqs = list(s.scalars(select(Batch.seq).where(Batch.job_id == summary.job_id).order_by(Batch.seq)))
        counts = repo.job_counts(s, summary.job_id)
        errors = list(repo.iter_errors(s, summary.job_id))
    assert len(keys) == len(set(keys)) == rows == summary.items_staged == counts["items_total"]
    assert seqs == list(range(len(seqs))) and len(seqs) == summary.batches == summary.batches_sent
    assert _statuses(url, summary.job_id) == [BatchStatus.QUEUED.value] * len(seqs)
    assert sorted(e["source_row"] for e in errors) == [100, 101, 102, 103] and counts["rows_rejected"] == 4
    assert counts["status"] == "queued"


@pytest.mark.parametrize("fail_at", ["statement", "commit that did not happen", "commit that happened"])
@pytest.mark.parametrize("chunk", [1, 2])
def test_a_transient_database_error_while_staging_a_chunk_is_retried_without_doubling_it(
    db_url, monkeypatch, fail_at, chunk
):
    from medbatch.errors import DatabaseUnavailable
    from medbatch.producer import staging

    monkeypatch.setattr(staging, "STAGE_RETRY_DELAYS_S", (0.0, 0.0))
    # Given a database that fails one chunk's transaction once (chunk 2 holds only a rejection): in a statement
    # (a deadlock victim), or at its commit, before or after the server committed (the connection lost). Commits
    # are counted from the job's creation (commit 1); chunk k's transaction is commit k + 2.
    calls = {"counts": 0, "commits": 0}
    add_counts = repo.add_staged_counts
    lost = DatabaseUnavailable("database unavailable: OperationalError: server closed the connection")

    def counts_then_fail(s, job_id, **kw):
        calls["counts"] += 1
        add_counts(s, job_id, **kw)
        if fail_at == "statement" and calls["counts"] == chunk + 1:
            raise DatabaseUnavailable("database unavailable: DeadlockDetected: deadlock detected")

    dialect = get_engine(db_url).dialect
    real_commit = dialect.do_commit

    def commit(dbapi_connection):  # the driver's commit: the server's answer lost before or after it committed
        calls["commits"] += 1
        failing = calls["commits"] == chunk + 2
        if failing and fail_at == "commit that did not happen":
            raise lost
        real_commit(dbapi_connection)
        if failing and fail_at == "commit that happened":
            raise lost

    monkeypatch.setattr(repo, "add_staged_counts", counts_then_fail)
    monkeypatch.setattr(dialect, "do_commit", commit)
    # When the night is staged
    summary = _stage(db_url, _night(rejected_at=2), send=lambda *_a: None)
    # Then it is staged as if nothing had happened: each row once, each batch once, each rejection once
    assert calls["commits"] >= chunk + 2 and (fail_at != "statement" or calls["counts"] > chunk + 1)
    _staged_once(db_url, summary, rows=9)


def test_a_database_that_stays_away_stops_staging_after_the_last_try(sqlite_url, monkeypatch):
    from medbatch.errors import DatabaseUnavailable
    from medbatch.producer import staging

    monkeypatch.setattr(staging, "STAGE_RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    tries = []

    def always_fail(s, job_id, **kw):
        tries.append(job_id)
        raise DatabaseUnavailable("database unavailable: OperationalError: connection refused")

    monkeypatch.setattr(repo, "add_staged_counts", always_fail)
    with pytest.raises(DatabaseUnavailable, match="connection refused"):
        _stage(sqlite_url, _night(rejected_at=9), send=lambda *_a: None)
    assert len(tries) == 4  # the first try and three more
    with session_scope(sqlite_url) as s:  # and nothing of the chunk is half there
        assert s.scalar(select(Item.id)) is None and s.scalar(select(Batch.id)) is None
