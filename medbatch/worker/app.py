"""The Celery application: JSON only, late acks, one message at a time, events on for Flower.

``celery -A medbatch.worker.app worker`` and ``medbatch worker`` use :data:`app`, configured from the
environment once at import. Producers that need other settings call :func:`create_app`.
"""

from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from kombu import Queue

from medbatch.config import Settings, get_settings
from medbatch.worker.routing import QUEUES, task_routes

TASK_MODULES = [
    "medbatch.tasks.tabular",
    "medbatch.tasks.reports",
    "medbatch.tasks.maintenance",
    "medbatch.tasks.imaging",
    "medbatch.tasks.molecules",
    "medbatch.tasks.dicom",
]


def broker_ssl(url: str) -> dict | None:
    """TLS options for a ``rediss://`` broker URL that names none: verify the server against the system CAs.

    kombu would otherwise fall back to ``ssl_cert_reqs=CERT_NONE`` (encrypted, but talking to anyone).
    Options given in the URL (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``) are left to kombu.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def celery_config(settings: Settings) -> dict:
    """The Celery configuration for ``settings`` (plain dict, easy to read and test)."""
    tls = broker_ssl(settings.broker_url)
    return {
        "broker_url": settings.broker_url,
        **({"broker_use_ssl": tls} if tls else {}),
        "result_backend": None,  # the SQL database is the source of truth, not Celery results
        "task_ignore_result": True,
        # JSON only: a pickled (or any non-JSON) message is refused, never run.
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "result_accept_content": ["json"],
        # At-least-once delivery: ack after the task ran; a lost worker's message is re-delivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A pool child above this resident size after a task is replaced (KiB; None = never).
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_mb * 1024 or None,
        # Redis re-delivers an unacked message after this long. It must exceed the slowest batch;
        # re-delivery is harmless because every write is idempotent. See docs/design.md.
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "broker_connection_retry_on_startup": True,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
        # Events, so Flower sees tasks sent, started and finished.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_default_queue": "tabular",
        "task_routes": task_routes(),
        "worker_hijack_root_logger": False,
        # Messages no medbatch task strategy sees (unknown task, no task) are refused without their content.
        "worker_consumer": "medbatch.worker.consumer:SafeConsumer",
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "enable_utc": True,
        # `medbatch beat` runs these; one beat per deployment.
        "timezone": settings.timezone,
        "beat_schedule": beat_schedule(settings),
    }


def beat_schedule(settings: Settings) -> dict:
    """Periodic tasks: the reconciler always; the nightly run and the morning summary when an inbox is set."""
    from celery.schedules import crontab

    schedule = {
        "reconcile-stuck-batches": {
            "task": "medbatch.maintenance.reconcile",
            "schedule": float(settings.reconcile_interval_s),
            "options": {"expires": float(settings.reconcile_interval_s)},
        },
    }
    if settings.nightly_inbox is not None:
        schedule["nightly-run"] = {
            "task": "medbatch.maintenance.nightly",
            "schedule": crontab(hour=settings.nightly_hour, minute=settings.nightly_minute),
            "options": {"expires": 3600.0},
        }
        schedule["morning-summary"] = {
            "task": "medbatch.maintenance.morning_summary",
            "schedule": crontab(hour=settings.summary_hour, minute=0),
            "options": {"expires": 3600.0},
        }
    return schedule


def create_app(settings: Settings | None = None) -> Celery:
    """A configured Celery app; tasks are registered by importing :data:`TASK_MODULES` in workers."""
    settings = settings or get_settings()
    celery_app = Celery(
        "medbatch", include=TASK_MODULES, set_as_current=False, task_cls="medbatch.worker.strategy:JsonOnlyTask"
    )
    celery_app.conf.update(celery_config(settings))
    return celery_app


app = create_app()
app.set_current()
app.set_default()

from medbatch.worker import health, signals  # noqa: E402,F401  (connect the worker signals)
