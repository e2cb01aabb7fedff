"""Drift every job (issue 14.3): a shifted cohort is flagged in status, on the morning page, in nightly's
judgement inputs and in Prometheus; a sample drawn like the training data is not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from medbatch.ml import tabular
from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _cohort(path, frame):
    out = frame[list(tabular.RISK_FEATURES)].copy()
    out.insert(0, "patient_id", [f"P{i:05d}" for i in range(len(out))])
    out.to_csv(path, index=False)
    return path


def test_shifted_cohort_is_flagged_and_training_like_sample_is_not(service_env, db_url, start_worker, tmp_path):
    from prometheus_client import generate_latest

    from medbatch import summary
    from medbatch.monitoring import make_registry

    nhefs = tabular.load_nhefs()
    like = nhefs.sample(300, random_state=11)
    old = like.copy()
    rng = np.random.default_rng(5)
    old["age"] = rng.uniform(80, 95, len(old)).round()
    old["bmi"] = rng.uniform(40, 50, len(old)).round(1)
    start_worker("tabular")
    jobs = {}
    for name, frame in (("like", like), ("old", old)):
        run = medbatch(service_env, "submit", "risk", str(_cohort(tmp_path / f"{name}.csv", frame)), "--json", "--wait")
        assert run.returncode == 0, run.stderr
        jobs[name] = json.loads(run.stdout)["job_id"]
    # When their status is read
    status = {k: json.loads(medbatch(service_env, "status", str(j), "--json").stdout) for k, j in jobs.items()}
    # Then the training-like sample has an empty flagged list, the shifted cohort names age and bmi
    assert status["like"]["drift"]["flagged"] == []
    assert set(status["old"]["drift"]["flagged"]) == {"age", "bmi"}
    assert status["old"]["drift"]["features"]["age"]["out_of_range_share"] > 0.9
    assert status["old"]["drift"]["scores"]["mean"] > status["like"]["drift"]["scores"]["mean"]
    text = medbatch(service_env, "status", str(jobs["old"])).stdout
    assert "DRIFT in age" in text and "bmi" in text
    # And the morning page shows the drift table and asks for attention
    from medbatch.nightly import night_of

    page = summary.render(summary.collect(db_url, night_of(datetime.now(UTC))))
    assert "Input drift" in page and "Needs attention" in page
    # And Prometheus exposes the latest job's PSI and flagged count per workload
    exposition = generate_latest(make_registry(db_url, service_env["MEDBATCH_BROKER_URL"])).decode()
    assert 'medbatch_drift_flagged_features{workload="risk"} 2.0' in exposition
    assert 'medbatch_drift_psi{feature="age",workload="risk"}' in exposition


def test_nightly_judgement_names_drifted_features(db_url):
    from medbatch import nightly

    # Given a finished risk job whose stored drift flags age (as its worker wrote it)
    from medbatch.db.session import session_scope
    from medbatch.db.tables import Job

    with session_scope(db_url) as s:
        job = Job(workload="risk", status="completed", model_name="risk", model_version="x", metrics={
            "drift": {"available": True, "flagged": ["age"], "features": {}, "n": 10}
        })
        s.add(job)
        s.flush()
        job_id = job.id
    outcome = nightly.NightlyOutcome(night="2026-12-01", claim="test")
    outcome.jobs.append({"job_id": job_id, "workload": "risk"})
    # When nightly judges the night
    nightly._judge(outcome, db_url, waited=True)
    # Then a human is needed, and the message names the feature
    assert any("drifted" in n and "age" in n for n in outcome.needs_human) and outcome.exit_code == 1
