"""Benchmark: the same job, undisturbed and then through a worker SIGKILL, a Redis crash and a PostgreSQL crash.

Runs on services of its own (a private PostgreSQL cluster and a private Redis, started here and removed
at the end), so nothing shared is disturbed. The events are scheduled by progress (when a given share
of the items has a result), so each falls in the middle of the work on any machine:

- worker SIGKILLed (main process and pool children), restarted at once as a supervisor would;
- Redis killed and restarted empty (every queued message lost), then ``reconcile`` re-sends what is unfinished;
- PostgreSQL stopped in immediate mode (a crash), down for a few seconds, started again.

Prints items lost, items with more than one result, and the time to finish against the undisturbed run.

    python bench/chaos.py [--items 10000] [--batch-size 100] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from medbatch.config import Settings  # noqa: E402
from medbatch.db.migrate import upgrade  # noqa: E402
from medbatch.db.session import dispose_engines, session_scope  # noqa: E402
from medbatch.db.tables import FINISHED_JOB, Item, ItemStatus, Job, Result  # noqa: E402
from medbatch.errors import DatabaseUnavailable  # noqa: E402
from medbatch.producer.recovery import reconcile  # noqa: E402
from medbatch.producer.send import celery_sender  # noqa: E402
from medbatch.producer.submit import submit_records  # noqa: E402
from medbatch.producer.synthetic import write_patients  # noqa: E402
from medbatch.worker.app import create_app  # noqa: E402
from medbatch.worker.embedded import start_local_redis  # noqa: E402
from medbatch.worker.processes import WorkerProcess, start_worker, wait_until_ready  # noqa: E402
from tests.services import start_private_postgres  # noqa: E402

#: When each event fires: once this share of the job's items has a result.
SCHEDULE = (("kill worker", 0.20), ("redis crash", 0.45), ("postgres crash", 0.70))
POSTGRES_DOWN_S = 3.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job_state(db_url: str, job_id: int) -> tuple[str, int, int, int] | None:
    """(status, results, distinct items with a result, items neither done nor failed); None while the db is away."""
    try:
        with session_scope(db_url) as s:
            status = s.scalar(select(Job.status).where(Job.id == job_id))
            results = s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id))
            distinct = s.scalar(select(func.count(func.distinct(Result.item_id))).where(Result.job_id == job_id))
            open_items = s.scalar(
                select(func.count())
                .select_from(Item)
                .where(Item.job_id == job_id, Item.status.not_in([ItemStatus.DONE.value, ItemStatus.FAILED.value]))
            )
        return status, results, distinct, open_items
    except DatabaseUnavailable:
        dispose_engines()
        return None


class Run:
    """One job on the private services: a worker, a submit, a wait, with optional events on the way."""

    def __init__(self, args, db_url: str, redis_url: str, data: Path, label: str):
        self.args, self.db_url, self.redis_url, self.data, self.label = args, db_url, redis_url, data, label
        self.env = {
            "MEDBATCH_DATABASE_URL": db_url,
            "MEDBATCH_BROKER_URL": redis_url,
            "MEDBATCH_LOG_LEVEL": "WARNING",
            "MEDBATCH_VISIBILITY_TIMEOUT_S": str(args.visibility_timeout_s),
            "PYTHONPATH": str(ROOT),
        }
        self.app = create_app(Settings(broker_url=redis_url, database_url=db_url))
        self.workers: list[WorkerProcess] = []
        self.events: list[str] = []
        self.first_result_s = 0.0

    def start_worker(self, wait: bool = True) -> WorkerProcess:
        log = self.args.workdir / f"{self.label}-worker-{len(self.workers)}.log"
        worker = start_worker("tabular", env=self.env, concurrency=self.args.concurrency, log_path=log)
        self.workers.append(worker)
        if wait:
            wait_until_ready(self.app, worker, timeout_s=120)
        return worker

    def submit(self) -> int:
        send = celery_sender(self.app, self.db_url)
        return submit_records(self.data, "risk", database_url=self.db_url, send=send, batch_size=self.args.batch_size)

    def close(self) -> None:
        for w in self.workers:
            w.stop(timeout_s=10)
        self.app.close()


def run_job(run: Run, events: dict[str, float] | None, redis_restart, postgres) -> tuple[float, tuple]:
    """Submit, fire ``events`` (name -> share of items done), wait; returns (seconds to finish, final state)."""
    run.start_worker()
    start = time.perf_counter()
    summary = run.submit()
    pending = sorted((events or {}).items(), key=lambda kv: kv[1])
    deadline = start + run.args.timeout_s
    state = None
    while time.perf_counter() < deadline:
        state = _job_state(run.db_url, summary.job_id)
        done = state[2] if state else 0
        if done and not run.first_result_s:
            run.first_result_s = time.perf_counter() - start
        if pending and done >= pending[0][1] * summary.items_staged:
            name, _ = pending.pop(0)
            at = time.perf_counter() - start
            fire(run, name, redis_restart, postgres)
            run.events.append(f"{name} at {at:.1f}s ({done:,} done)")
            continue
        if state and state[0] in FINISHED_JOB and not pending:
            return time.perf_counter() - start, (summary.items_staged, *state)
        time.sleep(0.1)
    raise SystemExit(f"{run.label}: job {summary.job_id} did not finish in {run.args.timeout_s}s: {state}")


def fire(run: Run, name: str, redis_restart, postgres) -> None:
    if name == "kill worker":
        for w in run.workers:
            w.kill()
        run.start_worker(wait=False)  # a supervisor's restart policy
    elif name == "redis crash":
        redis_restart()
        # the periodic reconciler's pass (beat runs it every MEDBATCH_RECONCILE_INTERVAL_S)
        reconcile(database_url=run.db_url, send=celery_sender(run.app, run.db_url), older_than_s=0)
    elif name == "postgres crash":
        postgres.stop("immediate")
        time.sleep(POSTGRES_DOWN_S)
        postgres.start()
        dispose_engines()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--visibility-timeout-s", type=int, default=10)
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    args = ap.parse_args()
    args.workdir.mkdir(exist_ok=True)
    logging.getLogger("medbatch").setLevel(logging.ERROR)  # the reconciler's notes would interleave the figures
    data = args.workdir / f"chaos-{args.items}.csv"
    if not data.exists():
        write_patients(data, "risk", args.items, seed=6)

    postgres = start_private_postgres()
    redis_url = f"redis://127.0.0.1:{_free_port()}/0"
    redis_servers = [start_local_redis(redis_url)]

    def redis_restart() -> None:
        redis_servers[-1].process.kill()  # a crash: nothing saved, every queued message gone
        redis_servers[-1].process.wait()
        redis_servers[-1].stop()
        redis_servers.append(start_local_redis(redis_url))

    results = {}
    try:
        for label in ("undisturbed", "chaos"):
            db_url = postgres.url.rsplit("/", 1)[0] + f"/{label}"
            admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f'CREATE DATABASE "{label}"'))
            admin.dispose()
            upgrade(db_url)
            run = Run(args, db_url, redis_url, data, label)
            try:
                events = dict(SCHEDULE) if label == "chaos" else None
                results[label] = (*run_job(run, events, redis_restart, postgres), run.events, run.first_result_s)
            finally:
                run.close()
            dispose_engines()
    finally:
        for server in redis_servers:
            server.stop()
        postgres.remove()

    print(
        f"\nbench/chaos.py: {args.items:,} items, batch size {args.batch_size}, 1 worker x {args.concurrency} "
        f"(prefork), private PostgreSQL + Redis, visibility timeout {args.visibility_timeout_s}s, "
        f"{os.cpu_count()} cores"
    )
    for label, (wall, (staged, status, res, distinct, open_items), events, first_s) in results.items():
        lost = staged - distinct
        print(
            f"  {label:<12} {wall:7.1f} s  {status:<21} staged {staged:,}  results {res:,}  "
            f"lost {lost}  duplicated {res - distinct}  unfinished {open_items}  (first result at {first_s:.1f}s)"
        )
        if events:
            print(f"  {'':<12} events: {'; '.join(events)} (PostgreSQL down {POSTGRES_DOWN_S:.0f}s)")
    ratio = results["chaos"][0] / results["undisturbed"][0]
    print(f"  ratio chaos/undisturbed {ratio:.2f} x time")


if __name__ == "__main__":
    main()
