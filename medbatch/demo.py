"""``medbatch demo``: the main job end to end on embedded defaults, then everything it started is stopped."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medbatch import molecule_metrics
from medbatch.config import get_settings, redact_url
from medbatch.errors import MedbatchError
from medbatch.exit_codes import ExitCode, job_exit_code, worst
from medbatch.progress import job_progress


def _xray_demo(settings, workdir: Path, send, env: dict, started: list, app, console: Console):
    """Train a tiny CNN on SYNTHETIC radiographs and classify a small synthetic night folder with it.

    The model is registered inactive and the job pins it, so a later ``medbatch submit xray`` never
    picks a demo model trained on generated images.
    """
    from medbatch import training
    from medbatch.ml import xray
    from medbatch.producer.submit import submit_images
    from medbatch.producer.synthetic import write_xrays
    from medbatch.worker.processes import start_worker, wait_until_ready

    console.print("starting a worker for the imaging queue (TensorFlow loads in its child process) ...")
    worker = start_worker("imaging", env=env, concurrency=1, log_path=workdir / "worker-imaging.log")
    started.append(worker)
    train_dir = workdir / "xray-train-SYNTHETIC"
    write_xrays(train_dir, 60, size=96, seed=1, formats=("png", "jpeg", "dicom"))
    console.print(
        f"training a tiny X-ray CNN on 120 SYNTHETIC images in {train_dir} "
        "(generated shapes, for the demo only: not a medical model) ..."
    )
    config = xray.XrayConfig(input_size=64, filters=(8, 16, 32), dense_units=64, epochs=8, learning_rate=3e-3)
    done = training.train_xray(
        settings.database_url,
        train_dir,
        model_dir=Path(settings.model_dir),
        config=config,
        seed=0,
        stem="xray-demo",
        training_source="SYNTHETIC demo images (not for clinical use)",
        activate=False,
    )
    version = done.version
    test = done.trained.meta["metrics"]["test"]
    console.print(
        f"  held-out synthetic test: AUC {test['auc']}, sensitivity {test['sensitivity']}, "
        f"specificity {test['specificity']} (n={test['n']}; easy synthetic data, says nothing about real X-rays)"
    )
    night = workdir / "xray-night-SYNTHETIC"
    write_xrays(night, 8, size=400, seed=2, split="inbox", formats=("png", "jpeg", "dicom"))
    (night / "readme.txt").write_text("not an image: the demo shows how a stray file is reported\n")
    wait_until_ready(app, worker, timeout_s=120)
    console.print(f"submitting {night} (16 SYNTHETIC radiographs and one stray text file)")
    return submit_images(night, database_url=settings.database_url, send=send, batch_size=8, model=("xray", version))


def _molecules_demo(settings, workdir: Path, send, env: dict, started: list, app, console: Console, count: int):
    """Generate ``count`` molecules with the shipped generator on a worker of the molecules queue."""
    from medbatch.producer.generation import submit_molecules
    from medbatch.worker.processes import start_worker, wait_until_ready

    console.print("starting a worker for the molecules queue (TensorFlow and RDKit load in its child process) ...")
    worker = start_worker("molecules", env=env, concurrency=1, log_path=workdir / "worker-molecules.log")
    started.append(worker)
    wait_until_ready(app, worker, timeout_s=120)
    console.print(f"generating {count} molecules with the shipped SMILES generator (seed 0, temperature 1.0)")
    return submit_molecules(database_url=settings.database_url, send=send, count=count, seed=0, batch_size=100)


def run_demo(*, workdir: Path, patients: int, console: Console, molecules: int = 200) -> int:
    """Run the demo; returns the process exit code of :mod:`medbatch.exit_codes`: 0 when every job finished and
    every staged item succeeded (its rejected rows and stray file are deliberate, so never 5), 6 when items
    failed, 7 when a job did not finish in time, 1 when a job failed or the demo itself did."""
    from medbatch.db import repository as repo
    from medbatch.db.migrate import upgrade
    from medbatch.db.session import session_scope
    from medbatch.export import ERROR_COLUMNS, RESULT_COLUMNS, result_columns, write_rows
    from medbatch.jobs import wait_for_job
    from medbatch.producer.send import celery_sender
    from medbatch.producer.submit import submit_records, submit_reports
    from medbatch.producer.synthetic import write_patients
    from medbatch.worker.app import create_app
    from medbatch.worker.embedded import redis_reachable, start_local_redis
    from medbatch.worker.processes import start_worker, wait_until_ready

    settings = get_settings()
    workdir.mkdir(parents=True, exist_ok=True)
    started = []
    local_redis = None
    try:
        if redis_reachable(settings.broker_url):
            console.print(f"broker: Redis at {redact_url(settings.broker_url)}")
        else:
            local_redis = start_local_redis(settings.broker_url)
            started.append(local_redis)
            console.print(f"broker: no Redis was running, started a local one at {redact_url(settings.broker_url)}")
        upgrade(settings.database_url)
        console.print(f"database: {redact_url(settings.database_url)}")

        console.print("starting a worker for the tabular and reports queues ...")
        env = {"MEDBATCH_BROKER_URL": settings.broker_url, "MEDBATCH_DATABASE_URL": settings.database_url}
        worker = start_worker(
            "tabular,reports", env=env, concurrency=min(2, os.cpu_count() or 1), log_path=workdir / "worker.log"
        )
        started.append(worker)
        app = create_app(settings)
        wait_until_ready(app, worker, timeout_s=120)

        send = celery_sender(app, settings.database_url)
        jobs = []
        for workload in ("risk", "treatment"):
            path = write_patients(workdir / f"{workload}_patients.csv", workload, patients, seed=7, bad_fraction=0.01)
            console.print(f"submitting {path} ({patients} SYNTHETIC patients, about 1% with deliberate mistakes)")
            summary = submit_records(
                path, workload, database_url=settings.database_url, send=send, batch_size=settings.batch_size
            )
            jobs.append(summary)

        def wait(job_id: int) -> dict:
            with job_progress(console, job_id) as on_progress:
                return wait_for_job(
                    settings.database_url,
                    job_id,
                    timeout_s=600,
                    on_progress=on_progress,
                    measure_missing=True,
                    broker_url=settings.broker_url,
                )

        finals = [wait(s.job_id) for s in jobs]
        # The demo spends nothing: offline templates unless a provider is chosen explicitly.
        provider = "offline" if settings.llm_provider == "auto" else settings.resolved_llm_provider()
        console.print(f"drafting reports for the first 20 patients of job {jobs[0].job_id} ({provider} provider)")
        report = submit_reports(
            database_url=settings.database_url,
            send=send,
            provider=provider,
            llm_model=settings.llm_model,
            from_job=jobs[0].job_id,
            batch_size=settings.report_batch_size,
            limit=20,
        )
        jobs.append(report)
        finals.append(wait(report.job_id))
        xray_job = _xray_demo(settings, workdir, send, env, started, app, console)
        jobs.append(xray_job)
        finals.append(wait(xray_job.job_id))
        if molecules > 0:
            molecule_job = _molecules_demo(settings, workdir, send, env, started, app, console, molecules)
            jobs.append(molecule_job)
            finals.append(wait(molecule_job.job_id))
        table = Table(
            "job",
            "workload",
            "status",
            "done/staged",
            "failed",
            "rejected rows",
            title="medbatch demo (synthetic patients)",
        )
        files = []
        for s, c in zip(jobs, finals, strict=True):
            result_file = workdir / f"results-{s.workload}-job{s.job_id}.csv"
            error_file = workdir / f"errors-{s.workload}-job{s.job_id}.csv"
            with session_scope(settings.database_url) as sess:
                write_rows(
                    repo.iter_results(sess, s.job_id),
                    "csv",
                    result_file,
                    columns=result_columns(repo.result_detail_keys(sess, s.job_id)),
                    empty_columns=RESULT_COLUMNS,
                )
                write_rows(repo.iter_errors(sess, s.job_id), "csv", error_file, empty_columns=ERROR_COLUMNS)
                labels = repo.label_counts(sess, s.job_id)
            table.add_row(
                str(s.job_id),
                s.workload,
                c["status"],
                f"{c['items_done']}/{c['items_total']}",
                str(c["items_failed"]),
                str(c["rows_rejected"]),
            )
            if s.workload == "molecules":  # labels are SMILES (NULL when invalid): the metrics say more
                files.append(f"  job {s.job_id} {s.workload}: one result per generated slot (invalid ones too)")
            else:
                files.append(
                    f"  job {s.job_id} {s.workload}: " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items()))
                )
            files.append(f"    results {result_file}\n    errors  {error_file}")
            if s.workload == "xray":
                files.append(
                    f"    Grad-CAM overlays of positives in {Path(settings.results_dir).resolve() / 'heatmaps'}"
                )
            if s.workload == "molecules":
                with session_scope(settings.database_url) as sess:
                    files.append("    " + molecule_metrics.one_line(repo.get_job(sess, s.job_id).metrics))
        console.print(table)
        console.print("\n".join(["labels and files:", *files]))
        code = worst(job_exit_code(c, count_rejected=False) for c in finals)
        if code != ExitCode.OK:
            console.print(
                f"[bold red]the demo did not end cleanly (exit {int(code)}):[/] see the failed column and the "
                "errors files above"
            )
        console.print(
            "query them yourself: [bold]medbatch status[/], [bold]medbatch results JOB[/], or SQL, e.g.\n"
            '  sqlite3 medbatch.db "select label, count(*) from results group by label"'
        )
        return code
    except MedbatchError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return ExitCode.FAILED
    finally:
        for thing in reversed(started):
            thing.stop()
        if local_redis is not None:
            console.print("stopped the local Redis and the worker")
