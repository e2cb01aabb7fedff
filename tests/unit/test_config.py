"""Settings, secrets and the Celery configuration that protects the queue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medbatch.config import Settings, redact_url
from medbatch.export import neutralise
from medbatch.worker.app import celery_config


def test_password_in_url_is_redacted():
    assert redact_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("postgresql+psycopg://app:pw@db/x") == "postgresql+psycopg://app:***@db/x"
    assert redact_url("sqlite:///medbatch.db") == "sqlite:///medbatch.db"


def test_production_refuses_placeholder_secrets():
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(environment="production", broker_url="redis://:changeme@redis:6379/0")
    Settings(environment="production", broker_url="redis://:Zq8-long-random@redis:6379/0")


def test_env_prefix_is_read(monkeypatch):
    monkeypatch.setenv("MEDBATCH_BATCH_SIZE", "123")
    assert Settings().batch_size == 123
    monkeypatch.setenv("MEDBATCH_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_celery_is_json_only_late_ack_and_one_at_a_time():
    conf = celery_config(Settings(visibility_timeout_s=777))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["broker_transport_options"]["visibility_timeout"] == 777
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"]
    assert {q.name for q in conf["task_queues"]} == {"tabular", "imaging", "reports", "molecules"}
    assert conf["task_routes"]["medbatch.tabular.score_batch"] == {"queue": "tabular"}


@pytest.mark.parametrize(
    "cell,expected",
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1+1", "'+1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("-1.5", "-1.5"),
        ("P-17", "P-17"),
        (0.4, 0.4),
        (None, None),
    ],
)
def test_export_neutralises_formula_injection(cell, expected):
    assert neutralise(cell) == expected
