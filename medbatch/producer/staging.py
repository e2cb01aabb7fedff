"""Stage validated inputs in the database, commit, and only then send one message per batch.

A job is created with the model it will use (:func:`ensure_model`), then staged one transaction per
chunk of input; each chunk's batches are sent after its commit, and recorded as sent (``queued``) in the next
chunk's transaction. If the broker is down after staging, the batches stay ``pending`` in the database and
``medbatch resume JOB`` (or the reconciler) sends them later: nothing is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medbatch.db import repository as repo
from medbatch.db.repository.staging import Items
from medbatch.db.session import session_scope
from medbatch.errors import BrokerUnavailable, DatabaseUnavailable, InvalidInput
from medbatch.ml import registry
from medbatch.producer.chunks import RecordChunk
from medbatch.producer.identity import whoami
from medbatch.producer.send import Send, send_batches
from medbatch.worker.routing import route_for

log = logging.getLogger("medbatch.producer")


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
    #: Seconds spent reading + validating the input, staging it (the chunk transactions), queueing messages.
    timings: dict[str, float] = field(default_factory=lambda: {"read_validate_s": 0.0, "stage_s": 0.0, "queue_s": 0.0})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_model(database_url: str, name: str) -> tuple[str, str]:
    """The (name, version) a new job of ``name`` will use: the active registered model, else the shipped one."""
    with session_scope(database_url) as s:
        model = repo.active_model(s, name)
        if model is not None:
            return model.name, model.version
        uri = registry.BUILTIN_ARTIFACTS.get(name)
        if uri is None:
            inactive = [m for m in repo.list_models(s) if m.name == name]
            if inactive:  # the demo registers its synthetic X-ray model inactive, on purpose
                latest = inactive[0]
                raise InvalidInput(
                    f"no {name} model is active: {len(inactive)} registered version(s) are inactive, the latest "
                    f"{latest.version} (trained on {latest.training_source}). Activate one with `medbatch models "
                    f"activate {name} {latest.version}` (see `medbatch models`), or train one with "
                    f"`medbatch train {name} ...`"
                )
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

    meta = path.with_suffix(".json")
    if not meta.is_file():
        return {}
    data = json.loads(meta.read_text())
    out = dict(data.get("metrics") or {})
    if data.get("training_source"):
        out["_training_source"] = data["training_source"]
    return out


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
    pending: Items = []
    seq = 0
    broker_error: BrokerUnavailable | None = None
    # Batches sent but not yet recorded as sent: recorded in the next chunk's staging transaction (or the one
    # that ends staging), not in one of their own. On SQLite every write transaction waits its turn for the one
    # write lock (a million rows, two runs each: the producer's queue phase 2.5-2.7 -> 0.1-0.2 s, end to end
    # 13.9-14.0 -> 13.8 s; no change on PostgreSQL). A producer that dies in between leaves
    # them `pending`, as a death between a send and its record always could: `resume` and the reconciler send
    # them again, and a worker that already ran one writes nothing twice. The record carries the time taken just
    # before the first of them was sent, so a batch's queued_at is never after its started_at.
    unrecorded: list[int] = []
    sent_at: datetime | None = None

    def stage_chunk(items: Items, rejected: list[dict]) -> list[int]:
        ids: list[int] = []
        with session_scope(database_url) as s:
            if len(items):  # every batch of the chunk in one INSERT, every item in one COPY / executemany
                ids = repo.stage_batches(
                    s, job_id=job_id, first_seq=seq, queue=route.queue, items=items, batch_size=batch_size
                )
            repo.record_rejections(s, job_id=job_id, errors=rejected)
            # Near the end, so those batch rows stay locked only until the commit (a worker's claim of one waits that
            # long), and before the job row is locked: a worker finishing a batch locks its batch row, then the job's.
            repo.mark_batches_queued(s, unrecorded, sent_at=sent_at)
            repo.add_staged_counts(s, job_id, items=len(items), batches=len(ids), rejected=len(rejected))
        return ids

    def flush(items: Items, rejected: list[dict]) -> None:
        nonlocal seq, broker_error, sent_at
        started = time.perf_counter()
        ids = _with_retries(
            lambda: stage_chunk(items, rejected),
            lambda: _committed_chunk(database_url, job_id, seq, items, batch_size, rejected),
            f"job {job_id}: staging a chunk",
        )
        seq += len(ids)
        new_batches = [(batch_id, route.queue) for batch_id in ids]
        unrecorded.clear()
        summary.batches += len(new_batches)
        summary.items_staged += len(items)
        staged = time.perf_counter()
        summary.timings["stage_s"] += staged - started
        if send is not None and broker_error is None:
            try:
                sent_at = datetime.now(UTC)
                summary.batches_sent += send_batches(send, database_url, new_batches, route.task, sent=unrecorded)
            except BrokerUnavailable as exc:
                # Keep staging the whole file: the database holds it, `resume` (or the reconciler) sends it.
                broker_error = exc
                summary.batches_sent = _count_sent(database_url, job_id)
        summary.timings["queue_s"] += time.perf_counter() - staged

    chunks = iter(chunks)
    # The next chunk is read and validated in a second thread while this one is written: the database's
    # COPY waits release the GIL, so a million rows stage in the time of the slower of the two, not their sum.
    # One chunk ahead at most, so memory stays flat; the chunks are read one after another, in order.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medbatch-read")
    try:
        ahead = reader.submit(_timed_next, chunks, summary.timings)
        while (chunk := ahead.result()) is not None:
            ahead = reader.submit(_timed_next, chunks, summary.timings)
            pending = pending + chunk.items if len(pending) else chunk.items
            full = len(pending) - len(pending) % batch_size
            flush(pending[:full], list(chunk.rejected))
            pending = pending[full:]
            summary.rows_rejected += len(chunk.rejected)
            if progress:
                progress(chunk.bytes_read, summary.items_staged, summary.rows_rejected)
        flush(pending, [])
    except InvalidInput as exc:
        with session_scope(database_url) as s:
            repo.mark_batches_queued(s, unrecorded, sent_at=sent_at)
            repo.finish_staging(s, job_id, error=str(exc))
        raise
    finally:
        reader.shutdown(wait=True, cancel_futures=True)  # a read in flight finishes its chunk, then the thread ends

    def finish() -> None:  # idempotent: a retry after a commit that went through changes nothing
        with session_scope(database_url) as s:
            repo.mark_batches_queued(s, unrecorded, sent_at=sent_at)
            repo.finish_staging(s, job_id)

    _with_retries(finish, lambda: None, f"job {job_id}: ending staging")
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


#: Seconds to wait before each new try of a staging transaction that met a transient database error (a deadlock,
#: a dropped connection, SQLite busy past its timeout); after the last, ``submit`` stops with exit 3 as before.
STAGE_RETRY_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)


def _with_retries(attempt: Callable[[], Any], committed: Callable[[], Any], what: str) -> Any:
    """Run one staging transaction (``attempt``), trying it again after a transient database error.

    A failure in the commit may hide a commit that went through (the connection was lost after the server
    committed), so before each new try ``committed()`` reads what the transaction would have returned, or None
    when it is not there (a transaction that failed earlier left nothing, and reads as None too).

    Raises:
        DatabaseUnavailable: the last try failed too.
    """
    failed = False
    delays = iter(STAGE_RETRY_DELAYS_S)
    while True:
        try:
            if failed and (done := committed()) is not None:
                return done
            return attempt()
        except DatabaseUnavailable as exc:
            delay = next(delays, None)
            if delay is None:
                raise
            failed = True
            log.warning("%s failed (%s); trying again in %.1fs", what, exc, delay)
            time.sleep(delay)


def _committed_chunk(
    database_url: str, job_id: int, first_seq: int, items: Items, batch_size: int, rejected: list[dict]
) -> list[int] | None:
    batches = -(-len(items) // batch_size) if len(items) else 0
    with session_scope(database_url) as s:
        return repo.committed_chunk(
            s, job_id=job_id, first_seq=first_seq, batches=batches, first_rejection=rejected[0] if rejected else None
        )


def _timed_next(chunks: Iterator[RecordChunk], timings: dict[str, float]) -> RecordChunk | None:
    started = time.perf_counter()
    try:
        return next(chunks, None)
    finally:
        timings["read_validate_s"] += time.perf_counter() - started


def _count_sent(database_url: str, job_id: int) -> int:
    with session_scope(database_url) as s:
        return repo.count_batches(s, job_id, exclude_status="pending")
