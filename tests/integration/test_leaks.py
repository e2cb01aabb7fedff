"""Nothing leaks: no patient field reaches Redis, Celery events (Flower's task args) or the logs of a real
job; a message in any content type but JSON is refused, logged and never run."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import redis

from tests.helpers import IDENTIFYING, identifying_patients, wait_for, wait_for_job
from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _decoded(raw: bytes | str) -> str:
    """``raw`` as text, with the base64 body of every kombu envelope in it decoded (where task args travel)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    parts = [text]

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("body"), str):
                try:
                    parts.append(base64.b64decode(node["body"]).decode("utf-8", "replace"))
                except ValueError:
                    pass
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    try:
        walk(json.loads(text))
    except ValueError:
        pass
    return "\n".join(parts)


def _dump(client: redis.Redis) -> str:
    """Every key and value in this Redis database as text, message bodies decoded."""
    out = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "hash":
            values = [v for kv in client.hgetall(key).items() for v in kv]
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        else:
            values = [kind.encode()]
        out.append(f"{key!r}: " + " | ".join(_decoded(v) for v in values))
    return "\n".join(out)


def test_a_real_job_leaves_no_patient_field_in_redis_events_or_logs(
    redis_url, db_url, service_env, start_worker, tmp_path
):
    # Given a patient file with names, phones and dates of birth, and a listener on every Redis channel
    # (Celery events, which Flower shows as task args, travel over PUBLISH)
    path = identifying_patients(tmp_path / "patients.csv")
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe("*")
    heard: list[str] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "pmessage":
                heard.append(_decoded(message["data"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        # When it is submitted through the CLI (queued before any worker runs), then processed by a
        # worker logging at DEBUG
        run = medbatch(service_env, "submit", "risk", str(path), "--batch-size", "20", "--json")
        assert run.returncode == 0, run.stderr
        queued = _dump(client)
        worker = start_worker("tabular", env={"MEDBATCH_LOG_LEVEL": "DEBUG"})
        counts = wait_for_job(db_url, json.loads(run.stdout)["job_id"])
        # the last task events: one task-succeeded per batch (the worker sends task events in buffered groups)
        batches = sum(counts["batches"].values())
        wait_for(lambda: sum(h.count('"task-succeeded"') for h in list(heard)) >= batches, what="task events")
        check = medbatch(service_env, "worker", "check", "-n", worker.name)
        after = _dump(client)
    finally:
        stop.set()
        listener.join(timeout=5)
        pubsub.close()
    assert counts["items_done"] == 59 and counts["rows_rejected"] == 1
    assert any("task-received" in h for h in heard) and any("task-succeeded" in h for h in heard)
    assert "score_batch" in queued
    # Then no identifying value, and no field of a row, is in Redis, in the events or in any log
    worker.stop()
    places = {
        "redis while queued": queued,
        "redis after": after,
        "celery events": "\n".join(heard),
        "worker log": worker.log_path.read_text(errors="replace"),
        "submit output": run.stdout + run.stderr,
        "worker check output": check.stdout + check.stderr,
    }
    for place, text in places.items():
        for value in IDENTIFYING:
            assert value not in text, f"{value!r} found in {place}"
    for place in ("redis while queued", "redis after", "celery events"):
        for field in ('"age"', '"bmi"', "'age'", "'bmi'", "patients.csv"):
            assert field not in places[place], f"{field} found in {place}"


def test_messages_in_any_content_type_but_json_are_refused_and_logged(
    redis_url, db_url, celery_app, sender, start_worker, tmp_path
):
    from medbatch.producer.submit import submit_records

    # Given a worker, and messages for a real task in YAML (that would run a command if loaded), msgpack,
    # raw bytes and plain text
    worker = start_worker("tabular")
    marker = tmp_path / "pwned"
    bodies = {
        "application/x-yaml": f"!!python/object/apply:os.system ['touch {marker}']".encode(),
        "application/x-msgpack": b"\x93\x91\x01\x80\x80",
        "text/plain": b"[[1], {}, {}]",
        # kombu trusts these two raw types without accept_content; they used to stop the worker
        "application/data": b"\x00\x01raw bytes",
        "application/text": b"[[1], {}, {}]",
    }
    with celery_app.connection_for_write() as conn:
        producer = conn.Producer()
        for i, (content_type, body) in enumerate(bodies.items()):
            producer.publish(
                body,
                routing_key="tabular",
                exchange="",
                content_type=content_type,
                content_encoding="binary",
                headers={"task": "medbatch.tabular.score_batch", "id": f"evil-{i}", "lang": "py", "argsrepr": "?"},
            )
    # When the worker has had time to receive them
    deadline = time.monotonic() + 20
    log = ""
    while time.monotonic() < deadline:
        log = worker.log_path.read_text(errors="replace")
        if all(ct in log for ct in bodies):
            break
        time.sleep(0.3)
    # Then each was refused and logged by content type, none ran, none is left to come back
    for content_type in bodies:
        assert "Refusing to deserialize untrusted content of type" in log and content_type in log, content_type
    assert not marker.exists()
    client = redis.Redis.from_url(redis_url)
    assert client.llen("tabular") == 0 and not client.hlen("unacked")
    # And the worker goes on with real work
    path = identifying_patients(tmp_path / "p.csv", 10)
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=5)
    assert wait_for_job(db_url, summary.job_id, timeout_s=30)["items_done"] == 9
