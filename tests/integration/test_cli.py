"""The command line as a user runs it: real processes, exit codes, JSON summaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medbatch.producer.synthetic import write_patients

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def medbatch(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "medbatch.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_wait_status_results(service_env, start_worker, tmp_path):
    start_worker("tabular")
    path = write_patients(tmp_path / "p.csv", "treatment", 300, seed=11, bad_fraction=0.1)
    run = medbatch(service_env, "submit", "treatment", str(path), "--json", "--wait", "--batch-size", "64")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    job = summary["job_id"]
    assert summary["items_staged"] + summary["rows_rejected"] == 300
    assert summary["final"]["status"] in ("completed", "completed_with_errors")
    status = json.loads(medbatch(service_env, "status", str(job), "--json").stdout)
    assert status["items_done"] == summary["items_staged"]
    out = tmp_path / "r.csv"
    assert medbatch(service_env, "results", str(job), "--output", str(out)).returncode == 0
    assert len(out.read_text().strip().splitlines()) == summary["items_staged"] + 1
    errors = medbatch(service_env, "results", str(job), "--errors", "--format", "json").stdout.splitlines()
    assert len(errors) == summary["rows_rejected"] and all(json.loads(e)["reason"] for e in errors)


def test_bad_files_exit_2_with_a_reason(service_env, tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    nocols = tmp_path / "nocols.csv"
    nocols.write_text("age,weight\n50,80\n")
    for path, words in [(empty, "empty"), (nocols, "missing required column"), (tmp_path / "nope.csv", "no such file")]:
        run = medbatch(service_env, "submit", "risk", str(path))
        assert run.returncode == 2, run.stderr
        assert words in run.stderr
        assert "Traceback" not in run.stderr


def test_unknown_job_exits_4(service_env):
    run = medbatch(service_env, "status", "999999")
    assert run.returncode == 4 and "no job 999999" in run.stderr
