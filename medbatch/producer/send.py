"""Send one message per batch, carrying the batch ID (and the database's identity) and nothing else,
and record each send in the database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from medbatch.config import error_reason
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import BrokerUnavailable

#: send(task_name, queue, batch_id) publishes one message; raises on broker failure.
Send = Callable[[str, str, int], None]


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


def send_batches(
    send: Send,
    database_url: str,
    batches: Sequence[tuple[int, str]],
    task: str,
    *,
    resend: bool = False,
    sent: list[int] | None = None,
) -> int:
    """Send one message per (batch id, queue) and record the sends. Returns how many were sent.

    Args:
        resend: these batches were sent before (resume, reconcile): refresh their state and time.
        sent: leave the record of a complete send to the caller: the ids are appended here, and the caller
            records them (:func:`medbatch.db.repository.mark_batches_queued`) in its next transaction. A send
            that fails part-way records the ones sent at once, as without it.

    Raises:
        BrokerUnavailable: after recording the ones sent before the failure.
    """
    done: list[int] = []

    def record() -> None:
        if done:
            with session_scope(database_url) as s:
                (repo.mark_batches_resent if resend else repo.mark_batches_queued)(s, done)

    try:
        for batch_id, queue in batches:
            send(task, queue, batch_id)
            done.append(batch_id)
    except BaseException:
        record()  # at once: the caller will not get to its next transaction normally
        raise
    if sent is None:
        record()
    else:
        sent.extend(done)
    return len(done)
