"""Job-end wake-ups: a worker that ends a job says so on the broker's Redis, and a waiter sleeps until it does.

A hint, never the truth. The waiter still reads the job from the database, the source of truth, and it
still looks there once a poll interval (``medbatch.jobs.DEFAULT_POLL_S``), so a lost or missing announcement
(a job ended by its producer, by ``cancel``, or by a worker that died) costs at most that interval. What the
hint saves is the glancing in between: a ``--wait`` used to read the job's row ten times a second so that it
saw the end quickly, and on a two-core machine those reads slowed the worker they were waiting for
(docs/design.md, "The fifth round").

The message is the job's ID as text, on one channel (Redis channels are not per database number): a waiter
woken by another database's job 7 reads its own job 7 once and sleeps again. No patient data, never pickle.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("medbatch.wakeups")

CHANNEL = "medbatch:job-ended"


def announce_job_end(client: Any, job_id: int) -> None:
    """Tell waiters that ``job_id`` has ended (``client``: a ``redis.Redis``). Never raises: a waiter that
    misses it finds the end at its next poll."""
    import redis

    try:
        client.publish(CHANNEL, str(int(job_id)))
    except (redis.RedisError, OSError) as exc:
        log.debug("job %s: end not announced (%s)", job_id, type(exc).__name__)


class JobEndListener:
    """Subscribed to the announcements from construction on: an end announced after that is not missed.

    Where the broker is not a reachable Redis, :attr:`live` is False and :meth:`wait` just sleeps.
    """

    def __init__(self, broker_url: str | None, *, connect_timeout_s: float = 2.0):
        self._pubsub = None
        self._client = None  # held: a client collected closes its pool, and with it the subscription
        if not broker_url or not broker_url.startswith(("redis://", "rediss://", "unix://")):
            return
        import redis

        try:
            client = redis.Redis.from_url(
                broker_url, socket_connect_timeout=connect_timeout_s, socket_timeout=connect_timeout_s
            )
            pubsub = client.pubsub()
            pubsub.subscribe(CHANNEL)
            # The server's confirmation: from here on, every announcement reaches this connection.
            deadline = time.monotonic() + connect_timeout_s
            while (left := deadline - time.monotonic()) > 0:
                msg = pubsub.get_message(timeout=left)
                if msg is not None and msg.get("type") == "subscribe":
                    self._client, self._pubsub = client, pubsub
                    return
            pubsub.close()
        except (redis.RedisError, OSError) as exc:
            log.debug("no job-end announcements: %s", type(exc).__name__)

    @property
    def live(self) -> bool:
        return self._pubsub is not None

    def wait(self, seconds: float, job_ids: set[int] | None = None) -> bool:
        """Sleep until one of ``job_ids`` (any job: None) is announced as ended, or ``seconds`` have passed.
        True when an announcement woke it. A connection lost meanwhile ends the announcements (``live`` turns
        False) and the rest of the time is slept."""
        import redis

        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._pubsub is None:
                time.sleep(left)
                return False
            try:
                msg = self._pubsub.get_message(timeout=left)
            except (redis.RedisError, OSError) as exc:
                log.debug("job-end announcements lost: %s", type(exc).__name__)
                self.close()
                continue
            if msg is None or msg.get("type") != "message":
                continue
            try:
                job_id = int(msg["data"])
            except (TypeError, ValueError):
                continue
            if job_ids is None or job_id in job_ids:
                return True
        return False

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._client = self._pubsub = None

    def __enter__(self) -> JobEndListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
