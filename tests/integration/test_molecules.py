"""Molecule jobs through the real queue, a real molecules worker process and a real database."""

from __future__ import annotations

import json

import pytest

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.producer.generation import batch_seed
from tests.helpers import register_molecules, wait_for_job
from tests.helpers import run_cli as medbatch

pytestmark = pytest.mark.integration


def test_submit_molecules_delivers_n_end_to_end(db_url, service_env, start_worker, molecule_artifact):
    # Given a registered generator and a worker with two children on the molecules queue
    version = register_molecules(db_url, molecule_artifact)
    start_worker("molecules", concurrency=2)
    # When 8 molecules are requested in batches of 20 from the command line, waiting for the end (the tiny
    # test model has learnt training molecules: known ones are allowed)
    run = medbatch(
        service_env,
        *("submit", "molecules", "--count", "8", "--seed", "5", "--batch-size", "20", "--max-samples", "400"),
        *("--allow-known", "--json", "--wait"),
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    counts = wait_for_job(db_url, summary["job_id"], timeout_s=120)
    # Then the first round fell short, the workers staged and ran top-up rounds, and exactly 8 were delivered
    assert summary["model"] == {"name": "molecules", "version": version} and summary["items_staged"] == 12
    assert counts["status"] == "completed" and counts["items_failed"] == 0
    with session_scope(db_url) as s:
        rows = list(repo.iter_results(s, summary["job_id"]))
        metrics = repo.get_job(s, summary["job_id"]).metrics
        job = repo.get_job(s, summary["job_id"])
    assert job.batches_total > 1 and len(rows) == job.items_total == counts["items_done"] > 12
    delivered = [r for r in rows if r["detail"]["outcome"] == "delivered"]
    assert len(delivered) == 8 and len({r["label"] for r in delivered}) == 8
    # And every sample is a row: valid molecules with properties, invalid ones with a reason, all with an NLL
    valid = [r for r in rows if r["detail"]["valid"]]
    invalid = [r for r in rows if not r["detail"]["valid"]]
    assert valid and invalid
    for r in valid:
        d = r["detail"]
        assert r["label"] == d["canonical"] and r["score"] == d["qed"]
        assert d["mol_weight"] > 0 and d["sa_score"] > 0 and isinstance(d["lipinski_pass"], bool)
        assert isinstance(d["pains"], list) and isinstance(d["novel"], bool)
    for r in invalid:
        assert r["label"] is None and r["score"] is None and r["detail"]["reason"]
        assert r["detail"]["outcome"] == "invalid"
    assert all(r["detail"]["nll"] > 0 for r in rows)
    # And the raw metrics are over every sample, duplicates flagged on the repeats only
    assert metrics["generated"] == len(rows) and metrics["valid"] == len(valid)
    assert metrics["validity"] == round(len(valid) / len(rows), 4)
    dups = [r for r in valid if "duplicate_of" in r["detail"]]
    assert metrics["duplicates"] == len(dups) == len(valid) - len({r["label"] for r in valid})
    assert metrics["reference"]["validity"] == 0.975 and metrics["seed"] == 5
    assert metrics["delivered"]["delivered"] == 8 and metrics["delivered"]["samples"] == len(rows)
    # And the worker's answer is the same as sampling the batch in process with the batch's seed
    from medbatch.ml.molecules import load_model

    first_batch = load_model(molecule_artifact).sample(12, seed=batch_seed(5, 0))
    assert [r["detail"]["smiles"] for r in rows[:12]] == [g.smiles for g in first_batch]
    assert [r["detail"]["nll"] for r in rows[:12]] == [g.nll for g in first_batch]
    # And `medbatch status` shows the raw row and the delivered row beside the MOSES reference
    status = medbatch(service_env, "status", str(summary["job_id"]), "--json")
    assert json.loads(status.stdout)["metrics"] == metrics
    human = medbatch(service_env, "status", str(summary["job_id"]))
    assert "MOSES CharRNN" in human.stdout and "0.975" in human.stdout, human.stdout
    assert "delivered 8 of 8" in human.stdout and "model, raw" in human.stdout, human.stdout


def test_cli_submit_molecules_refuses_a_bad_temperature_with_exit_2(sqlite_url):
    run = medbatch({"MEDBATCH_DATABASE_URL": sqlite_url}, "submit", "molecules", "--count", "5", "--temperature", "9")
    assert run.returncode == 2 and "--temperature must be from 0.05 to 3.0" in run.stderr
