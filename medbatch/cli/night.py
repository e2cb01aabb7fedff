"""``medbatch nightly|report-night``: the inbox run of a night and its morning page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medbatch.cli._common import (
    AsJson,
    app,
    err,
    out,
    ready_db,
    sender,
    with_exit_codes,
)
from medbatch.config import get_settings
from medbatch.errors import InvalidInput
from medbatch.producer.identity import whoami


@app.command()
@with_exit_codes
def nightly(
    inbox: Annotated[
        Path | None, typer.Option("--inbox", help="Inbox folder [MEDBATCH_NIGHTLY_INBOX].", show_default=False)
    ] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the jobs, then judge the night.")] = True,
    timeout_s: Annotated[
        int | None, typer.Option(help="Longest wait in seconds [MEDBATCH_NIGHTLY_TIMEOUT_S].", show_default=False)
    ] = None,
    settle_s: Annotated[
        int | None, typer.Option(help="Leave files modified this recently [MEDBATCH_NIGHTLY_SETTLE_S].")
    ] = None,
    summary: Annotated[bool, typer.Option("--summary/--no-summary", help="Write the night's HTML page.")] = True,
    as_json: AsJson = False,
) -> None:
    """Submit what arrived in the inbox since the last run, wait, and exit 1 if anything needs a human."""
    from dataclasses import replace

    from medbatch.nightly import NightlyConfig, run_nightly

    settings = get_settings()
    folder = inbox or settings.nightly_inbox
    if folder is None:
        raise InvalidInput("give --inbox DIR or set MEDBATCH_NIGHTLY_INBOX")
    url = ready_db()
    cfg = NightlyConfig.from_settings(settings)
    if settle_s is not None:
        cfg = replace(cfg, settle_s=settle_s)
    say = (lambda m: None) if as_json else (lambda m: err.print(m, highlight=False))
    outcome = run_nightly(
        folder,
        cfg,
        sender(),
        wait=wait,
        timeout_s=timeout_s if timeout_s is not None else settings.nightly_timeout_s,
        progress=say,
    )
    if summary and wait:
        from datetime import date

        from medbatch.summary import write_night

        outcome.summary_html = str(
            write_night(url, date.fromisoformat(outcome.night), settings.results_dir / "nights", settings.timezone)
        )
    if as_json:
        out.print_json(json.dumps(outcome.as_dict(), default=str))
    else:
        for j in outcome.jobs:
            err.print(
                f"job {j['job_id']} {j['workload']}: {j.get('status')} ({j.get('items_done', 0)} done, "
                f"{j.get('items_failed', 0)} failed, {j['rejected']} rejected)",
                highlight=False,
            )
        review = outcome.awaiting_review
        err.print(
            f"awaiting clinical review: {review.get('xray_positives', 0)} X-ray positive(s), "
            f"{review.get('draft_reports', 0)} draft report(s)"
        )
        if outcome.summary_html:
            err.print(f"summary: {outcome.summary_html}")
        if outcome.needs_human:
            err.print("[bold red]needs a human:[/]")
            for line in outcome.needs_human:
                err.print(f"  - {line}", highlight=False)
        elif not outcome.jobs:
            err.print("nothing new in the inbox")
        else:
            err.print("[green]every job of the night completed cleanly[/]")
    raise typer.Exit(outcome.exit_code)


@app.command("report-night")
@with_exit_codes
def report_night(
    night: Annotated[
        str | None, typer.Argument(help="The night, YYYY-MM-DD (noon to noon) [default: the last one].")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder for the page [MEDBATCH_RESULTS_DIR/nights].")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Write the morning summary of a night as one self-contained HTML page (plots inside)."""
    from datetime import UTC, date, datetime

    from medbatch.nightly import night_of
    from medbatch.summary import collect, write_night

    settings = get_settings()
    url = ready_db()
    try:
        day = date.fromisoformat(night) if night else night_of(datetime.now(UTC), settings.timezone)
    except ValueError:
        raise InvalidInput(f"not a date: {night!r} (use YYYY-MM-DD)") from None
    if as_json:
        data = collect(url, day, settings.timezone)
        out.print_json(json.dumps(data, default=str))
        return
    path = write_night(url, day, output or settings.results_dir / "nights", settings.timezone)
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(url) as s:
        repo.audit(s, actor=whoami(), action="export", detail={"night": day.isoformat(), "file": str(path)})
    out.print(str(path))
