"""Worker process signals: fresh database connections after fork, ID-only logging, only the queues it can serve,
a job's end announced to whoever waits for it."""

from __future__ import annotations

import logging
import threading
import time

from celery.signals import celeryd_after_setup, task_postrun, worker_process_init

from medbatch.db.session import dispose_engines

log = logging.getLogger("medbatch.worker")

#: Queue -> the model its batches load that takes seconds to load (TensorFlow): loaded as a child starts.
PRELOADED = {"imaging": "xray", "molecules": "molecules"}
#: The queues this worker consumes; set in the main process before the pool forks, so each child inherits it.
_consumed: frozenset[str] = frozenset()


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    # Connections inherited from the parent must not be shared with it.
    dispose_engines()
    # A worker of TensorFlow queues only (imaging, molecules: how they are deployed) loads their active models in
    # a thread, never in this handler (it has a 4 s limit): a batch that arrives meanwhile waits for the same load
    # (the registry's lock) instead of starting a second one. A worker that serves other queues too (`-Q all` in
    # development) stays lazy, so a night of patient records never pays TensorFlow's import and memory.
    names = models_to_preload(_consumed)
    if names:
        threading.Thread(target=_preload, args=(names,), name="medbatch-preload", daemon=True).start()


def models_to_preload(queues: frozenset[str]) -> list[str]:
    """The models a child of a worker consuming ``queues`` loads as it starts: those of its TensorFlow queues,
    when it serves nothing else."""
    return [PRELOADED[q] for q in sorted(queues)] if queues and queues <= PRELOADED.keys() else []


def _preload(names: list[str]) -> None:
    from medbatch.config import get_settings
    from medbatch.pipeline.common import preload_active_models

    started = time.perf_counter()
    loaded = preload_active_models(get_settings().database_url, names)
    if loaded:
        log.info("preloaded %s in %.1fs", ", ".join(loaded), time.perf_counter() - started)


@task_postrun.connect
def _announce_job_end(retval=None, **_kwargs) -> None:
    """A batch that ended its job, its drift or metrics stored by now: wake the ``--wait`` (:mod:`medbatch.wakeups`).
    Runs in the process that ran the task; never fails it."""
    if isinstance(retval, dict) and retval.get("job_finished") and retval.get("job_id") is not None:
        from medbatch.wakeups import announce_job_end
        from medbatch.worker.health import broker_client

        announce_job_end(broker_client(), retval["job_id"])


@celeryd_after_setup.connect
def _consume_only_servable_queues(sender=None, instance=None, **_kwargs) -> None:
    """Leave a queue whose workload this installation cannot run to a worker that can (``medbatch/extras.py``).

    Its messages stay queued, never N identical item errors; with no queue left the worker refuses to start
    (exit 2). Runs in the main process after ``-Q`` is applied, before the consumer starts.
    """
    from medbatch.config import get_settings
    from medbatch.errors import MissingExtra
    from medbatch.extras import require_queues

    queues = instance.app.amqp.queues
    try:
        refused = require_queues(list(queues.consume_from), get_settings().resolved_llm_provider())
    except MissingExtra as exc:
        log.error("%s: this worker does not start", exc)
        raise SystemExit(2) from None  # Celery stops the worker with this exit code
    for queue, why in refused.items():
        log.warning("not consuming the %s queue: %s", queue, why)
    if refused:
        queues.deselect(list(refused))
    global _consumed
    _consumed = frozenset(queues.consume_from)
    if "tabular" in queues.consume_from:
        # The tabular model's own package (scikit-learn) is imported once here, before the pool forks, so no
        # child spends seconds importing it under its first batch (scikit-learn is fork-safe; TensorFlow,
        # which is not, still loads lazily in the imaging and molecule children).
        import medbatch.ml.tabular  # noqa: F401
