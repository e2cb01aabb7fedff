"""`medbatch metrics`: job-level Prometheus metrics from a real database, a real broker and a real worker."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest
import redis
import requests
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from medbatch.monitoring import KOMBU_PRIORITY_SEP, make_registry
from medbatch.producer.submit import submit_records
from medbatch.producer.synthetic import write_patients
from tests.helpers import wait_for_job

pytestmark = pytest.mark.integration

ALLOWED_LABELS = {"queue", "workload", "state", "status", "direction"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format -> {(sample name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


@pytest.fixture
def exporter(service_env, tmp_path):
    """`medbatch metrics` as its own process on a free port, on this test's broker and database."""
    port = _free_port()
    log = (tmp_path / "metrics.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medbatch.cli", "metrics", "--port", str(port), "--items-every-s", "0"],
        env={**os.environ, **service_env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> tuple[str, dict]:
        r = requests.get(url, timeout=15)
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
        return r.text, parse(r.text)

    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=2)
            break
        except requests.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"medbatch metrics did not start: {(tmp_path / 'metrics.log').read_text()[-2000:]}")
            time.sleep(0.2)
    yield scrape
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def test_metrics_follow_a_real_job_from_queued_to_done(db_url, redis_url, sender, start_worker, exporter, tmp_path):
    # Given 300 patients staged as 3 batches and no worker running yet
    path = write_patients(tmp_path / "patients.csv", "risk", 300, seed=3)
    job = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=100)
    text, m = exporter()
    # Then the work shows as queued, in the database and in the broker, with no progress since it was queued
    assert value(m, "medbatch_database_up") == 1 and value(m, "medbatch_broker_up") == 1
    assert value(m, "medbatch_queue_depth_messages", queue="tabular") == 3
    assert value(m, "medbatch_queue_depth_messages", queue="imaging") == 0
    assert value(m, "medbatch_batches_unfinished", queue="tabular", status="queued") == 3
    assert value(m, "medbatch_items", workload="risk", state="pending") == 300
    assert value(m, "medbatch_items", workload="risk", state="done") == 0
    assert value(m, "medbatch_jobs", workload="risk", status="queued") == 1
    assert value(m, "medbatch_seconds_since_last_batch_finished", queue="tabular") is None
    first_stall = value(m, "medbatch_no_progress_seconds", queue="tabular")
    assert first_stall > 0
    assert value(m, "medbatch_oldest_unfinished_batch_age_seconds", queue="tabular") >= first_stall
    time.sleep(1.2)
    _, m = exporter()
    assert value(m, "medbatch_no_progress_seconds", queue="tabular") >= first_stall + 1  # grows while stuck
    # And nothing in the output names a patient, a file or a job
    for forbidden in ("SYN-", str(tmp_path), "patients.csv", f'"{job.job_id}"'):
        assert forbidden not in text
    labels = {k for (_name, pairs) in m for k, _v in pairs}
    assert labels <= ALLOWED_LABELS

    # When a worker runs the job to the end
    start_worker("tabular")
    counts = wait_for_job(db_url, job.job_id)
    _, m = exporter()
    # Then every staged item is done, the queue is empty and progress was just made
    assert value(m, "medbatch_items", workload="risk", state="done") == counts["items_done"] == 300
    assert value(m, "medbatch_items", workload="risk", state="pending") == 0
    assert value(m, "medbatch_queue_depth_messages", queue="tabular") == 0
    assert value(m, "medbatch_batches_unfinished", queue="tabular", status="queued") == 0
    assert value(m, "medbatch_no_progress_seconds", queue="tabular") == 0
    assert value(m, "medbatch_oldest_unfinished_batch_age_seconds", queue="tabular") == 0
    assert value(m, "medbatch_jobs", workload="risk", status="completed") == 1
    since = value(m, "medbatch_seconds_since_last_batch_finished", queue="tabular")
    assert 0 <= since < 60
    finished_at = value(m, "medbatch_last_batch_finished_timestamp_seconds", queue="tabular")
    assert abs(time.time() - since - finished_at) < 5
    time.sleep(1.2)
    _, m = exporter()
    assert value(m, "medbatch_seconds_since_last_batch_finished", queue="tabular") >= since + 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_priority_lists_count_and_outages_are_reported_not_raised(db_url, redis_url, tmp_path):
    # Given messages on a queue's priority lists as kombu names them, and one delivered but unacked
    client = redis.Redis.from_url(redis_url)
    client.lpush("reports", b"m0")
    client.lpush(f"reports{KOMBU_PRIORITY_SEP}6", b"m1", b"m2")
    client.hset("unacked", "tag-1", b"m3")
    m = parse(generate_latest(make_registry(db_url, redis_url)).decode())
    # Then the depth is the sum over every priority list
    assert value(m, "medbatch_queue_depth_messages", queue="reports") == 3
    assert value(m, "medbatch_broker_unacked_messages") == 1
    # When the broker and the database are both unreachable, a scrape still answers and says so
    dead_redis = f"redis://:hunter2-secret@127.0.0.1:{_free_port()}/0"
    dead_db = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    text = generate_latest(make_registry(dead_db, dead_redis)).decode()
    m = parse(text)
    assert value(m, "medbatch_broker_up") == 0 and value(m, "medbatch_database_up") == 0
    assert not any(name.startswith("medbatch_queue_depth") for name, _ in m)
    assert "hunter2" not in text


def test_alert_rules_name_only_metrics_the_exporter_serves(db_url, redis_url):
    # Given a scrape of an empty deployment, every medbatch_ metric the alert rules use must exist in it
    import yaml

    from tests.helpers import DEPLOY

    served = {name for name, _ in parse(generate_latest(make_registry(db_url, redis_url)).decode())}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    used = {
        name
        for group in rules["groups"]
        for rule in group["rules"]
        for name in re.findall(r"\bmedbatch_[a-z_]+", rule["expr"])
    }
    assert used and used <= served, used - served
