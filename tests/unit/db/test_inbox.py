"""The nightly inbox ledger: every InboxStatus change goes through the repository."""

from __future__ import annotations

from datetime import timedelta

from medbatch.db import repository as repo
from medbatch.db.repository import InboxStatus
from medbatch.db.session import session_scope
from medbatch.db.tables import InboxEntry, utcnow


def _entries(db_url: str) -> dict[str, tuple[str, int | None, str | None]]:
    with session_scope(db_url) as s:
        return {
            e.path: (e.status, e.job_id, e.reason)
            for e in repo.night_entries(s, utcnow() - timedelta(hours=1), utcnow())
        }


def test_claimed_entries_are_taken_or_rejected_and_unusable_ones_rejected_at_once(db_url):
    # Given a run that claims two usable files and one it cannot use
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload="risk", source_uri="/inbox/a.csv", model_name="m", model_version="1")
        repo.claim_entries(
            s,
            "run-1",
            [
                {"path": "/inbox/a.csv", "sha256": "a", "workload": "risk"},
                {"path": "/inbox/b.csv", "sha256": "b", "workload": "risk"},
                {"path": "/inbox/c.docx", "sha256": "c", "workload": None, "reason": "not an input"},
            ],
        )
    assert _entries(db_url)["/inbox/c.docx"] == (InboxStatus.REJECTED, None, "not an input")
    # When one becomes a job and the other is refused
    with session_scope(db_url) as s:
        repo.take_entries(s, "run-1", ["/inbox/a.csv"], job_id=job)
        repo.reject_entries(s, "run-1", ["/inbox/b.csv"], reason="empty file")
    # Then the ledger says so, and a second run finds all three already taken
    entries = _entries(db_url)
    assert entries["/inbox/a.csv"] == (InboxStatus.TAKEN, job, None)
    assert entries["/inbox/b.csv"] == (InboxStatus.REJECTED, None, "empty file")
    with session_scope(db_url) as s:
        assert repo.taken_pairs(s, [("/inbox/a.csv", "a"), ("/inbox/b.csv", "b"), ("/inbox/c.docx", "c")]) == {
            ("/inbox/a.csv", "a"),
            ("/inbox/b.csv", "b"),
            ("/inbox/c.docx", "c"),
        }


def test_a_lost_claim_is_relinked_to_its_job_or_forgotten(db_url):
    # Given a run that stopped after claiming two files, one of which had become a job
    with session_scope(db_url) as s:
        repo.claim_entries(
            s,
            "run-2",
            [
                {"path": "/inbox/x.csv", "sha256": "x", "workload": "risk"},
                {"path": "/inbox/y.csv", "sha256": "y", "workload": "risk"},
            ],
        )
        job = repo.create_job(s, workload="risk", source_uri="/inbox/x.csv", model_name="m", model_version="1")
    # When the next run recovers the lost claims
    with session_scope(db_url) as s:
        lost = {e.path: e.id for e in repo.lost_claims(s)}
        assert set(lost) == {"/inbox/x.csv", "/inbox/y.csv"}
        repo.relink_lost_claim(s, lost["/inbox/x.csv"], job)
        repo.forget_entries(s, [lost["/inbox/y.csv"]])
    # Then the first is taken by its job, the second is gone (to be taken again), and nothing is lost any more
    assert _entries(db_url) == {"/inbox/x.csv": (InboxStatus.TAKEN, job, None)}
    with session_scope(db_url) as s:
        assert repo.lost_claims(s) == [] and s.query(InboxEntry).count() == 1
