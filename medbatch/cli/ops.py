"""The processes and the schema: ``medbatch worker|beat|flower|metrics|db|demo``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from medbatch import defaults
from medbatch.cli._common import (
    ExitCode,
    app,
    database_label,
    err,
    fail,
    out,
    ready_db,
    with_exit_codes,
)
from medbatch.config import get_settings
from medbatch.errors import InvalidInput
from medbatch.worker.routing import QUEUES

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
worker_app = typer.Typer(help="Run a Celery worker (default) or check one.", invoke_without_command=True)
app.add_typer(db_app, name="db")
app.add_typer(worker_app, name="worker")


@app.command()
@with_exit_codes
def beat() -> None:
    """Run Celery beat: the reconciler every MEDBATCH_RECONCILE_INTERVAL_S (one beat per deployment)."""
    from medbatch.worker.app import app as celery_app

    settings = get_settings()
    schedule = settings.beat_schedule_path()
    schedule.parent.mkdir(parents=True, exist_ok=True)
    celery_app.Beat(loglevel=settings.log_level, schedule=str(schedule)).run()


@db_app.command("upgrade")
@with_exit_codes
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply the Alembic migrations to the configured database."""
    from medbatch.db.migrate import current_revision, upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    err.print(f"database {database_label(url)} at revision {current_revision(url)}", highlight=False)


@worker_app.callback()
@with_exit_codes
def worker(
    ctx: typer.Context,
    queues: Annotated[
        str,
        typer.Option(
            "--queues", "-Q", help=f"Comma-separated queues ({', '.join(QUEUES)}), or all (a development worker)."
        ),
    ] = "tabular",
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", help="Processes or threads.")] = None,
    pool: Annotated[str, typer.Option("--pool", "-P", help="prefork, solo or threads.")] = "prefork",
    loglevel: Annotated[str | None, typer.Option(help="Log level [MEDBATCH_LOG_LEVEL].")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", "-n", help="Worker name.")] = None,
    max_tasks_per_child: Annotated[int | None, typer.Option(help="Recycle a child after this many tasks.")] = None,
) -> None:
    """Run a Celery worker on the given queues."""
    if ctx.invoked_subcommand is not None:
        return
    from medbatch.worker.app import app as celery_app

    named = [q.strip() for q in queues.split(",") if q.strip()]
    if named == ["all"]:
        named, queues = list(QUEUES), ",".join(QUEUES)
    unknown = sorted(set(named) - set(QUEUES))
    if unknown or not named:
        raise InvalidInput(f"unknown queue(s) {', '.join(unknown) or repr(queues)}; choose {', '.join(QUEUES)} or all")
    settings = get_settings()
    from medbatch import extras

    extras.require_queues(named, settings.resolved_llm_provider())  # every queue unservable: one line, exit 2
    ready_db()
    argv = [
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "--loglevel",
        loglevel or settings.log_level,
        "-E",
        "-n",
        hostname or ("all@%h" if set(named) == set(QUEUES) else f"{queues.replace(',', '+')}@%h"),
    ]
    if concurrency is None and pool == "prefork" and {"imaging", "molecules"} & set(queues.split(",")):
        # TensorFlow uses every core of its process already: one child on CPU (run one worker per GPU).
        concurrency = 1
    if concurrency:
        argv += ["-c", str(concurrency)]
    if max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(max_tasks_per_child)]
    # worker_main drops the worker's exit code; start() returns it (a worker that stops itself says so).
    raise typer.Exit(celery_app.start(argv=argv) or 0)


@worker_app.command("check")
@with_exit_codes
def worker_check(
    hostname: Annotated[str, typer.Option("--hostname", "-n", help="The worker's name, e.g. tabular@host.")],
    queues: Annotated[str, typer.Option("--queues", "-Q", help="Queues it consumes, comma-separated.")] = "tabular",
    stall_s: Annotated[int | None, typer.Option(help="Seconds without progress [MEDBATCH_WORKER_STALL_S].")] = None,
) -> None:
    """Exit non-zero when the worker is silent, or answers but finishes nothing while work waits."""
    from medbatch.worker.app import app as celery_app
    from medbatch.worker.health import check_worker

    settings = get_settings()
    health = check_worker(
        celery_app,
        settings.broker_url,
        hostname=hostname,
        queues=queues.split(","),
        stall_s=stall_s if stall_s is not None else settings.worker_stall_s,
    )
    (out if health.healthy else err).print(health.reason, highlight=False)
    raise typer.Exit(ExitCode.OK if health.healthy else ExitCode.FAILED)


@app.command()
@with_exit_codes
def flower(
    port: Annotated[int | None, typer.Option(help="Port [MEDBATCH_FLOWER_PORT].")] = None,
    address: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
) -> None:
    """Start Flower, the Celery monitor, on this app (basic auth from MEDBATCH_FLOWER_BASIC_AUTH)."""
    settings = get_settings()
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "medbatch.worker.app",
        "flower",
        f"--port={port or settings.flower_port}",
        f"--address={address}",
    ]
    env = dict(os.environ)
    if settings.flower_basic_auth:
        # Through the environment, not argv, so the password does not show in the process list.
        env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth
    elif settings.environment == "production":
        raise InvalidInput("set MEDBATCH_FLOWER_BASIC_AUTH=user:password before exposing Flower")
    os.execve(sys.executable, argv, env)


@app.command()
@with_exit_codes
def metrics(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = defaults.METRICS_PORT,
    address: Annotated[str, typer.Option(help="Address to bind (0.0.0.0 in a container).")] = "127.0.0.1",
    items_every_s: Annotated[
        float, typer.Option(help="Recount items at most this often (one index entry per item of tonight's jobs).")
    ] = 60.0,
) -> None:
    """Serve job-level Prometheus metrics on /metrics: items, batches, queue depth, age of the oldest, stalls."""
    import threading

    from medbatch.db.session import require_existing
    from medbatch.monitoring import serve

    settings = get_settings()
    require_existing(settings.database_url)
    try:
        server, _thread = serve(
            settings.database_url, settings.broker_url, port=port, address=address, item_counts_every_s=items_every_s
        )
    except OSError as exc:
        raise fail(f"cannot listen on {address}:{port}: {exc.strerror or exc}", ExitCode.UNAVAILABLE) from None
    err.print(f"serving medbatch metrics on http://{address}:{port}/metrics", highlight=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()


@app.command()
@with_exit_codes
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its inputs and results.")] = Path(
        "medbatch-demo"
    ),
    patients: Annotated[int, typer.Option(help="Synthetic patients per workload.")] = 2000,
    molecules: Annotated[int, typer.Option(min=0, help="Molecules to generate (0 skips the molecule job).")] = 200,
) -> None:
    """The main job on embedded defaults: local Redis if none, SQLite, workers, sample jobs, summary."""
    from medbatch.demo import run_demo

    code = run_demo(workdir=workdir, patients=patients, console=err, molecules=molecules)
    raise typer.Exit(code)
