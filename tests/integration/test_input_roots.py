"""Every CSV producer refuses a path outside MEDBATCH_INPUT_ROOTS, with a reason and exit code 2."""

from __future__ import annotations

import os

import pytest

from medbatch.producer.synthetic import write_patients
from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


@pytest.mark.parametrize("workload", ["risk", "treatment", "report"])
def test_submit_outside_the_input_roots_exits_2_and_stages_nothing(service_env, tmp_path, workload):
    # Given an inbox as the only input root, and a valid file outside it reachable by .. and by a symlink
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outside = write_patients(tmp_path / "outside.csv", "risk" if workload == "report" else workload, 5, seed=1)
    os.symlink(outside, inbox / "link.csv")
    env = {**service_env, "MEDBATCH_INPUT_ROOTS": str(inbox)}
    paths = [outside, inbox / ".." / "outside.csv", inbox / "link.csv"] if workload == "risk" else [inbox / "link.csv"]
    for path in paths:
        # When it is submitted
        run = medbatch(env, "submit", workload, str(path), "--json")
        # Then it is refused, the roots are named, nothing was staged
        assert run.returncode == 2, run.stdout + run.stderr
        assert "outside the input roots" in run.stderr and str(inbox) in run.stderr
        assert "Traceback" not in run.stderr
    listed = medbatch(env, "status", "--json")
    assert listed.returncode == 0 and '"job_id"' not in listed.stdout


def test_submit_inside_the_input_roots_is_accepted(service_env, tmp_path):
    inbox = tmp_path / "inbox"
    path = write_patients(inbox / "night" / "p.csv", "risk", 5, seed=1)
    env = {**service_env, "MEDBATCH_INPUT_ROOTS": f"/nonexistent,{inbox}"}
    run = medbatch(env, "submit", "risk", str(path), "--json")
    assert run.returncode == 0, run.stderr


def test_production_without_input_roots_refuses_every_path(service_env, tmp_path):
    path = write_patients(tmp_path / "p.csv", "risk", 5, seed=1)
    env = {**service_env, "MEDBATCH_ENVIRONMENT": "production", "MEDBATCH_INPUT_ROOTS": ""}
    run = medbatch(env, "submit", "risk", str(path))
    assert run.returncode == 2 and "MEDBATCH_INPUT_ROOTS" in run.stderr, run.stderr
