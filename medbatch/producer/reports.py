"""Report jobs: patient facts from a CSV, or from the patients of an earlier job joined with their findings.

Only the minimum necessary facts are staged (``medbatch.ml.reports.minimum_necessary``): identifiers
never reach the items table's payload, let alone a prompt. The patient identifier column is kept as
``patient_ref`` so reports can be joined back in the hospital's own database.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.errors import InvalidInput
from medbatch.ml.reports import minimum_necessary
from medbatch.producer.chunks import shown
from medbatch.producer.csvtext import NUL_REASON, csv_reader, open_text, stops_at_unreadable
from medbatch.producer.records import CHUNK_ROWS, ID_COLUMNS, MAX_ID_LEN, SCHEMAS, RecordChunk, normalise_header

#: How each workload's result becomes a finding in a report's facts.
FINDING_NAMES: dict[str, tuple[str, str]] = {
    "risk": ("risk_label", "risk_score"),
    "treatment": ("treatment_plan", "treatment_probability"),
    "xray": ("xray_label", "xray_probability"),
}


#: Numeric facts checked against the same plausible ranges as the tabular workloads.
NUMERIC_FACTS = {c.name: c for cols in SCHEMAS.values() for c in cols if c.kind == "number"}


def fact_problems(record: dict[str, Any]) -> list[str]:
    """Reasons a row's numeric facts cannot go into a report (not a number, or implausible)."""
    problems = []
    for name, col in NUMERIC_FACTS.items():
        raw = str(record.get(name) or "").strip()
        if not raw:
            continue
        text = raw.split("/")[0] if name == "blood_pressure" else raw
        try:
            value = float(text.replace(",", "."))
        except ValueError:
            problems.append(f"{name} {raw[:40]!r} is not a number in {col.unit}")
            continue
        if not (col.low <= value <= col.high):
            problems.append(f"{name} {raw[:40]} is outside the plausible range {col.low:g}-{col.high:g} {col.unit}")
    return problems


def _facts_payload(record: dict[str, Any]) -> dict[str, Any] | None:
    facts = minimum_necessary(record)
    payload = dataclasses.asdict(facts)
    if facts.age is None and not facts.clinical and not facts.findings:
        return None
    return payload


def iter_fact_chunks(
    path: Path, *, id_column: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[RecordChunk]:
    """Stream a patient-facts CSV as chunks of items (minimum-necessary facts) and rejected rows.

    Raises:
        InvalidInput: the file is missing, empty or not UTF-8 text.
    """
    fh = open_text(Path(path))
    source = str(Path(path).resolve())
    with fh:
        try:
            reader = csv_reader(fh)
            header = next(reader, None)
        except UnicodeDecodeError:
            raise InvalidInput(f"{path}: not UTF-8 text; save the file as CSV (UTF-8)") from None
        except csv.Error as exc:
            raise InvalidInput(f"{path}: unreadable CSV header ({exc})") from None
        if not header or all(not h.strip() for h in header):
            raise InvalidInput(f"{path}: the file is empty; expected a header row of patient facts")
        names = [normalise_header(h) for h in header]
        id_col = normalise_header(id_column) if id_column else next((c for c in ID_COLUMNS if c in names), None)
        if id_col and id_col not in names:
            raise InvalidInput(f"{path}: patient id column {id_column!r} not found")
        chunk = RecordChunk()
        line = reader.line_num + 1
        stopped: list[str] = []
        for row in stops_at_unreadable(reader, stopped):
            start, line = line, reader.line_num + 1
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            record = dict(zip(names, (v.strip() for v in row), strict=False))
            pid = shown((record.get(id_col) or "")[:MAX_ID_LEN]) or None if id_col else None
            if "\x00" in "".join(row):
                chunk.rejected.append(
                    {"source_uri": source, "source_row": start, "patient_ref": pid, "reason": NUL_REASON}
                )
            elif len(row) != len(names):
                reason = f"row has {len(row)} fields but the header has {len(names)}"
                chunk.rejected.append({"source_uri": source, "source_row": start, "patient_ref": pid, "reason": reason})
            elif problems := fact_problems(record):
                chunk.rejected.append(
                    {"source_uri": source, "source_row": start, "patient_ref": pid, "reason": "; ".join(problems)}
                )
            else:
                payload = _facts_payload({k: v for k, v in record.items() if v != ""})
                if payload is None:
                    chunk.rejected.append(
                        {
                            "source_uri": source,
                            "source_row": start,
                            "patient_ref": pid,
                            "reason": "no clinical facts in this row (age, vitals, conditions or findings)",
                        }
                    )
                else:
                    chunk.items.append(
                        {
                            "item_key": f"row:{start}",
                            "source_uri": source,
                            "source_row": start,
                            "patient_ref": pid,
                            "payload": payload,
                        }
                    )
            if len(chunk.items) + len(chunk.rejected) >= chunk_rows:
                yield chunk
                chunk = RecordChunk()
        if stopped:
            chunk.rejected.append({"source_uri": source, "source_row": line, "patient_ref": None, "reason": stopped[0]})
        if chunk.items or chunk.rejected:
            yield chunk


def iter_job_fact_chunks(
    database_url: str, job_id: int, *, limit: int | None = None, chunk_rows: int = 5_000
) -> Iterator[RecordChunk]:
    """The patients of an earlier job, each with every finding the database holds for them.

    Findings of other jobs are joined by the patient identifier (the latest result per workload wins);
    patients without an identifier get only the findings of this job's own item.
    """
    with session_scope(database_url) as s:
        job = repo.get_job(s, job_id)
        if job.workload not in FINDING_NAMES:
            raise InvalidInput(f"job {job_id} is a {job.workload} job; reports draw on risk, treatment or xray jobs")
        rows = list(itertools.islice(repo.iter_item_findings(s, job_id), limit))
        others = repo.latest_findings(s, sorted({r["patient_ref"] for r in rows if r["patient_ref"]}))
    if not rows:
        raise InvalidInput(f"job {job_id} has no results to report on")
    chunk = RecordChunk()
    for r in rows:
        findings: dict[str, Any] = {}
        for workload, (label, score) in (others.get(r["patient_ref"]) or {}).items():
            findings.update(_finding(workload, label, score))
        findings.update(_finding(job.workload, r["label"], r["score"]))
        payload = _facts_payload({**(r["payload"] or {}), "findings": findings})
        chunk.items.append(
            {
                "item_key": f"item:{r['item_id']}",
                "source_uri": f"job:{job_id}",
                "source_row": r["source_row"],
                "patient_ref": r["patient_ref"],
                "payload": payload,
            }
        )
        if len(chunk.items) >= chunk_rows:
            yield chunk
            chunk = RecordChunk()
    if chunk.items:
        yield chunk


def _finding(workload: str, label: Any, score: Any) -> dict[str, Any]:
    names = FINDING_NAMES.get(workload)
    if not names:
        return {}
    return {names[0]: label, names[1]: None if score is None else round(float(score), 4)}
