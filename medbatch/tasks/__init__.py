"""Celery adapters. Shared behaviour of every task lives here."""

from __future__ import annotations

import functools
import logging
import time
from typing import Annotated

from celery.exceptions import Reject

from medbatch.config import get_settings
from medbatch.errors import PermanentError, WrongDatabase
from medbatch.worker.strategy import Pattern, Range

#: What a task message may carry, checked before the task runs (medbatch.worker.strategy): a row id
#: of the database (a positive BIGINT), and the identity of the database the work was staged in.
RowId = Annotated[int, Range(1, 2**63 - 1)]
DatabaseIdentity = Annotated[str, Pattern(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")]

log = logging.getLogger("medbatch.tasks")

#: The retry policy of every batch task: any error but a permanent one (or a message for another
#: database, handed back to the queue with Reject, never retried here with an ETA) is retried with
#: jittered exponential backoff, capped at MEDBATCH_TASK_RETRY_BACKOFF_MAX_S.
RETRY = {
    "autoretry_for": (Exception,),
    "dont_autoretry_for": (PermanentError, WrongDatabase, Reject),
    "retry_backoff": 2,
    "retry_backoff_max": get_settings().task_retry_backoff_max_s,
    "retry_jitter": True,
    "max_retries": 20,
}

#: Pause before handing back a message meant for another database, so a misconfigured worker does
#: not spin on it while the right worker is busy.
FOREIGN_REQUEUE_DELAY_S = 1.0


def refuses_foreign(fn):
    """Hand a message staged in another database back to the queue (never retry it here with an ETA:
    Celery keeps ETA messages in the same worker's memory, so the right worker would never see it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WrongDatabase as exc:
            log.error("%s; message handed back to the queue", exc)
            time.sleep(FOREIGN_REQUEUE_DELAY_S)
            raise Reject(str(exc), requeue=True) from exc

    return wrapper
