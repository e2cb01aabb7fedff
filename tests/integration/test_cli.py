"""The command line as a user runs it: real processes, exit codes, JSON summaries."""

from __future__ import annotations

import json
import os

import pytest

from medbatch.producer.synthetic import write_patients
from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def test_submit_wait_status_results(service_env, start_worker, tmp_path):
    start_worker("tabular")
    path = write_patients(tmp_path / "p.csv", "treatment", 300, seed=11, bad_fraction=0.1)
    run = medbatch(service_env, "submit", "treatment", str(path), "--json", "--wait", "--batch-size", "64")
    # Done, every staged item scored, but rows were rejected at staging: exit 5, not 0
    assert run.returncode == 5, run.stderr
    summary = json.loads(run.stdout)
    job = summary["job_id"]
    assert summary["items_staged"] + summary["rows_rejected"] == 300 and summary["rows_rejected"] > 0
    assert summary["final"]["status"] == "completed_with_errors" and summary["final"]["items_failed"] == 0
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


def test_unknown_job_exits_4_for_results_and_resume_too(service_env):
    for command in ("results", "resume"):
        run = medbatch(service_env, command, "999999")
        assert (run.returncode, run.stderr.strip()) == (4, "error: no job 999999"), command


def test_unreachable_database_exits_3_in_one_line_for_every_command(service_env):
    env = {**service_env, "MEDBATCH_DATABASE_URL": "postgresql+psycopg://medbatch@127.0.0.1:9/nowhere"}
    for args in (["status"], ["models"], ["report-night"], ["db", "upgrade"]):
        run = medbatch(env, *args)
        assert run.returncode == 3, (args, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: database unreachable"), (args, run.stderr)


def test_train_on_own_csv_registers_a_model_that_new_jobs_use(service_env, start_worker, tmp_path):
    # Given a user's cohort with a three-class plan label
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 600
    bp = rng.normal(135, 20, n).round()
    frame = pd.DataFrame(
        {
            "age": rng.integers(30, 85, n),
            "blood_pressure": bp,
            "cholesterol": rng.normal(230, 40, n).round(),
            "smoking_history": rng.integers(0, 30, n),
            "diabetes": rng.integers(0, 2, n),
        }
    )
    frame["plan"] = np.where(bp > 150, "medication", np.where(bp > 130, "lifestyle", "monitor"))
    cohort = tmp_path / "cohort.csv"
    frame.to_csv(cohort, index=False)
    # When it is trained
    run = medbatch(service_env, "train", "treatment", str(cohort), "--target", "plan", "--out", str(tmp_path / "m"))
    assert run.returncode == 0, run.stderr
    trained = json.loads(run.stdout)
    assert trained["n_test"] > 0 and 0.5 < trained["held_out"]["auc"] <= 1.0
    models = json.loads(medbatch(service_env, "models", "--json").stdout)
    active = [m for m in models if m["name"] == "treatment" and m["active"]]
    assert [m["version"] for m in active] == [trained["version"]]
    # Then a new job is scored by that version, with its three classes
    start_worker("tabular")
    patients = write_patients(tmp_path / "p.csv", "treatment", 200, seed=2)
    job = json.loads(medbatch(service_env, "submit", "treatment", str(patients), "--json", "--wait").stdout)
    assert job["model"]["version"] == trained["version"]
    rows = [
        json.loads(r)
        for r in medbatch(service_env, "results", str(job["job_id"]), "--format", "json").stdout.splitlines()
    ]
    assert len(rows) == 200 and {r["model_version"] for r in rows} == {trained["version"]}
    assert {r["label"] for r in rows} <= {"medication", "lifestyle", "monitor"}
    assert all(set(r["detail"]["probabilities"]) == {"medication", "lifestyle", "monitor"} for r in rows)


def test_submit_report_from_job_offline_and_bad_mode(service_env, start_worker, tmp_path):
    start_worker("tabular,reports", pool="threads", concurrency=2)
    path = write_patients(tmp_path / "p.csv", "risk", 30, seed=4)
    risk = json.loads(medbatch(service_env, "submit", "risk", str(path), "--json", "--wait").stdout)
    env = {**service_env, "MEDBATCH_LLM_PROVIDER": "offline"}
    run = medbatch(env, "submit", "report", "--from-job", str(risk["job_id"]), "--limit", "5", "--json", "--wait")
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["items_staged"] == 5 and job["final"]["status"] == "completed"
    assert job["model"] == {"name": "offline", "version": "report-v1"}
    bad = medbatch(env, "submit", "report", "--from-job", str(risk["job_id"]), "--mode", "batch")
    assert bad.returncode == 2 and "Batch API" in bad.stderr


def test_audit_log_records_submit_export_and_resume(service_env, db_url, start_worker, tmp_path):
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    start_worker("tabular")
    path = write_patients(tmp_path / "p.csv", "risk", 20, seed=2)
    job = json.loads(medbatch(service_env, "submit", "risk", str(path), "--json", "--wait").stdout)["job_id"]
    assert medbatch(service_env, "results", str(job), "--output", str(tmp_path / "out.csv")).returncode == 0
    assert medbatch(service_env, "resume", str(job)).returncode == 0
    with session_scope(db_url) as s:
        events = [(e.action, e.actor, e.detail) for e in reversed(repo.audit_events(s, job_id=job))]
    assert [a for a, _, _ in events] == ["submit", "export", "resume"]
    assert all(actor and actor != "unknown" for _, actor, _ in events) or os.environ.get("USER") is None
    assert events[1][2] == {"what": "results", "format": "csv", "rows": 20, "output": str(tmp_path / "out.csv")}
    assert "SYN-" not in str(events)


def test_xray_from_nothing_to_results_on_the_command_line(service_env, start_worker, tmp_path):
    from medbatch.producer.synthetic import write_xrays

    # Given no X-ray model: submit says how to get one, and stages nothing
    night = tmp_path / "night"
    write_xrays(night, 3, size=100, seed=4, split="inbox", formats=("png", "dicom"))
    run = medbatch(service_env, "submit", "xray", str(night))
    assert run.returncode == 2 and "medbatch train xray" in run.stderr and "Traceback" not in run.stderr
    # And a training folder without PNEUMONIA images is refused with a reason
    (tmp_path / "bad" / "train" / "NORMAL").mkdir(parents=True)
    run = medbatch(service_env, "train", "xray", str(tmp_path / "bad"))
    assert run.returncode == 2 and "train/NORMAL and train/PNEUMONIA" in run.stderr
    # When a tiny model is trained on the chest_xray layout and the folder is submitted
    write_xrays(tmp_path / "chest_xray", 20, size=64, seed=3)
    run = medbatch(
        service_env,
        *("train", "xray", str(tmp_path / "chest_xray"), "--epochs", "2", "--input-size", "48"),
        *("--filters", "4,8,8", "--dense-units", "16"),
    )
    assert run.returncode == 0, run.stderr
    trained = json.loads(run.stdout)
    assert trained["held_out_test"]["n"] > 0 and "epoch 1" in run.stderr
    # A held-out test split of a few images is flagged, in the output and (through the notes) the model card
    small = f"AUC on n={trained['held_out_test']['n']} is not meaningful"
    assert small in run.stderr and any(small in n for n in trained["notes"])
    # TensorFlow's own lines (oneDNN, cpu_feature_guard, grappler E0000, Keras's shuffle warning) stay quiet
    for noise in ("oneDNN", "I0000", "E0000", "absl::InitializeLog", "shuffle=True"):
        assert noise not in run.stderr, noise
    worker = start_worker("imaging")
    run = medbatch(service_env, "submit", "xray", str(night), "--json", "--wait")
    # Then every image has a result from that model version
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["model"]["version"] == trained["version"] and summary["final"]["items_done"] == 6
    rows = medbatch(service_env, "results", str(summary["job_id"]), "--format", "json").stdout.splitlines()
    assert len(rows) == 6 and {json.loads(r)["label"] for r in rows} <= {"normal", "pneumonia"}
    assert "oneDNN" not in worker.log_path.read_text() and "E0000" not in worker.log_path.read_text()


def test_train_molecules_registers_and_audits_a_tiny_model(service_env, tmp_path):
    # Given the MOSES data from molsets, when a tiny generator is trained on a small seeded subset
    run = medbatch(
        service_env,
        *("train", "molecules", "--subset", "500", "--units", "16", "--layers", "1", "--eval-samples", "50"),
        *("--out", str(tmp_path / "models")),
    )
    # Then it is saved, registered as the active molecules model, and the training is audited
    assert run.returncode == 0, run.stderr
    trained = json.loads(run.stdout)
    models = json.loads(medbatch(service_env, "models", "--json").stdout)
    assert [(m["name"], m["version"], m["active"]) for m in models if m["name"] == "molecules"] == [
        ("molecules", trained["version"], True)
    ]


def test_submit_molecules_takes_its_batch_size_from_the_settings(service_env):
    # Given MEDBATCH_MOLECULE_BATCH_SIZE=7 (and a tabular MEDBATCH_BATCH_SIZE that must not apply) and no --batch-size
    env = {**service_env, "MEDBATCH_MOLECULE_BATCH_SIZE": "7", "MEDBATCH_BATCH_SIZE": "50000"}
    # When 20 molecules are requested
    run = medbatch(env, "submit", "molecules", "--count", "20", "--json")
    # Then the first round's samples (20 at the card's yield, so a few more) are staged in batches of 7
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["items_staged"] >= 20
    assert summary["batches"] == -(-summary["items_staged"] // 7)


def test_beat_keeps_its_schedule_in_its_own_deployment(service_env, tmp_path):
    import subprocess
    import sys

    from medbatch.config import Settings
    from tests.helpers import wait_for

    # Given two deployments on one host, each with its own results directory
    a, b = (Settings(results_dir=tmp_path / d).beat_schedule_path() for d in ("a", "b"))
    assert a != b and a.parent == tmp_path / "a"
    assert Settings(beat_schedule_file=tmp_path / "s").beat_schedule_path() == tmp_path / "s"
    # When beat starts in one of them
    results = tmp_path / "results"
    beat = subprocess.Popen(
        [sys.executable, "-m", "medbatch.cli", "beat"],
        env={**os.environ, **service_env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Then its schedule file is in that deployment's results directory, not a fixed one under /tmp
        found = wait_for(
            lambda: beat.poll() is not None or list(results.glob("celerybeat-schedule*")),
            timeout_s=60,
            what="beat's schedule file in the deployment's results directory",
        )
        assert found is not True and beat.poll() is None, f"beat exited with {beat.returncode}"
    finally:
        beat.terminate()
        beat.wait(timeout=30)


def test_failed_items_exit_6_for_submit_wait_and_status_watch(service_env, start_worker, llm, tmp_path):
    from tests.helpers import REPORT_FACTS_CSV

    # Given a reports worker and a provider that refuses one of three patients
    env = {
        **service_env,
        "MEDBATCH_LLM_PROVIDER": "openai",
        "MEDBATCH_OPENAI_API_KEY": "sk-test-not-a-secret",
        "MEDBATCH_OPENAI_BASE_URL": llm.base_url,
        "MEDBATCH_LLM_MAX_ATTEMPTS": "1",
    }
    start_worker("reports", pool="threads", concurrency=1, env=env)
    llm.script("ok", "refusal", "ok")
    facts = tmp_path / "facts.csv"
    facts.write_text(REPORT_FACTS_CSV)
    # When the job is submitted and waited for
    run = medbatch(env, "submit", "report", str(facts), "--json", "--wait")
    # Then it is done with a failed item: exit 6 (it was 0), and status --watch of the job says the same
    assert run.returncode == 6, run.stderr
    final = json.loads(run.stdout)["final"]
    assert (final["items_done"], final["items_failed"]) == (2, 1)
    watch = medbatch(env, "status", str(final["job_id"]), "--watch", "--json")
    assert watch.returncode == 6, watch.stderr
    assert medbatch(env, "status", str(final["job_id"])).returncode == 0


def test_results_of_an_unfinished_job_exit_7_and_a_closed_pipe_ends_quietly(service_env, tmp_path):
    import subprocess
    import sys

    # Given a job staged with no worker running: unfinished, with many rejected rows already recorded
    rows = ["patient_id,age,bmi,exercise_frequency,smoking_history"]
    rows += [f"P{i},{'abc' if i % 2 else 50},27.5,2,0" for i in range(3000)]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    job = json.loads(medbatch(service_env, "submit", "risk", str(tmp_path / "p.csv"), "--json").stdout)["job_id"]
    # When its results are asked for, they are what there is, and the command says the job is unfinished
    run = medbatch(service_env, "results", str(job))
    assert run.returncode == 7, run.stderr
    assert f"job {job} has not finished" in run.stderr and "partial" in run.stderr
    # And when the reader of standard output goes away after one line (`| head -1`)
    proc = subprocess.Popen(
        [sys.executable, "-m", "medbatch", "results", str(job), "--errors", "--format", "json"],
        env={**os.environ, **service_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert json.loads(proc.stdout.readline())["reason"]
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    # Then it ends quietly with 128 + SIGPIPE, as Unix tools do: no "cannot write None: Broken pipe", no exit 2
    assert (proc.wait(timeout=60), stderr) == (141, "")


def test_a_missing_sqlite_database_is_refused_not_created_and_named_once_it_exists(service_env, tmp_path):
    env = {**service_env, "MEDBATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'elsewhere' / 'medbatch.db'}"}
    (tmp_path / "elsewhere").mkdir()
    for args in (["status"], ["models"], ["worker", "-Q", "tabular"]):
        run = medbatch(env, *args)
        assert run.returncode == 3 and "run `medbatch db upgrade`" in run.stderr, (args, run.stderr)
        assert not (tmp_path / "elsewhere" / "medbatch.db").exists(), args
    assert medbatch(env, "db", "upgrade").returncode == 0
    run = medbatch(env, "status")
    assert run.returncode == 0 and str(tmp_path / "elsewhere" / "medbatch.db") in run.stdout


def test_python_dash_m_medbatch_version_and_worker_queues(service_env, celery_app, start_worker):
    import subprocess
    import sys

    from medbatch import __version__
    from medbatch.worker.routing import QUEUES

    run = subprocess.run([sys.executable, "-m", "medbatch", "--version"], capture_output=True, text=True)
    assert (run.returncode, run.stdout.strip()) == (0, f"medbatch {__version__}")
    bad = medbatch(service_env, "worker", "-Q", "tabular,imagin")
    assert bad.returncode == 2 and "imagin" in bad.stderr
    # A development worker on every queue
    worker = start_worker("all")
    queues = celery_app.control.inspect(destination=[worker.name], timeout=5).active_queues()
    assert sorted(q["name"] for q in queues[worker.name]) == sorted(QUEUES)


def test_an_inactive_xray_model_is_named_with_how_to_activate_and_datasets_are_per_model(db_url, service_env, tmp_path):
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.producer.synthetic import write_xrays

    # Given only an inactive X-ray model (as the demo leaves its synthetic one)
    with session_scope(db_url) as s:
        repo.register_model(
            s, name="xray", version="d3m0", uri=str(tmp_path / "x.zip"), metrics={}, training_source="SYNTHETIC",
            activate=False,
        )
    night = tmp_path / "night"
    write_xrays(night, 1, size=64, seed=1, split="inbox", formats=("png",))
    # When X-rays are submitted, the refusal says one is registered and how to activate it
    run = medbatch(service_env, "submit", "xray", str(night))
    assert run.returncode == 2 and "medbatch models activate xray d3m0" in run.stderr, run.stderr
    # And a tabular model's built-in datasets are its own: risk refuses Framingham (no BMI, no exercise)
    run = medbatch(service_env, "train", "risk", "--dataset", "framingham")
    assert run.returncode == 2 and "choose nhefs" in run.stderr, run.stderr
