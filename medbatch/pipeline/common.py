"""The shape every batch takes: claim, load, predict, write once. Shared by all workloads."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import PermanentError, RetryableError
from medbatch.ml import registry

log = logging.getLogger("medbatch.pipeline")

Predict = Callable[[Any, Any], tuple[Any, list[dict]]]
#: load(session, batch_id): the batch's pending items (default: plain rows, :func:`repository.load_pending_items`).
Load = Callable[[Any, int], Any]
#: write(session, batch_id, job_id, results, failures) -> whether the job finished (default: ``complete_batch``).
Write = Callable[..., bool]


def _complete(session: Any, batch_id: int, job_id: int, results: Any, failures: list[dict]) -> bool:
    return repo.complete_batch(session, batch_id=batch_id, job_id=job_id, results=results, failures=failures)


def item_failure(item: Any, reason: str, stage: str = "inference") -> dict[str, Any]:
    """The failure record of one item, as :func:`medbatch.db.repository.complete_batch` takes it."""
    return {
        "item_id": item.id,
        "stage": stage,
        "source_uri": item.source_uri,
        "source_row": item.source_row,
        "patient_ref": item.patient_ref,
        "reason": reason,
    }


def load_job_model(database_url: str, name: str | None, version: str | None) -> Any:
    """The model a job was submitted with, loaded once per process."""
    from medbatch.errors import ModelMisconfigured

    if not name or not version:
        raise ModelMisconfigured("the job names no model")
    cached = registry.cached(name, version)
    if cached is not None:  # versions are immutable: no need to ask the registry again
        return cached
    with session_scope(database_url) as s:
        uri = repo.find_model(s, name, version).uri
    return registry.load(name, version, uri)


def preload_active_models(database_url: str, names: list[str]) -> list[str]:
    """Load the active version of each model in ``names`` into this process's cache and trace its compiled calls
    (``warm_up``), as the first batch would have; returns ``"name version"`` of each one loaded.

    A worker child calls this in a thread as it starts (``worker/signals.py``): importing TensorFlow, loading the
    X-ray model and tracing it took 4.6 s of a small folder's first batch. A job submitted with another version
    loads that one on its first batch, as before. Never raises: a model that cannot be loaded now is loaded (and
    its error recorded against the items) by the batch that needs it.
    """
    loaded = []
    for name in names:
        try:
            with session_scope(database_url) as s:
                row = repo.active_model(s, name)
                found = None if row is None else (row.version, row.uri)
            if found is None:
                continue
            model = registry.load(name, *found)
            warm = getattr(model, "warm_up", None)
            if warm is not None:
                warm()
            loaded.append(f"{name} {found[0]}")
        except Exception as exc:  # noqa: BLE001 - a preload is an optimisation; the batch reports the real error
            log.warning("model %s not preloaded: %s", name, type(exc).__name__)
    return loaded


def release_claim(database_url: str, batch_id: int, reason: str) -> None:
    """Hand a claimed batch back after a transient failure, if the database lets us."""
    try:
        with session_scope(database_url) as s:
            repo.release_batch(s, batch_id, reason)
    except RetryableError:  # the database is still away: the claim stays counted, the retry will tell
        log.warning("batch %s: could not release the claim (%s)", batch_id, reason)


def measure_drift_when_done(database_url: str, out: dict[str, Any]) -> None:
    """After a batch of a drift-measured workload is done (``out`` is :func:`run_batch`'s summary), measure its
    job's drift if the job has finished (:func:`medbatch.pipeline.drift.finalize_job`); a failure is logged, never
    raised: the results are written, and ``medbatch status`` measures drift again.
    """
    from medbatch.pipeline.drift import finalize_job

    if out.get("status") != "done" or out.get("job_finished") is False:
        return  # not this batch's job end (a job finished by its producer is measured by `medbatch status`)
    job_id = out["job_id"]
    try:
        finalize_job(database_url, job_id)
    except Exception:  # noqa: BLE001 - the results are written; `medbatch status` measures drift again
        log.exception("job %s: drift could not be measured", job_id)


def run_batch(
    batch_id: int,
    *,
    database_url: str,
    max_attempts: int,
    predict: Predict,
    expected_db: str | None = None,
    workloads: tuple[str, ...] | None = None,
    load: Load = repo.load_pending_items,
    write: Write = _complete,
) -> dict[str, Any]:
    """Claim ``batch_id``, predict its pending items with the job's model, write every outcome at once.

    A :class:`PermanentError` (no model, tampered artifact) fails every item of the batch with the
    reason: a failed model call is never recorded as a finding. A retryable error hands the batch back
    (the attempt is not counted) and propagates, so the task retries with backoff. ``workloads``: the
    ones the caller serves; a batch of another is refused unchanged (``repository.claim_batch``).
    ``load`` and ``write`` replace the row-wise defaults with a workload's bulk path (tabular: columns in,
    one COPY out); ``items`` is whatever ``load`` returns, ``predict`` and ``write`` take it.

    The summary carries the batch's job, whether this batch ended it (``job_finished``: the worker announces that
    end, :mod:`medbatch.wakeups`) and the seconds spent claiming and loading, scoring, and writing (``timings``).
    """
    started = time.perf_counter()
    with session_scope(database_url) as s:  # the claim alone: the batch row (SQLite: the database) is locked briefly
        repo.check_instance(s, expected_db)
        claim = repo.claim_batch(s, batch_id, max_attempts=max_attempts, workloads=workloads)
    if claim is None:
        log.info("batch %s already finished; nothing written", batch_id)
        return {"batch_id": batch_id, "status": "skipped"}
    # Read outside the claim's transaction: a producer marking this batch queued (it is sent before that is
    # recorded) waited for the lock while 10,000 items were read. Only pending items are read, and every write
    # is idempotent, so a second claim running at the same time writes nothing twice.
    try:
        with session_scope(database_url) as s:
            items = load(s, batch_id)
    except RetryableError as exc:
        release_claim(database_url, batch_id, str(exc))
        raise
    loaded = time.perf_counter()
    try:
        try:
            model = load_job_model(database_url, claim.model_name, claim.model_version)
            results, failures = predict(model, items) if len(items) else ([], [])
        except PermanentError as exc:
            results, failures = [], [item_failure(it, str(exc)) for it in items]
        scored = time.perf_counter()
        with session_scope(database_url) as s:
            finished = write(s, batch_id, claim.job_id, results, failures)
    except RetryableError as exc:
        release_claim(database_url, batch_id, str(exc))
        raise
    done = time.perf_counter()
    timings = {"load_s": loaded - started, "score_s": scored - loaded, "write_s": done - scored}
    log.info(
        "job %s batch %s attempt %s: %d results, %d failures in %.2fs "
        "(load %.3fs, score %.3fs, write %.3fs; model %s %s)",
        claim.job_id,
        batch_id,
        claim.attempt,
        len(results),
        len(failures),
        done - started,
        timings["load_s"],
        timings["score_s"],
        timings["write_s"],
        claim.model_name,
        claim.model_version,
    )
    return {
        "batch_id": batch_id,
        "job_id": claim.job_id,
        "status": "done",
        "results": len(results),
        "failures": len(failures),
        "job_finished": bool(finished),
        "timings": timings,
    }
