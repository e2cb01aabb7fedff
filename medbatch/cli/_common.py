"""What every command shares: the app, the consoles, the exit codes and the one map from the error tree
(``medbatch/errors.py``) to them, applied by :func:`with_exit_codes` to every command.

Exit codes, the same for every command: 0 done, 1 the work failed (a job failed, a check found a problem, or
an error of the tree not listed here), 2 bad input (``InvalidInput``), 3 a service is down (``BrokerUnavailable``,
``DatabaseUnavailable``, or a driver error that means the database is unreachable), 4 unknown job, batch or
model (``NotFound``).
"""

from __future__ import annotations

import functools
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

app = typer.Typer(
    help="medbatch: overnight AI batch processing for hospital data.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_FAILED = 1
EXIT_INVALID_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4

F = TypeVar("F", bound=Callable)


def fail(message: str, code: int) -> typer.Exit:
    # The message is plain text: escaped, so "pip install 'medbatch[imaging]'" is not read as markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


def handle(exc: MedbatchError) -> typer.Exit:
    """Say what went wrong in one line on stderr; the ``typer.Exit`` to raise carries the exit code."""
    if isinstance(exc, InvalidInput):
        return fail(str(exc), EXIT_INVALID_INPUT)
    if isinstance(exc, NotFound):
        return fail(str(exc), EXIT_NOT_FOUND)
    if isinstance(exc, BrokerUnavailable):
        return fail(
            f"{exc}. Is Redis running at {redact_url(get_settings().broker_url)}, with the password and TLS "
            "settings of that URL?",
            EXIT_UNAVAILABLE,
        )
    if isinstance(exc, DatabaseUnavailable):
        return fail(f"{exc} ({redact_url(get_settings().database_url)})", EXIT_UNAVAILABLE)
    if isinstance(exc, PacsUnavailable):
        return fail(f"{exc}; what was done so far is recorded: run the same command again later", EXIT_UNAVAILABLE)
    return fail(str(exc), EXIT_FAILED)


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
        except MedbatchError as exc:
            raise handle(exc) from None
        except ValidationError as exc:  # the settings: name each variable and what it accepts, never its value
            raise fail(settings_error(exc), EXIT_INVALID_INPUT) from None
        except Exception as exc:
            unavailable = database_error(exc)
            if unavailable is None:
                raise
            raise handle(unavailable) from None

    run.with_exit_codes = True
    return run  # type: ignore[return-value]


def ready_db() -> str:
    """The database URL, with the schema brought up to date (cheap when it already is)."""
    from medbatch.db.migrate import upgrade

    url = get_settings().database_url
    try:
        upgrade(url)
    except Exception as exc:
        unavailable = database_error(exc)
        if unavailable is None:
            raise
        raise unavailable from None
    return url


def sender():
    from medbatch.producer.send import celery_sender
    from medbatch.worker.app import create_app

    settings = get_settings()
    return celery_sender(create_app(settings), settings.database_url)


BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Items per batch message \\[default: 500].")]
IdColumn = Annotated[
    str | None, typer.Option(help="Column holding the patient identifier (default: patient_id, mrn...).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job has finished.")]
