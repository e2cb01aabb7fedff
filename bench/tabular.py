"""Benchmark: a million patient rows, CSV -> staged -> scored -> results in PostgreSQL.

Prints wall time, rows/s, peak RSS of the producer and of the worker (all its processes), and the
ratio to a raw in-process pandas + scikit-learn run over the same file in the same run.

    python bench/tabular.py [--rows 1000000] [--database-url postgresql+psycopg://...] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDatabase  # noqa: E402
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
    frame = pd.read_csv(path)
    for col in model.features:  # the least validation that lets the model run: numbers, no blanks
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame = frame.dropna(subset=list(model.features))
    preds = model.predict(frame)
    out = pd.DataFrame({"patient_id": frame["patient_id"], "label": preds.labels, "score": preds.scores})
    out.to_csv(path.with_suffix(".raw-out.csv"), index=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    args = ap.parse_args()

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
    medbatch = [sys.executable, "-m", "medbatch.cli"]
    subprocess.run([*medbatch, "db", "upgrade"], env=env, check=True, capture_output=True)
    worker = subprocess.Popen(
        [*medbatch, "worker", "-Q", "tabular", "-c", str(args.concurrency)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(6)  # let the worker and its children start before the clock
        worker_rss = PeakRss(worker.pid)
        start = time.perf_counter()
        producer = subprocess.Popen(
            [*medbatch, "submit", "risk", str(data), "--json", "--wait", "--batch-size", str(args.batch_size)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        producer_rss = PeakRss(producer.pid)
        out, errs = producer.communicate()
        wall = time.perf_counter() - start
        p_peak, w_peak = producer_rss.stop(), worker_rss.stop()
        if producer.returncode != 0:
            raise SystemExit(f"submit failed: {errs}")
        summary = json.loads(out)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    engine = create_engine(db_url)
    with engine.connect() as c:
        stored = c.execute(text("select count(*) from results")).scalar_one()
    engine.dispose()

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
    print(f"  peak RSS producer    {p_peak / 2**20:8.0f} MB")
    print(f"  peak RSS worker      {w_peak / 2**20:8.0f} MB (main + {args.concurrency} children)")
    ok = stored == summary["items_staged"]
    print(f"  every staged row has exactly one result: {ok}")


if __name__ == "__main__":
    main()
