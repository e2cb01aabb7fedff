"""Write a job's results or errors as CSV, JSON Lines or Parquet, streamed from the database.

Columns are named as in the tables (``source_uri``, ``patient_ref``; docs/schema.md). Times are ISO 8601
with their offset, in ``MEDBATCH_TIMEZONE`` (UTC by default), on SQLite as on PostgreSQL. Parquet columns
are typed: the fixed columns by :data:`COLUMN_TYPES`, the ``detail`` keys by the JSON types the database
holds for them (``repository.result_detail_keys``), so a key that is empty in the first rows keeps its type.
"""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

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
#: The type of every column an export always has (a Parquet file's schema; CSV and JSON are text).
COLUMN_TYPES = {
    "source_uri": "string",
    "source_row": "int64",
    "patient_ref": "string",
    "item_key": "string",
    "label": "string",
    "score": "float64",
    "model_name": "string",
    "model_version": "string",
    "created_at": "timestamp",
    "stage": "string",
    "reason": "string",
    "requires_review": "bool",
    "report_text": "string",
    "tokens_in": "int64",
    "tokens_out": "int64",
    "cost_usd": "float64",
    "finish_reason": "string",
}
#: Rows per Parquet row group: what the writer holds at once, whatever the job's size.
PARQUET_ROWS = 50_000
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


def column_type(json_types: Iterable[str]) -> str:
    """The export type of a ``detail`` key from the JSON types its values have (``result_detail_keys``): only
    booleans -> ``bool``, only integers -> ``int64``, numbers -> ``float64``, anything else -> ``string``
    (text as it is, arrays, objects and mixed values as JSON text)."""
    kinds = set(json_types) - {"null"}
    if kinds == {"boolean"}:
        return "bool"
    if kinds == {"integer"}:
        return "int64"
    if kinds and kinds <= {"integer", "real"}:
        return "float64"
    return "string"


def result_columns(keys: dict[str, Any]) -> dict[str, str]:
    """The flat columns that results with these keys can fill (``repository.result_detail_keys``), in order,
    with their types: ``prob_<class>`` per probability class, every other ``detail`` key, the report columns
    if any."""
    types = keys.get("types", {})
    columns = {f"prob_{cls}": "float64" for cls in keys.get("probabilities", ())}
    columns |= {k: column_type(types.get(k, ())) for k in keys.get("detail", ()) if k != "probabilities"}
    return columns | ({c: COLUMN_TYPES[c] for c in REPORT_COLUMNS} if keys.get("reports") else {})


def write_rows(
    rows: Iterable[dict[str, Any]],
    fmt: str,
    output: Path | None,
    *,
    columns: Iterable[str] | Mapping[str, str] = (),
    empty_columns: Iterable[str] = (),
    timezone: str | None = None,
) -> int:
    """Write ``rows`` in ``fmt`` to ``output`` (standard output when None). Returns the row count.

    A CSV's header (and a Parquet file's schema) is the first row's own columns that ``columns`` does not
    name, then ``columns`` in its order (say :func:`result_columns`, whose types the Parquet schema takes),
    so a key that only later rows carry still has its column, and the order does not depend on the
    database; rows stream through, none is held back to learn the header. ``empty_columns`` head an export
    without rows. Times are shown in ``timezone`` (default: the configured ``MEDBATCH_TIMEZONE``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    types = dict(columns) if isinstance(columns, Mapping) else dict.fromkeys(columns, "")
    zone = _zone(timezone)
    if fmt == "parquet":
        return _write_parquet(rows, output, types, tuple(empty_columns), zone)
    fh: IO[str] = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        if fmt == "csv":
            return _write_csv(rows, fh, tuple(empty_columns), tuple(types), zone)
        return _write_jsonl(rows, fh, zone)
    finally:
        if output:
            fh.close()


def _zone(name: str | None) -> tzinfo:
    if name is None:
        from medbatch.config import get_settings

        name = get_settings().timezone
    return ZoneInfo(name)


def _local(row: dict[str, Any], zone: tzinfo) -> dict[str, Any]:
    """``row`` with its times in ``zone``, as ISO 8601 with the offset (a naive time is UTC, as stored)."""
    return {k: _in_zone(v, zone).isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _in_zone(at: datetime, zone: tzinfo) -> datetime:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(zone)


def _write_jsonl(rows: Iterable[dict[str, Any]], fh: IO[str], zone: tzinfo) -> int:
    n = 0
    for row in rows:
        fh.write(json.dumps(_local(row, zone), default=str) + "\n")
        n += 1
    return n


def _header(first: dict[str, Any], columns: tuple[str, ...]) -> list[str]:
    named = dict.fromkeys(columns)
    return [k for k in first if k not in named] + list(named)


def _write_csv(
    rows: Iterable[dict[str, Any]],
    fh: IO[str],
    empty_columns: tuple[str, ...],
    columns: tuple[str, ...],
    zone: tzinfo,
) -> int:
    it: Iterator[dict[str, Any]] = (_local(flatten(r), zone) for r in rows)
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


def _inferred_type(values: list[Any]) -> str:
    """The type of a column nobody declared, from the values of the first row group."""
    seen = {type(v) for v in values if v is not None}
    if not seen:
        return "string"
    if seen == {bool}:
        return "bool"
    if seen == {int}:
        return "int64"
    if seen <= {int, float}:
        return "float64"
    return "timestamp" if seen == {datetime} else "string"


def _cell(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, default=str)
    if kind == "int64":
        return int(value)
    if kind == "float64":
        return float(value)
    if kind == "bool":
        return bool(value)
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _write_parquet(
    rows: Iterable[dict[str, Any]],
    output: Path | None,
    types: dict[str, str],
    empty_columns: tuple[str, ...],
    zone: tzinfo,
) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if output is None:
        raise ValueError("parquet is binary: give --output FILE")
    arrow = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "timestamp": pa.timestamp("us", tz=str(zone)),
    }
    writer: Any = None
    schema: Any = None
    kinds: dict[str, str] = {}
    n = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal writer, schema
        if schema is None:  # the first row group fixes the schema: declared types, else what its values are
            header = _header(batch[0], tuple(types))
            for c in header:
                kinds[c] = types.get(c) or COLUMN_TYPES.get(c) or _inferred_type([r.get(c) for r in batch])
            schema = pa.schema([(c, arrow[kinds[c]]) for c in header])
            writer = pq.ParquetWriter(output, schema)
        arrays = [pa.array([_cell(r.get(c), kinds[c]) for r in batch], type=schema.field(c).type) for c in kinds]
        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))

    try:
        for row in rows:
            batch.append(flatten(row))
            n += 1
            if len(batch) >= PARQUET_ROWS:
                flush()
                batch = []
        if batch:
            flush()
        elif writer is None:  # no rows: the columns still carry their names and types
            header = list(dict.fromkeys([*empty_columns, *types]))
            schema = pa.schema([(c, arrow[types.get(c) or COLUMN_TYPES.get(c) or "string"]) for c in header])
            pq.write_table(schema.empty_table(), output)
    finally:
        if writer is not None:
            writer.close()
    return n
