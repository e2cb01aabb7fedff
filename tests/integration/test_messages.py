"""What crosses the broker: batch IDs only, JSON only. Patient data never reaches Redis."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import redis

from medbatch.producer.submit import submit_records

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

PATIENTS = (
    "patient_id,age,bmi,exercise_frequency,smoking_history,name,phone\n"
    "MRN-4471902,54,27.5,3,0,Jane Example,555-0100\n"
    "MRN-4471903,61,31.2,0,20,John Example,555-0101\n"
)


def test_broker_messages_carry_batch_ids_and_no_patient_field(redis_url, db_url, sender, tmp_path):
    # Given a patient file and no worker consuming
    path = tmp_path / "p.csv"
    path.write_text(PATIENTS)
    # When it is submitted
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=1)
    # Then the queued messages hold JSON with a batch id and nothing from the file
    raw = redis.Redis.from_url(redis_url).lrange("tabular", 0, -1)
    assert len(raw) == summary.batches == 2
    for message in raw:
        envelope = json.loads(message)
        assert envelope["content-type"] == "application/json"
        body = json.loads(base64.b64decode(envelope["body"]))
        args, kwargs, _embed = body
        assert (
            len(args) == 1 and isinstance(args[0], int) and set(kwargs) == {"db"} and len(kwargs["db"]) == 36
        )  # the database's identity (a UUID)
        assert envelope["headers"]["argsrepr"] == f"[{args[0]}]"
        text = message.decode() + base64.b64decode(envelope["body"]).decode()
        for secret in ("MRN-4471902", "MRN-4471903", "Jane", "555-01", "27.5", "31.2", '"age"', '"bmi"', "p.csv"):
            assert secret not in text


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_message_is_refused_never_run(redis_url, db_url, celery_app, start_worker, tmp_path):
    # Given a worker, and a message serialised with pickle that would run a command if loaded
    worker = start_worker("tabular")
    marker = tmp_path / "pwned"
    with celery_app.connection_for_write() as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            ((_Exploit(str(marker)),), {}, {}),
            routing_key="tabular",
            exchange="",
            headers={"task": "medbatch.tabular.score_batch", "id": "evil-1", "lang": "py", "argsrepr": "?"},
        )
    # When the worker has had time to receive it
    deadline = time.monotonic() + 20
    log = ""
    while time.monotonic() < deadline:
        log = worker.log_path.read_text()
        if "untrusted" in log.lower() or "refus" in log.lower():
            break
        time.sleep(0.3)
    # Then it was refused and logged, and the payload never ran
    assert "untrusted content" in log.lower() or "refusing" in log.lower()
    assert not marker.exists()
