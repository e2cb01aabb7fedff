"""Benchmark: N molecules generated, scored with RDKit and stored, end to end through the queue.

Prints wall time and molecules/s of ``medbatch submit molecules --wait`` (staging, Redis, a molecules
worker, sampling, RDKit scoring, idempotent writes, job metrics), and, in the same run with the same
model and the same batch seeds, raw in-process sampling alone and raw sampling + scoring, with the
ratios. Checks that the stored molecules are exactly the ones sampled in process, and prints the
MOSES metrics of the job beside the MOSES CharRNN row.

    python bench/molecules.py [--count 10000] [--database-url postgresql+psycopg://...] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDatabase  # noqa: E402
from bench.tabular import PeakRss  # noqa: E402


def raw_baseline(count: int, seed: int, batch_size: int, temperature: float) -> tuple[float, float, list[str]]:
    """Sampling alone, then sampling + RDKit scoring, in this process with the shipped model and the job's
    batch seeds. Returns (sample seconds, sample + score seconds, the generated strings)."""
    from medbatch.ml import chem, registry
    from medbatch.producer.generation import batch_seed

    uri = registry.BUILTIN_ARTIFACTS["molecules"]
    model = registry.load("molecules", registry.file_version(registry.resolve_uri(uri)), uri)
    training = chem.moses_training_set()
    model.sample(8, seed=0)  # compile the step outside the clock, as a warm worker has
    chem.score("CCO", training)
    sizes = [min(batch_size, count - s) for s in range(0, count, batch_size)]
    start = time.perf_counter()
    generated = []
    for seq, n in enumerate(sizes):
        generated += [g.smiles for g in model.sample(n, seed=batch_seed(seed, seq), temperature=temperature)]
    sample_s = time.perf_counter() - start
    for smiles in generated:
        chem.score(smiles, training)
    return sample_s, time.perf_counter() - start, generated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--concurrency", type=int, default=2, help="worker children (each loads TensorFlow)")
    ap.add_argument("--batch-size", type=int, default=500)
    args = ap.parse_args()

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
        [*medbatch, "worker", "-Q", "molecules", "-c", str(args.concurrency)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(8)  # let the worker and its children start before the clock
        worker_rss = PeakRss(worker.pid)
        start = time.perf_counter()
        producer = subprocess.Popen(
            [
                *medbatch,
                "submit",
                "molecules",
                "--count",
                str(args.count),
                "--seed",
                str(args.seed),
                "--temperature",
                str(args.temperature),
                "--batch-size",
                str(args.batch_size),
                "--json",
                "--wait",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, errs = producer.communicate()
        wall = time.perf_counter() - start
        w_peak = worker_rss.stop()
        if producer.returncode != 0:
            raise SystemExit(f"submit failed: {errs}")
        summary = json.loads(out)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    engine = create_engine(db_url)
    with engine.connect() as c:
        stored = c.execute(text("select count(*) from results")).scalar_one()
        metrics = c.execute(text("select metrics from jobs where id = :j"), {"j": summary["job_id"]}).scalar_one()
        details = [
            row[0]
            for row in c.execute(text("select r.detail from results r join items i on i.id = r.item_id order by i.id"))
        ]
    engine.dispose()
    metrics = json.loads(metrics) if isinstance(metrics, str) else metrics
    details = [json.loads(d) if isinstance(d, str) else d for d in details]

    sample_s, sample_score_s, raw = raw_baseline(args.count, args.seed, args.batch_size, args.temperature)
    bench_db.drop()

    n = args.count
    print(
        f"\nbench/molecules.py: {n:,} molecules, {bench_db.backend}, worker concurrency "
        f"{args.concurrency}, batch size {args.batch_size}, seed {args.seed}, temperature {args.temperature}, "
        f"{os.cpu_count()} cores, model {summary['model']['version']}"
    )
    print(f"  medbatch end to end      {wall:8.1f} s   {n / wall:8.1f} molecules/s   (generated, scored, stored)")
    print(f"  raw sampling in process  {sample_s:8.1f} s   {n / sample_s:8.1f} molecules/s   (same model and seeds)")
    print(f"  raw sampling + RDKit     {sample_score_s:8.1f} s   {n / sample_score_s:8.1f} molecules/s   (one process)")
    print(f"  throughput ratio medbatch/raw sampling   {sample_s / wall:6.3f}")
    print(f"  throughput ratio medbatch/raw sampling + scoring   {sample_score_s / wall:6.3f}")
    print(f"  peak RSS worker          {w_peak / 2**20:8.0f} MB (main + {args.concurrency} children)")
    same = [d["smiles"] for d in details] == raw
    print(f"  every slot stored once: {stored == n}; stored molecules identical to in-process sampling: {same}")
    ref = metrics["reference"]
    keys = ("validity", "unique@1k", "unique@10k", "novelty", "intdiv", "filters")
    print("  " + " ".join(f"{k:>11}" for k in ("", *keys)))
    print("  " + f"{'this job':>11}" + " ".join(f"{metrics[k] if metrics[k] is not None else 'n/a':>11}" for k in keys))
    print("  " + f"{'MOSES CharRNN':>11}" + " ".join(f"{ref.get(k, '-'):>11}" for k in keys))
    print(
        f"  {metrics['generated']} generated, {metrics['valid']} valid, {metrics['unique']} unique, "
        f"{metrics['duplicates']} duplicates; QED mean {metrics['qed_mean']}, SA mean {metrics['sa_mean']}, "
        f"Lipinski pass {metrics['lipinski_pass']}, PAINS-free {metrics['pains_free']}"
    )


if __name__ == "__main__":
    main()
