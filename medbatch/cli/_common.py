"""What every command shares: the app, the consoles, the exit codes and the one map from the error tree
(``medbatch/errors.py``) to them, applied by :func:`with_exit_codes` to every command.

The exit codes are the one table of :class:`medbatch.exit_codes.ExitCode` (``medbatch --help`` and the
README show it): 0 done, 1 failed or other, 2 bad input, 3 service down, 4 unknown job, 5 done with rejected
rows, 6 items failed, 7 not finished yet, 141 standard output closed early.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, TypeVar

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from medbatch.config import get_settings, redact_url
from medbatch.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidInput,
    MedbatchError,
    NotFound,
    PacsUnavailable,
)
from medbatch.exit_codes import ExitCode

#: The exit-code table as ``medbatch --help`` shows it (README "Exit codes" says the same).
EXIT_CODES_EPILOG = (
    "Exit codes (every command): 0 done · 1 failed (a job failed, a check found a problem) or another error · "
    "2 bad input · 3 a service is down (Redis, the database, a PACS) · 4 unknown job, batch or model · "
    "5 done, but input rows were rejected · 6 done, but items failed · 7 the job has not finished yet · "
    "141 standard output was closed (| head)."
)

app = typer.Typer(
    help="medbatch: overnight AI batch processing for hospital data.",
    epilog=EXIT_CODES_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int) -> typer.Exit:
    # The message is plain text: escaped, so "pip install 'medbatch[imaging]'" is not read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def pipe_closed() -> typer.Exit:
    """Standard output's reader went away (``| head``): end quietly with 141 (128 + SIGPIPE) as Unix tools do.

    Standard output is pointed at /dev/null first, so the interpreter's last flush finds no broken pipe.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): nothing will flush it
        return typer.Exit(ExitCode.BROKEN_PIPE)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    return typer.Exit(ExitCode.BROKEN_PIPE)


def handle(exc: MedbatchError) -> typer.Exit:
    """Say what went wrong in one line on stderr; the ``typer.Exit`` to raise carries the exit code."""
    if isinstance(exc, InvalidInput):
        return fail(str(exc), ExitCode.INVALID_INPUT)
    if isinstance(exc, NotFound):
        return fail(str(exc), ExitCode.NOT_FOUND)
    if isinstance(exc, BrokerUnavailable):
        return fail(
            f"{exc}. Is Redis running at {redact_url(get_settings().broker_url)}, with the password and TLS "
            "settings of that URL?",
            ExitCode.UNAVAILABLE,
        )
    if isinstance(exc, DatabaseUnavailable):
        return fail(f"{exc} ({redact_url(get_settings().database_url)})", ExitCode.UNAVAILABLE)
    if isinstance(exc, PacsUnavailable):
        return fail(f"{exc}; what was done so far is recorded: run the same command again later", ExitCode.UNAVAILABLE)
    return fail(str(exc), ExitCode.FAILED)


def database_error(exc: BaseException) -> DatabaseUnavailable | None:
    """The ``DatabaseUnavailable`` a driver error means, or None when it is something else (a bug, say)."""
    if "sqlalchemy" not in sys.modules:  # nothing has touched a database
        return None
    from medbatch.db.session import describe, is_transient

    return DatabaseUnavailable(f"database unreachable: {describe(exc)}") if is_transient(exc) else None


def settings_error(exc: ValidationError) -> str:
    """One line per bad setting, ``MEDBATCH_NAME: what it accepts``, without the value (it may be a secret)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        name = "MEDBATCH_" + str(error["loc"][0]).upper() if error.get("loc") else "settings"
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines) or "invalid settings"


def with_exit_codes(command: F) -> F:
    """Run ``command`` so that an error of the tree (or an unreachable database) ends it with one line on stderr
    and the exit code of the map above, never a traceback. Every command of this package wears it, under its
    ``@app.command()``; ``tests/unit/test_cli_exit_codes.py`` checks that none is missing.
    """

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except BrokenPipeError:  # `medbatch results 1 | head`: the reader has all it wanted
            raise pipe_closed() from None
        except MedbatchError as exc:
            raise handle(exc) from None
        except ValidationError as exc:  # the settings: name each variable and what it accepts, never its value
            raise fail(settings_error(exc), ExitCode.INVALID_INPUT) from None
        except Exception as exc:
            unavailable = database_error(exc)
            if unavailable is None:
                raise
            raise handle(unavailable) from None

    run.with_exit_codes = True
    return run  # type: ignore[return-value]


def ready_db() -> str:
    """The database URL, with the schema brought up to date (cheap when it already is).

    Raises:
        DatabaseUnavailable: unreachable, or a SQLite file that does not exist (only ``db upgrade`` and
            ``demo`` create one: a command run in the wrong folder must not start an empty database).
    """
    from medbatch.db.migrate import upgrade
    from medbatch.db.session import require_existing

    url = get_settings().database_url
    require_existing(url)
    try:
        upgrade(url)
    except Exception as exc:
        unavailable = database_error(exc)
        if unavailable is None:
            raise
        raise unavailable from None
    return url


def database_label(url: str) -> str:
    """Which database a command used, for people: a SQLite file's absolute path, else the URL without secrets."""
    from medbatch.db.session import sqlite_file

    path = sqlite_file(url)
    return f"SQLite {path}" if path is not None else redact_url(url)


def sender():
    from medbatch.producer.send import celery_sender
    from medbatch.worker.app import create_app

    settings = get_settings()
    return celery_sender(create_app(settings), settings.database_url)


BatchSize = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Items per batch message \\[default: MEDBATCH_BATCH_SIZE, 10000]."),
]
IdColumn = Annotated[
    str | None, typer.Option(help="Column holding the patient identifier (default: patient_id, mrn...).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job has finished.")]
