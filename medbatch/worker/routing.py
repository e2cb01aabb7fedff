"""Queues and routing, defined in one place: which task serves each workload, on which queue."""

from __future__ import annotations

from dataclasses import dataclass

QUEUES = ("tabular", "imaging", "reports", "molecules")


@dataclass(frozen=True)
class Route:
    task: str
    queue: str


#: workload -> the task that processes one of its batches.
WORKLOADS: dict[str, Route] = {
    "risk": Route("medbatch.tabular.score_batch", "tabular"),
    "treatment": Route("medbatch.tabular.score_batch", "tabular"),
    "report": Route("medbatch.reports.generate_batch", "reports"),
    "xray": Route("medbatch.imaging.classify_batch", "imaging"),
    "molecules": Route("medbatch.molecules.generate_batch", "molecules"),
}
#: Job-level tasks (not one per batch), each on its workload's queue.
JOB_TASKS: dict[str, Route] = {
    "report_batch_submit": Route("medbatch.reports.submit_provider_batch", "reports"),
    "report_batch_poll": Route("medbatch.reports.poll_provider_batch", "reports"),
    "reconcile": Route("medbatch.maintenance.reconcile", "tabular"),
    "nightly": Route("medbatch.maintenance.nightly", "tabular"),
    "morning_summary": Route("medbatch.maintenance.morning_summary", "tabular"),
    # Findings of a PACS-sourced X-ray job back to the PACS (MEDBATCH_PACS_RETURN): imaging hosts reach the PACS.
    "dicom_return": Route("medbatch.dicom.return_job", "imaging"),
}


def route_for(workload: str) -> Route:
    try:
        return WORKLOADS[workload]
    except KeyError:
        raise ValueError(f"unknown workload {workload!r}; known: {', '.join(sorted(WORKLOADS))}") from None


def task_routes() -> dict[str, dict[str, str]]:
    """Celery ``task_routes``: every task name to its queue."""
    return {r.task: {"queue": r.queue} for r in (*WORKLOADS.values(), *JOB_TASKS.values())}
