"""``medbatch review import FILE.csv``: reviewers' verdicts on results and report drafts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from medbatch.cli._common import AsJson, app, err, out, ready_db, with_exit_codes

review_app = typer.Typer(help="Reviewers' verdicts on results and report drafts.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("import")
@with_exit_codes
def review_import(
    csv_file: Annotated[
        Path,
        typer.Argument(
            help="CSV: result_id | item_id | source+patient_id | report_id; verdict; corrected_label; "
            "reviewer; reviewed_at."
        ),
    ],
    as_json: AsJson = False,
) -> None:
    """Import verdicts (agree/disagree; approved/edited/rejected for drafts), all rows or none."""
    from medbatch.reviews import import_reviews

    counts = import_reviews(ready_db(), csv_file)
    if as_json:
        out.print_json(json.dumps(counts))
    else:
        err.print(
            f"imported {counts['results']} result verdict(s) and {counts['reports']} report verdict(s)",
            highlight=False,
        )
