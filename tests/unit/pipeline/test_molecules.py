"""The molecules pipeline called directly (no broker, no worker): N delivered, top-up rounds, re-delivery,
the same molecules whatever order the batches run in, the sample budget, duplicates."""

from __future__ import annotations

from sqlalchemy import delete, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Job, Result
from medbatch.pipeline.molecules import finalize_job, generate_batch
from medbatch.producer.generation import submit_molecules
from tests.helpers import register_molecules

# The tiny test model learns 40 MOSES training molecules: its valid samples are known ones, so jobs here
# keep them (allow_known) to have something to deliver.
REQUEST = {"count": 6, "seed": 1, "batch_size": 16, "max_samples": 240, "allow_known": True}


def run_job(url: str, job_id: int, *, reverse: bool = False) -> list[dict]:
    """Run the job's batches as a worker would (each staged batch, top-ups included) until it finishes;
    ``reverse`` runs each round's batches last first. Returns each batch's summary."""
    outs = []
    while True:
        with session_scope(url) as s:
            todo = [bid for bid, _ in repo.unfinished_batches(s, job_id)]
        if not todo:
            return outs
        for batch_id in reversed(todo) if reverse else todo:
            outs.append(generate_batch(batch_id, database_url=url, max_attempts=5))


def results_of(url: str, job_id: int) -> list[dict]:
    with session_scope(url) as s:
        return list(repo.iter_results(s, job_id))


def test_a_job_delivers_exactly_n_distinct_molecules_and_keeps_every_sample(db_url, molecule_artifact):
    # Given a request for 6 molecules from a model that yields far fewer than the card-less default predicts
    register_molecules(db_url, molecule_artifact)
    summary = submit_molecules(database_url=db_url, send=lambda *a: None, **REQUEST)
    # When its batches run until the job ends
    outs = run_job(db_url, summary.job_id)
    rows = results_of(db_url, summary.job_id)
    with session_scope(db_url) as s:
        job = repo.get_job(s, summary.job_id)
        seqs = list(s.scalars(select(Batch.seq).where(Batch.job_id == summary.job_id).order_by(Batch.seq)))
    # Then the first round fell short and the last batch of a round staged a top-up round
    assert summary.items_staged == 9 and any(o.get("top_up_batches") for o in outs)
    assert len(seqs) > 1 and seqs == list(range(len(seqs))) and job.status == "completed"
    # And exactly 6 distinct molecules are delivered, every sample is a row with its outcome, reason and NLL
    assert len(rows) == job.items_total <= REQUEST["max_samples"]
    delivered = [r for r in rows if r["detail"]["outcome"] == "delivered"]
    assert len(delivered) == 6 and len({r["label"] for r in delivered}) == 6
    assert all(r["detail"]["passes_moses_filters"] for r in delivered)
    for r in rows:
        d = r["detail"]
        assert d["outcome"] in ("delivered", "invalid", "filter_fail", "duplicate", "surplus")
        assert (d["reason"] is None) == (d["outcome"] == "delivered") and d["nll"] > 0 and d["tokens"] > 0
    assert {r["detail"]["outcome"] for r in rows} >= {"invalid", "filter_fail", "delivered"}
    # And the raw metrics count every sample, the delivered block says how many of how many
    m = job.metrics
    valid = sum(r["detail"]["valid"] for r in rows)
    assert m["generated"] == len(rows) and m["validity"] == round(valid / len(rows), 4)
    d = m["delivered"]
    assert d["requested"] == 6 and d["delivered"] == 6 and not d["budget_spent"] and d["samples"] == len(rows)
    assert d["samples_per_delivered"] == round(len(rows) / 6, 3) and sum(d["outcomes"].values()) == len(rows)
    assert "validity" not in d and "filters" not in d  # what holds by construction is not reported as a metric


def test_the_same_molecules_are_delivered_whatever_order_the_batches_run_in(sqlite_url, molecule_artifact):
    register_molecules(sqlite_url, molecule_artifact)
    jobs = [submit_molecules(database_url=sqlite_url, send=lambda *a: None, **REQUEST).job_id for _ in (0, 1)]
    run_job(sqlite_url, jobs[0])
    run_job(sqlite_url, jobs[1], reverse=True)
    a, b = (
        [(r["detail"]["slot"], r["detail"]["smiles"], r["detail"]["outcome"]) for r in results_of(sqlite_url, j)]
        for j in jobs
    )
    assert sorted(a) == sorted(b) and any(o == "delivered" for _, _, o in a)


def test_a_spent_sample_budget_ends_the_job_short_and_says_so(sqlite_url, molecule_artifact):
    register_molecules(sqlite_url, molecule_artifact)
    summary = submit_molecules(
        database_url=sqlite_url, send=lambda *a: None, **{**REQUEST, "count": 50, "max_samples": 60}
    )
    run_job(sqlite_url, summary.job_id)
    with session_scope(sqlite_url) as s:
        job = repo.get_job(s, summary.job_id)
    d = job.metrics["delivered"]
    assert job.items_total == 60 and d["samples"] == 60 and d["delivered"] < 50 and d["budget_spent"]


def fixed_job(url: str, smiles: list[str], **request) -> int:
    """A job whose one batch 'generates' ``smiles`` (scored for real), run to its end; returns its id."""
    from functools import partial

    from medbatch.ml import chem
    from medbatch.pipeline.common import run_batch
    from medbatch.pipeline.molecules import _result_row, write_batch

    n = len(smiles)
    job_id = submit_molecules(
        database_url=url, send=lambda *a: None, count=n, batch_size=n, max_samples=n, **request
    ).job_id

    def predict(model, items):
        scored = [chem.score(smiles[it.payload["k"]], chem.moses_training_set()) for it in items]
        return [
            _result_row(model, it, sc, True, 20.0 + it.payload["k"], 9) for it, sc in zip(items, scored, strict=True)
        ], []

    with session_scope(url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == job_id))
    run_batch(batch_id, database_url=url, max_attempts=5, predict=predict, write=partial(write_batch, staged=[]))
    finalize_job(url, job_id)
    return job_id


def test_known_and_unlikely_molecules_are_not_delivered_unless_allowed(sqlite_url, molecule_artifact, moses_smiles):
    # Given generations (fixed here) of a MOSES training molecule, then a new one, and a new one with NLL 22
    register_molecules(sqlite_url, molecule_artifact)
    smiles = [moses_smiles[0], "CC1(C)CC(NC(=O)c2ccc(F)c(Cl)c2)CC(C)(C)N1", "CCOC(=O)c1ccc(NC(=O)C2CCCN2C)cc1"]
    default = fixed_job(sqlite_url, smiles)
    allowing = fixed_job(sqlite_url, smiles, allow_known=True, min_likelihood=-21.5)
    outcomes = [[r["detail"]["outcome"] for r in results_of(sqlite_url, j)] for j in (default, allowing)]
    assert outcomes == [["known", "delivered", "delivered"], ["delivered", "delivered", "unlikely"]]
    assert "below --min-likelihood -21.5" in results_of(sqlite_url, allowing)[2]["detail"]["reason"]


def test_redelivered_and_rerun_molecule_batch_writes_the_same_once(sqlite_url, molecule_artifact):
    # Given a staged job (no broker: the pipeline is called directly)
    register_molecules(sqlite_url, molecule_artifact)
    summary = submit_molecules(database_url=sqlite_url, send=lambda *a: None, **{**REQUEST, "max_samples": 9})
    with session_scope(sqlite_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    first = generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)

    def snapshot():
        with session_scope(sqlite_url) as s:
            return {
                r.item_id: (r.label, r.score, r.detail["smiles"], r.detail["nll"])
                for r in s.scalars(select(Result).where(Result.job_id == summary.job_id))
            }

    before = snapshot()
    # When the same message is delivered again: nothing is written
    again = generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)
    assert first["status"] == "done" and first["results"] == 9 and again["status"] == "skipped"
    assert snapshot() == before
    # And when the bookkeeping was lost and the batch really runs again, it generates the same molecules
    with session_scope(sqlite_url) as s:
        s.execute(delete(Result).where(Result.job_id == summary.job_id))
        s.execute(update(Item).where(Item.job_id == summary.job_id).values(status=ItemStatus.PENDING.value))
        s.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.QUEUED.value))
        s.execute(update(Job).where(Job.id == summary.job_id).values(status="running", finished_at=None, metrics=None))
    generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)
    assert sorted(snapshot().values(), key=str) == sorted(before.values(), key=str)
    assert finalize_job(sqlite_url, summary.job_id)["generated"] == 9


def test_duplicates_within_a_job_are_flagged_on_repeats_and_counted(db_url, molecule_artifact):
    # Given a job whose generations (fixed here) repeat ethanol in two spellings and include an invalid one
    from functools import partial

    from medbatch.ml import chem
    from medbatch.pipeline.common import run_batch
    from medbatch.pipeline.molecules import _result_row, write_batch

    register_molecules(db_url, molecule_artifact)
    summary = submit_molecules(database_url=db_url, send=lambda *a: None, count=4, batch_size=4, max_samples=4)
    fixed = ["CCO", "C1CC", "OCC", "c1ccccc1"]

    def predict(model, items):
        return [_result_row(model, it, chem.score(fixed[it.payload["k"]]), True, 1.0, 3) for it in items], []

    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    run_batch(batch_id, database_url=db_url, max_attempts=5, predict=predict, write=partial(write_batch, staged=[]))
    # When the job is finalised (twice: it is idempotent)
    metrics = finalize_job(db_url, summary.job_id)
    assert finalize_job(db_url, summary.job_id) == metrics
    # Then the repeat points at the first occurrence, and the metrics count it once
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary.job_id))
        first_item = s.scalar(select(Item.id).where(Item.job_id == summary.job_id).order_by(Item.id))
    assert [r["detail"].get("duplicate_of") for r in rows] == [None, None, first_item, None]
    assert [r["detail"]["outcome"] for r in rows] == ["delivered", "invalid", "duplicate", "delivered"]
    assert rows[1]["label"] is None and "not parseable" in rows[1]["detail"]["reason"]
    assert metrics["duplicates"] == 1 and metrics["unique"] == 2 and metrics["validity"] == 0.75
    assert metrics["delivered"]["delivered"] == 2 and metrics["delivered"]["budget_spent"]


def test_a_job_end_stores_each_new_detail_exactly_as_computed(db_url, molecule_artifact):
    # Given a finished job's results
    from medbatch.db.repository import molecules as molecule_repo

    register_molecules(db_url, molecule_artifact)
    summary = submit_molecules(database_url=db_url, send=lambda *a: None, **REQUEST)
    run_job(db_url, summary.job_id)
    with session_scope(db_url) as s:
        stored = {r.id: dict(r.detail) for r in repo.job_result_rows(s, summary.job_id)}
    a, b, c, d = list(stored)[:4]
    new = {
        a: {**stored[a], "outcome": "surplus", "reason": "not needed"},  # outcome and reason only: one patch
        b: {**stored[b], "outcome": "surplus", "reason": "not needed"},
        c: {**stored[c], "outcome": "delivered", "reason": None},  # a reason set to null stays a key, null
        d: {k: v for k, v in {**stored[d], "duplicate_of": 7}.items() if k != "tokens"},  # another change: whole
    }
    # When the job's end writes them
    with session_scope(db_url) as s:
        molecule_repo.write_outcomes(s, {rid: (stored[rid], detail) for rid, detail in new.items()})
    # Then every stored detail is exactly the new one, and no other result changed
    with session_scope(db_url) as s:
        after = {r.id: dict(r.detail) for r in repo.job_result_rows(s, summary.job_id)}
    assert {rid: after[rid] for rid in new} == new
    assert {rid: v for rid, v in after.items() if rid not in new} == {
        rid: v for rid, v in stored.items() if rid not in new
    }
