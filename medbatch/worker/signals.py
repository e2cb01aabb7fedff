"""Worker process signals: fresh database connections after fork, ID-only logging."""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from medbatch.db.session import dispose_engines

log = logging.getLogger("medbatch.worker")


@worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    # Connections inherited from the parent must not be shared with it; models load lazily on the
    # first task, never here (this handler has a 4 s limit).
    dispose_engines()
