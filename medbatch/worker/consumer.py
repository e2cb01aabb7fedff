"""Celery's consumer, for the messages that never reach a medbatch task's strategy.

A message naming no task, an unknown task or a task name that is not a string is handled by the
consumer itself. Celery logs up to 1 KB of such a message's body (patient data, if someone sent it
there), and some shapes stop the worker: a task name that is a list (unhashable), an unknown task
without an ``id`` header whose body is not an object. This consumer refuses every one of them by
a description (task, id, content type, size), never by content, and discards it; the worker goes
on. Messages in protocol 1 (the task named inside the body) are refused too: medbatch sends
protocol 2 only. Messages for medbatch tasks are checked by :mod:`medbatch.worker.strategy`.
"""

from __future__ import annotations

import logging

from celery import signals
from celery.worker.consumer.consumer import Consumer

log = logging.getLogger("medbatch.worker.messages")


def describe(message) -> str:
    """What a log may say about a message: its task and id (truncated), content type and size."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    return (
        f"task {headers.get('task')!r:.80}, message id {headers.get('id')!r:.64}, "
        f"content type {message.content_type!r:.60}, {len(message.body or b'')} bytes"
    )


class SafeConsumer(Consumer):
    """:class:`celery.worker.consumer.Consumer` that refuses odd messages by description, never by content."""

    def create_task_handler(self, *args, **kwargs):
        handler = super().create_task_handler(*args, **kwargs)

        def on_task_received(message):
            headers = message.headers
            if not isinstance(headers, dict) or not isinstance(headers.get("task"), str):
                return self.on_unknown_message(None, message)
            return handler(message)

        return on_task_received

    def _refuse(self, what: str, message, exc: BaseException | None) -> None:
        cause = f": {type(exc).__name__}" if exc is not None else ""
        log.error("Refusing a message %s (%s)%s; discarded", what, describe(message), cause)
        message.reject_log_error(log, self.connection_errors)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_unknown_message(self, body, message):
        self._refuse("that names no task (or in protocol 1)", message, None)

    def on_unknown_task(self, body, message, exc):
        self._refuse("for a task this worker does not have", message, exc)

    def on_invalid_task(self, body, message, exc):
        self._refuse("that is not a valid task message", message, exc)

    def on_decode_error(self, message, exc):
        log.error(
            "Refusing a message that cannot be decoded (%s): %s; discarded", describe(message), type(exc).__name__
        )
        message.ack()
