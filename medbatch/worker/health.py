"""Is this worker doing its work? A liveness ping is not enough.

A known Celery failure leaves a worker answering pings after a broker reconnect while it no longer
consumes. So each worker records, in the broker's Redis, when it last finished a task (and when it
became ready); ``medbatch worker check`` fails when work is waiting on its queues and it has made no
progress for the stall limit. Compose runs that check as the workers' healthcheck.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from celery import Celery
from celery.signals import task_postrun, worker_ready

from medbatch.config import error_reason, get_settings

PROGRESS_KEY = "medbatch:progress:{hostname}"
_client: redis.Redis | None = None


def broker_client() -> redis.Redis:
    """This process's client of the broker's Redis: progress records here, job-end announcements (signals.py)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(get_settings().broker_url, socket_timeout=5)
    return _client


def record_progress(hostname: str) -> None:
    """Note that ``hostname`` just finished a task (or became ready). Never fails the task."""
    try:
        broker_client().set(PROGRESS_KEY.format(hostname=hostname), f"{time.time():.3f}", ex=7 * 86400)
    except redis.RedisError:
        pass


@worker_ready.connect
def _on_ready(sender=None, **_kw) -> None:
    record_progress(sender.hostname)


@task_postrun.connect
def _on_task_done(task=None, **_kw) -> None:
    hostname = getattr(task.request, "hostname", None) if task is not None else None
    if hostname:
        record_progress(hostname)


@dataclass
class Health:
    healthy: bool
    reason: str


def check_worker(app: Celery, broker_url: str, *, hostname: str, queues: list[str], stall_s: float) -> Health:
    """Healthy when the worker answers a ping and, if work waits on its queues, it made progress recently."""
    try:
        replies = app.control.ping(destination=[hostname], timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - the broker itself is away
        return Health(False, f"cannot reach the broker to ping {hostname}: {error_reason(exc)}")
    if not replies:
        return Health(False, f"{hostname} does not answer a ping")
    client = redis.Redis.from_url(broker_url, socket_timeout=5)
    waiting = {q: int(client.llen(q)) for q in queues}
    raw = client.get(PROGRESS_KEY.format(hostname=hostname))
    idle_s = time.time() - float(raw) if raw else float("inf")
    if sum(waiting.values()) and idle_s > stall_s:
        queued = ", ".join(f"{n} on {q}" for q, n in waiting.items() if n)
        return Health(False, f"{hostname} answers pings but finished no task for {idle_s:.0f}s with {queued} waiting")
    try:
        active = (app.control.inspect([hostname], timeout=5.0).active_queues() or {}).get(hostname) or []
    except Exception as exc:  # noqa: BLE001
        return Health(False, f"cannot ask {hostname} for its queues: {type(exc).__name__}")
    missing = sorted(set(queues) - {q.get("name") for q in active})
    if missing:
        return Health(False, f"{hostname} is not consuming {', '.join(missing)}")
    return Health(True, f"{hostname} ok: {sum(waiting.values())} waiting, last progress {idle_s:.0f}s ago")
