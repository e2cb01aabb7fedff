"""Application services over jobs once they are submitted: how a job stands, and waiting for jobs to finish.

The command line (``status``, ``--wait``), the demo, the nightly run and the tests call these; none of them
polls the database in a loop of its own. Plain functions over the database URL: no Celery, no console.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medbatch.wakeups import JobEndListener

#: Seconds between two looks at the database while waiting (each look counts the job's items by state).
DEFAULT_POLL_S = 1.0
#: Seconds between two glances at the jobs' own rows in between (a primary-key read), where no worker's
#: announcement can wake the wait (:mod:`medbatch.wakeups`): a finished job is seen within this, not up to a
#: whole poll later (half a second on average, a tenth of a small X-ray folder's run).
GLANCE_S = 0.1
#: How long a wait that measures what is missing first lets the job's worker store its metrics, seconds.
MEASURE_GRACE_S = 30.0
#: What :func:`job_status` adds to the cheap counts that each look of a wait reports (``repository.job_counts``).
STATUS_ONLY_KEYS = ("labels", "drift")


def job_status(database_url: str, job_id: int, *, measure_missing: bool = False) -> dict:
    """The counts of a job by state (``repository.job_counts``), its result labels for the classifying
    workloads, a molecule job's metrics, and a tabular or X-ray job's ``drift`` block (:func:`drift_block`).
    With ``measure_missing``, a finished molecule (or tabular, or X-ray) job whose worker
    died before measuring it is measured now (idempotent; ``medbatch status`` does this, tests do not, so a
    worker that forgets its metrics is caught).

    Raises:
        NotFound: no such job.
        DatabaseUnavailable: the database could not be reached.
    """
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.db.tables import FINISHED_JOB

    with session_scope(database_url) as s:
        counts = repo.job_counts(s, job_id)
        if counts["workload"] in ("risk", "treatment", "xray"):
            counts["labels"] = {str(k): v for k, v in repo.label_counts(s, job_id).items()}
    if (
        measure_missing
        and counts["workload"] == "molecules"
        and counts["status"] in FINISHED_JOB
        and counts.get("metrics") is None
    ):
        from medbatch.pipeline.molecules import finalize_job

        counts["metrics"] = finalize_job(database_url, job_id)
    if counts["workload"] in repo.DRIFT_WORKLOADS:
        if measure_missing and counts["status"] in FINISHED_JOB and counts.get("metrics") is None:
            from medbatch.pipeline.drift import finalize_job as measure_drift

            counts["metrics"] = measure_drift(database_url, job_id)
        counts["drift"] = drift_block(counts.get("metrics"))
    return counts


def drift_block(metrics: dict | None) -> dict | None:
    """A tabular or X-ray job's drift summary for ``status --json`` and the morning page: ``flagged`` names the drifted
    features (empty when none); per feature its PSI and share outside the training range; the score shift.
    None until the finished job has been measured."""
    d = (metrics or {}).get("drift")
    if d is None:
        return None
    return {
        "available": d.get("available", False),
        "flagged": list(d.get("flagged") or []),
        "n": d.get("n"),
        "features": {
            k: {"psi": v["psi"], "out_of_range_share": v["out_of_range_share"]}
            for k, v in (d.get("features") or {}).items()
        },
        "scores": d.get("scores"),
        "thresholds": d.get("thresholds"),
    }


def is_finished(counts: dict) -> bool:
    """True once the job is in a final state (completed, completed with errors, failed, cancelled)."""
    from medbatch.db.tables import FINISHED_JOB

    return counts["status"] in FINISHED_JOB


def wait_for_jobs(
    database_url: str,
    job_ids: Iterable[int],
    *,
    timeout_s: float | None = None,
    poll_s: float = DEFAULT_POLL_S,
    on_progress: Callable[[dict[int, dict]], object] | None = None,
    measure_missing: bool = False,
    broker_url: str | None = None,
) -> dict[int, dict]:
    """Look at the jobs every ``poll_s`` until every one has finished or ``timeout_s`` has passed (None: no limit).

    Each look is one cheap read of the jobs' counts by state (``repository.job_counts``, one transaction);
    ``on_progress`` gets them (``{job_id: counts}``) after each look, the last one included. Returns the full
    :func:`job_status` of every job once the wait is over; a job still unfinished at the timeout is returned
    as it stood (check :func:`is_finished`). ``measure_missing`` as for :func:`job_status`.

    With the broker's ``broker_url``, a worker's announcement that a job ended (:mod:`medbatch.wakeups`) ends a
    nap at once; without one (or where that Redis cannot be reached) the jobs' rows are glanced at every
    :data:`GLANCE_S` instead. Either way the database decides when a job has finished.
    """
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.wakeups import JobEndListener

    ids = list(dict.fromkeys(job_ids))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with JobEndListener(broker_url) as ends:  # subscribed before the first look: no end falls in between
        while True:
            with session_scope(database_url) as s:
                latest = {job_id: repo.job_counts(s, job_id) for job_id in ids}
            if on_progress is not None:
                on_progress(latest)
            if all(is_finished(c) for c in latest.values()) or (deadline is not None and time.monotonic() >= deadline):
                if measure_missing:
                    _await_worker_metrics(database_url, latest, ends=ends)
                return {job_id: job_status(database_url, job_id, measure_missing=measure_missing) for job_id in ids}
            nap = poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic()))
            if ends.live:
                ends.wait(nap, set(ids))
            else:
                _glance(database_url, ids, lambda job: is_finished({"status": job.status}), nap, GLANCE_S)


def _await_worker_metrics(
    database_url: str, latest: dict[int, dict], grace_s: float | None = None, ends: JobEndListener | None = None
) -> None:
    """Give the worker that finished a job up to ``grace_s`` to store its metrics (drift, MOSES) before the
    caller measures them itself: measuring in the producer too would repeat the work (on 1M rows, seconds and
    a model loaded into the producer) for a figure the worker is writing anyway. The worker announces the job's
    end after storing them (``ends``)."""
    from medbatch.db import repository as repo

    measured = set(repo.DRIFT_WORKLOADS) | {"molecules"}
    # A job whose worker ended it normally; a failed job (or one the producer ended) has no worker measuring it.
    ended_by_worker = ("completed", "completed_with_errors")
    waiting = [
        j
        for j, c in latest.items()
        if c["status"] in ended_by_worker
        and c["items_done"] > 0
        and c["workload"] in measured
        and c.get("metrics") is None
    ]
    # every GLANCE_S / 2 without announcements: an X-ray job's drift is stored within ~0.1 s of its last commit
    _glance(
        database_url,
        waiting,
        lambda job: job.metrics is not None,
        MEASURE_GRACE_S if grace_s is None else grace_s,
        GLANCE_S / 2,
        ends,
    )


def _glance(
    database_url: str,
    job_ids: list[int],
    ready: Callable,
    seconds: float,
    every_s: float,
    ends: JobEndListener | None = None,
) -> None:
    """Sleep up to ``seconds``, reading the jobs' own rows (a primary-key read each) every ``every_s``, until
    ``ready(job)`` holds for all of them. With live announcements (``ends``), a read follows each announcement
    of one of the jobs, and at least one every :data:`DEFAULT_POLL_S`."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    end = time.monotonic() + seconds
    while job_ids and (left := end - time.monotonic()) > 0:
        if ends is not None and ends.live:
            ends.wait(min(DEFAULT_POLL_S, left), set(job_ids))
        else:
            time.sleep(min(every_s, left))
        with session_scope(database_url) as s:
            job_ids = [j for j in job_ids if not ready(repo.get_job(s, j))]


def wait_for_job(
    database_url: str,
    job_id: int,
    *,
    timeout_s: float | None = None,
    poll_s: float = DEFAULT_POLL_S,
    on_progress: Callable[[dict], object] | None = None,
    measure_missing: bool = False,
    broker_url: str | None = None,
) -> dict:
    """:func:`wait_for_jobs` for one job: ``on_progress`` gets its counts after each look; returns its status."""
    report = None if on_progress is None else (lambda latest: on_progress(latest[job_id]))
    latest = wait_for_jobs(
        database_url,
        [job_id],
        timeout_s=timeout_s,
        poll_s=poll_s,
        on_progress=report,
        measure_missing=measure_missing,
        broker_url=broker_url,
    )
    return latest[job_id]
