"""Benchmark: N molecules delivered, end to end through the queue, against the same work in one process.

Prints wall time, delivered molecules/s and samples/s of ``medbatch submit molecules --count N --wait``
(staging, Redis, a molecules worker, sampling, RDKit scoring, idempotent writes, top-up rounds, the job's
delivery and metrics), and, in the same run with the same model and the job's own batches (seed, size),
raw in-process sampling alone and raw sampling + RDKit scoring of every sample, with the ratios; the
worker's peak RSS (main process and children). Checks that the stored samples are exactly the ones sampled
in process, and prints the raw model row and the delivered row beside the MOSES CharRNN row.

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

from bench.common import BenchDatabase, timed_submit, tree_cpu  # noqa: E402
from bench.tabular import PeakRss  # noqa: E402


def raw_baseline(batches: list[tuple[int, int, float]], repeat: int) -> tuple[list[float], list[float], list[str]]:
    """Sampling alone, then sampling + RDKit scoring of every sample, in this process with the shipped model and
    the job's batches ((seed, n, temperature), in staging order), ``repeat`` times. Returns (sample seconds,
    sample + score seconds, one per repeat; the generated strings)."""
    from medbatch.ml import chem, registry

    uri = registry.BUILTIN_ARTIFACTS["molecules"]
    model = registry.load("molecules", registry.file_version(registry.resolve_uri(uri)), uri)
    training = chem.moses_training_set()
    model.sample(8, seed=0)  # compile the step outside the clock, as a warm worker has
    chem.score("CCO", training)
    sample_s, total_s = [], []
    cpu = time.process_time()
    for _ in range(repeat):
        start = time.perf_counter()
        generated = []
        for seed, n, temperature in batches:
            generated += [g.smiles for g in model.sample(n, seed=seed, temperature=temperature)]
        sample_s.append(time.perf_counter() - start)
        for smiles in generated:
            chem.score(smiles, training)
        total_s.append(time.perf_counter() - start)
    RAW_CPU.append((time.process_time() - cpu) / repeat)
    return sample_s, total_s, generated


#: CPU seconds of each raw loop (sampling + scoring), and of the worker (main + children) per job.
RAW_CPU: list[float] = []
WORKER_CPU: list[float] = []
#: The machine's load average (1, 5, 15 min) at the start and at the end of the bench.
LOAD: list[tuple[float, float, float]] = []


def submit(medbatch: list[str], env: dict, args: argparse.Namespace) -> tuple[float, dict]:
    """``submit molecules --count N --wait`` as a person runs it; returns (wall seconds, its JSON summary)."""
    return timed_submit(
        [
            *medbatch,
            *("submit", "molecules", "--count", str(args.count), "--seed", str(args.seed)),
            *("--temperature", str(args.temperature), "--batch-size", str(args.batch_size), "--json", "--wait"),
        ],
        env,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--broker-url", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--concurrency", type=int, default=2, help="worker children (each loads TensorFlow)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=1, help="jobs (and raw loops) to time, alternately; medians shown")
    ap.add_argument("--tf-threads", type=int, help="TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS for the worker")
    ap.add_argument("--worker-log", type=Path, help="write the worker's INFO log here (per-batch phase timings)")
    args = ap.parse_args()

    LOAD.append(os.getloadavg())
    bench_db = BenchDatabase.create(args.database_url)
    db_url = bench_db.url
    import redis

    redis.Redis.from_url(args.broker_url).flushdb()
    env = {
        **os.environ,
        "MEDBATCH_DATABASE_URL": db_url,
        "MEDBATCH_BROKER_URL": args.broker_url,
        "MEDBATCH_LOG_LEVEL": "INFO" if args.worker_log else "WARNING",
    }
    if args.tf_threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(args.tf_threads), TF_NUM_INTEROP_THREADS=str(args.tf_threads))
    medbatch = [sys.executable, "-m", "medbatch.cli"]
    subprocess.run([*medbatch, "db", "upgrade"], env=env, check=True, capture_output=True)
    worker = subprocess.Popen(
        [*medbatch, "worker", "-Q", "molecules", "-c", str(args.concurrency)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(args.worker_log, "w") if args.worker_log else subprocess.DEVNULL,  # noqa: SIM115
        start_new_session=True,
    )
    walls, peaks, sample_s, sample_score_s, summary, raw = [], [], [], [], {}, []
    try:
        time.sleep(8)  # let the worker and its children start before the clock
        # warm the children (TensorFlow, the model, its compiled step, RDKit) outside the clock, as a night's
        # worker is after its first batch: a small job of several batches reaches both children
        warm = [*medbatch, "submit", "molecules", "--count", "40", "--batch-size", "8", "--seed", "99", "--wait"]
        subprocess.run(warm, env=env, check=True, capture_output=True)
        for _ in range(args.repeat):  # a job, then the same samples in one process (the worker idle), in turn
            worker_rss = PeakRss(worker.pid)
            cpu = tree_cpu(worker.pid)
            wall, summary = submit(medbatch, env, args)
            WORKER_CPU.append(tree_cpu(worker.pid) - cpu)
            walls.append(wall)
            peaks.append(worker_rss.stop())
            if not raw:
                rows, metrics, stored = read_job(db_url, summary["job_id"])
                batches = list(dict.fromkeys((p["seed"], p["n"], p["temperature"]) for p, _ in rows))
            a, b, raw = raw_baseline(batches, 1)
            sample_s += a
            sample_score_s += b
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    bench_db.drop()
    LOAD.append(os.getloadavg())
    report(args, bench_db.backend, summary, rows, metrics, stored, raw, walls, peaks, sample_s, sample_score_s)


def read_job(db_url: str, job_id: int) -> tuple[list, dict, int]:
    """The job's (payload, detail) per sample in slot order, its metrics, and how many results it stored."""
    engine = create_engine(db_url)
    with engine.connect() as c:
        job = {"j": job_id}
        stored = c.execute(text("select count(*) from results where job_id = :j"), job).scalar_one()
        metrics = c.execute(text("select metrics from jobs where id = :j"), job).scalar_one()
        rows = list(
            c.execute(
                text("select i.payload, r.detail from results r join items i on i.id = r.item_id where r.job_id = :j"),
                job,
            )
        )
    engine.dispose()
    decode = lambda v: json.loads(v) if isinstance(v, str) else v  # noqa: E731
    rows = sorted(((decode(p), decode(d)) for p, d in rows), key=lambda r: r[0]["slot"])
    return rows, decode(metrics), stored


def report(args, backend, summary, rows, metrics, stored, raw, walls, peaks, sample_s, sample_score_s) -> None:
    from statistics import median

    from medbatch import molecule_metrics as mm

    d = metrics["delivered"]
    samples, delivered = d["samples"], d["delivered"]
    wall, one, alone = median(walls), median(sample_score_s), median(sample_s)
    shown = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    print(
        f"\nbench/molecules.py: --count {args.count:,}, {backend}, worker concurrency {args.concurrency}, "
        f"batch size {args.batch_size}, seed {args.seed}, temperature {args.temperature}, {os.cpu_count()} cores, "
        f"model {summary['model']['version']}; medians of {args.repeat} alternating runs"
    )
    print(
        f"  medbatch end to end      {wall:8.1f} s   {delivered / wall:8.1f} delivered molecules/s"
        f"   {samples / wall:8.1f} samples/s   (runs: {shown(walls)} s)"
    )
    print(f"    {mm.delivery_line(metrics)}")
    print(f"  raw sampling in process  {alone:8.1f} s   {samples / alone:8.1f} samples/s   (runs: {shown(sample_s)} s)")
    print(
        f"  raw sampling + RDKit     {one:8.1f} s   {samples / one:8.1f} samples/s   "
        f"(1 process; runs: {shown(sample_score_s)} s)"
    )
    print(
        f"  delivered/s vs raw sampling+RDKit samples/s (1 process, this run) {delivered * one / wall / samples:6.3f}"
    )
    print(f"  samples/s vs raw sampling + RDKit samples/s (1 process, this run)   {one / wall:6.3f}")
    print(f"  delivered/s vs the 136.0/s raw loop of issue 17 (before this work)    {delivered / wall / 136.0:6.3f}")
    wcpu, rcpu = median(WORKER_CPU), median(RAW_CPU)
    print(
        f"  CPU (less affected by other load than wall time): worker {wcpu / delivered * 1e3:.2f} ms per delivered "
        f"molecule, "
        f"{wcpu / samples * 1e3:.2f} ms per sample; raw loop {rcpu / samples * 1e3:.2f} ms per sample; on 2 idle cores "
        f"the worker could deliver {2 * delivered / wcpu:.0f}/s (database server CPU not counted)"
    )
    cores = min(args.concurrency, os.cpu_count() or 1)
    print(
        f"  ceiling on {cores} cores (every core busy, no fixed cost; delivered/s vs raw samples/s): "
        f"{delivered * cores * one / (wcpu * samples):.3f} at the worker's CPU per sample, "
        f"{delivered * cores * one / (rcpu * samples):.3f} at the raw loop's"
    )
    shown_load = lambda la: "/".join(f"{x:.2f}" for x in la)  # noqa: E731
    print(f"  load average (1/5/15 min): {shown_load(LOAD[0])} at the start, {shown_load(LOAD[-1])} at the end")
    from medbatch.config import get_settings

    limit = get_settings().worker_max_memory_per_child_mb
    print(
        f"  peak RSS worker          {max(peaks) / 2**20:8.0f} MB (main + {args.concurrency} children; "
        f"a child is replaced above {limit:,} MB, MEDBATCH_WORKER_MAX_MEMORY_PER_CHILD_MB)"
    )
    same = [dd["smiles"] for _, dd in rows] == raw
    print(f"  every sample stored once: {stored == samples == len(rows)}; identical to in-process sampling: {same}")
    print("  " + f"{'':>28}" + " ".join(f"{k:>17}" for k in mm.TABLE_KEYS))
    for label, cells in mm.comparison_rows(metrics):
        print("  " + f"{label:>28}" + " ".join(f"{v:>17}" for v in cells))
    print(f"  every sample: {mm.outcomes_line(metrics)}")
    print(f"  delivered set: {mm.properties(d)}; mean MW {d.get('mol_weight_mean')}, mean NLL {d.get('nll_mean')}")


if __name__ == "__main__":
    main()
