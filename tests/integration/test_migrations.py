"""Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from medbatch.db import repository as repo
from medbatch.db.migrate import HEAD, alembic_config, current_revision, downgrade, upgrade
from medbatch.db.session import get_engine, session_scope
from medbatch.db.tables import Base, include_object_for
from tests.helpers import job_with_results

pytestmark = pytest.mark.integration


def _diff(url: str) -> list:
    with get_engine(url).connect() as conn:
        opts = {"include_object": include_object_for(conn.dialect.name)}
        return compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)


def _downgrade(url: str, revision: str) -> None:
    downgrade(url, revision)


def _detail_type(url: str) -> str | None:
    with get_engine(url).connect() as conn:
        if conn.dialect.name != "postgresql":
            return None
        columns = "SELECT data_type FROM information_schema.columns WHERE table_name = 'results' AND column_name = :c"
        return conn.scalar(text(columns), {"c": "detail"})


def test_migrated_schema_matches_models(db_url):
    upgrade(db_url)  # a second upgrade is a no-op
    assert current_revision(db_url) == HEAD == _head()  # the fast path's constant names the newest script
    assert _diff(db_url) == []


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_detail_survives_0009_down_and_up_and_answers_containment(db_url):
    # Given results written at head, one flagged for review and one not
    job = job_with_results(
        db_url,
        "xray",
        [
            {"requires_review": True, "attention": "right lower zone", "probability": 0.91, "flags": ["inverted"]},
            {"requires_review": False, "probability": 0.12, "flags": []},
        ],
    )
    pg = db_url.startswith("postgresql")
    assert _detail_type(db_url) == ("jsonb" if pg else None)
    # When the schema goes back to 0008 and up again
    _downgrade(db_url, "0008")
    assert current_revision(db_url) == "0008"
    assert _detail_type(db_url) == ("json" if pg else None)
    with session_scope(db_url) as s:
        assert [r.detail["probability"] for r in repo.job_result_rows(s, job)] == [0.91, 0.12]
    upgrade(db_url)
    # Then the schema is the declared one again, the details are intact, and SQL users can query them
    assert current_revision(db_url) == _head() and _diff(db_url) == []
    with get_engine(db_url).connect() as conn:
        if pg:
            query = "SELECT detail ->> 'attention' FROM results WHERE job_id = :j AND detail @> :flagged"
            flagged = '{"requires_review": true}'
            assert conn.execute(text(query), {"j": job, "flagged": flagged}).scalars().all() == ["right lower zone"]
            across_jobs = 'SELECT count(*) FROM results WHERE detail @> \'{"flags": ["inverted"]}\''
            assert conn.scalar(text(across_jobs)) == 1
        else:
            query = "SELECT json_extract(detail, '$.attention') FROM results WHERE detail ->> '$.requires_review'"
            assert conn.execute(text(query)).scalars().all() == ["right lower zone"]


def _item_indexes_and_fks(url: str) -> tuple[set[str], set[tuple[str, str]]]:
    from sqlalchemy import inspect

    with get_engine(url).connect() as conn:
        insp = inspect(conn)
        indexes = {ix["name"] for ix in insp.get_indexes("items")}
        fks = {
            (table, fk["constrained_columns"][0])
            for table in ("items", "results")
            for fk in insp.get_foreign_keys(table)
        }
    return indexes, fks


def test_0010_drops_the_implied_keys_and_a_deleted_job_still_takes_everything_with_it(db_url):
    # Given a job with results at head (0010: no job_id foreign keys; 0011: on PostgreSQL the other two by trigger)
    job = job_with_results(db_url, "risk", [{"probability": 0.3}, {"probability": 0.8}])
    pg = db_url.startswith("postgresql")
    indexes, fks = _item_indexes_and_fks(db_url)
    assert "ix_items_batch" in indexes and "ix_items_batch_status" not in indexes
    assert fks == (set() if pg else {("items", "batch_id"), ("results", "item_id")})
    # When the schema goes back to 0009 and up again, the data survive both ways
    _downgrade(db_url, "0009")
    indexes, fks = _item_indexes_and_fks(db_url)
    assert "ix_items_batch_status" in indexes and ("items", "job_id") in fks and ("results", "job_id") in fks
    assert {("items", "batch_id"), ("results", "item_id")} <= fks
    upgrade(db_url)
    assert _diff(db_url) == []
    with session_scope(db_url) as s:
        assert [r.detail["probability"] for r in repo.job_result_rows(s, job)] == [0.3, 0.8]
    with get_engine(db_url).begin() as conn:
        if pg:  # half-filled pages, so the done-marking update stays on its page (HOT)
            options = conn.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'items'"))
            assert "fillfactor=50" in options
        # Then deleting the job still deletes its batches, items and results (along batch_id and item_id)
        conn.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job})
        left = [
            conn.scalar(text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": job})
            for table in ("batches", "items", "results")
        ]
    assert left == [0, 0, 0]


_RESULT = (
    "INSERT INTO results (item_id, job_id, model_name, model_version, label, score, detail, created_at) "
    "VALUES (:i, :j, 'm', '1', 'x', 0.5, '{}', CURRENT_TIMESTAMP)"
)


def _job_items(url: str, n: int = 3) -> tuple[int, int, list[int]]:
    """A job with one batch of ``n`` items and no results: (job, batch, item ids)."""
    job = job_with_results(url, "risk", [{"probability": 0.5}] * n)
    with get_engine(url).begin() as conn:
        conn.execute(text("DELETE FROM results WHERE job_id = :j"), {"j": job})
        batch = conn.scalar(text("SELECT id FROM batches WHERE job_id = :j"), {"j": job})
        items = conn.execute(text("SELECT id FROM items WHERE job_id = :j ORDER BY id"), {"j": job}).scalars().all()
    return job, batch, items


def _orphans(url: str) -> list[int]:
    with get_engine(url).connect() as conn:
        query = "SELECT r.id FROM results r WHERE NOT EXISTS (SELECT 1 FROM items i WHERE i.id = r.item_id)"
        return conn.execute(text(query)).scalars().all()


def test_item_and_result_keys_refuse_orphans_and_cascade_on_either_database(db_url):
    from sqlalchemy.exc import IntegrityError

    job, batch, items = _job_items(db_url)
    engine = get_engine(db_url)
    # An item of a batch that does not exist, and a result of an item that does not exist, are refused
    with pytest.raises(IntegrityError, match="(?i)foreign key"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO items (job_id, batch_id, item_key, source_uri, payload, status) "
                "VALUES (:j, :b, 'row:99', 'test', '{}', 'pending')"
            ),
            {"j": job, "b": batch + 1000},
        )
    with pytest.raises(IntegrityError, match="(?i)foreign key"), engine.begin() as conn:
        conn.execute(text(_RESULT), [{"i": items[0], "j": job}, {"i": max(items) + 1000, "j": job}])
    with engine.begin() as conn:  # nothing of the refused statements stayed; a good result is taken
        assert conn.scalar(text("SELECT count(*) FROM items WHERE job_id = :j"), {"j": job}) == len(items)
        conn.execute(text(_RESULT), [{"i": i, "j": job} for i in items])
        # Deleting an item deletes its result; deleting the batch deletes the other items and their results
        conn.execute(text("DELETE FROM items WHERE id = :i"), {"i": items[0]})
        assert conn.scalar(text("SELECT count(*) FROM results WHERE job_id = :j"), {"j": job}) == len(items) - 1
        conn.execute(text("DELETE FROM batches WHERE id = :b"), {"b": batch})
        count = "SELECT count(*) FROM {} WHERE job_id = :j"
        left = [conn.scalar(text(count.format(t)), {"j": job}) for t in ("items", "results")]
    assert left == [0, 0] and _orphans(db_url) == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_delete_racing_a_results_write_leaves_no_orphan(db_url):
    """PostgreSQL's trigger checks lock the items' batch as a foreign key locks its parent row: a job deleted
    while a worker's results are uncommitted waits and takes them too; results written while their items are
    being deleted wait and are refused."""
    import threading

    from sqlalchemy.exc import IntegrityError

    engine = get_engine(db_url)
    # Given a worker's results, written but not committed, when the job is deleted meanwhile
    job, _, items = _job_items(db_url)
    worker = engine.connect()
    worker.execute(text(_RESULT), [{"i": i, "j": job} for i in items])
    deleted = threading.Event()

    def delete_job() -> None:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = :j"), {"j": job})
        deleted.set()

    deleter = threading.Thread(target=delete_job)
    deleter.start()
    assert not deleted.wait(1.0)  # the delete waits for the worker's transaction
    worker.commit()
    deleter.join(10)
    # Then the delete took the committed results with it
    assert deleted.is_set() and _orphans(db_url) == []

    # Given items being deleted, not yet committed, when a worker writes their results
    job, batch, items = _job_items(db_url)
    deleter_conn = engine.connect()
    deleter_conn.execute(text("DELETE FROM items WHERE batch_id = :b"), {"b": batch})
    outcome: list[BaseException | None] = []

    def write_results() -> None:
        try:
            with engine.begin() as conn:
                conn.execute(text(_RESULT), [{"i": i, "j": job} for i in items])
            outcome.append(None)
        except IntegrityError as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write_results)
    writer.start()
    writer.join(1.0)
    assert writer.is_alive()  # the write waits for the delete's transaction
    deleter_conn.commit()
    writer.join(10)
    # Then the write is refused and nothing is orphaned
    assert len(outcome) == 1 and isinstance(outcome[0], IntegrityError) and _orphans(db_url) == []
    worker.close()
    deleter_conn.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_marking_items_done_writes_one_wal_record_a_row_and_ids_stay_refused(db_url):
    """0012: the guards on ``items.id`` and ``batches.id`` are AFTER row triggers. As BEFORE triggers (0011) they
    made PostgreSQL lock every updated row first, one more WAL record per item on the worker's done-marking."""
    from sqlalchemy.exc import IntegrityError

    job, batch, items = _job_items(db_url, n=400)
    engine = get_engine(db_url)
    with engine.connect() as conn, conn.begin() as tx:
        plan = conn.execute(
            text("EXPLAIN (ANALYZE, WAL, FORMAT JSON) UPDATE items SET status = 'done' WHERE batch_id = :b"),
            {"b": batch},
        ).scalar_one()
        tx.rollback()
    records = plan[0]["Plan"]["WAL Records"]
    assert len(items) <= records < 1.5 * len(items), records  # an update each, not a lock and an update
    for table, row in (("items", items[0]), ("batches", batch)):
        with pytest.raises(IntegrityError, match="is referenced and cannot change"), engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET id = id + 100000 WHERE id = :i"), {"i": row})
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM items WHERE batch_id = :b"), {"b": batch}) == len(items)
