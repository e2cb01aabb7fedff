"""The tabular bulk write: one COPY on a first delivery, and rows already written are skipped, not doubled."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.repository.scoring import ScoredColumns, load_pending_inputs, write_scored_batch
from medbatch.db.session import session_scope
from medbatch.db.tables import Batch, Item, Result


def _scored(ids: list[int], score: float) -> ScoredColumns:
    n = len(ids)
    probabilities = np.column_stack([np.full(n, 1 - score), np.full(n, score)])
    return ScoredColumns("m", "1", ids, ["high"] * n, np.full(n, score), probabilities, ["low", "high"], 0.5)


def test_a_write_racing_an_earlier_attempt_keeps_the_first_results_and_adds_the_rest(db_url):
    # Given a batch of five pending items, two of which already got results from an attempt that committed
    # before this one read the batch (its items still pending, as a racing duplicate delivery sees them)
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload="risk", source_uri="t.csv", model_name="m", model_version="1")
        items = [
            {"item_key": f"row:{r}", "source_uri": "t.csv", "source_row": r, "patient_ref": f"P{r}", "payload": {}}
            for r in range(2, 7)
        ]
        batch = repo.stage_batch(s, job_id=job, seq=0, queue="tabular", items=items)
    with session_scope(db_url) as s:
        pending = load_pending_inputs(s, batch)
        earlier = [pending.ids[0], pending.ids[2]]
        write_scored_batch(s, batch_id=batch, job_id=job, scored=_scored(earlier, 0.9))
        s.execute(Item.__table__.update().where(Item.batch_id == batch).values(status="pending"))
    # When this attempt writes all five
    with session_scope(db_url) as s:
        pending = load_pending_inputs(s, batch)
        assert len(pending) == 5
        write_scored_batch(s, batch_id=batch, job_id=job, scored=_scored(pending.ids, 0.2))
    # Then each item has exactly one result: the earlier two kept, the other three new; all done
    with session_scope(db_url) as s:
        scores = dict(s.execute(select(Result.item_id, Result.score).where(Result.job_id == job)).all())
        statuses = set(s.scalars(select(Item.status).where(Item.batch_id == batch)))
        batch_status = s.scalar(select(Batch.status).where(Batch.id == batch))
    assert sorted(scores) == sorted(pending.ids)
    assert [scores[i] for i in pending.ids] == [0.9, 0.2, 0.9, 0.2, 0.2]
    assert statuses == {"done"} and batch_status == "done"


def test_result_details_are_the_text_json_dumps_makes_for_any_class_names():
    import json

    rng = np.random.default_rng(1)
    for classes, threshold in [(["low", "high"], 0.5), (["a%s", 'q"x', "é"], None), ([0, 1], 0.123456789)]:
        p = rng.random((40, len(classes)))
        p[0, 0], p[1, 0], p[2, 0] = 1e-7, 0.0, 1.0
        scored = ScoredColumns("m", "1", list(range(40)), ["x"] * 40, p[:, 0], p, classes, threshold)
        want = [
            {"probabilities": {str(c): v for c, v in zip(classes, row, strict=True)}, "threshold": threshold}
            for row in p.round(6).tolist()
        ]
        assert scored.details() == [json.dumps(w) for w in want]


def test_a_batch_frame_read_by_arrow_is_the_frame_json_and_pandas_make():
    """PendingInputs.frame() parses the payloads with Arrow's JSON reader; wherever the old reading (one json.loads,
    DataFrame.from_records) gives a frame, it must be the same one, and a batch Arrow cannot type is read that way."""
    import json

    import pandas as pd

    from medbatch.db.repository.scoring import PendingInputs

    rng = np.random.default_rng(7)
    for trial in range(60):
        n = int(rng.integers(1, 40))
        rows = []
        for _ in range(n):
            row = {
                "age": float(rng.integers(18, 100)) if rng.random() > 0.1 else None,
                "bmi": round(float(rng.normal(27, 5)), 1),
                "diabetes": bool(rng.random() > 0.5) if rng.random() > 0.2 else None,
                "smoking_history": int(rng.integers(0, 40)) if trial % 2 else float(rng.integers(0, 40)) + 0.5,
                "note": "x" if rng.random() > 0.5 else None,
            }
            rows.append({k: v for k, v in row.items() if rng.random() > 0.05})  # now and then a key is missing
        payloads = [json.dumps(r) for r in rows]
        inputs = PendingInputs(list(range(n)), ["t.csv"] * n, list(range(n)), [None] * n, payloads)
        want = pd.DataFrame.from_records(json.loads("[" + ",".join(payloads) + "]"))
        got = inputs.frame()
        assert len(got) == n
        # Same columns in the same order, same dtypes, same values; a missing key's null is None in a column of
        # objects where from_records puts NaN (the models read both as missing)
        assert list(got.columns) == list(want.columns)
        pd.testing.assert_series_equal(got.dtypes, want.dtypes)
        nulls_as_none = lambda f: f.astype(object).where(f.notna(), None)  # noqa: E731
        assert nulls_as_none(got).values.tolist() == nulls_as_none(want).values.tolist()
    mixed = PendingInputs([1, 2], ["t"] * 2, [1, 2], [None] * 2, ['{"a": 1}', '{"a": "one"}'])
    assert mixed.frame()["a"].tolist() == [1, "one"]
    assert len(PendingInputs([], [], [], [], []).frame()) == 0


def test_copy_lines_carry_each_field_as_copy_reads_it_for_awkward_names_and_labels():
    """The results COPY lines (one %-template per row) hold, field by field, what the SQLite path inserts: the
    labels and the model's name escaped for COPY, a literal % kept, the detail the same text as details()."""
    unescape = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}

    def copy_field(text: str) -> str | None:
        import re

        return None if text == "\\N" else re.sub(r"\\[\\tnr]", lambda m: unescape[m.group()], text)

    rng = np.random.default_rng(3)
    p = rng.random((25, 2))
    labels = ["lo\tw%s", "hi\\gh", None, "ok%%", "line\nbreak"] * 5
    scored = ScoredColumns("m\t%d", "1\\0%", list(range(100, 125)), labels, p[:, 1], p, ['a\t"%', "b\\"], 0.5)
    lines = scored.copy_lines(42, "2026-12-05T17:00:00+00:00")
    assert lines.endswith("\n")
    rows = [[copy_field(f) for f in line.split("\t")] for line in lines[:-1].split("\n")]
    want = [
        [str(i), "42", "m\t%d", "1\\0%", label, repr(score), detail, "2026-12-05T17:00:00+00:00"]
        for i, label, score, detail in zip(scored.item_ids, labels, p[:, 1].tolist(), scored.details(), strict=True)
    ]
    assert rows == want


def test_a_bulk_written_result_time_is_stored_as_every_other_time_is(db_url, monkeypatch):
    """The bulk write passes one time for the whole batch, converted by the column's own type: on SQLite the
    text SQLAlchemy writes everywhere else (always six decimals), not Python's per-row default adapter, which
    drops ``.000000`` on a whole second (and so sorts and compares differently as text)."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    import medbatch.db.repository.scoring as scoring

    whole_second = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    monkeypatch.setattr(scoring, "utcnow", lambda: whole_second)
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload="risk", source_uri="t.csv", model_name="m", model_version="1")
        items = [{"item_key": f"row:{r}", "source_uri": "t.csv", "source_row": r, "payload": {}} for r in (2, 3)]
        batch = repo.stage_batch(s, job_id=job, seq=0, queue="tabular", items=items)
    with session_scope(db_url) as s:
        write_scored_batch(s, batch_id=batch, job_id=job, scored=_scored(load_pending_inputs(s, batch).ids, 0.7))
    with session_scope(db_url) as s:
        stored = s.scalars(select(Result.created_at).where(Result.job_id == job)).all()
        raw = text("SELECT CAST(created_at AS TEXT) FROM results WHERE job_id = :j")
        as_text = set(s.execute(raw, {"j": job}).scalars())
    assert stored == [whole_second, whole_second]
    if db_url.startswith("sqlite"):
        assert as_text == {"2026-01-02 03:04:05.000000"}
