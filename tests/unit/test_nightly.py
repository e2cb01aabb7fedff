"""The nightly run's rules without services: what a night is, how inbox files are sorted, the beat schedule."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime

import pytest

from medbatch.config import Settings
from medbatch.db.repository.morning import reason_group
from medbatch.errors import InvalidInput
from medbatch.nightly import _read_request, night_of, night_window, scan_inbox
from medbatch.producer.synthetic import write_patients, write_xrays
from medbatch.worker.app import celery_config


def test_a_night_runs_from_noon_to_noon_in_the_configured_zone():
    assert night_of(datetime(2026, 11, 25, 1, 30, tzinfo=UTC)) == date(2026, 11, 24)
    assert night_of(datetime(2026, 11, 24, 13, 0, tzinfo=UTC)) == date(2026, 11, 24)
    # 11:30 UTC is 12:30 in Berlin: already the next night there
    assert night_of(datetime(2026, 11, 24, 11, 30, tzinfo=UTC), "Europe/Berlin") == date(2026, 11, 24)
    assert night_of(datetime(2026, 11, 24, 11, 30, tzinfo=UTC)) == date(2026, 11, 23)
    start, end = night_window(date(2026, 11, 24), "Europe/Berlin")
    assert start.astimezone(UTC) == datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    assert (end - start).total_seconds() == 86400


def test_inbox_files_are_sorted_by_folder_then_content(tmp_path):
    old = time.time() - 600
    write_xrays(tmp_path / "xray", 1, size=32, seed=1)
    write_patients(tmp_path / "cardio.csv", "treatment", 5)
    write_patients(tmp_path / "gp.csv", "risk", 5)
    (tmp_path / "odd.csv").write_text("name,weight\nx,1\n")
    (tmp_path / "molecules").mkdir()
    (tmp_path / "molecules" / "req.json").write_text('{"count": 10}')
    (tmp_path / "molecules" / "notes.txt").write_text("hi")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "big.dcm.part").write_text("x")
    for p in tmp_path.rglob("*"):
        os.utime(p, (old, old))
    write_patients(tmp_path / "fresh.csv", "risk", 5)
    found, arriving = scan_inbox(tmp_path, settle_s=60)
    kinds = {p.path.name: p.workload or f"refused: {p.reason}" for p in found}
    assert kinds["cardio.csv"] == "treatment" and kinds["gp.csv"] == "risk" and kinds["req.json"] == "molecules"
    assert sum(v == "xray" for v in kinds.values()) == 2
    assert kinds["odd.csv"].startswith("refused: CSV matches neither")
    assert kinds["notes.txt"].startswith("refused: inbox/molecules/ takes JSON")
    assert ".hidden" not in kinds
    assert sorted(os.path.basename(a) for a in arriving) == ["big.dcm.part", "fresh.csv"]


def test_generation_requests_are_validated(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"count": 100, "seed": 3}))
    assert _read_request(good) == {"count": 100, "seed": 3, "temperature": 1.0}
    for text, words in [("{", "not a JSON"), ('{"seed": 1}', "expected"), ('{"count": 1, "n": 2}', "unknown field")]:
        bad = tmp_path / "b.json"
        bad.write_text(text)
        with pytest.raises(InvalidInput, match=words):
            _read_request(bad)


def test_error_reasons_group_by_pattern():
    assert reason_group("age 'abc' is not a number") == reason_group("age 'x1' is not a number")
    assert reason_group("bmi 71.5 is outside 12-70") == "bmi N is outside N-N"


def test_beat_runs_the_night_and_the_morning_only_when_an_inbox_is_set(tmp_path):
    plain = celery_config(Settings(_env_file=None))["beat_schedule"]
    assert set(plain) == {"reconcile-stuck-batches"}
    s = Settings(_env_file=None, nightly_inbox=tmp_path, nightly_hour=2, nightly_minute=30, timezone="Europe/Berlin")
    config = celery_config(s)
    schedule = config["beat_schedule"]
    assert config["timezone"] == "Europe/Berlin"
    assert schedule["nightly-run"]["task"] == "medbatch.maintenance.nightly"
    assert schedule["nightly-run"]["schedule"].hour == {2} and schedule["nightly-run"]["schedule"].minute == {30}
    assert schedule["morning-summary"]["schedule"].hour == {7}
    with pytest.raises(ValueError, match="unknown time zone"):
        Settings(_env_file=None, timezone="Mars/Olympus")
