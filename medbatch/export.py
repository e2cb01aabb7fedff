"""Write a job's results or errors as CSV, JSON Lines or Parquet, streamed from the database."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

FORMATS = ("csv", "json", "parquet")
#: Header of an empty export, so a job with nothing to show still gives a well-formed CSV. The names are
#: the tables' own (``items.source_uri``, ``items.patient_ref``), so an export and a SQL query agree.
RESULT_COLUMNS = (
    "source_uri",
    "source_row",
    "patient_ref",
    "item_key",
    "label",
    "score",
    "model_name",
    "model_version",
    "created_at",
)
ERROR_COLUMNS = ("source_uri", "source_row", "patient_ref", "stage", "reason", "created_at")
#: What a result row of a report job adds (see ``repository.iter_results``).
REPORT_COLUMNS = ("requires_review", "report_text", "tokens_in", "tokens_out", "cost_usd", "finish_reason")
_FORMULA_START = ("=", "+", "@", "\t", "\r")


def neutralise(value: Any) -> Any:
    """Defuse spreadsheet formula injection: a text cell that Excel would run gets a leading quote."""
    if (
        isinstance(value, str)
        and value
        and (value.startswith(_FORMULA_START) or (value[0] == "-" and not _numeric(value)))
    ):
        return "'" + value
    return value


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def flatten(row: dict[str, Any]) -> dict[str, Any]:
    """One flat record per result: ``detail.probabilities`` become ``prob_<class>`` columns."""
    out = {k: v for k, v in row.items() if k != "detail"}
    detail = row.get("detail") or {}
    for cls, p in (detail.get("probabilities") or {}).items():
        out[f"prob_{cls}"] = p
    for key, value in detail.items():
        if key != "probabilities":
            out[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
    return out


def result_columns(keys: dict[str, Any]) -> list[str]:
    """The flat columns that results with these keys can fill (``repository.result_detail_keys``):
    ``prob_<class>`` per probability class, every other ``detail`` key, the report columns if any."""
    columns = [f"prob_{cls}" for cls in keys.get("probabilities", ())]
    columns += [k for k in keys.get("detail", ()) if k != "probabilities"]
    return columns + list(REPORT_COLUMNS if keys.get("reports") else ())


def write_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    output: Path | None,
    *,
    columns: Iterable[str] = (),
    empty_columns: Iterable[str] = (),
) -> int:
    """Write ``rows`` in ``fmt`` to ``output`` (standard output when None). Returns the row count.

    A CSV's header (and a Parquet file's schema) is the first row's columns followed by those of
    ``columns`` it lacks, so a key that only later rows carry (say :func:`result_columns`) still has
    its column; rows stream through, none is held back to learn the header.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "parquet":
        return _write_parquet(rows, output, tuple(columns))
    fh: IO[str] = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        return _write_csv(rows, fh, tuple(empty_columns), tuple(columns)) if fmt == "csv" else _write_jsonl(rows, fh)
    finally:
        if output:
            fh.close()


def _write_jsonl(rows: Iterable[dict[str, Any]], fh: IO[str]) -> int:
    n = 0
    for row in rows:
        fh.write(json.dumps(row, default=str) + "\n")
        n += 1
    return n


def _header(first: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    return list(first) + [c for c in dict.fromkeys(columns) if c not in first]


def _write_csv(
    rows: Iterable[dict[str, Any]], fh: IO[str], empty_columns: tuple[str, ...] = (), columns: tuple[str, ...] = ()
) -> int:
    it: Iterator[dict[str, Any]] = (flatten(r) for r in rows)
    first = next(it, None)
    if first is None:
        if empty_columns:
            csv.writer(fh).writerow(empty_columns)
        return 0
    # A key outside the header is still dropped, not fatal: the caller's ``columns`` is what prevents it.
    writer = csv.DictWriter(fh, fieldnames=_header(first, columns), extrasaction="ignore")
    writer.writeheader()
    n = 0
    for r in itertools.chain([first], it):
        writer.writerow({k: neutralise(v) for k, v in r.items()})
        n += 1
    return n


def _write_parquet(rows: Iterable[dict[str, Any]], output: Path | None, columns: tuple[str, ...] = ()) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if output is None:
        raise ValueError("parquet is binary: give --output FILE")
    writer = None
    n = 0
    batch: list[dict[str, Any]] = []
    header: list[str] | None = None

    def flush() -> None:
        nonlocal writer
        table = pa.Table.from_pylist([{c: r.get(c) for c in header} for r in batch] if columns else batch)
        if writer is None:
            writer = pq.ParquetWriter(output, table.schema)
        writer.write_table(table.cast(writer.schema))

    try:
        for row in rows:
            batch.append(flatten(row))
            if header is None:
                header = _header(batch[0], columns)
            n += 1
            if len(batch) >= 50_000:
                flush()
                batch = []
        if batch or writer is None:
            if batch:
                flush()
            else:
                pq.write_table(pa.table({}), output)
    finally:
        if writer is not None:
            writer.close()
    return n
