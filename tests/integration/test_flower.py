"""Flower, the real one, sees the worker and a finished task through Celery events."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from medbatch.producer.enqueue import submit_records
from medbatch.producer.synthetic import write_patients
from tests.conftest import wait_for_job

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
    finally:
        flower.terminate()
        try:
            flower.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flower.kill()
        log.close()
