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
        ({"count": 5, "max_samples": 4}, "--max-samples"),
        ({"count": 5, "min_likelihood": 3.0}, "--min-likelihood"),
        ({"count": 5, "min_likelihood": float("-inf")}, "--min-likelihood"),
    ],
)
def test_bad_requests_are_refused_before_a_job_exists(sqlite_url, kwargs, message):
    with pytest.raises(InvalidInput, match=message):
        submit_molecules(database_url=sqlite_url, send=lambda *a: None, **kwargs)
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(Job.id)) is None


def test_the_shipped_model_is_used_on_a_fresh_install(sqlite_url):
    # Given a database with no molecules model registered, submitting uses the one shipped in the package
    sent = []
    summary = submit_molecules(database_url=sqlite_url, send=lambda *a: sent.append(a), count=3)
    with session_scope(sqlite_url) as s:
        model = repo.active_model(s, "molecules")
        items = list(s.scalars(select(Item).where(Item.job_id == summary.job_id).order_by(Item.id)))
    assert model.uri == "builtin:molecules.zip" and model.metrics["generated"]["samples"] == 10_000
    # and its first round samples enough for 3 at the yield its card measured (validity x distinct x filters x
    # novelty), 2% more, in one batch
    from medbatch.producer.generation import DEFAULT_YIELD, expected_yield, first_round

    card_yield = expected_yield(model.metrics)
    assert 0.5 < card_yield < 1 and card_yield != DEFAULT_YIELD
    n = first_round(3, 9, card_yield)
    assert n > 3
    assert [it.payload["k"] for it in items] == list(range(n)) and {it.payload["n"] for it in items} == {n}
    assert summary.items_staged == n and summary.batches_sent == 1


def test_a_large_medbatch_batch_size_is_capped_for_molecules_not_refused():
    from medbatch.producer.generation import MAX_BATCH_ITEMS, default_batch_size, validate_request

    # MEDBATCH_BATCH_SIZE may be up to 100,000 (tabular); a molecule request that names no --batch-size
    # takes the setting up to the molecule cap instead of being refused for an option the user never gave
    assert default_batch_size(7) == 7
    assert default_batch_size(100_000) == MAX_BATCH_ITEMS
    validate_request(count=50, seed=0, temperature=1.0, batch_size=default_batch_size(100_000))


def test_top_ups_are_sized_from_the_jobs_own_yield_within_the_budget():
    from medbatch.producer.generation import first_round, top_up_items, top_up_samples

    options = {"count": 100, "max_samples": 300, "seed": 3, "temperature": 1.0, "batch_size": 40}
    assert first_round(100, 300, 0.5) == 204 and first_round(100, 150, 0.5) == 150
    assert top_up_samples(options, delivered=100, sampled=140) == 0  # enough
    assert top_up_samples(options, delivered=60, sampled=300) == 0  # budget spent
    assert top_up_samples(options, delivered=80, sampled=100) == 46  # 20 at 0.8 x 1.2, + 16
    assert top_up_samples(options, delivered=0, sampled=250) == 50  # nothing yet: the budget caps it
    rounds = top_up_items(options, first_slot=100, first_seq=3, samples=46)
    assert [len(b) for b in rounds] == [40, 6]
    assert [it["payload"]["slot"] for b in rounds for it in b] == list(range(100, 146))
    assert {it["payload"]["n"] for it in rounds[1]} == {6} and rounds[1][0]["payload"]["k"] == 0
    assert rounds == top_up_items(options, first_slot=100, first_seq=3, samples=46)  # a re-run stages the same


def test_a_nightly_request_may_name_the_budget_known_molecules_and_a_likelihood_floor():
    from medbatch.producer.generation import request_from_json

    given = {"count": 5, "max_samples": 20, "allow_known": True, "min_likelihood": -30}
    assert request_from_json(given) == {"seed": 0, "temperature": 1.0, **given, "min_likelihood": -30.0}
    assert request_from_json({"count": 5}) == {"count": 5, "seed": 0, "temperature": 1.0}
    for bad in ({"max_samples": 4}, {"allow_known": 1}, {"min_likelihood": "low"}):
        with pytest.raises(InvalidInput):
            request_from_json({"count": 5, **bad})
