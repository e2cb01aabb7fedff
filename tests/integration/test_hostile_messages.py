"""Hostile broker messages: a JSON body of any shape, or arguments that do not fit the task, are refused
(logged by reason, never by content) and discarded; the worker stays up and the next valid job completes."""

from __future__ import annotations

import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import identifying_patients, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

#: The batch tasks a worker serves; junk for each is published to the one queue the worker takes.
BATCH_TASKS = (
    "medbatch.tabular.score_batch",
    "medbatch.reports.generate_batch",
    "medbatch.reports.submit_provider_batch",
    "medbatch.reports.poll_provider_batch",
    "medbatch.imaging.classify_batch",
    "medbatch.molecules.generate_batch",
)


def _instance(db_url: str) -> str:
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(db_url) as s:
        return repo.instance_id(s, fresh=True)


def _publish(celery_app, bodies: list, task: str | list[str] = "medbatch.tabular.score_batch") -> list[str]:
    """Publish each body as JSON with valid task headers; returns the message ids."""
    ids = []
    with celery_app.connection_for_write() as conn:
        producer = conn.Producer(serializer="json")
        for i, body in enumerate(bodies):
            name = task if isinstance(task, str) else task[i % len(task)]
            ids.append(f"junk-{i}")
            producer.publish(
                body,
                routing_key="tabular",
                exchange="",
                headers={"task": name, "id": ids[-1], "lang": "py", "argsrepr": "?", "kwargsrepr": "?"},
            )
    return ids


def _drained(redis_url: str, timeout_s: float = 30) -> bool:
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.llen("tabular") == 0 and not client.hlen("unacked"):
            return True
        time.sleep(0.2)
    return False


def _valid_job_completes(db_url, sender, tmp_path, name: str = "after.csv") -> None:
    from medbatch.producer.submit import submit_records

    path = identifying_patients(tmp_path / name, 10)
    summary = submit_records(path, "risk", database_url=db_url, send=sender, batch_size=5)
    assert wait_for_job(db_url, summary.job_id, timeout_s=60)["items_done"] == 9


def test_a_json_body_of_the_wrong_shape_is_refused_and_the_worker_goes_on(
    redis_url, db_url, celery_app, sender, start_worker, tmp_path
):
    # Given a worker, and JSON messages with valid task headers whose bodies are not [args, kwargs, embed]
    worker = start_worker("tabular")
    bodies = ["hello-MRN-4471902", [[1]], [], {"args": "MRN-4471902"}, [1, 2, 3], [[1], "x", {}]]
    _publish(celery_app, bodies)
    # When they have been taken (the queue is empty)
    assert _drained(redis_url)
    # Then the worker is still up, each was refused by reason without its content, and none came back
    assert worker.process.poll() is None
    log = worker.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert log.count("Refusing a message for medbatch.tabular.score_batch") == len(bodies)
    assert "body is str, expected [args, kwargs, embed]" in log and "body is list of 1" in log
    assert "MRN-4471902" not in log
    # And a valid job sent after them completes
    _valid_job_completes(db_url, sender, tmp_path)
    assert worker.process.poll() is None


def test_arguments_that_do_not_fit_the_task_are_refused_never_retried(
    redis_url, db_url, celery_app, sender, start_worker, tmp_path
):
    # Given a worker, a real pending batch (id 1), and messages for it with malformed ids, an unknown
    # keyword, no database identity, or a canvas link
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.producer.submit import submit_records

    held: list[int] = []  # staged, not sent yet
    path = identifying_patients(tmp_path / "p.csv", 4)
    summary = submit_records(path, "risk", database_url=db_url, send=lambda _t, _q, b: held.append(b), batch_size=10)
    (batch_id,) = held
    assert batch_id == 1
    worker = start_worker("tabular")
    db = _instance(db_url)
    bodies = [
        [["abc"], {"db": db}, {}],
        [[2**70], {"db": db}, {}],
        [[1.5], {"db": db}, {}],
        [[True], {"db": db}, {}],
        [[0], {"db": db}, {}],
        [[batch_id], {"db": db, "surprise": 1}, {}],
        [[batch_id], {}, {}],
        [[batch_id], {"db": None}, {}],
        [[batch_id], {"db": "not-a-database-identity"}, {}],
        [[batch_id, db], {}, {}],
        [[batch_id], {"db": db}, {"callbacks": [{"task": "medbatch.maintenance.nightly"}]}],
    ]
    _publish(celery_app, bodies)
    assert _drained(redis_url)
    # Then every one was refused before the task ran: no retry, and batch 1 was never claimed
    log = worker.log_path.read_text(errors="replace")
    assert log.count("Refusing a message for medbatch.tabular.score_batch") == len(bodies), log[-3000:]
    assert "Retry in" not in log and "Unrecoverable error" not in log
    with session_scope(db_url) as s:
        counts = repo.job_counts(s, summary.job_id)
    assert counts["items_done"] == 0 and counts["items_failed"] == 0 and counts["status"] == "queued", counts
    # And the batch is scored by a valid message afterwards
    sender("medbatch.tabular.score_batch", "tabular", batch_id)
    assert wait_for_job(db_url, summary.job_id, timeout_s=60)["items_done"] == 4


def _json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    return st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    )


def _fuzz_bodies(db: str, n: int = 160) -> list:
    """A fixed list of generated bodies: JSON of every shape, and near misses of [args, kwargs, embed]
    (wrong types, huge ints, nested junk, unknown kwargs, the right database with a batch that does not exist)."""
    ids = st.integers() | st.floats(allow_nan=False) | st.text(max_size=8) | st.booleans() | st.none() | _json_values()
    kwargs = st.fixed_dictionaries({}, optional={"db": st.just(db) | st.text(max_size=8) | _json_values()}) | (
        st.dictionaries(st.text(max_size=8), _json_values(), max_size=3)
    )
    near_miss = st.tuples(
        st.lists(ids, max_size=3) | _json_values(),
        kwargs | _json_values(),
        st.none() | st.just({}) | _json_values(),
    ).map(list)
    one_id = st.tuples(ids, st.just({"db": db}) | kwargs).map(lambda t: [[t[0]], t[1], {}])
    missing = st.tuples(st.integers(10**6, 2**63 - 1), st.just({"db": db}), st.none() | st.just({})).map(
        lambda t: [[t[0]], t[1], t[2]]
    )
    huge = st.integers(2**63, 2**200).map(lambda i: [[i], {"db": db}, {}])
    bodies: list = []

    @settings(max_examples=n, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.one_of(_json_values(), near_miss, one_id, one_id, missing, huge))
    def collect(body):
        bodies.append(body)

    collect()
    return bodies


def test_fuzz_broker_bodies_never_stop_the_worker(redis_url, db_url, celery_app, sender, start_worker, tmp_path):
    # Given one worker, and a fixed generated list of JSON bodies of every shape sent to every batch task
    worker = start_worker("tabular")
    bodies = _fuzz_bodies(_instance(db_url))
    assert len(bodies) >= 100
    _publish(celery_app, bodies, task=list(BATCH_TASKS))
    # When a valid job is sent after the junk, it completes (the queue is first in, first out)
    _valid_job_completes(db_url, sender, tmp_path)
    # Then the worker stayed up, nothing was retried or restored, and nothing is left on the broker
    assert _drained(redis_url)
    assert worker.process.poll() is None
    log = worker.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log and "Retry in" not in log


def test_a_message_for_another_workloads_task_changes_nothing(
    redis_url, db_url, celery_app, sender, start_worker, tmp_path
):
    # Given a report job staged (its message held back), and a worker for the tabular and report queues
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.producer.submit import submit_reports

    held: list[tuple[str, str, int]] = []
    path = identifying_patients(tmp_path / "facts.csv", 3)
    summary = submit_reports(
        database_url=db_url,
        send=lambda task, queue, batch: held.append((task, queue, batch)),
        provider="offline",
        llm_model="template",
        path=path,
        batch_size=10,
    )
    ((task, queue, report_batch),) = held
    worker = start_worker("tabular,reports")
    # When a tabular scoring message names the report batch (with the right database identity)
    sender("medbatch.tabular.score_batch", "tabular", report_batch)
    assert _drained(redis_url)
    # Then it was refused permanently (not retried) and the report batch is as it was
    log = worker.log_path.read_text(errors="replace")
    assert "WrongWorkload" in log and "Retry in" not in log, log[-3000:]
    with session_scope(db_url) as s:
        counts = repo.job_counts(s, summary.job_id)
    assert counts["items_failed"] == 0 and counts["items_done"] == 0, counts
    # And the real report message then drafts every report
    sender(task, queue, report_batch)
    done = wait_for_job(db_url, summary.job_id, timeout_s=60)
    assert done["items_done"] == summary.items_staged and done["items_failed"] == 0, done


def test_messages_for_no_medbatch_task_are_refused_without_their_content(
    redis_url, db_url, celery_app, sender, start_worker, tmp_path
):
    # Given a worker, and messages Celery's consumer handles itself: an unknown task name, one without
    # an id, a body that names its task inside (protocol 1) without an id, one with no task at all
    worker = start_worker("tabular")
    secret = "MRN-4471902 Jane Example"
    with celery_app.connection_for_write() as conn:
        producer = conn.Producer(serializer="json")
        for headers, body in [
            ({"task": "no.such.task", "id": "junk-a", "lang": "py"}, [[secret], {}, {}]),
            ({"task": "no.such.task", "lang": "py"}, [[secret], {}, {}]),
            ({}, {"task": "no.such.task", "args": [secret]}),
            ({}, [secret]),
            ({"task": ["not", "a", "name"], "id": "junk-b"}, [[secret], {}, {}]),
        ]:
            producer.publish(body, routing_key="tabular", exchange="", headers=headers)
    assert _drained(redis_url)
    # Then the worker is up, each was logged without its content, and a valid job still completes
    assert worker.process.poll() is None
    _valid_job_completes(db_url, sender, tmp_path)
    log = worker.log_path.read_text(errors="replace")
    assert "Unrecoverable error" not in log
    assert "MRN-4471902" not in log and "Jane Example" not in log
    assert log.count("Refusing a message") >= 5, log[-3000:]
