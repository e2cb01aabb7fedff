"""JSON of the right shape or nothing, before Celery looks inside a message.

``accept_content=["json"]`` makes kombu refuse pickle, YAML, msgpack and the rest, but kombu trusts
two raw types without asking (``application/data``, also assumed when a message names no content
type, and ``application/text``). And a JSON body that is not ``[args, kwargs, embed]`` (``"hello"``,
``[[1]]``) makes Celery's request raise ``ValueError`` while it unpacks it, in the worker's main
process: the worker stops ("Unrecoverable error"), the message is restored to the queue, and the next
worker that takes it stops too. Arguments that do not fit the task (a string batch id, an unknown
keyword) would fail inside the task with a ``TypeError`` that the retry policy retries 20 times.

:func:`json_only` checks every message before Celery's own strategy sees it: the content type, the
headers Celery reads, the body's shape, and the arguments against the task's signature and its
annotations (:class:`Range`, :class:`Pattern`). A message that fails is logged by task name, message
id and reason (never its content) and discarded; the worker goes on.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from celery import Task, signals
from celery.worker.strategy import default

log = logging.getLogger("medbatch.worker.messages")

ACCEPTED_CONTENT_TYPE = "application/json"

#: The embed part of a body: canvas links. medbatch sends none, so any given is refused.
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})

#: Longest string argument accepted (message ids, database identities: short by nature).
MAX_STRING = 256

INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Range:
    """``Annotated[int, Range(lo, hi)]``: an integer argument within ``lo..hi`` (inclusive)."""

    lo: int
    hi: int


@dataclass(frozen=True)
class Pattern:
    """``Annotated[str, Pattern(regex)]``: a string argument that matches ``regex`` in full."""

    regex: str


class Refused(Exception):
    """Why a message is not run; its text names no value from the message."""


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_value(name: str, value: Any, hint: Any) -> None:
    """Raise :class:`Refused` unless ``value`` (decoded JSON) fits the annotation ``hint``."""
    metadata: tuple = ()
    if typing.get_origin(hint) is Annotated:
        hint, *rest = typing.get_args(hint)
        metadata = tuple(rest)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return
        options = [o for o in options if o is not type(None)]
        if len(options) != 1:
            raise Refused(f"argument {name}: unsupported annotation")  # pragma: no cover - our own tasks
        hint = options[0]
    if hint is int:
        if type(value) is not int:  # bool is an int to Python, never to us; 1.5 is no batch id
            raise Refused(f"argument {name} is {_kind(value)}, expected an integer")
        lo, hi = INT64
        for m in metadata:
            if isinstance(m, Range):
                lo, hi = max(lo, m.lo), min(hi, m.hi)
        if not lo <= value <= hi:
            raise Refused(f"argument {name} is out of range {lo}..{hi}")
    elif hint is str:
        if type(value) is not str:
            raise Refused(f"argument {name} is {_kind(value)}, expected a string")
        if len(value) > MAX_STRING:
            raise Refused(f"argument {name} is longer than {MAX_STRING} characters")
        for m in metadata:
            if isinstance(m, Pattern) and not re.fullmatch(m.regex, value):
                raise Refused(f"argument {name} is not of the expected form")
    elif hint is float:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise Refused(f"argument {name} is {_kind(value)}, expected a finite number")
    elif hint is bool:
        if type(value) is not bool:
            raise Refused(f"argument {name} is {_kind(value)}, expected true or false")
    else:  # pragma: no cover - a task annotated with a type this check does not know
        raise Refused(f"argument {name}: unsupported annotation {hint!r}")


@functools.cache
def _contract(task: Task) -> tuple[inspect.Signature, dict[str, Any]]:
    run = task.run
    return inspect.signature(run), typing.get_type_hints(run, include_extras=True)


def check_arguments(task: Task, args: Any, kwargs: Any) -> None:
    """Raise :class:`Refused` unless ``args``/``kwargs`` bind to ``task``'s signature with the annotated types."""
    signature, hints = _contract(task)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        expected = ", ".join(signature.parameters) or "none"
        raise Refused(
            f"{len(args)} positional and {len(kwargs)} keyword arguments do not fit the task (expected: {expected})"
        ) from None
    for name, value in bound.arguments.items():
        if name in hints:
            _check_value(name, value, hints[name])


def check_body(task: Task, body: Any) -> None:
    """Raise :class:`Refused` unless ``body`` is ``[args, kwargs, embed]`` fit for ``task``."""
    if not isinstance(body, list | tuple) or len(body) != 3:
        size = f" of {len(body)}" if isinstance(body, list | tuple) else ""
        raise Refused(f"body is {_kind(body)}{size}, expected [args, kwargs, embed]")
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        raise Refused(f"args is {_kind(args)}, expected a list")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise Refused(f"kwargs is {_kind(kwargs)}, expected an object")
    if embed is not None:
        if not isinstance(embed, dict):
            raise Refused(f"embed is {_kind(embed)}, expected an object")
        if not set(embed) <= EMBED_KEYS or any(v not in (None, [], {}) for v in embed.values()):
            raise Refused("embed carries callbacks, chains or chords; medbatch sends none")
    check_arguments(task, args, kwargs)


def _is_time(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def check_headers(headers: Any) -> None:
    """Raise :class:`Refused` unless the headers Celery reads before the task runs have usable types."""
    if not isinstance(headers, dict):
        raise Refused("headers are not an object")
    if not isinstance(headers.get("id"), str) or not 0 < len(headers["id"]) <= MAX_STRING:
        raise Refused("header id is missing or not a short string")
    for key in ("eta", "expires"):
        if not _is_time(headers.get(key)):
            raise Refused(f"header {key} is not an ISO 8601 time")
    retries = headers.get("retries", 0)
    if type(retries) is not int or not 0 <= retries <= INT64[1]:
        raise Refused("header retries is not a count")
    limits = headers.get("timelimit")
    if limits is not None and (
        not isinstance(limits, list | tuple)
        or len(limits) != 2
        or not all(v is None or (type(v) in (int, float) and math.isfinite(v) and v >= 0) for v in limits)
    ):
        raise Refused("header timelimit is not [soft, hard] seconds")
    for key in ("shadow", "root_id", "parent_id", "group", "argsrepr", "kwargsrepr", "origin", "lang"):
        if not isinstance(headers.get(key), str | None):
            raise Refused(f"header {key} is not a string")
    for key in ("ignore_result",):
        if not isinstance(headers.get(key), bool | None):
            raise Refused(f"header {key} is not true or false")
    for key in ("group_index", "replaced_task_nesting"):
        if headers.get(key) is not None and (type(headers[key]) is not int or not 0 <= headers[key] <= INT64[1]):
            raise Refused(f"header {key} is not a count")
    for key in ("stamps", "stamped_headers"):  # stamping is a canvas feature medbatch does not use
        if headers.get(key) not in (None, [], {}):
            raise Refused(f"header {key} is not supported")


def refusal(task: Task, message) -> str | None:
    """Why ``message`` must not reach ``task`` (None when it may): checked before Celery unpacks it."""
    if message.content_type != ACCEPTED_CONTENT_TYPE:
        return (
            f"Refusing to deserialize untrusted content of type {message.content_type or '(none)'} "
            f"for {task.name}: only {ACCEPTED_CONTENT_TYPE} is accepted"
        )
    try:
        check_headers(message.headers)
        try:
            body = message.payload  # kombu's JSON decoder, with accept_content enforced
        except Exception as exc:  # noqa: BLE001 - any failure to decode is a refusal, named by type
            raise Refused(f"body is not valid JSON ({type(exc).__name__})") from None
        check_body(task, body)
    except Refused as exc:
        return f"Refusing a message for {task.name}: {exc}"
    return None


def json_only(task, app, consumer, **kwargs):
    """Celery's default strategy, behind :func:`refusal`: a refused message is logged and discarded."""
    handle = default(task, app, consumer, **kwargs)

    def task_message_handler(message, body, ack, reject, callbacks, **kw):
        reason = refusal(task, message)
        if reason is not None:
            message_id = message.headers.get("id") if isinstance(message.headers, dict) else None
            log.error("%s (message id %.64r); discarded", reason, message_id)
            message.reject_log_error(log, consumer.connection_errors, requeue=False)
            signals.task_rejected.send(sender=consumer, message=message, exc=None)
            return None
        return handle(message, body, ack, reject, callbacks, **kw)

    return task_message_handler


class JsonOnlyTask(Task):
    """The base of every medbatch task: messages reach it only as checked JSON (see :func:`json_only`)."""

    Strategy = "medbatch.worker.strategy:json_only"
