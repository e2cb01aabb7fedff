"""A job's export has a column for every key any of its results carries, not only the first result's."""

from __future__ import annotations

import csv

import pyarrow.parquet as pq

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.export import result_columns, write_rows


def _job_with_results(db_url: str, workload: str, details: list[dict]) -> int:
    """A job of ``workload`` whose results carry ``details``, in this order (staged and written directly)."""
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload=workload, source_uri="test", model_name="m", model_version="1")
        batch = repo.stage_batch(
            s,
            job_id=job,
            seq=0,
            queue=workload,
            items=[
                {"item_key": f"k{i}", "source_uri": "test", "source_row": i + 1, "patient_ref": None, "payload": {}}
                for i in range(len(details))
            ],
        )
        items = repo.load_pending_items(s, batch)
        results = [
            {"item_id": it.id, "model_name": "m", "model_version": "1", "label": "x", "score": 0.5, "detail": d}
            for it, d in zip(items, details, strict=True)
        ]
        repo.complete_batch(s, batch_id=batch, job_id=job, results=results)
        repo.finish_staging(s, job)
    return job


def _export(db_url: str, job: int, fmt: str, out) -> int:
    with session_scope(db_url) as s:
        columns = result_columns(repo.result_detail_keys(s, job))
        return write_rows(repo.iter_results(s, job), fmt, out, columns=columns)


def test_a_duplicate_found_after_the_first_molecule_reaches_the_csv(db_url, tmp_path):
    # Given a molecule job whose first result is unique and whose third repeats the first
    job = _job_with_results(
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
    job = _job_with_results(
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
    # Then both keep the attention of the second image, and the first row's column order leads
    rows = list(csv.DictReader(out.open()))
    assert [r["attention"] for r in rows] == ["", "right lower zone"]
    assert list(rows[0])[-4:] == ["prob_normal", "prob_pneumonia", "threshold", "attention"]
    assert pq.read_table(tmp_path / "x.parquet").column("attention").to_pylist() == [None, "right lower zone"]


def test_result_detail_keys_reads_every_key_and_class(db_url):
    job = _job_with_results(
        db_url,
        "risk",
        [{"probabilities": {"low": 0.7, "high": 0.3}}, {"probabilities": {"medium": 1.0}, "note": "n"}, {}],
    )
    with session_scope(db_url) as s:
        keys = repo.result_detail_keys(s, job)
    assert keys == {"detail": ["note", "probabilities"], "probabilities": ["high", "low", "medium"], "reports": False}
    assert result_columns(keys) == ["prob_high", "prob_low", "prob_medium", "note"]
