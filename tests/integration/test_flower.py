"""Flower, the real one, sees the worker and a finished task through Celery events."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import requests
from sqlalchemy import select

from medbatch.db.session import session_scope
from medbatch.db.tables import Batch
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from tests.helpers import wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, auth) -> requests.Response | None:
    try:
        return requests.get(url, auth=auth, timeout=5)
    except requests.RequestException:
        return None


def test_flower_lists_worker_and_finished_task(service_env, db_url, sender, start_worker, tmp_path):
    # Given Flower with basic auth and a worker, both on this test's broker
    port = _free_port()
    env = {
        **os.environ,
        **service_env,
        "MEDBATCH_FLOWER_BASIC_AUTH": "ops:s3cret-test",
        "MEDBATCH_FLOWER_PORT": str(port),
    }
    log = (tmp_path / "flower.log").open("wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "medbatch.cli", "flower"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    auth = ("ops", "s3cret-test")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_get(f"{base}/healthcheck", None) is None):
            time.sleep(0.5)
        worker = start_worker("tabular")
        # When a job runs
        path = write_patients(tmp_path / "r.csv", "risk", 40, seed=1)
        summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100)
        wait_for_job(db_url, summary.job_id)
        # Then Flower's API lists the worker and the finished task, and refuses anonymous calls
        assert _get(f"{base}/api/workers", None).status_code == 401
        workers, tasks = {}, {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = _get(f"{base}/api/workers?refresh=1", auth)
            workers = r.json() if r is not None and r.ok else {}
            r = _get(f"{base}/api/tasks", auth)
            tasks = r.json() if r is not None and r.ok else {}
            done = [
                t
                for t in tasks.values()
                if t.get("name") == "medbatch.tabular.score_batch" and t.get("state") == "SUCCESS"
            ]
            if worker.name in workers and done:
                break
            time.sleep(1)
        assert worker.name in workers
        assert done, f"no finished task in Flower: {tasks}"
        assert all("MRN" not in str(t.get("args")) and "SYN-" not in str(t.get("args")) for t in tasks.values())
        # Every event of a task's life reached Flower: sent (by the producer), received, started, succeeded
        with session_scope(db_url) as s:
            batch_ids = set(s.scalars(select(Batch.id).where(Batch.job_id == summary.job_id)))
        assert len(done) == len(batch_ids) == 1
        for task in done:
            assert all(task.get(event) for event in ("sent", "received", "started", "succeeded")), task
            assert task["sent"] <= task["started"] <= task["succeeded"]
            # Flower shows the batch ID only (argsrepr), and the database identity as the one keyword
            assert task["args"] in {f"[{b}]" for b in batch_ids}
            assert "'db':" in task["kwargs"] and "patient" not in task["kwargs"].lower()
        # And Flower's Prometheus endpoint counts those events. Flower 2.2 serves /metrics (like
        # /healthcheck) without its basic auth: it carries task and worker names, never arguments.
        for anyone in (None, auth):
            r = _get(f"{base}/metrics", anyone)
            assert r is not None and r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
        metrics = r.text
        for event in ("task-sent", "task-received", "task-started", "task-succeeded"):
            assert re.search(rf'flower_events_total\{{[^}}]*type="{event}"[^}}]*\}} [1-9]', metrics), event
        assert f'flower_worker_online{{worker="{worker.name}"}} 1.0' in metrics
        assert 'flower_task_runtime_seconds_count{task="medbatch.tabular.score_batch"' in metrics
    finally:
        flower.terminate()
        try:
            flower.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flower.kill()
        log.close()
