"""Benchmark: a million patient rows, CSV -> staged -> scored -> results in PostgreSQL.

Prints wall time, rows/s, the time to the first stored result, peak RSS of the producer and of the worker
(all its processes), the ratio to a raw in-process pandas + scikit-learn run over the same file in the same
run, and where the time went: the producer's read+validate, stage and queue seconds (its summary), and the
workers' claim+load, score and write seconds summed over batches (their log lines).

    python bench/tabular.py [--rows 1000000] [--database-url postgresql+psycopg://... | sqlite:///x.db]
                            [--concurrency 2] [--batch-size N (default: the setting, MEDBATCH_BATCH_SIZE)]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDatabase, postgres_cpu, reaped_cpu, tree_cpu  # noqa: E402
from medbatch.exit_codes import ExitCode  # noqa: E402
from medbatch.producer.synthetic import write_patients  # noqa: E402


class PeakRss:
    """Samples the summed RSS of a process and its children every 50 ms."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def raw_baseline(path: Path) -> float:
    """The same work with no queue and no database: pandas reads, the model scores, a CSV is written."""
    import pandas as pd

    from medbatch.ml import registry

    model = registry._loader("risk")(registry.resolve_uri(registry.BUILTIN_ARTIFACTS["risk"]))
    start = time.perf_counter()
    cpu = time.process_time()
    frame = pd.read_csv(path)
    for col in model.features:  # the least validation that lets the model run: numbers, no blanks
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame = frame.dropna(subset=list(model.features))
    preds = model.predict(frame)
    out = pd.DataFrame({"patient_id": frame["patient_id"], "label": preds.labels, "score": preds.scores})
    out.to_csv(path.with_suffix(".raw-out.csv"), index=False)
    RAW_CPU.append(time.process_time() - cpu)
    return time.perf_counter() - start


RAW_CPU: list[float] = []


def wait_for_measured_job(db_url: str, job_id: int, timeout_s: float = 3600) -> None:
    engine = create_engine(db_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            with engine.connect() as c:
                status, measured = c.execute(
                    text("select status, metrics is not null from jobs where id = :id"), {"id": job_id}
                ).one()
            if status in ("completed", "completed_with_errors", "failed") and measured:
                return
            time.sleep(0.05)
        raise SystemExit(f"job {job_id} did not finish in {timeout_s} s")
    finally:
        engine.dispose()


def _since(value, start_wall: float) -> float:
    """Seconds from ``start_wall`` to a stored time (SQLite keeps times as naive UTC text)."""
    from datetime import UTC, datetime

    if value is None:
        return float("nan")
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp() - start_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the setting (defaults.BATCH_SIZE_ITEMS)")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    args = ap.parse_args()
    if args.batch_size is None:
        from medbatch.config import get_settings

        args.batch_size = get_settings().batch_size

    args.workdir.mkdir(exist_ok=True)
    data = args.workdir / f"patients-{args.rows}.csv"
    if not data.exists():
        print(f"generating {args.rows} synthetic rows -> {data}", flush=True)
        write_patients(data, "risk", args.rows, seed=1, bad_fraction=0.001)
    size_mb = data.stat().st_size / 1e6

    # A database of our own, dropped at the end.
    bench_db = BenchDatabase.create(args.database_url)
    db_url = bench_db.url
    import redis

    redis.Redis.from_url(args.broker_url).flushdb()
    env = {
        **os.environ,
        "MEDBATCH_DATABASE_URL": db_url,
        "MEDBATCH_BROKER_URL": args.broker_url,
        "MEDBATCH_LOG_LEVEL": "WARNING",
    }
    worker_log = args.workdir / "worker.log"
    medbatch = [sys.executable, "-m", "medbatch.cli"]
    subprocess.run([*medbatch, "db", "upgrade"], env=env, check=True, capture_output=True)
    log_fh = worker_log.open("w")
    worker = subprocess.Popen(  # INFO: one line per batch with its load / score / write seconds
        [*medbatch, "worker", "-Q", "tabular", "-c", str(args.concurrency)],
        env={**env, "MEDBATCH_LOG_LEVEL": "INFO"},
        stdout=log_fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120  # let the worker and its children start before the clock
        while " ready." not in worker_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        worker_rss = PeakRss(worker.pid)
        cpu_before = (tree_cpu(worker.pid), postgres_cpu())
        start = time.perf_counter()
        start_wall = time.time()
        reaped_before = reaped_cpu()
        producer = subprocess.Popen(
            [*medbatch, "submit", "risk", str(data), "--json", "--batch-size", str(args.batch_size)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        producer_rss = PeakRss(producer.pid)
        out, errs = producer.communicate()
        producer_cpu = reaped_cpu() - reaped_before  # the producer is the only child reaped in between
        p_peak = producer_rss.stop()
        if producer.returncode != ExitCode.OK:
            raise SystemExit(f"submit failed (exit {producer.returncode}): {errs}\n{out[-3000:]}")
        summary = json.loads(out)
        # The end: the job finished and its drift measured by the worker. Polled here every 50 ms rather than by
        # `submit --wait`, whose 1 s poll may also measure drift a second time in the producer while the worker
        # is still at it (`jobs.wait_for_job(measure_missing=True)`), which would time that, not the pipeline.
        wait_for_measured_job(db_url, summary["job_id"])
        wall = time.perf_counter() - start
        pg_after = postgres_cpu()
        worker_cpu = tree_cpu(worker.pid) - cpu_before[0]
        pg_cpu = None if pg_after is None or cpu_before[1] is None else pg_after - cpu_before[1]
        w_peak = worker_rss.stop()
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log_fh.close()
    engine = create_engine(db_url)
    with engine.connect() as c:
        job = {"j": summary["job_id"]}
        stored = c.execute(text("select count(*) from results where job_id = :j"), job).scalar_one()
        times = c.execute(
            text(
                "select (select min(created_at) from results where job_id = :j), "
                "(select max(created_at) from results where job_id = :j), "
                "(select created_at from jobs where id = :j), (select finished_at from jobs where id = :j)"
            ),
            job,
        ).one()
    engine.dispose()
    first_result_s, last_result_s, job_created_s, job_finished_s = (_since(t, start_wall) for t in times)
    worker_s = {"load": 0.0, "score": 0.0, "write": 0.0}
    batches = 0
    for m in re.finditer(r"load ([\d.]+)s, score ([\d.]+)s, write ([\d.]+)s", worker_log.read_text()):
        batches += 1
        for key, value in zip(worker_s, m.groups(), strict=True):
            worker_s[key] += float(value)

    raw = raw_baseline(data)
    bench_db.drop()

    rows = args.rows
    print(
        f"\nbench/tabular.py: {rows:,} rows ({size_mb:.0f} MB CSV), {bench_db.backend}, "
        f"worker concurrency {args.concurrency}, batch size {args.batch_size}, {os.cpu_count()} cores"
    )
    print(
        f"  medbatch end to end  {wall:8.1f} s   {rows / wall:10,.0f} rows/s   "
        f"(staged {summary['items_staged']:,}, rejected {summary['rows_rejected']:,}, results stored {stored:,})"
    )
    print(f"  raw pandas+sklearn   {raw:8.1f} s   {rows / raw:10,.0f} rows/s   (read, score, write CSV; no queue/db)")
    print(f"  ratio medbatch/raw   {wall / raw:8.2f} x time")
    print(
        f"  timeline             job created {job_created_s:.1f} s, first result {first_result_s:.2f} s, "
        f"last result {last_result_s:.1f} s, job finished {job_finished_s:.1f} s"
    )
    t = summary.get("timings", {})
    print(
        f"  producer (wall; the two overlap)  read+validate {t.get('read_validate_s', 0):.1f} s, "
        f"stage {t.get('stage_s', 0):.1f} s, queue {t.get('queue_s', 0):.1f} s"
    )
    print(
        f"  worker ({batches} batches, summed over {args.concurrency} processes)  claim+load {worker_s['load']:.1f} s, "
        f"score {worker_s['score']:.1f} s, write {worker_s['write']:.1f} s"
    )
    if bench_db.backend != "postgresql":
        pg_cpu, pg_text = None, "not used"
    else:
        pg_text = "not visible (remote server)" if pg_cpu is None else f"{pg_cpu:.1f} s"
    medbatch_cpu = producer_cpu + worker_cpu + (pg_cpu or 0.0)
    print(
        f"  CPU seconds          producer {producer_cpu:.1f} s, worker {worker_cpu:.1f} s, PostgreSQL {pg_text}; "
        f"in all {medbatch_cpu:.1f} s vs raw {RAW_CPU[-1]:.1f} s: {medbatch_cpu / RAW_CPU[-1]:.1f}x "
        "(steadier than wall time on a shared machine)"
    )
    print(f"  peak RSS producer    {p_peak / 2**20:8.0f} MB")
    print(f"  peak RSS worker      {w_peak / 2**20:8.0f} MB (main + {args.concurrency} children)")
    ok = stored == summary["items_staged"]
    print(f"  every staged row has exactly one result: {ok}")


if __name__ == "__main__":
    main()
