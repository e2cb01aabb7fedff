"""A job's export has a column for every key any of its results carries, not only the first result's; its times
are aware and in the configured zone on every database; its Parquet columns are typed."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pyarrow.parquet as pq
from sqlalchemy import text, update

from medbatch import export
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Result
from medbatch.export import result_columns, write_rows
from tests.helpers import job_with_results

BERLIN = ZoneInfo("Europe/Berlin")


def _export(db_url: str, job: int, fmt: str, out) -> int:
    with session_scope(db_url) as s:
        columns = result_columns(repo.result_detail_keys(s, job))
        return write_rows(repo.iter_results(s, job), fmt, out, columns=columns)


def test_a_duplicate_found_after_the_first_molecule_reaches_the_csv(db_url, tmp_path):
    # Given a molecule job whose first result is unique and whose third repeats the first
    job = job_with_results(
        db_url,
        "molecules",
        [
            {"smiles": "CCO", "qed": 0.4},
            {"smiles": "CCN", "qed": 0.5},
            {"smiles": "CCO", "qed": 0.4, "duplicate_of": 1},
        ],
    )
    # When it is exported as CSV
    out = tmp_path / "m.csv"
    assert _export(db_url, job, "csv", out) == 3
    # Then the duplicate_of column is there, filled on the third row only
    rows = list(csv.DictReader(out.open()))
    assert [r["duplicate_of"] for r in rows] == ["", "", "1"]
    assert [r["smiles"] for r in rows] == ["CCO", "CCN", "CCO"]


def test_xray_attention_survives_a_negative_first_image(db_url, tmp_path):
    # Given an X-ray job whose first image is negative (no attention region) and whose second is flagged
    job = job_with_results(
        db_url,
        "xray",
        [
            {"probabilities": {"normal": 0.9, "pneumonia": 0.1}, "threshold": 0.5},
            {"probabilities": {"normal": 0.2, "pneumonia": 0.8}, "threshold": 0.5, "attention": "right lower zone"},
        ],
    )
    # When it is exported as CSV and as Parquet
    out = tmp_path / "x.csv"
    _export(db_url, job, "csv", out)
    _export(db_url, job, "parquet", tmp_path / "x.parquet")
    # Then both keep the attention of the second image, and the detail columns come in one order on every database
    rows = list(csv.DictReader(out.open()))
    assert [r["attention"] for r in rows] == ["", "right lower zone"]
    assert list(rows[0])[-4:] == ["prob_normal", "prob_pneumonia", "attention", "threshold"]
    assert pq.read_table(tmp_path / "x.parquet").column("attention").to_pylist() == [None, "right lower zone"]


def test_result_detail_keys_reads_every_key_and_class(db_url):
    job = job_with_results(
        db_url,
        "risk",
        [{"probabilities": {"low": 0.7, "high": 0.3}}, {"probabilities": {"medium": 1.0}, "note": "n"}, {}],
    )
    with session_scope(db_url) as s:
        keys = repo.result_detail_keys(s, job)
    assert keys == {
        "detail": ["note", "probabilities"],
        "probabilities": ["high", "low", "medium"],
        "types": {"note": ["text"], "probabilities": ["object"]},
        "reports": False,
    }
    assert result_columns(keys) == {
        "prob_high": "float64",
        "prob_low": "float64",
        "prob_medium": "float64",
        "note": "string",
    }


def _created_at(db_url: str, job: int) -> list[datetime]:
    with session_scope(db_url) as s:
        return [r["created_at"] for r in repo.iter_results(s, job)]


def test_times_are_aware_and_shown_in_the_configured_zone_on_every_database(db_url, tmp_path):
    # Given a job scored now, and a time written with another offset (10:00 in Berlin is 09:00 UTC)
    job = job_with_results(db_url, "risk", [{"probabilities": {"low": 1.0}}])
    with session_scope(db_url) as s:
        s.execute(
            update(Result).where(Result.job_id == job).values(created_at=datetime(2026, 12, 1, 10, tzinfo=BERLIN))
        )
    # When the results are read and exported as CSV and JSON Lines in Europe/Berlin and in UTC
    (at,) = _created_at(db_url, job)
    berlin = tmp_path / "berlin.csv"
    write_rows(_rows(db_url, job), "csv", berlin, timezone="Europe/Berlin")
    utc = tmp_path / "utc.jsonl"
    write_rows(_rows(db_url, job), "json", utc, timezone="UTC")
    # Then the database gives the same instant back, aware and in UTC (SQLite stores UTC, with no offset)
    assert at == datetime(2026, 12, 1, 9, tzinfo=UTC) and at.utcoffset() == timedelta(0)
    if db_url.startswith("sqlite"):
        with session_scope(db_url) as s:
            assert s.scalar(text("SELECT created_at FROM results WHERE job_id = :j"), {"j": job}).startswith(
                "2026-12-01 09:00:00"
            )
    # and each export writes ISO 8601 with the offset of its zone
    assert next(csv.DictReader(berlin.open()))["created_at"] == "2026-12-01T10:00:00+01:00"
    assert json.loads(utc.read_text())["created_at"] == "2026-12-01T09:00:00+00:00"


def _rows(db_url: str, job: int) -> list[dict]:
    with session_scope(db_url) as s:
        return list(repo.iter_results(s, job))


def test_parquet_columns_are_typed_even_when_the_first_row_group_has_no_value(db_url, tmp_path, monkeypatch):
    # Given a molecule job whose ints, floats, booleans, text and lists sit in detail, and a key that only
    # the last result has
    details = [
        {"smiles": "CCO", "qed": 0.41, "slot": 0, "valid": True, "original_size": [1, 2]},
        {"smiles": "CCN", "qed": 1, "slot": 1, "valid": False, "original_size": [3, 4]},
        {"smiles": "CCO", "qed": 0.4, "slot": 2, "valid": True, "original_size": [5, 6], "duplicate_of": 7},
    ]
    job = job_with_results(db_url, "molecules", details)
    # When it is exported as Parquet in row groups of two rows (so the first group has no duplicate_of)
    monkeypatch.setattr(export, "PARQUET_ROWS", 2)
    out = tmp_path / "m.parquet"
    with session_scope(db_url) as s:
        columns = result_columns(repo.result_detail_keys(s, job))
        assert write_rows(repo.iter_results(s, job), "parquet", out, columns=columns, timezone="Europe/Berlin") == 3
    # Then every column has its own type, not text
    table = pq.read_table(out)
    types = {f.name: str(f.type) for f in table.schema}
    assert {k: types[k] for k in ("source_row", "score", "slot", "qed", "valid", "duplicate_of", "smiles")} == {
        "source_row": "int64",
        "score": "double",
        "slot": "int64",
        "qed": "double",
        "valid": "bool",
        "duplicate_of": "int64",
        "smiles": "string",
    }
    assert types["created_at"] == "timestamp[us, tz=Europe/Berlin]"
    assert table.column("duplicate_of").to_pylist() == [None, None, 7]
    assert table.column("qed").to_pylist() == [0.41, 1.0, 0.4]
    assert table.column("original_size").to_pylist() == ["[1, 2]", "[3, 4]", "[5, 6]"]
    assert table.column("created_at").to_pylist() == _created_at(db_url, job)


def test_an_empty_parquet_export_still_has_typed_columns(db_url, tmp_path):
    job = job_with_results(db_url, "risk", [])
    out = tmp_path / "e.parquet"
    assert write_rows(_rows(db_url, job), "parquet", out, empty_columns=export.RESULT_COLUMNS) == 0
    schema = pq.read_schema(out)
    assert schema.names == list(export.RESULT_COLUMNS)
    assert str(schema.field("score").type) == "double" and str(schema.field("created_at").type).startswith("timestamp")
