"""Benchmark: ``medbatch export fhir`` of a finished risk job of N results (memory stays flat).

Stages a finished risk job directly in the benchmark's own database (COPY on PostgreSQL: no worker
needed, the export only reads), then runs the CLI export as a user would and prints wall time,
resources/s and the export process's peak RSS, for each size given.

    python bench/fhir.py [--rows 20000 200000] [--jobs 1 2] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import BenchDatabase  # noqa: E402
from bench.tabular import PeakRss  # noqa: E402


def stage_finished_risk_job(url: str, rows: int, chunk: int = 50_000) -> int:
    """A completed risk job of ``rows`` items, each with a result, written in chunks."""
    from medbatch.db import repository as repo
    from medbatch.db.migrate import upgrade
    from medbatch.db.session import session_scope
    from medbatch.db.tables import Item, Job, Result

    upgrade(url)
    now = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    with session_scope(url) as s:
        job_id = repo.create_job(s, workload="risk", source_uri="bench.csv", model_name="risk", model_version="bench")
    with session_scope(url) as s:
        base = (s.query(Item.id).order_by(Item.id.desc()).limit(1).scalar() or 0) + 1
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        ids = range(base + start, base + start + n)
        with session_scope(url) as s:
            repo.bulk_insert(s, Item.__table__, [
                {"id": i, "job_id": job_id, "item_key": f"row:{i}", "source_uri": "bench.csv", "source_row": i,
                 "patient_ref": f"SYN-{i:07d}", "payload": {}, "status": "done"} for i in ids])  # fmt: skip
            repo.bulk_insert(s, Result.__table__, [
                {"item_id": i, "job_id": job_id, "model_name": "risk", "model_version": "bench",
                 "label": "high" if i % 4 == 0 else "low", "score": (i % 97) / 97, "created_at": now,
                 "detail": {"threshold": 0.2341, "probabilities": {"low": 1 - (i % 97) / 97, "high": (i % 97) / 97}}}
                for i in ids])  # fmt: skip
    with session_scope(url) as s:
        s.query(Job).filter(Job.id == job_id).update({"status": "completed", "items_total": rows, "finished_at": now})
    return job_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    ap.add_argument("--jobs", type=int, nargs="+", default=[1], help="export processes to time (each size)")
    ap.add_argument("--database-url", default=os.environ.get("MEDBATCH_BENCH_DATABASE_URL", ""))
    args = ap.parse_args()
    if not args.database_url:
        args.database_url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    db = BenchDatabase.create(args.database_url)
    try:
        for rows in args.rows:
            job_id = stage_finished_risk_job(db.url, rows)
            for jobs in args.jobs:
                run_export(db, job_id, rows, jobs)
    finally:
        db.drop()


def run_export(db: BenchDatabase, job_id: int, rows: int, jobs: int) -> None:
    """Export the job with the CLI in a new process; print its figures (PeakRss sums the process tree)."""
    out = Path(tempfile.mkdtemp()) / "fhir"
    env = {**os.environ, "MEDBATCH_DATABASE_URL": db.url, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "medbatch.cli", "export", "fhir", str(job_id), "-o", str(out), "--jobs", str(jobs)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    rss = PeakRss(proc.pid)
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - t0
    peak = rss.stop()
    assert proc.returncode == 0, proc.returncode
    written = sum(o["count"] for o in json.loads(stdout)["output"])
    figures = {"backend": db.backend, "results": rows, "jobs": jobs, "resources": written, "wall_s": round(wall, 1)}
    figures.update(resources_per_s=round(written / wall), peak_rss_mb=round(peak / 2**20))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
