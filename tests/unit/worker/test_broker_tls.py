"""Broker URLs with TLS and passwords: verified by default, never printed."""

from __future__ import annotations

import ssl

from medbatch.config import Settings, error_reason, redact_text
from medbatch.worker.app import broker_ssl, celery_config


def test_rediss_without_options_verifies_the_server():
    assert broker_ssl("rediss://:pw@redis:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert celery_config(Settings(broker_url="rediss://:pw@redis:6380/0"))["broker_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED
    }


def test_options_in_the_url_are_left_to_kombu_and_plain_redis_has_no_tls():
    assert broker_ssl("rediss://:pw@redis:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem") is None
    assert broker_ssl("redis://:pw@redis:6379/0") is None
    assert "broker_use_ssl" not in celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))


def test_passwords_inside_library_messages_are_redacted():
    text = "Error connecting to rediss://:s3:cr%40et@redis:6380/0 and redis://user:pw@h/1"
    assert redact_text(text) == "Error connecting to rediss://:***@redis:6380/0 and redis://user:***@h/1"
    assert error_reason(ConnectionError("refused by redis://:hunter2@h:1/0\nDETAIL: row")) == (
        "ConnectionError: refused by redis://:***@h:1/0"
    )
