"""Benchmark: PACS pull (QIDO-RS + WADO-RS from a real Orthanc) beside the folder path, on the same images.

The same N synthetic 12-bit MONOCHROME1 CR instances (1024 x 1024, about 2 MiB each) are classified twice
through the imaging pipeline the worker runs (called in this process, SQLite, no broker): once staged
from a folder (hash, header read, file read), once from Orthanc (QIDO-RS search, WADO-RS retrieve in the
decode threads). Prints instances/s for both, end to end (submit + every batch), and their ratio; and
the fetch alone (file read vs WADO-RS) for the same instances. The model is the default architecture
with seeded weights (speed does not depend on what it learned); it is loaded and compiled before timing.

    python bench/pacs.py [--n 64] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.imaging import make_model  # noqa: E402
from medbatch.producer.synthetic import synthetic_xray, write_synthetic_dicom  # noqa: E402


def make_instances(folder: Path, n: int) -> list[Path]:
    import pydicom

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    study = pydicom.uid.generate_uid()
    paths = []
    for i in range(n):
        path = write_synthetic_dicom(folder / f"cr-{i:05d}.dcm", synthetic_xray(i % 2, 1024, rng), patient_id="BENCH")
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, study + ".1"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def run_job(db_url: str, submit, opts) -> tuple[float, int]:
    from sqlalchemy import select

    from medbatch.db.session import session_scope
    from medbatch.db.tables import Batch, Result
    from medbatch.pipeline.imaging import classify_batch

    t0 = time.perf_counter()
    summary = submit()
    with session_scope(db_url) as s:
        batches = list(s.scalars(select(Batch.id).where(Batch.job_id == summary.job_id).order_by(Batch.id)))
    for b in batches:
        classify_batch(b, database_url=db_url, max_attempts=5, options=opts)
    elapsed = time.perf_counter() - t0
    with session_scope(db_url) as s:
        done = len(list(s.scalars(select(Result.id).where(Result.job_id == summary.job_id))))
    return elapsed, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="instances")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--threads", type=int, default=4, help="decode (and retrieve) threads")
    args = parser.parse_args()

    from medbatch.db import repository as repo
    from medbatch.db.migrate import upgrade
    from medbatch.db.session import session_scope
    from medbatch.interop.dicomweb import DicomWeb, PacsAccess
    from medbatch.ml import images, registry
    from medbatch.pipeline.imaging import ImagingOptions
    from medbatch.producer.pacs import submit_pacs
    from medbatch.producer.submit import submit_images
    from tests.orthanc import Orthanc, orthanc_missing

    if orthanc_missing():
        sys.exit(f"cannot run: {orthanc_missing()}")
    work = Path(tempfile.mkdtemp(prefix="bench-pacs-"))
    db_url = f"sqlite:///{work / 'bench.db'}"
    upgrade(db_url)
    artifact = make_model(work / "models")
    with session_scope(db_url) as s:
        repo.register_model(
            s, name="xray", version=registry.file_version(artifact), uri=str(artifact), metrics={},
            training_source="benchmark weights",
        )
    paths = make_instances(work / "images", args.n)
    warm = make_instances(work / "warm", 2)
    orthanc = Orthanc(work / "orthanc")
    orthanc.start()
    try:
        for p in paths:
            orthanc.upload(p.read_bytes())
        opts = ImagingOptions(results_dir=work / "results", decode_threads=args.threads, predict_batch=args.batch,
                              pacs=PacsAccess(timeout_s=60))
        noop = lambda *a: None  # noqa: E731
        run_job(db_url, lambda: submit_images(work / "warm", database_url=db_url, send=noop, batch_size=2), opts)
        folder_s, folder_n = run_job(
            db_url, lambda: submit_images(work / "images", database_url=db_url, send=noop, batch_size=args.batch), opts
        )
        pacs_s, pacs_n = run_job(
            db_url, lambda: submit_pacs(orthanc.dicomweb, database_url=db_url, send=noop, batch_size=args.batch), opts
        )
        # The fetch alone: read every file vs retrieve every instance by WADO-RS (one thread each).
        t0 = time.perf_counter()
        for p in paths:
            images.read_file(p)
        read_s = time.perf_counter() - t0
        web = DicomWeb(orthanc.dicomweb)
        uids = [(i["0020000D"]["Value"][0], i["0020000E"]["Value"][0], i["00080018"]["Value"][0])
                for st in web.search_studies() for i in web.search_instances(st["0020000D"]["Value"][0])]
        t0 = time.perf_counter()
        for study, series, sop in uids:
            web.retrieve_instance(study, series, sop, max_bytes=images.DEFAULT_MAX_BYTES)
        wado_s = time.perf_counter() - t0
    finally:
        orthanc.stop()
    del warm
    size_mib = sum(p.stat().st_size for p in paths) / 2**20
    print(
        json.dumps(
            {
                "instances": args.n,
                "mib": round(size_mib, 1),
                "folder_instances_per_s": round(folder_n / folder_s, 1),
                "pacs_instances_per_s": round(pacs_n / pacs_s, 1),
                "ratio_pacs_to_folder": round(folder_s / pacs_s, 2),
                "fetch_only": {
                    "file_read_per_s": round(args.n / read_s, 1),
                    "wado_rs_per_s": round(len(uids) / wado_s, 1),
                },
                "results": {"folder": folder_n, "pacs": pacs_n},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
