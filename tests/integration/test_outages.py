"""Services that go away or need credentials: PostgreSQL restarted mid-job, Redis over TLS with a password.

Each test starts services of its own (``tests/services.py``): the shared ones serve other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from medbatch.db.session import dispose_engines, session_scope
from medbatch.db.tables import Item, ItemStatus, Result
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from tests.helpers import ROOT, need, wait_for_job
from tests.services import postgres_binaries_missing, start_private_postgres, start_tls_redis, tls_missing

pytestmark = pytest.mark.integration


def _env(broker_url: str, database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "MEDBATCH_BROKER_URL": broker_url,
        "MEDBATCH_DATABASE_URL": database_url,
        "MEDBATCH_MODEL_DIR": str(tmp_path / "models"),
        "MEDBATCH_RESULTS_DIR": str(tmp_path / "results"),
        "MEDBATCH_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def _outcome(database_url: str, job_id: int) -> tuple[int, int, int]:
    """(results, distinct items with a result, items not done) of a job."""
    with session_scope(database_url) as s:
        results = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
        distinct = s.scalar(select(func.count(func.distinct(Result.item_id))).where(Result.job_id == job_id))
        not_done = s.scalar(
            select(func.count()).select_from(Item).where(Item.job_id == job_id, Item.status != ItemStatus.DONE.value)
        )
    return results, distinct, not_done


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own, which it may stop and start (the shared one is left alone)."""
    why = postgres_binaries_missing()
    if why:
        need("PostgreSQL server binaries", why)
    server = start_private_postgres()
    yield server
    dispose_engines()
    server.remove()


def test_postgres_restarted_mid_job_tasks_retry_and_the_job_completes(private_postgres, redis_url, tmp_path):
    from medbatch.config import Settings
    from medbatch.db.migrate import upgrade
    from medbatch.producer.send import celery_sender
    from medbatch.worker.app import create_app
    from medbatch.worker.processes import start_worker, wait_until_ready

    # Given a worker in the middle of a job whose database is a PostgreSQL we can crash
    url = private_postgres.url
    upgrade(url)
    app = create_app(Settings(broker_url=redis_url, database_url=url))
    worker = start_worker("tabular", env=_env(redis_url, url, tmp_path), log_path=tmp_path / "worker.log")
    try:
        wait_until_ready(app, worker, timeout_s=90)
        path = write_patients(tmp_path / "p.csv", "risk", 20_000, seed=5)
        summary = submit_records(path, "risk", database_url=url, send=celery_sender(app, url), batch_size=100)
        deadline = time.monotonic() + 60
        while _outcome(url, summary.job_id)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        # When PostgreSQL crashes (immediate stop: no checkpoint, clients cut off), stays down 3 s, comes back
        done_at_crash = _outcome(url, summary.job_id)[0]
        private_postgres.stop("immediate")
        time.sleep(3)
        private_postgres.start()
        dispose_engines()  # this process's pooled connections died with the server
        # Then the tasks that met the outage retried, and every item ends with exactly one result
        counts = wait_for_job(url, summary.job_id, timeout_s=90)
        results, distinct, not_done = _outcome(url, summary.job_id)
        log = worker.log_path.read_text(errors="replace")
        assert 0 < done_at_crash < summary.items_staged, "the crash did not fall in the middle of the job"
        assert "DatabaseUnavailable" in log and "Retry in" in log, log[-3000:]
        assert counts["status"] == "completed" and counts["batches"].get("dead", 0) == 0, counts
        assert results == distinct == summary.items_staged == 20_000
        assert not_done == 0
    finally:
        worker.kill()  # cold: nothing is asserted about shutdown
        app.close()


def test_postgres_restarted_mid_submit_every_row_is_staged_once(private_postgres, monkeypatch, caplog):
    import threading

    import numpy as np

    from medbatch.db import repository as repo
    from medbatch.db.migrate import upgrade
    from medbatch.db.repository.staging import ItemColumns
    from medbatch.db.tables import Batch
    from medbatch.producer import staging
    from medbatch.producer.chunks import RecordChunk

    url = private_postgres.url
    upgrade(url)
    monkeypatch.setattr(staging, "STAGE_RETRY_DELAYS_S", (0.5, 1.0, 2.0, 4.0, 8.0))
    back = threading.Event()
    restarts: list[threading.Thread] = []

    def restart_in(seconds: float) -> None:
        time.sleep(seconds)
        private_postgres.start()
        back.set()

    # Given a file of 8 chunks of 250 rows, during whose reading PostgreSQL crashes and comes back 2 s later
    def chunks():
        for k in range(8):
            if k == 4:
                private_postgres.stop("immediate")
                restarts.append(threading.Thread(target=restart_in, args=(2.0,), daemon=True))
                restarts[0].start()
            rows = np.arange(2 + 250 * k, 2 + 250 * (k + 1), dtype=np.int64)
            yield RecordChunk(
                items=ItemColumns("f.csv", rows, [f"P{r}" for r in rows], ['{"age": 50}'] * len(rows)),
                rejected=[{"source_uri": "f.csv", "source_row": 10_000 + k, "patient_ref": None, "reason": "bad"}],
            )

    # When it is staged
    try:
        summary = staging.stage_job(
            database_url=url,
            workload="risk",
            source="f.csv",
            model=("risk", "1"),
            options={},
            chunks=chunks(),
            batch_size=100,
            send=None,
        )
    finally:
        for t in restarts:  # the server is back before the fixture removes it, whatever happened
            t.join(timeout=60)
    # Then the producer rode out the crash: every row staged once, every batch once, every rejection once
    assert back.is_set() and "trying again" in caplog.text, caplog.text
    with session_scope(url) as s:
        keys = list(s.scalars(select(Item.item_key).where(Item.job_id == summary.job_id)))
        seqs = list(s.scalars(select(Batch.seq).where(Batch.job_id == summary.job_id).order_by(Batch.seq)))
        counts = repo.job_counts(s, summary.job_id)
    assert len(keys) == len(set(keys)) == 2000 == summary.items_staged == counts["items_total"]
    assert seqs == list(range(20)) and counts["rows_rejected"] == 8 and counts["status"] == "queued"


# --------------------------------------------------------------------------- Redis with TLS and a password


@pytest.fixture
def tls_redis():
    why = tls_missing()
    if why:
        need("Redis with TLS", why)
    server = start_tls_redis()
    yield server
    server.stop()


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medbatch.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rediss_url_with_a_password_runs_a_job_and_the_health_check(tls_redis, db_url, tmp_path):
    from medbatch.config import Settings
    from medbatch.worker.app import create_app
    from medbatch.worker.processes import start_worker, wait_until_ready

    # Given a Redis that speaks only TLS and wants a password, and a worker given its rediss:// URL
    url = tls_redis.url()
    env = _env(url, db_url, tmp_path)
    app = create_app(Settings(broker_url=url, database_url=db_url))
    worker = start_worker("tabular", env=env, log_path=tmp_path / "worker.log")
    try:
        wait_until_ready(app, worker, timeout_s=90)
        # When a job is submitted through the CLI over the same URL
        path = write_patients(tmp_path / "p.csv", "risk", 500, seed=2)
        run = _cli(env, "submit", "risk", str(path), "--batch-size", "100", "--wait", "--json")
        # Then it completes, and the worker health check works over TLS
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["final"]["items_done"] == 500
        check = _cli(env, "worker", "check", "-n", worker.name, "-Q", "tabular", "--stall-s", "60")
        assert check.returncode == 0, check.stdout + check.stderr
        assert tls_redis.password not in worker.log_path.read_text(errors="replace")
    finally:
        worker.kill()  # cold: nothing is asserted about shutdown
        app.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_wrong_redis_password_is_a_clear_error_without_the_password(tls_redis, db_url, tmp_path):
    # Given the right TLS Redis but a wrong password
    wrong = "Wrong-pass-3d9a"
    env = _env(tls_redis.url(password=wrong), db_url, tmp_path)
    path = write_patients(tmp_path / "p.csv", "risk", 10, seed=2)
    # When a job is submitted
    run = _cli(env, "submit", "risk", str(path))
    # Then the CLI exits 3 (service unavailable), says why, and never prints the password
    assert run.returncode == 3, run.stdout + run.stderr
    assert "invalid username-password pair" in run.stderr and "resume" in run.stderr, run.stderr
    assert "rediss://:***@127.0.0.1" in run.stderr, run.stderr
    assert wrong not in run.stdout + run.stderr and "Traceback" not in run.stderr
    # And the health check fails with the same reason, without the password either
    check = _cli(env, "worker", "check", "-n", "nobody@nowhere", "-Q", "tabular")
    assert check.returncode == 1 and "invalid username-password pair" in check.stderr, check.stdout + check.stderr
    assert wrong not in check.stdout + check.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_rediss_url_without_a_ca_verifies_the_server_and_refuses_an_unknown_one(tls_redis, db_url, tmp_path):
    # Given a rediss:// URL that names no CA (kombu alone would then skip verification: CERT_NONE)
    bare = f"rediss://:{tls_redis.password}@127.0.0.1:{tls_redis.port}/0"
    path = write_patients(tmp_path / "p.csv", "risk", 10, seed=2)
    # When a job is submitted to a server whose certificate no system CA signed
    run = _cli(_env(bare, db_url, tmp_path), "submit", "risk", str(path))
    # Then the certificate is checked and refused: nothing is sent to an unverified server
    assert run.returncode == 3, run.stdout + run.stderr
    assert "certificate verify failed" in run.stderr, run.stderr
    assert tls_redis.password not in run.stderr
