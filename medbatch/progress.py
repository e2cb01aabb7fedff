"""What a person waiting for a job sees: an ``on_progress`` for :func:`medbatch.jobs.wait_for_job` that draws a
progress bar on a terminal and says once when nothing has moved for a while. Used by the CLI and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

#: Seconds without progress before a wait reminds the user that a worker must be running.
NO_PROGRESS_HINT_S = 30.0


@contextmanager
def job_progress(console: Console, job_id: int, *, quiet: bool = False) -> Iterator[Callable[[dict], None]]:
    """Yields the callback to pass as ``on_progress``: a bar while ``console`` is a terminal (and not ``quiet``),
    and, unless ``quiet``, one hint naming the queue to start a worker on after NO_PROGRESS_HINT_S without
    progress."""
    show = not quiet and console.is_terminal
    last = {"done": -1, "changed": time.monotonic(), "hinted": False}
    bar = task = None
    if show:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn(f"job {job_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[s]}"),
            TimeElapsedColumn(),
            console=console,
        )

    def on_progress(counts: dict) -> None:
        nonlocal task
        done = counts["items_done"] + counts["items_failed"]
        if bar is not None:
            if task is None:
                task = bar.add_task("", total=counts["items_total"] or 1, s=counts["status"])
            bar.update(task, total=counts["items_total"] or 1, completed=done, s=counts["status"])
        if done != last["done"]:
            last.update(done=done, changed=time.monotonic())
        elif not last["hinted"] and not quiet and time.monotonic() - last["changed"] > NO_PROGRESS_HINT_S:
            from medbatch.worker.routing import route_for

            queue = route_for(counts["workload"]).queue
            console.print(
                f"[yellow]no progress for {NO_PROGRESS_HINT_S:.0f}s:[/] is a worker consuming the "
                f"'{queue}' queue? Start one with `medbatch worker -Q {queue}`."
            )
            last["hinted"] = True

    if bar is None:
        yield on_progress
    else:
        with bar:
            yield on_progress
