"""Stage validated inputs in the database, commit, and only then send one message per batch.

Messages carry a batch ID and nothing else. If the broker is down after staging, the batches stay
``pending`` in the database and ``medbatch resume JOB`` sends them later: nothing is lost.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medbatch.config import error_reason
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import BrokerUnavailable, InvalidInput
from medbatch.ml import registry
from medbatch.producer.identity import whoami
from medbatch.producer.paths import check_input_path
from medbatch.producer.records import RecordChunk, iter_record_chunks, read_header
from medbatch.worker.routing import JOB_TASKS, route_for

log = logging.getLogger("medbatch.producer")

#: send(task_name, queue, batch_id) publishes one message; raises on broker failure.
Send = Callable[[str, str, int], None]
Progress = Callable[[int, int, int], None]  # (bytes_read, items_staged, rows_rejected)
#: What to do when a workload has no registered model and none ships with medbatch.
NO_MODEL_HINTS = {
    "xray": (
        "no X-ray model is registered, and none ships with medbatch (no labelled chest X-ray set installs "
        "offline). Train one on the Kaggle chest_xray layout (folders train/NORMAL and train/PNEUMONIA, "
        "optional val/ and test/): `medbatch train xray /path/to/chest_xray`. `medbatch demo` shows the "
        "whole path with a tiny model trained on synthetic images."
    ),
}
#: The actor named in the audit log for re-sends made by the periodic reconciler.
RECONCILER = "reconciler"


@dataclass
class SubmitSummary:
    job_id: int
    workload: str
    source: str
    items_staged: int = 0
    rows_rejected: int = 0
    batches: int = 0
    batches_sent: int = 0
    model: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def celery_sender(app, database_url: str | None = None) -> Send:
    """A :data:`Send` that publishes through a Celery app, with the ID alone shown in Flower.

    With ``database_url``, each message also carries that database's identity, so a worker configured
    for another database refuses it instead of mistaking the batch ID for one of its own.
    """
    db: str | None = None
    if database_url is not None:
        with session_scope(database_url) as s:
            db = repo.instance_id(s, fresh=True)
    kwargs = {"db": db} if db else {}

    def send(task: str, queue: str, batch_id: int) -> None:
        try:
            app.send_task(
                task, args=[batch_id], kwargs=kwargs, queue=queue, argsrepr=f"[{batch_id}]", kwargsrepr=repr(kwargs)
            )
        except Exception as exc:  # kombu raises several types for a dead broker
            raise BrokerUnavailable(f"could not send batch {batch_id}: {error_reason(exc)}") from exc

    return send


def ensure_model(database_url: str, name: str) -> tuple[str, str]:
    """The (name, version) a new job of ``name`` will use: the active registered model, else the shipped one."""
    with session_scope(database_url) as s:
        model = repo.active_model(s, name)
        if model is not None:
            return model.name, model.version
        uri = registry.BUILTIN_ARTIFACTS.get(name)
        if uri is None:
            raise InvalidInput(
                NO_MODEL_HINTS.get(name, f"no {name} model is registered; train one with `medbatch train {name} ...`")
            )
        path = registry.resolve_uri(uri)
        if not path.is_file():
            raise InvalidInput(f"the shipped {name} model is missing ({path}); train one with `medbatch train {name}`")
        metrics = _card_metrics(path)
        model = repo.register_model(
            s,
            name=name,
            version=registry.file_version(path),
            uri=uri,
            metrics=metrics,
            training_source=metrics.pop("_training_source", "shipped with medbatch"),
        )
        return model.name, model.version


def _card_metrics(path: Path) -> dict[str, Any]:
    import json

    meta = path.with_suffix(".json")
    if not meta.is_file():
        return {}
    data = json.loads(meta.read_text())
    out = dict(data.get("metrics") or {})
    if data.get("training_source"):
        out["_training_source"] = data["training_source"]
    return out


def send_batches(
    send: Send, database_url: str, batches: Sequence[tuple[int, str]], task: str, *, resend: bool = False
) -> int:
    """Send one message per (batch id, queue) and record the sends. Returns how many were sent.

    Args:
        resend: these batches were sent before (resume, reconcile): refresh their state and time.

    Raises:
        BrokerUnavailable: after recording the ones sent before the failure.
    """
    sent: list[int] = []
    try:
        for batch_id, queue in batches:
            send(task, queue, batch_id)
            sent.append(batch_id)
    finally:
        if sent:
            with session_scope(database_url) as s:
                (repo.mark_batches_resent if resend else repo.mark_batches_queued)(s, sent)
    return len(sent)


def stage_job(
    *,
    database_url: str,
    workload: str,
    source: str,
    model: tuple[str, str],
    options: dict[str, Any],
    chunks: Iterable[RecordChunk],
    batch_size: int,
    send: Send | None,
    progress: Progress | None = None,
    submitted_by: str | None = None,
) -> SubmitSummary:
    """Create a job and stage ``chunks`` into it, one transaction per chunk; send each batch after its commit.

    ``send=None`` stages without sending (the caller sends one job-level message instead).

    Raises:
        InvalidInput: raised by ``chunks`` mid-way; the job is marked failed with the reason.
        BrokerUnavailable: what was staged stays in the database for ``resume``.
    """
    route = route_for(workload)
    with session_scope(database_url) as s:
        job_id = repo.create_job(
            s,
            workload=workload,
            source_uri=source,
            model_name=model[0],
            model_version=model[1],
            options={"batch_size": batch_size, **options},
            submitted_by=submitted_by or whoami(),
        )
    summary = SubmitSummary(
        job_id=job_id, workload=workload, source=source, model={"name": model[0], "version": model[1]}
    )
    log.info("job %s: staging %s input (model %s %s)", job_id, workload, model[0], model[1])
    pending: list[dict] = []
    seq = 0
    broker_error: BrokerUnavailable | None = None

    def flush(items: list[dict], rejected: list[dict]) -> None:
        nonlocal seq, broker_error
        new_batches: list[tuple[int, str]] = []
        with session_scope(database_url) as s:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                new_batches.append(
                    (repo.stage_batch(s, job_id=job_id, seq=seq, queue=route.queue, items=chunk), route.queue)
                )
                seq += 1
            repo.record_rejections(s, job_id=job_id, errors=rejected)
            repo.add_staged_counts(s, job_id, items=len(items), batches=len(new_batches), rejected=len(rejected))
        summary.batches += len(new_batches)
        summary.items_staged += len(items)
        if send is not None and broker_error is None:
            try:
                summary.batches_sent += send_batches(send, database_url, new_batches, route.task)
            except BrokerUnavailable as exc:
                # Keep staging the whole file: the database holds it, `resume` (or the reconciler) sends it.
                broker_error = exc
                summary.batches_sent = _count_sent(database_url, job_id)

    try:
        for chunk in chunks:
            pending.extend(chunk.items)
            full = len(pending) - len(pending) % batch_size
            flush(pending[:full], list(chunk.rejected))
            pending = pending[full:]
            summary.rows_rejected += len(chunk.rejected)
            if progress:
                progress(chunk.bytes_read, summary.items_staged, summary.rows_rejected)
        flush(pending, [])
    except InvalidInput as exc:
        with session_scope(database_url) as s:
            repo.finish_staging(s, job_id, error=str(exc))
        raise
    with session_scope(database_url) as s:
        repo.finish_staging(s, job_id)
    if broker_error is not None:
        raise BrokerUnavailable(
            f"job {job_id}: all {summary.items_staged} items are staged, but {summary.batches - summary.batches_sent} "
            f"of {summary.batches} batches could not be sent ({broker_error}); when the broker is back run "
            f"`medbatch resume {job_id}` (the reconciler also re-sends them after MEDBATCH_RECONCILE_AFTER_S)"
        )
    if summary.items_staged == 0:
        summary.warnings.append("no valid rows: nothing was queued")
    log.info(
        "job %s: %d items in %d batches, %d rows rejected",
        job_id,
        summary.items_staged,
        summary.batches,
        summary.rows_rejected,
    )
    return summary


def _count_sent(database_url: str, job_id: int) -> int:
    with session_scope(database_url) as s:
        return repo.count_batches(s, job_id, exclude_status="pending")


def submit_records(
    path: Path,
    workload: str,
    *,
    database_url: str,
    send: Send,
    batch_size: int,
    id_column: str | None = None,
    progress: Progress | None = None,
    submitted_by: str | None = None,
    input_roots: Sequence[Path] | None = None,
) -> SubmitSummary:
    """Validate and stage a patient-record CSV as a job, then enqueue its batches.

    Each committed chunk's batches are sent right away, so workers start while a large file is still
    being read. Bad rows become recorded rejections; the rest of the file goes on.

    Args:
        input_roots: directories the file must lie under (see :func:`~medbatch.producer.paths.check_input_path`);
            ``None``: anywhere.

    Raises:
        InvalidInput: the file as a whole cannot be used (outside the input roots, missing, empty, required
            columns absent); nothing is staged.
        BrokerUnavailable: the broker went away; what was staged stays in the database for ``resume``.
    """
    path = check_input_path(path, input_roots)
    read_header(path, workload, id_column)  # fail fast, before a job exists
    return stage_job(
        database_url=database_url,
        workload=workload,
        source=str(path.resolve()),
        model=ensure_model(database_url, workload),
        options={"id_column": id_column},
        chunks=iter_record_chunks(path, workload, id_column=id_column),
        batch_size=batch_size,
        send=send,
        progress=progress,
        submitted_by=submitted_by,
    )


def submit_images(
    root: Path,
    *,
    database_url: str,
    send: Send,
    batch_size: int,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    max_bytes: int | None = None,
    modalities: Sequence[str] | None = None,
    model: tuple[str, str] | None = None,
    files: Sequence[Path] | None = None,
    input_roots: Sequence[Path] | None = None,
    progress: Progress | None = None,
    submitted_by: str | None = None,
) -> SubmitSummary:
    """Stage every radiograph under ``root`` (a folder, searched recursively, or one file) as an X-ray job.

    Files are sniffed and hashed, never decoded here: an unusable file becomes a rejection with its
    reason, and an image whose content was already seen in this job is processed once (the summary
    warns with an example). ``model`` pins a registered (name, version); by default the active one.
    ``files`` stages exactly these files instead of walking ``root`` (the nightly run's new arrivals).
    ``input_roots``: ``root`` must lie under one of them, and a file inside it that resolves outside them
    (a symlink out of the folder) is rejected with the reason (see :func:`~medbatch.producer.paths.check_input_path`).

    Raises:
        InvalidInput: ``root`` is missing or holds no matching file, or no X-ray model is registered.
        BrokerUnavailable: the broker went away; what was staged stays in the database for ``resume``.
    """
    from medbatch.ml import images
    from medbatch.producer.images import ImageScan, iter_image_chunks, list_images

    root = check_input_path(root, input_roots)
    if files is not None:
        if not files:
            raise InvalidInput(f"{root}: no files to submit")
        scan = ImageScan(files=list(files), total_bytes=sum(f.stat().st_size for f in files if f.exists()))
    else:
        scan = list_images(Path(root), include, exclude)  # fail fast, before a job exists
    model = model or ensure_model(database_url, "xray")
    summary = stage_job(
        database_url=database_url,
        workload="xray",
        source=str(Path(root).resolve()),
        model=model,
        options={"include": list(include), "exclude": list(exclude), "files": len(scan.files)},
        chunks=iter_image_chunks(
            scan,
            # One batch per chunk: the first batch is queued as soon as its images are hashed, so the
            # worker starts while the producer is still hashing the rest of the folder.
            chunk_size=batch_size,
            input_roots=input_roots,
            max_bytes=max_bytes or images.DEFAULT_MAX_BYTES,
            modalities=tuple(modalities or images.RADIOGRAPH_MODALITIES),
        ),
        batch_size=batch_size,
        send=send,
        progress=progress,
        submitted_by=submitted_by,
    )
    if scan.duplicates:
        dup, first = scan.duplicates[0]
        summary.warnings.append(
            f"{len(scan.duplicates)} file(s) repeat an image already in this job and were processed once "
            f"(e.g. {dup} has the same content as {first})"
        )
        with session_scope(database_url) as s:
            repo.update_job_options(s, summary.job_id, duplicate_files=len(scan.duplicates))
    return summary


def submit_reports(
    *,
    database_url: str,
    send: Send,
    provider: str,
    llm_model: str,
    path: Path | None = None,
    from_job: int | None = None,
    mode: str = "online",
    budget_tokens: int | None = None,
    batch_size: int,
    id_column: str | None = None,
    limit: int | None = None,
    progress: Progress | None = None,
    submitted_by: str | None = None,
    input_roots: Sequence[Path] | None = None,
) -> SubmitSummary:
    """Stage a report job from a patient-facts CSV or from the patients of an earlier job, then queue it.

    ``mode="online"`` sends one message per batch to the ``reports`` queue; ``mode="batch"`` sends one
    job-level message that hands every request to the provider's Batch API (half the cost, results
    within 24 hours).

    Raises:
        InvalidInput: no usable source (a CSV outside ``input_roots`` included), an unknown mode, or the
            Batch API asked of the offline provider.
    """
    from medbatch.ml.reports import PROMPT_VERSION
    from medbatch.producer.reports import iter_fact_chunks, iter_job_fact_chunks

    if (path is None) == (from_job is None):
        raise InvalidInput("give either a patient-facts CSV or --from-job JOB")
    if mode not in ("online", "batch"):
        raise InvalidInput(f"unknown mode {mode!r}; choose online or batch")
    if mode == "batch" and provider != "openai":
        raise InvalidInput("--mode batch uses the OpenAI Batch API: set an API key (or MEDBATCH_LLM_PROVIDER=openai)")
    if path is not None:
        path = check_input_path(path, input_roots)
        chunks = iter_fact_chunks(path, id_column=id_column)
        source = str(path)
    else:
        chunks = iter_job_fact_chunks(database_url, from_job, limit=limit)
        source = f"job:{from_job}"
    # Read the first chunk before a job exists, so an unreadable source creates nothing.
    chunks = iter(chunks)
    head = next(chunks, None)
    chunks = itertools.chain([head] if head is not None else [], chunks)
    summary = stage_job(
        database_url=database_url,
        workload="report",
        source=source,
        model=(provider, PROMPT_VERSION),
        options={
            "mode": mode,
            "budget_tokens": budget_tokens,
            "llm_model": llm_model if provider == "openai" else "offline-template",
            "from_job": from_job,
        },
        chunks=chunks,
        batch_size=batch_size,
        send=send if mode == "online" else None,
        progress=progress,
        submitted_by=submitted_by,
    )
    if mode == "batch" and summary.items_staged:
        route = JOB_TASKS["report_batch_submit"]
        send(route.task, route.queue, summary.job_id)
        summary.batches_sent = summary.batches
    return summary


def resume_job(
    job_id: int, *, database_url: str, send: Send, only: Sequence[int] | None = None, actor: str | None = None
) -> int:
    """Re-send every unfinished batch of ``job_id`` (or just those in ``only``). Re-delivery is harmless:
    writes are idempotent.

    Returns:
        The number of messages sent.
    """
    with session_scope(database_url) as s:
        job = repo.get_job(s, job_id)
        route = route_for(job.workload)
        batches = repo.unfinished_batches(s, job_id)
        job_level = (job.options or {}).get("mode") == "batch"
    if only is not None:
        batches = [b for b in batches if b[0] in set(only)]
    with session_scope(database_url) as s:
        repo.audit(
            s,
            actor=actor or whoami(),
            action="reconcile" if actor == RECONCILER else "resume",
            job_id=job_id,
            detail={"batches": len(batches)},
        )
    if job_level:  # overnight report job: one idempotent job-level message (submits once, then polls)
        if batches:
            task = JOB_TASKS["report_batch_submit"]
            send(task.task, task.queue, job_id)
            with session_scope(database_url) as s:
                repo.mark_batches_resent(s, [b for b, _q in batches])
        return 1 if batches else 0
    return send_batches(send, database_url, batches, route.task, resend=True)


def reconcile(*, database_url: str, send: Send, older_than_s: float) -> dict[int, int]:
    """Find batches stuck past the deadline (a lost message, a Redis that lost its data) and re-send them.

    Returns:
        Messages sent per job id.
    """
    with session_scope(database_url) as s:
        stuck = repo.stuck_batches(s, older_than_s=older_than_s)
    sent: dict[int, int] = {}
    for job_id, batches in stuck.items():
        sent[job_id] = resume_job(
            job_id, database_url=database_url, send=send, only=[b for b, _q in batches], actor=RECONCILER
        )
        log.warning("job %s: %d stuck batch(es) re-sent by the reconciler", job_id, sent[job_id])
    return sent
