"""What a person waiting sees: an ``on_progress`` for :func:`medbatch.jobs.wait_for_job` that draws a progress
bar on a terminal and says once when nothing has moved for a while (the CLI and the demo), and
:func:`epoch_progress`, the bar of a training epoch (``medbatch train xray|molecules``)."""

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


@contextmanager
def epoch_progress(console: Console, what: str) -> Iterator[Callable[[int, int, int, int], None] | None]:
    """Yields the ``progress(epoch, epochs, step, steps)`` to pass to training: a bar of the current epoch's
    steps on ``console`` while it is a terminal, None otherwise (the per-epoch log lines say enough in a log)."""
    if not console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn(f"{what} epoch {{task.fields[epoch]}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    tasks: list = []

    def on_step(epoch: int, epochs: int, step: int, steps: int) -> None:
        if not tasks:  # shown from the first step on, not while the data is still being read
            tasks.append(bar.add_task("", total=None, epoch=""))
        bar.update(tasks[0], total=steps or None, completed=step, epoch=f"{epoch}/{epochs}")

    with bar:
        yield on_step
