"""JSON or nothing, before Celery looks inside a message.

``accept_content=["json"]`` makes kombu refuse pickle, YAML, msgpack and the rest, but kombu trusts
two raw types without asking (``application/data``, also assumed when a message names no content
type, and ``application/text``). Celery's default strategy then trips over the raw body with a
``TypeError`` it does not catch: the worker stops ("Unrecoverable error"), the message is restored
to the queue, and the next worker that takes it stops too. This strategy refuses every message that is
not ``application/json`` as an invalid task: logged and discarded, the worker goes on.
"""

from __future__ import annotations

from celery import Task
from celery.worker.strategy import default
from kombu.exceptions import ContentDisallowed

ACCEPTED_CONTENT_TYPE = "application/json"


def json_only(task, app, consumer, **kwargs):
    """Celery's default strategy, behind a content-type check."""
    handle = default(task, app, consumer, **kwargs)

    def task_message_handler(message, body, ack, reject, callbacks, **kw):
        if message.content_type != ACCEPTED_CONTENT_TYPE:
            raise ContentDisallowed(
                f"Refusing to deserialize untrusted content of type {message.content_type or '(none)'} "
                f"for {task.name}: only {ACCEPTED_CONTENT_TYPE} is accepted"
            )
        return handle(message, body, ack, reject, callbacks, **kw)

    return task_message_handler


class JsonOnlyTask(Task):
    """The base of every medbatch task: messages reach it only as JSON (see :func:`json_only`)."""

    Strategy = "medbatch.worker.strategy:json_only"
