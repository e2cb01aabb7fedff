"""An inbox fuzz for ``medbatch nightly``: special files, endless lines, bad JSON values, names with ``..``
and control characters sit beside good files. The good ones are submitted, each bad one is refused with
its reason, and the next run neither crashes nor submits anything twice."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medbatch.nightly import NightlyConfig, run_nightly
from medbatch.producer.generation import MAX_COUNT
from medbatch.producer.synthetic import write_patients, write_xrays

pytestmark = pytest.mark.integration


def _bad_requests(n: int = 24) -> list:
    """A fixed generated list of molecule requests that must each be refused: counts that are no whole
    number in range (fractions, 1e400, huge, negative, strings, booleans, null, nested), and documents
    that are not a request at all."""
    fraction = st.floats(allow_nan=True, allow_infinity=True).filter(lambda f: not math.isfinite(f) or f % 1 != 0)
    counts = st.one_of(
        fraction,
        st.integers(max_value=0),
        st.integers(min_value=MAX_COUNT + 1, max_value=10**40),
        st.text(max_size=6),
        st.booleans(),
        st.none(),
        st.lists(st.integers(1, 5), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    requests = st.one_of(
        st.builds(lambda c: {"count": c}, counts),
        st.builds(lambda c, s: {"count": 5, "seed": s}, counts, st.floats().filter(lambda f: f % 1 != 0)),
        st.lists(st.integers(), max_size=3),
        st.text(max_size=8),
        st.integers(),
    )
    found: list = []

    @settings(max_examples=n, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(requests)
    def collect(value):
        found.append(value)

    collect()
    return found


def _inbox(root: Path, outside: Path) -> tuple[Path, dict[str, str]]:
    """Good files, and the bad ones with a fragment of the reason each must be refused with."""
    inbox = root / "inbox"
    for folder in ("risk", "molecules", "xray"):
        (inbox / folder).mkdir(parents=True)
    # the good
    write_patients(inbox / "risk" / "clinic-a.csv", "risk", 12, seed=1)
    write_patients(inbox / "cardiology..2026.csv", "treatment", 9, seed=2)  # '..' in a name is just a name
    (inbox / "molecules" / "screen.json").write_text('{"count": 8, "seed": 4}')
    write_xrays(inbox / "xray", 1, size=32, seed=5)
    # the bad
    bad: dict[str, str] = {}
    os.mkfifo(inbox / "risk" / "pipe.csv")
    bad["risk/pipe.csv"] = "a FIFO (named pipe), not a regular file"
    os.symlink("/dev/zero", inbox / "risk" / "zero.csv")
    bad["risk/zero.csv"] = "outside the input roots"
    os.symlink("/dev/zero", inbox / "xray" / "zero.png")
    bad["xray/zero.png"] = "outside the input roots"
    outside.mkdir()
    write_patients(outside / "secret.csv", "risk", 3)
    os.symlink(Path("..") / ".." / outside.name / "secret.csv", inbox / "risk" / "escape.csv")
    bad["risk/escape.csv"] = "outside the input roots"
    (inbox / "stuff").mkdir()
    os.symlink(inbox / "stuff", inbox / "risk" / "folder.csv")
    bad["risk/folder.csv"] = "a link to a folder, not a regular file"
    with (inbox / "risk" / "one-line.csv").open("w") as fh:  # no line break in 3 MiB
        fh.write("patient_id," * (3 << 18))
    bad["risk/one-line.csv"] = "line longer than"
    with (inbox / "risk" / "endless-row.csv").open("w") as fh:  # a good header, then a row that never ends
        fh.write("patient_id,age,bmi,exercise_frequency,smoking_history\nP1,")
        fh.write("5" * (3 << 20))
    bad["risk/endless-row.csv"] = None  # staged: its one row is rejected with the reason, the file is a job
    write_patients(inbox / "risk" / "evil\x1b[31m.csv", "risk", 3)
    bad["risk/evil\\x1b[31m.csv"] = "control characters"
    write_patients(inbox / "risk" / "two\nlines.csv", "risk", 3)
    bad["risk/two\\nlines.csv"] = "control characters"
    write_patients(Path(os.fsdecode(os.fsencode(inbox / "risk") + b"/latin-\xe9.csv")), "risk", 3)
    bad["risk/latin-\\xe9.csv"] = "not UTF-8"
    sock = inbox / "s.sock"
    if len(os.fsencode(sock)) < 100:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(sock))
        bad["s.sock"] = "a socket, not a regular file"
    for name, text in [
        ("inf.json", '{"count": 1e400}'),
        ("fraction.json", '{"count": 1.9}'),
        ("deep.json", "[" * 5000 + "]" * 5000),
        ("digits.json", '{"count": ' + "9" * 5000 + "}"),
        ("big.json", '{"count": 5, "pad": "' + "x" * 200_000 + '"}'),
        ("binary.json", "\udcff"),
    ]:
        (inbox / "molecules" / name).write_bytes(text.encode("utf-8", "surrogateescape"))
        bad[f"molecules/{name}"] = name
    for i, value in enumerate(_bad_requests()):
        (inbox / "molecules" / f"gen-{i:02d}.json").write_text(json.dumps(value))
        bad[f"molecules/gen-{i:02d}.json"] = f"gen-{i:02d}.json"
    old = time.time() - 3600
    for p in inbox.rglob("*"):
        if not p.is_symlink() and (p.is_file() or p.is_dir()):
            os.utime(p, (old, old))
    return inbox, bad


def test_fuzzed_inbox_submits_the_good_files_and_refuses_each_bad_one(sqlite_url, tmp_path):
    # Given an X-ray model on record (staging never loads it), and an inbox (the only input root) with
    # good files beside hostile ones
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(sqlite_url) as s:
        repo.register_model(
            s, name="xray", version="fuzz", uri=str(tmp_path / "unused.keras"), metrics={}, training_source="test"
        )
    inbox, bad = _inbox(tmp_path, tmp_path / "outside")
    sent: list[tuple[str, str, int]] = []
    cfg = NightlyConfig(
        database_url=sqlite_url,
        batch_size=50,
        imaging_batch_size=8,
        report_batch_size=10,
        molecule_batch_size=20,
        llm_provider="fake",
        llm_model="fake",
        input_roots=(inbox,),
        modalities=("CR", "DX"),
        imaging_max_bytes=2**20,
        settle_s=60,
    )
    send = lambda task, queue, batch_id: sent.append((task, queue, batch_id))  # noqa: E731
    # When the night runs
    night = run_nightly(inbox, cfg, send, wait=False)
    # Then every good file became a job, and its batches were sent
    sources = {Path(j["source"]).name: j for j in night.jobs if j["workload"] in ("risk", "treatment")}
    assert set(sources) == {"clinic-a.csv", "cardiology..2026.csv", "endless-row.csv"}, night.jobs
    assert sources["clinic-a.csv"]["items_staged"] == 12 and sources["cardiology..2026.csv"]["items_staged"] == 9
    assert sources["endless-row.csv"]["items_staged"] == 0 and sources["endless-row.csv"]["rejected"] == 1
    assert sorted(j["workload"] for j in night.jobs) == ["molecules", "risk", "risk", "treatment", "xray"]
    assert next(j for j in night.jobs if j["workload"] == "molecules")["items_staged"] >= 8  # 8 to deliver
    assert next(j for j in night.jobs if j["workload"] == "xray")["items_staged"] == 2
    assert {queue for _task, queue, _b in sent} == {"tabular", "molecules", "imaging"}
    # And each bad file was refused once, with a reason that says why
    refused = {os.path.relpath(r["path"], inbox): r["reason"] for r in night.rejected}
    expected = {name: words for name, words in bad.items() if words is not None}
    assert sorted(refused) == sorted(expected), sorted(set(refused) ^ set(expected))
    for name, words in expected.items():
        assert words in refused[name], (name, refused[name])
    assert all("\n" not in r["path"] and "\x1b" not in r["path"] for r in night.rejected)
    assert night.exit_code == 1 and len(night.needs_human) >= len(expected)

    # When the night runs again, nothing crashes and nothing is submitted twice
    again = run_nightly(inbox, cfg, send, wait=False)
    assert again.jobs == [] and again.rejected == []
    assert again.already_taken == night.already_taken + len(night.rejected) + sum(
        j["files"] for j in night.jobs
    )
