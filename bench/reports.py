"""Benchmark: 1,000 reports through the queue against a local OpenAI-compatible server at 300 ms per call.

Prints reports/s end to end (CSV -> staged -> reports workers (threads) -> openai client -> reports in
PostgreSQL) and the ratio to a raw threaded loop of the openai client at the same concurrency, run in the
same process against the same server.

    python bench/reports.py [--reports 1000] [--latency-s 0.3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDatabase, timed_submit  # noqa: E402
from medbatch.ml.reports import build_messages, minimum_necessary  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402


def write_facts(path: Path, n: int) -> list[dict]:
    rows = [
        {
            "patient_id": f"SYN-{i:06d}",
            "age": 40 + i % 45,
            "sex": "F" if i % 2 else "M",
            "bmi": 22 + i % 12,
            "blood_pressure": 120 + i % 50,
            "cholesterol": 180 + i % 90,
            "diabetes": i % 7 == 0,
            "conditions": "hypertension" if i % 3 == 0 else "none",
        }
        for i in range(n)
    ]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def raw_loop(rows: list[dict], base_url: str, concurrency: int) -> float:
    """The same calls with the bare openai client and a thread pool: no queue, no database, no limiter."""
    from openai import OpenAI

    client = OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0)

    def one(row: dict) -> None:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=build_messages(minimum_necessary(row)), max_tokens=600, temperature=0.2
        )

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, rows))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=int, default=1000)
    ap.add_argument("--latency-s", type=float, default=0.3)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=5)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    args = ap.parse_args()
    args.workdir.mkdir(exist_ok=True)
    facts = args.workdir / f"facts-{args.reports}.csv"
    rows = write_facts(facts, args.reports)

    bench_db = BenchDatabase.create(args.database_url)
    db_url = bench_db.url
    import redis

    redis.Redis.from_url(args.broker_url).flushdb()
    with FakeOpenAIServer(latency_s=args.latency_s) as server:
        env = {
            **os.environ,
            "MEDBATCH_DATABASE_URL": db_url,
            "MEDBATCH_BROKER_URL": args.broker_url,
            "MEDBATCH_LOG_LEVEL": "WARNING",
            "MEDBATCH_LLM_PROVIDER": "openai",
            "MEDBATCH_OPENAI_API_KEY": "sk-bench",
            "MEDBATCH_OPENAI_BASE_URL": server.base_url,
            "MEDBATCH_LLM_REQUESTS_PER_MINUTE": "100000",
            "MEDBATCH_LLM_TOKENS_PER_MINUTE": "100000000",
        }
        medbatch = [sys.executable, "-m", "medbatch.cli"]
        subprocess.run([*medbatch, "db", "upgrade"], env=env, check=True, capture_output=True)
        worker = subprocess.Popen(
            [*medbatch, "worker", "-Q", "reports", "-P", "threads", "-c", str(args.concurrency)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            time.sleep(6)
            wall, summary = timed_submit(
                [*medbatch, "submit", "report", str(facts), "--json", "--wait", "--batch-size", str(args.batch_size)],
                env,
            )
        finally:
            worker.terminate()
            worker.wait(timeout=60)
        raw = raw_loop(rows, server.base_url, args.concurrency)
    engine = create_engine(db_url)
    with engine.connect() as c:
        stored, tokens = c.execute(text("select count(*), coalesce(sum(tokens_in + tokens_out), 0) from reports")).one()
    engine.dispose()
    bench_db.drop()

    n = args.reports
    print(
        f"\nbench/reports.py: {n:,} reports, server latency {args.latency_s * 1000:.0f} ms, threads "
        f"{args.concurrency}, batch size {args.batch_size}, PostgreSQL, {os.cpu_count()} cores"
    )
    print(
        f"  medbatch end to end   {wall:7.1f} s   {n / wall:7.1f} reports/s   (stored {stored:,}, "
        f"{tokens:,} tokens, status {summary['final']['status']})"
    )
    print(f"  raw threaded openai   {raw:7.1f} s   {n / raw:7.1f} reports/s   (same client, same server, no queue/db)")
    print(f"  ratio (throughput)    {raw / wall:7.2f}   (medbatch reports/s / raw reports/s; target >= 0.80)")


if __name__ == "__main__":
    main()
