"""Read and validate patient-record CSVs, streamed in chunks so memory stays flat whatever the file size.

Every data row either becomes a validated item (the model inputs, normalised to the units below) or
a rejection with its line number and a reason a clerk can act on. Problems with the file as a whole
(empty, unreadable, required columns missing) raise :class:`InvalidInput` before anything is staged.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medbatch.db.repository.staging import ItemColumns
from medbatch.errors import InvalidInput
from medbatch.producer.chunks import RecordChunk, shown  # noqa: F401 - RecordChunk re-exported: callers import it here
from medbatch.producer.csvtext import NUL_REASON, binary_hint, csv_parts, csv_reader, open_text

#: Data rows validated together: the unit of streaming.
CHUNK_ROWS = 20_000
#: Column names taken as the input's own patient identifier, in order of preference.
ID_COLUMNS = ("patient_id", "patientid", "mrn", "medical_record_number", "record_id", "patient", "id")
#: Longest patient identifier kept.
MAX_ID_LEN = 128
@dataclass(frozen=True)
class Column:
    """One model input: its name, unit and the range a real patient's value can take."""

    name: str
    unit: str
    low: float
    high: float
    kind: str = "number"  # number | flag
    hint_below: tuple[float, str] | None = None  # (value, hint) for a likely unit mix-up


AGE = Column("age", "years", 18, 120, hint_below=(18, "the models are trained on adults"))
SMOKING = Column("smoking_history", "cigarettes per day, 0 for a non-smoker", 0, 150)
SCHEMAS: dict[str, tuple[Column, ...]] = {
    "risk": (
        AGE,
        Column("bmi", "kg/m2", 10, 90),
        Column("exercise_frequency", "exercise sessions per week", 0, 21),
        SMOKING,
    ),
    "treatment": (
        AGE,
        Column("blood_pressure", 'systolic mmHg ("120/80" is read as 120)', 50, 300),
        Column("cholesterol", "total cholesterol, mg/dL", 50, 800, hint_below=(25, "it looks like mmol/L: x38.67")),
        SMOKING,
        Column("diabetes", "0/1, yes/no or true/false", 0, 1, kind="flag"),
    ),
}

_TRUE = {"1", "1.0", "yes", "y", "true", "t"}
_FALSE = {"0", "0.0", "no", "n", "false", "f"}
_FLAGS = {**dict.fromkeys(_TRUE, 1.0), **dict.fromkeys(_FALSE, 0.0)}
_BP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*\d+(?:\.\d+)?\s*$")


def normalise_header(name: str) -> str:
    """``' Blood Pressure '`` -> ``'blood_pressure'``; strips a UTF-8 byte-order mark."""
    return re.sub(r"[\s\-]+", "_", name.replace("\ufeff", "").strip().lower())


def required_columns(workload: str) -> tuple[str, ...]:
    """The input columns a ``workload`` CSV must have."""
    try:
        return tuple(c.name for c in SCHEMAS[workload])
    except KeyError:
        raise InvalidInput(f"unknown tabular workload {workload!r}; choose one of {sorted(SCHEMAS)}") from None


def _fmt(x: float) -> str:
    return f"{x:g}"


def validate_frame(frame: pd.DataFrame, workload: str) -> tuple[pd.DataFrame, list[list[str]]]:
    """Validate raw string columns; return the parsed numeric frame and, per row, the reasons it is bad.

    Args:
        frame: one string column per required input (missing values as empty strings or NaN).
        workload: ``risk`` or ``treatment``.

    Returns:
        ``(values, reasons)``: ``values`` holds float64 columns in the schema's units; ``reasons[i]``
        is empty when row ``i`` is valid.
    """
    reasons: list[list[str]] = [[] for _ in range(len(frame))]
    values = pd.DataFrame(index=frame.index)
    for col in SCHEMAS[workload]:
        raw = frame[col.name].astype("string").fillna("").str.strip()
        blank = (raw == "").to_numpy()
        ambiguous = np.zeros(len(raw), dtype=bool)
        if col.kind == "flag":
            low = raw.str.lower()
            parsed = pd.Series(np.where(low.isin(_TRUE), 1.0, np.where(low.isin(_FALSE), 0.0, np.nan)), index=raw.index)
        else:
            text = raw
            if col.name == "blood_pressure":
                text = raw.str.replace(_BP, r"\1", regex=True)
            # "27,5" is a decimal comma; "1,000" could be a thousands separator: refuse to guess.
            ambiguous = text.str.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+").fillna(False).to_numpy(dtype=bool)
            parsed = pd.to_numeric(text.str.replace(",", ".", regex=False).where(~blank), errors="coerce")
            parsed = parsed.astype("float64").where(~ambiguous)
        arr = parsed.to_numpy(dtype="float64", na_value=np.nan)
        unparsable = np.isnan(arr) & ~blank & ~ambiguous
        for i in np.flatnonzero(ambiguous):
            reasons[i].append(
                f"{col.name} {raw.iat[i][:40]!r} is ambiguous (thousands separator or decimal comma?): "
                "write it without the comma, or with a decimal point"
            )
        nonfinite = np.isinf(arr)
        finite = np.isfinite(arr)
        out_of_range = finite & ((arr < col.low) | (arr > col.high))
        for i in np.flatnonzero(blank):
            reasons[i].append(f"{col.name} is missing ({col.unit})")
        for i in np.flatnonzero(unparsable | nonfinite):
            shown = raw.iat[i][:40]
            expect = "0/1, yes/no or true/false" if col.kind == "flag" else f"a number in {col.unit}"
            reasons[i].append(f"{col.name} {shown!r} is not {expect}")
        for i in np.flatnonzero(out_of_range):
            msg = (
                f"{col.name} {raw.iat[i][:40]} is outside the plausible range {_fmt(col.low)}-{_fmt(col.high)} "
                f"{col.unit}"
            )
            if col.hint_below and arr[i] < col.hint_below[0]:
                msg += f" ({col.hint_below[1]})"
            reasons[i].append(msg)
        values[col.name] = np.where(finite & ~out_of_range, arr, np.nan)
    return values, reasons


def read_header(path: Path, workload: str, id_column: str | None = None) -> tuple[list[str], str | None]:
    """Check the header row; return the normalised column names and the patient-id column, if any.

    Raises:
        InvalidInput: the file is missing, empty, not UTF-8 text, or lacks a required column.
    """
    with open_text(path) as fh:
        try:
            header = next(csv_reader(fh), None)
        except UnicodeDecodeError:
            raise InvalidInput(f"{path}: {binary_hint(path)}save the file as CSV (UTF-8)") from None
        except csv.Error as exc:
            raise InvalidInput(f"{path}: unreadable CSV header ({exc})") from None
    if not header or all(not h.strip() for h in header):
        raise InvalidInput(
            f"{path}: the file is empty; expected a header row with {', '.join(required_columns(workload))}"
        )
    names = [normalise_header(h) for h in header]
    missing = [c for c in required_columns(workload) if c not in names]
    if missing:
        raise InvalidInput(
            f"{path}: missing required column(s) {', '.join(missing)} for {workload}; "
            f"found {', '.join(n or '(blank)' for n in names)}"
        )
    dupes = sorted({n for n in names if n and names.count(n) > 1})
    if dupes:
        raise InvalidInput(f"{path}: column(s) {', '.join(dupes)} appear more than once")
    if id_column is not None:
        wanted = normalise_header(id_column)
        if wanted not in names:
            raise InvalidInput(f"{path}: patient id column {id_column!r} not found")
        return names, wanted
    return names, next((c for c in ID_COLUMNS if c in names), None)


class _Pending:
    """Data rows waiting to be validated as one chunk: rows from the csv module and columns read whole."""

    def __init__(self, wanted: list[int]):
        self.wanted = wanted  # the column positions validation reads
        self.parts: list[tuple[list[np.ndarray], np.ndarray]] = []
        self.rows: list[list[str]] = []
        self.lines: list[int] = []
        self.count = 0

    def add_row(self, line: int, row: list[str]) -> None:
        self.rows.append(row)
        self.lines.append(line)
        self.count += 1

    def add_columns(self, first_line: int, columns: list[np.ndarray]) -> None:
        self._flush_rows()
        n = len(columns[0])
        self.parts.append(([columns[i] for i in self.wanted], np.arange(first_line, first_line + n, dtype=np.int64)))
        self.count += n

    def _flush_rows(self) -> None:
        if self.rows:
            columns = list(zip(*self.rows, strict=True))
            self.parts.append(
                ([np.array(columns[i], dtype=object) for i in self.wanted], np.asarray(self.lines, dtype=np.int64))
            )
            self.rows, self.lines = [], []

    def take(self, limit: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The first ``limit`` rows (or all) as the wanted columns and their line numbers; the rest stay."""
        self._flush_rows()
        if not self.parts:
            return [np.empty(0, dtype=object) for _ in self.wanted], np.zeros(0, dtype=np.int64)
        columns = [np.concatenate([part[0][k] for part in self.parts]) for k in range(len(self.wanted))]
        lines = np.concatenate([part[1] for part in self.parts])
        rest = ([c[limit:] for c in columns], lines[limit:])
        self.parts = [rest] if len(rest[1]) else []
        self.count = len(rest[1])
        return [c[:limit] for c in columns], lines[:limit]


def iter_record_chunks(
    path: Path, workload: str, *, id_column: str | None = None, chunk_rows: int = CHUNK_ROWS
) -> Iterator[RecordChunk]:
    """Stream ``path`` as validated chunks of at most ``chunk_rows`` data rows.

    Row numbers are 1-based line numbers of the file (the header is line 1), as a spreadsheet shows them;
    a quoted field spanning lines is numbered by its first line. Blank lines are skipped.
    """
    names, id_col = read_header(path, workload, id_column)
    required = required_columns(workload)
    width = len(names)
    index = {n: i for i, n in enumerate(names)}
    wanted = [index[c] for c in required] + ([index[id_col]] if id_col else [])
    source = str(Path(path).resolve())

    def chunk(columns: list[np.ndarray], lines: np.ndarray, rejected: list[dict]) -> RecordChunk:
        raw = dict(zip(required, columns, strict=False))
        ids = columns[len(required)] if id_col else None
        return _validate_chunk(raw, ids, lines, source, workload, rejected, fh)

    with open_text(path) as fh:
        waiting = _Pending(wanted)
        pre_rejected: list[dict] = []
        next_line = [2]
        try:
            for line, part in csv_parts(fh, width, next_line):
                if part and isinstance(part[0], np.ndarray):  # a block of plain lines, read whole
                    waiting.add_columns(line, part)
                else:
                    row = part
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue
                    # A block of plain lines holds no NUL (csvtext.plain_columns): only the csv module's rows can.
                    nul = "\x00" in "".join(row)
                    if len(row) != width or nul:
                        pid = row[index[id_col]].strip()[:MAX_ID_LEN] if id_col and index[id_col] < len(row) else None
                        pre_rejected.append(
                            {
                                "source_uri": source,
                                "source_row": line,
                                "patient_ref": shown(pid) or None,
                                "reason": NUL_REASON
                                if nul
                                else f"row has {len(row)} fields but the header has {width} "
                                "(an unquoted comma, or a missing value?)",
                            }
                        )
                        continue
                    waiting.add_row(line, row)
                while waiting.count >= chunk_rows:
                    yield chunk(*waiting.take(chunk_rows), pre_rejected)
                    pre_rejected = []
        except UnicodeDecodeError:
            pre_rejected.append(
                {
                    "source_uri": source,
                    "source_row": next_line[0],
                    "patient_ref": None,
                    "reason": "the file is not UTF-8 text from here on; the rest of the file was not read",
                }
            )
        except csv.Error as exc:
            pre_rejected.append(
                {
                    "source_uri": source,
                    "source_row": next_line[0],
                    "patient_ref": None,
                    "reason": f"unreadable CSV from here on ({exc}); the rest of the file was not read",
                }
            )
        if waiting.count or pre_rejected:
            yield chunk(*waiting.take(waiting.count), pre_rejected)


#: A plain decimal number: what Arrow's cast reads exactly as pandas' ``to_numeric`` does (bit for bit on
#: 300,000 random decimals); anything else (a blank, a space, a decimal comma) is left to the rule.
_PLAIN_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


def _plain_numbers(strings: np.ndarray) -> np.ndarray:
    """``strings`` as float64 where each is a plain decimal, NaN elsewhere, parsed in C by Arrow: a fifth of
    the time ``pd.to_numeric`` took, which was most of validation's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        text = pa.array(strings, type=pa.string())
        try:
            parsed = pc.cast(text, pa.float64())
        except pa.ArrowInvalid:  # some value is not a plain number: parse only those that are
            parsed = pc.cast(pc.if_else(pc.match_substring_regex(text, _PLAIN_NUMBER), text, None), pa.float64())
        return parsed.to_numpy(zero_copy_only=False).astype("float64")
    except (pa.ArrowException, TypeError, ValueError, OverflowError):  # left to the rule
        return np.full(len(strings), np.nan)


def _fast_values(raw: dict[str, np.ndarray], workload: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The values of the rows every input of which is plainly valid, and the mask of those rows.

    Plainly valid: a number column's text is a plain decimal (:func:`_plain_numbers`) of a finite value in
    range; a flag column is exactly one of the accepted spellings. Whatever is not plain (a blank, a
    decimal comma, ``120/80``, ``Yes``, an error) goes to :func:`validate_frame`, the one rule, so a
    row's value and reasons are the same whichever path it takes; only rejected rows cost Python per row.
    """
    n = len(next(iter(raw.values())))
    ok = np.ones(n, dtype=bool)
    values = pd.DataFrame(index=pd.RangeIndex(n))
    for col in SCHEMAS[workload]:
        strings = raw[col.name]
        if col.kind == "flag":
            arr = pd.Series(strings, dtype=object).map(_FLAGS).to_numpy(dtype="float64", na_value=np.nan)
        else:
            arr = _plain_numbers(strings)
        ok &= np.isfinite(arr) & (arr >= col.low) & (arr <= col.high)
        values[col.name] = arr
    return values, ok


def _validate_chunk(raw, ids_raw, lines, source, workload, pre_rejected, fh) -> RecordChunk:
    """Validate one chunk: ``raw`` maps each required column to its field strings, ``ids_raw`` holds the
    patient-id column's (or is None), ``lines`` their line numbers."""
    chunk = RecordChunk(rejected=list(pre_rejected))
    try:
        chunk.bytes_read = fh.buffer.tell()
    except (AttributeError, OSError, ValueError):
        chunk.bytes_read = 0
    if not len(lines):
        return chunk
    line_numbers, lines = lines, lines.tolist()
    values, ok = _fast_values(raw, workload)
    reasons: dict[int, list[str]] = {}
    slow = np.flatnonzero(~ok)
    if len(slow):  # the rule itself, for the few rows the fast path cannot vouch for
        frame = pd.DataFrame({c: raw[c][slow] for c in raw}, dtype="string")
        slow_values, slow_reasons = validate_frame(frame, workload)
        values.iloc[slow] = slow_values[values.columns].to_numpy()
        reasons = {int(i): r for i, r in zip(slow, slow_reasons, strict=True) if r}
        if len(reasons) < len(slow):
            ok[slow[[not r for r in slow_reasons]]] = True
    if ids_raw is not None:
        ids = [v.strip()[:MAX_ID_LEN] or None for v in ids_raw.tolist()]
    else:
        ids = [None] * len(lines)
    for i, why in reasons.items():
        chunk.rejected.append(
            {"source_uri": source, "source_row": lines[i], "patient_ref": ids[i], "reason": "; ".join(why)}
        )
    keep = np.flatnonzero(ok)
    # One vectorised JSON encoding for the whole chunk, copied to the database as is.
    payloads = values.iloc[keep].to_json(orient="records", lines=True).splitlines() if len(keep) else []
    chunk.items = ItemColumns(
        source_uri=source,
        source_rows=line_numbers[keep],
        patient_refs=[ids[i] for i in keep.tolist()],
        payloads=payloads,
    )
    chunk.rejected.sort(key=lambda r: r["source_row"] or 0)
    return chunk
