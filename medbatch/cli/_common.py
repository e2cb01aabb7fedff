"""What every command shares: the app, the consoles, the exit codes, the database and broker at hand."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from medbatch.config import get_settings, redact_url
from medbatch.errors import BrokerUnavailable, DatabaseUnavailable, InvalidInput, MedbatchError, NotFound

app = typer.Typer(
    help="medbatch: overnight AI batch processing for hospital data.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_INVALID_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def handle(exc: MedbatchError) -> typer.Exit:
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
    return fail(str(exc), 1)


def ready_db() -> str:
    """The database URL, with the schema brought up to date (cheap when it already is)."""
    from medbatch.db.migrate import upgrade

    url = get_settings().database_url
    try:
        upgrade(url)
    except Exception as exc:  # noqa: BLE001 - say what is wrong, not a traceback
        from medbatch.db.session import describe, is_transient

        if is_transient(exc):
            raise handle(DatabaseUnavailable(f"database unreachable: {describe(exc)}")) from None
        raise
    return url


def sender():
    from medbatch.producer.enqueue import celery_sender
    from medbatch.worker.app import create_app

    settings = get_settings()
    return celery_sender(create_app(settings), settings.database_url)


BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Items per batch message \\[default: 500].")]
IdColumn = Annotated[
    str | None, typer.Option(help="Column holding the patient identifier (default: patient_id, mrn...).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable summary.")]
Wait = Annotated[bool, typer.Option("--wait", help="Wait until the job has finished.")]
