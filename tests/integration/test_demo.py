"""The README's first command: `medbatch demo` on embedded defaults, starting (and stopping) its own Redis."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys

import pytest
from rich.console import Console

from medbatch.worker.embedded import redis_reachable

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_runs_the_main_job_with_its_own_redis(tmp_path):
    # Given no Redis at the configured broker URL and an empty working directory
    broker = f"redis://127.0.0.1:{_free_port()}/0"
    env = {**os.environ, "MEDBATCH_BROKER_URL": broker}
    env.pop("MEDBATCH_DATABASE_URL", None)
    # When the demo runs
    run = subprocess.run(
        [sys.executable, "-m", "medbatch.cli", "demo", "--patients", "300", "--molecules", "100"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Then it succeeds, writes results for both workloads into SQLite, and leaves nothing running
    assert run.returncode == 0, run.stdout + run.stderr
    assert "started a local one" in run.stderr
    assert (tmp_path / "medbatch.db").is_file()
    results = {p.name.split("-")[1]: p for p in (tmp_path / "medbatch-demo").glob("results-*.csv")}
    assert sorted(results) == ["molecules", "report", "risk", "treatment", "xray"]
    for workload in ("risk", "treatment"):
        rows = list(csv.DictReader(results[workload].open()))
        assert 250 <= len(rows) <= 300 and all(r["patient_ref"].startswith("SYN-") for r in rows)
    reports = list(csv.DictReader(results["report"].open()))
    assert len(reports) == 20 and {r["label"] for r in reports} == {"draft_requires_review"}
    assert all(r["model_name"] == "offline:offline-template" for r in reports)
    assert all(
        r["report_text"].startswith("OFFLINE TEMPLATE DRAFT") and r["requires_review"] == "True" for r in reports
    )
    # The X-ray job: 16 synthetic radiographs classified, the stray file reported, the demo model not active
    xrays = list(csv.DictReader(results["xray"].open()))
    assert len(xrays) == 16 and {r["label"] for r in xrays} <= {"normal", "pneumonia"}
    errors = list(csv.DictReader(next((tmp_path / "medbatch-demo").glob("errors-xray-*.csv")).open()))
    assert [e["source_uri"].rsplit("/", 1)[-1] for e in errors] == ["readme.txt"]
    # The molecule job: 100 molecules delivered by the shipped model, every sample a row with its outcome and NLL
    molecules = list(csv.DictReader(results["molecules"].open()))
    delivered = [m for m in molecules if m["outcome"] == "delivered"]
    assert len(delivered) == 100 and len({m["label"] for m in delivered}) == 100
    assert len(molecules) >= 100 and all(float(m["nll"]) > 0 for m in molecules)
    assert "MOSES CharRNN" in run.stderr and "generated" in run.stderr
    models = subprocess.run(
        [sys.executable, "-m", "medbatch.cli", "models", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert any(m["name"] == "xray" and not m["active"] for m in __import__("json").loads(models.stdout))
    assert not redis_reachable(broker, 0.5)


def test_demo_reports_a_database_lost_while_waiting_through_its_own_handler(tmp_path, redis_url, monkeypatch):
    # Given the demo on a PostgreSQL of this test's own, which goes down when the demo first waits for a job
    from medbatch.config import get_settings
    from medbatch.db import repository as repo
    from medbatch.db.session import dispose_engines
    from medbatch.demo import run_demo
    from tests.helpers import need
    from tests.services import postgres_binaries_missing, start_private_postgres

    why = postgres_binaries_missing()
    if why:
        need("PostgreSQL server binaries", why)
    server = start_private_postgres()
    real_job_counts = repo.job_counts
    lost = []

    def job_counts_after_an_outage(session, job_id):
        if not lost:
            server.stop("immediate")
            lost.append(job_id)
        return real_job_counts(session, job_id)

    monkeypatch.setattr(repo, "job_counts", job_counts_after_an_outage)
    for name, value in {
        "MEDBATCH_BROKER_URL": redis_url,
        "MEDBATCH_DATABASE_URL": server.url,
        "MEDBATCH_MODEL_DIR": str(tmp_path / "models"),
        "MEDBATCH_RESULTS_DIR": str(tmp_path / "results"),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    console = Console(file=io.StringIO(), width=200)
    try:
        # When it runs
        code = run_demo(workdir=tmp_path / "demo", patients=20, console=console, molecules=0)
    finally:
        get_settings.cache_clear()
        dispose_engines()
        server.remove()
    # Then its own handler says so and it exits 1 (no typer.Exit escaping from a CLI helper), workers stopped
    said = console.file.getvalue()
    assert lost and code == 1, said
    assert "demo failed: database unavailable" in said
