"""Submit one input as a job: a patient-record CSV, a folder of radiographs, or report requests.

Each entry point checks its input as a whole before a job exists, then stages it through
:func:`~medbatch.producer.staging.stage_job`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import InvalidInput
from medbatch.extras import require_workload
from medbatch.producer.paths import check_input_path
from medbatch.producer.send import Send
from medbatch.producer.staging import Progress, SubmitSummary, ensure_model, stage_job
from medbatch.worker.routing import JOB_TASKS


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
    from medbatch.producer.records import iter_record_chunks, read_header  # pandas: not for the other workloads

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
        MissingExtra: the ``imaging`` extra is not installed.
        BrokerUnavailable: the broker went away; what was staged stays in the database for ``resume``.
    """
    require_workload("xray")
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
        MissingExtra: the openai provider without the ``reports`` extra.
    """
    require_workload("report", provider)
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
