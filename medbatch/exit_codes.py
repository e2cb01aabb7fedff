"""The one table of exit codes, the same for every ``medbatch`` command (README "Exit codes" repeats it).

Commands raise errors of the tree (``medbatch/errors.py``); ``cli._common.with_exit_codes`` maps them to
these. A command that waits for a job (``submit --wait``, ``status --watch``) ends with :func:`job_exit_code`
of the finished job; ``demo`` with :func:`worst` of its jobs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    OK = 0  #: done: every staged item succeeded and no input row was rejected
    FAILED = 1  #: a job failed, a check found a problem (nightly, worker check), or any other error
    INVALID_INPUT = 2  #: bad input: a file, an option, a setting (InvalidInput, settings errors)
    UNAVAILABLE = 3  #: a service is down: Redis, the database, a PACS (or no database file: `db upgrade`)
    NOT_FOUND = 4  #: unknown job, batch or model (NotFound)
    ROWS_REJECTED = 5  #: done, every staged item succeeded, but input rows (or files) were rejected at staging
    ITEMS_FAILED = 6  #: done, but some staged items ended in error (`medbatch results JOB --errors`)
    UNFINISHED = 7  #: the job has not finished yet (`results` of a running job: what is there so far)
    BROKEN_PIPE = 141  #: the reader of standard output went away (`| head`): 128 + SIGPIPE, as Unix tools do


#: The order :func:`worst` ranks outcomes in, worst first.
SEVERITY = (
    ExitCode.FAILED,
    ExitCode.INVALID_INPUT,
    ExitCode.UNAVAILABLE,
    ExitCode.NOT_FOUND,
    ExitCode.UNFINISHED,
    ExitCode.ITEMS_FAILED,
    ExitCode.ROWS_REJECTED,
    ExitCode.OK,
)


def job_exit_code(counts: dict, *, count_rejected: bool = True) -> ExitCode:
    """The exit code a job's counts (``repository.job_counts``) mean: FAILED for a failed job, UNFINISHED before
    it finishes, ITEMS_FAILED when a staged item failed, ROWS_REJECTED when only input rows were rejected
    (unless ``count_rejected`` is false: the demo's rejections are deliberate), OK otherwise."""
    from medbatch.db.tables import FINISHED_JOB, JobStatus

    if counts["status"] == JobStatus.FAILED.value:
        return ExitCode.FAILED
    if counts["status"] not in FINISHED_JOB:
        return ExitCode.UNFINISHED
    if counts.get("items_failed"):
        return ExitCode.ITEMS_FAILED
    if count_rejected and counts.get("rows_rejected"):
        return ExitCode.ROWS_REJECTED
    return ExitCode.OK


def worst(codes: Iterable[int]) -> ExitCode:
    """The worst of several outcomes (a run of several jobs): by :data:`SEVERITY`; OK when there are none."""
    found = {ExitCode(c) for c in codes}
    return next((c for c in SEVERITY if c in found), ExitCode.OK)
