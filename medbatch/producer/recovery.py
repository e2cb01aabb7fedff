"""Re-send what was staged but never finished: ``medbatch resume JOB`` and the periodic reconciler.

Re-delivery is harmless: every write of a batch is idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.producer.identity import whoami
from medbatch.producer.send import Send, send_batches
from medbatch.worker.routing import JOB_TASKS, route_for

log = logging.getLogger("medbatch.producer")


#: The actor named in the audit log for re-sends made by the periodic reconciler.
RECONCILER = "reconciler"


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
        keep = set(only)
        batches = [b for b in batches if b[0] in keep]
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
