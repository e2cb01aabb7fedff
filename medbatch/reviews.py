"""Reviewers' verdicts come back: ``medbatch review import FILE.csv``, all rows or none.

Each CSV row names what was reviewed (``result_id``, or ``item_id``, or ``source_uri`` + ``patient_ref`` as the
results export names them, ``source`` + ``patient_id`` also accepted; or
``report_id`` for a report draft), the ``verdict`` (``agree``/``disagree`` for a result;
``approved``/``edited``/``rejected`` for a draft), an optional ``corrected_label``, the ``reviewer`` and the
time (``reviewed_at``, ISO 8601). Every row is checked first; if any row is unknown or malformed, the error
lists every bad line and nothing is stored. A reviewer's second verdict on the same thing replaces the first.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from medbatch.errors import InvalidInput

#: Most bad lines named in one refusal (the count says how many there were).
MAX_LISTED_ERRORS = 20


def _int(value: str | None, column: str) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a number") from None


def _when(value: str | None) -> datetime:
    if not value or not value.strip():
        raise ValueError("reviewed_at is empty")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"reviewed_at {value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def import_reviews(database_url: str, path: Path) -> dict[str, Any]:
    """Store every verdict of ``path`` in one transaction and audit the import.

    Returns:
        ``{"rows", "results", "reports"}`` counts.

    Raises:
        InvalidInput: unreadable file, missing columns, or any bad row (all listed; nothing stored).
    """
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.producer.identity import whoami

    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read review file {path}: {exc}") from exc
    missing = {"verdict", "reviewer", "reviewed_at"} - columns
    if missing:
        raise InvalidInput(f"review file {path} lacks column(s): {', '.join(sorted(missing))}")
    errors: list[str] = []
    counts = {"rows": len(rows), "results": 0, "reports": 0}
    with session_scope(database_url) as s:
        for line, row in enumerate(rows, start=2):
            try:
                verdict = (row.get("verdict") or "").strip().lower()
                reviewer = (row.get("reviewer") or "").strip()
                if not reviewer:
                    raise ValueError("reviewer is empty")
                when = _when(row.get("reviewed_at"))
                report_id = _int(row.get("report_id"), "report_id")
                if report_id is not None:
                    if verdict not in repo.REPORT_VERDICTS:
                        raise ValueError(f"a report verdict is {'/'.join(repo.REPORT_VERDICTS)}, not {verdict!r}")
                    target, why = repo.resolve_report(s, report_id)
                    kind = "report"
                else:
                    if verdict not in repo.RESULT_VERDICTS:
                        raise ValueError(f"a result verdict is {'/'.join(repo.RESULT_VERDICTS)}, not {verdict!r}")
                    target, why = repo.resolve_result(
                        s,
                        result_id=_int(row.get("result_id"), "result_id"),
                        item_id=_int(row.get("item_id"), "item_id"),
                        source=(row.get("source_uri") or row.get("source") or "").strip() or None,
                        patient_id=(row.get("patient_ref") or row.get("patient_id") or "").strip() or None,
                    )
                    kind = "result"
                if target is None:
                    raise ValueError(why)
            except ValueError as exc:
                errors.append(f"line {line}: {exc}")
                continue
            corrected = (row.get("corrected_label") or "").strip() or None
            repo.store_review(
                s, kind=kind, target=target, verdict=verdict, corrected_label=corrected, reviewer=reviewer,
                reviewed_at=when,
            )
            counts["results" if kind == "result" else "reports"] += 1
        if errors:  # raising inside the session scope rolls every stored verdict back
            shown = "; ".join(errors[:MAX_LISTED_ERRORS])
            more = f" (and {len(errors) - MAX_LISTED_ERRORS} more)" if len(errors) > MAX_LISTED_ERRORS else ""
            raise InvalidInput(
                f"review file {path}: {len(errors)} bad row(s), nothing imported: {shown}{more}"
            )
        repo.audit(s, actor=whoami(), action="review_import", detail={"file": str(path), **counts})
    return counts


def agreement_text(r: dict[str, Any]) -> str:
    """One line for ``medbatch models`` and the morning page: reviewed count, then agreement / PPV /
    sensitivity against the reviewers, each with its counts (never a rate without its n)."""
    if not r.get("reviewed"):
        return "none reviewed"
    if r.get("kind") == "report":
        return f"{r['reviewed']} drafts: " + ", ".join(f"{k} {v}" for k, v in sorted(r["verdicts"].items()))
    parts = [f"{r['reviewed']} reviewed"]
    for key, label in (("agreement", "agree"), ("ppv", "PPV"), ("sensitivity", "sensitivity")):
        x = r.get(key) or {}
        if x.get("n"):
            parts.append(f"{label} {x['k']}/{x['n']} ({x['rate']:.0%})")
    return ", ".join(parts)
