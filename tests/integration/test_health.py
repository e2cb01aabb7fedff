"""`medbatch worker check`: catches a worker that answers pings but has stopped consuming."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import redis

from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from medbatch.worker.health import PROGRESS_KEY
from tests.helpers import wait_for, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def check(env: dict, hostname: str, stall_s: int, queues: str = "tabular") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "medbatch.cli",
            "worker",
            "check",
            "-n",
            hostname,
            "-Q",
            queues,
            "--stall-s",
            str(stall_s),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def idle_s(env: dict, hostname: str) -> float:
    """Seconds since ``hostname`` last finished a task, as the check reads it from the broker."""
    raw = redis.Redis.from_url(env["MEDBATCH_BROKER_URL"]).get(PROGRESS_KEY.format(hostname=hostname))
    return time.time() - float(raw) if raw else float("inf")


def test_check_fails_when_work_waits_and_the_worker_stopped_consuming(
    db_url, service_env, celery_app, sender, start_worker, tmp_path
):
    # Given a healthy worker that has done some work
    worker = start_worker("tabular")
    path = write_patients(tmp_path / "r.csv", "risk", 200, seed=1)
    wait_for_job(db_url, submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100).job_id)
    healthy = check(service_env, worker.name, stall_s=2)
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    # When it stops consuming (still alive, still answering pings) while work arrives
    celery_app.control.cancel_consumer("tabular", destination=[worker.name], reply=True)
    job = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100)
    wait_for(lambda: idle_s(service_env, worker.name) > 2.5, what="the worker's last progress 2.5 s old")
    stalled = check(service_env, worker.name, stall_s=2)
    # Then the check fails and says why; once consuming again the work completes
    assert stalled.returncode == 1
    assert "answers pings but finished no task" in stalled.stderr and "waiting" in stalled.stderr
    celery_app.control.add_consumer("tabular", destination=[worker.name], reply=True)
    assert wait_for_job(db_url, job.job_id)["items_done"] == 200
    assert check(service_env, worker.name, stall_s=2).returncode == 0
    wrong = check(service_env, worker.name, stall_s=2, queues="tabular,reports")
    assert wrong.returncode == 1 and "is not consuming reports" in wrong.stderr


def test_check_fails_for_a_worker_that_is_gone(service_env):
    run = check(service_env, "nobody@nowhere", stall_s=60)
    assert run.returncode == 1 and "does not answer" in run.stderr
