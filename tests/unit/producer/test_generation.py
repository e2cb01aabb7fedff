"""Molecule requests without a broker: bad requests refused before a job exists, the shipped model by default."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import Item, Job
from medbatch.errors import InvalidInput
from medbatch.producer.generation import submit_molecules


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, "--count"),
        ({"count": 2_000_000}, "--count"),
        ({"count": 5, "seed": -1}, "--seed"),
        ({"count": 5, "temperature": 0.0}, "--temperature"),
        ({"count": 5, "temperature": float("nan")}, "--temperature"),
    ],
)
def test_bad_requests_are_refused_before_a_job_exists(sqlite_url, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        submit_molecules(database_url=sqlite_url, send=lambda *a: None, **kwargs)
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(Job.id)) is None


def test_the_shipped_model_is_used_on_a_fresh_install(sqlite_url):
    # Given a database with no molecules model registered, submitting uses the one shipped in the package
    summary = submit_molecules(database_url=sqlite_url, send=lambda *a: None, count=3)
    with session_scope(sqlite_url) as s:
        model = repo.active_model(s, "molecules")
        items = list(s.scalars(select(Item).where(Item.job_id == summary.job_id).order_by(Item.id)))
    assert model.uri == "builtin:molecules.zip" and model.metrics["generated"]["samples"] == 10_000
    assert [it.payload["k"] for it in items] == [0, 1, 2] and {it.payload["n"] for it in items} == {3}


def test_a_large_medbatch_batch_size_is_capped_for_molecules_not_refused():
    from medbatch.producer.generation import MAX_BATCH_ITEMS, default_batch_size, validate_request

    # MEDBATCH_BATCH_SIZE may be up to 100,000 (tabular); a molecule request that names no --batch-size
    # takes the setting up to the molecule cap instead of being refused for an option the user never gave
    assert default_batch_size(7) == 7
    assert default_batch_size(100_000) == MAX_BATCH_ITEMS
    validate_request(count=50, seed=0, temperature=1.0, batch_size=default_batch_size(100_000))
