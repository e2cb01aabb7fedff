"""A registry a person controls (issue 14.2): --no-activate, worse-than-active not activated, --force,
``models activate`` and ``models rollback``, every change in the audit log; ``models`` shows held-out metrics."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _active(env) -> dict[str, str]:
    rows = json.loads(medbatch(env, "models", "--json").stdout)
    return {r["version"]: r for r in rows if r["name"] == "risk"}


def test_activation_rules_activate_and_rollback(service_env, db_url):
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    fast = ("--dataset", "nhefs", "--cv-folds", "2")
    # Given a first risk model trained on NHEFS: it becomes active
    first = json.loads(medbatch(service_env, "train", "risk", *fast, "--model", "logistic_regression").stdout)
    assert first["activated"] is True
    # When a forced, worse candidate (held-out AUC lower) is trained
    run = medbatch(service_env, "train", "risk", *fast, "--model", "hist_gradient_boosting")
    assert run.returncode == 0, run.stderr
    worse = json.loads(run.stdout)
    assert worse["held_out"]["auc"] < first["held_out"]["auc"]
    # Then it is registered but not activated, and says so
    assert worse["activated"] is False and "NOT activated" in run.stderr and "worse" in worse["note"]
    rows = _active(service_env)
    assert rows[first["version"]]["active"] and not rows[worse["version"]]["active"]
    assert rows[first["version"]]["held_out"]["auc"] == first["held_out"]["auc"]
    # And --no-activate registers without activating
    quiet = json.loads(
        medbatch(service_env, "train", "risk", *fast, "--model", "random_forest", "--no-activate").stdout
    )
    assert quiet["activated"] is False and not _active(service_env)[quiet["version"]]["active"]
    # When the worse one is trained again with --force, it is active
    forced = json.loads(
        medbatch(service_env, "train", "risk", *fast, "--model", "hist_gradient_boosting", "--force").stdout
    )
    assert forced["activated"] is True and _active(service_env)[forced["version"]]["active"]
    # And rollback returns to the version active before it
    run = medbatch(service_env, "models", "rollback", "risk")
    assert run.returncode == 0, run.stderr
    assert [v for v, r in _active(service_env).items() if r["active"]] == [first["version"]]
    # And a person can activate any registered version by name, but not an unknown one
    assert medbatch(service_env, "models", "activate", "risk", quiet["version"]).returncode == 0
    assert [v for v, r in _active(service_env).items() if r["active"]] == [quiet["version"]]
    assert medbatch(service_env, "models", "activate", "risk", "0" * 16).returncode == 4
    # And every change is in the audit log, in order
    with session_scope(db_url) as s:
        events = [(e.action, e.detail["version"], e.detail["activated"]) for e in reversed(repo.audit_events(s))]
    assert events == [
        ("train", first["version"], True),
        ("train", worse["version"], False),
        ("train", quiet["version"], False),
        ("train", forced["version"], True),
        ("rollback", first["version"], True),
        ("activate", quiet["version"], True),
    ]
