"""Molecule jobs through the real queue, a real molecules worker process and a real database."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import delete, select, update

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, BatchStatus, Item, ItemStatus, Job, Result
from medbatch.errors import InvalidInput
from medbatch.pipeline.molecules import finalize_job, generate_batch
from medbatch.producer.generation import batch_seed, submit_molecules
from tests.helpers import register_molecules, wait_for_job
from tests.helpers import run_cli as medbatch

pytestmark = pytest.mark.integration


def test_submit_molecules_end_to_end(db_url, service_env, start_worker, molecule_artifact):
    # Given a registered generator and a worker on the molecules queue
    version = register_molecules(db_url, molecule_artifact)
    start_worker("molecules")
    # When 90 molecules are requested in batches of 40 from the command line, waiting for the end
    run = medbatch(
        service_env, "submit", "molecules", "--count", "90", "--seed", "5", "--batch-size", "40", "--json", "--wait"
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    counts = wait_for_job(db_url, summary["job_id"], timeout_s=60)
    # Then every slot has exactly one result: valid molecules with properties, invalid ones with a reason
    assert summary["model"] == {"name": "molecules", "version": version} and summary["batches"] == 3
    assert counts["status"] == "completed" and counts["items_done"] == 90 and counts["items_failed"] == 0
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary["job_id"]))
        metrics = repo.get_job(s, summary["job_id"]).metrics
    assert len(rows) == 90
    valid = [r for r in rows if r["detail"]["valid"]]
    invalid = [r for r in rows if not r["detail"]["valid"]]
    assert valid and invalid  # a tiny model produces both
    for r in valid:
        d = r["detail"]
        assert r["label"] == d["canonical"] and r["score"] == d["qed"]
        assert d["mol_weight"] > 0 and d["sa_score"] > 0 and isinstance(d["lipinski_pass"], bool)
        assert isinstance(d["pains"], list) and isinstance(d["novel"], bool)
    for r in invalid:
        assert r["label"] is None and r["score"] is None and r["detail"]["reason"]
    # And the job's metrics are stored, duplicates flagged on the repeats only
    assert metrics["generated"] == 90 and metrics["valid"] == len(valid)
    assert metrics["validity"] == round(len(valid) / 90, 4)
    dups = [r for r in valid if "duplicate_of" in r["detail"]]
    assert metrics["duplicates"] == len(dups) == len(valid) - len({r["label"] for r in valid})
    assert metrics["reference"]["validity"] == 0.975 and metrics["seed"] == 5
    # And the worker's answer is the same as sampling the batch in process with the batch's seed
    from medbatch.ml.molecules import load_model

    first_batch = load_model(molecule_artifact).sample(40, seed=batch_seed(5, 0))
    assert [r["detail"]["smiles"] for r in rows[:40]] == [g.smiles for g in first_batch]
    # And `medbatch status` shows the metrics beside the MOSES reference, as JSON and for people
    status = medbatch(service_env, "status", str(summary["job_id"]), "--json")
    assert json.loads(status.stdout)["metrics"] == metrics
    human = medbatch(service_env, "status", str(summary["job_id"]))
    assert "MOSES CharRNN" in human.stdout and "0.975" in human.stdout, human.stdout


def test_redelivered_and_rerun_molecule_batch_writes_the_same_once(sqlite_url, molecule_artifact):
    # Given a staged job (no broker: the pipeline is called directly)
    register_molecules(sqlite_url, molecule_artifact)
    summary = submit_molecules(database_url=sqlite_url, send=lambda *a: None, count=30, seed=1, batch_size=30)
    with session_scope(sqlite_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    first = generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)

    def snapshot():
        with session_scope(sqlite_url) as s:
            return {
                r.item_id: (r.label, r.score, r.detail["smiles"])
                for r in s.scalars(select(Result).where(Result.job_id == summary.job_id))
            }

    before = snapshot()
    # When the same message is delivered again: nothing is written
    again = generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)
    assert first["status"] == "done" and first["results"] == 30 and again["status"] == "skipped"
    assert snapshot() == before
    # And when the bookkeeping was lost and the batch really runs again, it generates the same molecules
    with session_scope(sqlite_url) as s:
        s.execute(delete(Result).where(Result.job_id == summary.job_id))
        s.execute(update(Item).where(Item.job_id == summary.job_id).values(status=ItemStatus.PENDING.value))
        s.execute(update(Batch).where(Batch.id == batch_id).values(status=BatchStatus.QUEUED.value))
        s.execute(update(Job).where(Job.id == summary.job_id).values(status="running", finished_at=None, metrics=None))
    generate_batch(batch_id, database_url=sqlite_url, max_attempts=5)
    assert sorted(snapshot().values(), key=str) == sorted(before.values(), key=str)
    assert finalize_job(sqlite_url, summary.job_id)["generated"] == 30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "--count"),
        ({"count": 2_000_000}, "--count"),
        ({"count": 5, "seed": -1}, "--seed"),
        ({"count": 5, "temperature": 0.0}, "--temperature"),
        ({"count": 5, "temperature": float("nan")}, "--temperature"),
    ],
)
def test_bad_requests_are_refused_before_a_job_exists(sqlite_url, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        submit_molecules(database_url=sqlite_url, send=lambda *a: None, **kwargs)
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(Job.id)) is None


def test_cli_submit_molecules_refuses_a_bad_temperature_with_exit_2(sqlite_url):
    run = medbatch({"MEDBATCH_DATABASE_URL": sqlite_url}, "submit", "molecules", "--count", "5", "--temperature", "9")
    assert run.returncode == 2 and "--temperature must be from 0.05 to 3.0" in run.stderr


def test_the_shipped_model_is_used_on_a_fresh_install(sqlite_url):
    # Given a database with no molecules model registered, submitting uses the one shipped in the package
    summary = submit_molecules(database_url=sqlite_url, send=lambda *a: None, count=3)
    with session_scope(sqlite_url) as s:
        model = repo.active_model(s, "molecules")
        items = list(s.scalars(select(Item).where(Item.job_id == summary.job_id).order_by(Item.id)))
    assert model.uri == "builtin:molecules.zip" and model.metrics["generated"]["samples"] == 10_000
    assert [it.payload["k"] for it in items] == [0, 1, 2] and {it.payload["n"] for it in items} == {3}


def test_duplicates_within_a_job_are_flagged_on_repeats_and_counted(db_url, molecule_artifact):
    # Given a job whose generations (fixed here) repeat ethanol in two spellings and include an invalid one
    from medbatch.ml import chem
    from medbatch.pipeline.common import run_batch
    from medbatch.pipeline.molecules import _result_row

    register_molecules(db_url, molecule_artifact)
    summary = submit_molecules(database_url=db_url, send=lambda *a: None, count=4, batch_size=4)
    fixed = ["CCO", "C1CC", "OCC", "c1ccccc1"]

    def predict(model, items):
        return [_result_row(model, it, chem.score(fixed[it.payload["k"]]), True) for it in items], []

    with session_scope(db_url) as s:
        batch_id = s.scalar(select(Batch.id).where(Batch.job_id == summary.job_id))
    run_batch(batch_id, database_url=db_url, max_attempts=5, predict=predict)
    # When the job is finalised (twice: it is idempotent)
    metrics = finalize_job(db_url, summary.job_id)
    assert finalize_job(db_url, summary.job_id) == metrics
    # Then the repeat points at the first occurrence, and the metrics count it once
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary.job_id))
        first_item = s.scalar(select(Item.id).where(Item.job_id == summary.job_id).order_by(Item.id))
    assert [r["detail"].get("duplicate_of") for r in rows] == [None, None, first_item, None]
    assert rows[1]["label"] is None and "not parseable" in rows[1]["detail"]["reason"]
    assert metrics["duplicates"] == 1 and metrics["unique"] == 2 and metrics["validity"] == 0.75
