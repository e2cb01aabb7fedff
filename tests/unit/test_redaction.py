"""One redaction for every URL-shaped secret: a password of any characters never reaches a terminal or a log."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medbatch.config import Settings, error_reason, redact_text, redact_url

SCHEMES = st.sampled_from(["redis", "rediss", "postgresql+psycopg", "postgresql", "amqp", "https"])
USERS = st.text(alphabet=st.characters(blacklist_characters=":@/", blacklist_categories=("Cs",)), max_size=8)
HOSTS = st.sampled_from(["redis:6379/0", "db/medbatch", "127.0.0.1:5432/x?sslmode=require", "[::1]:6380", "h"])
#: Passwords as people type them into an environment variable: any character, ``#?/@:%`` included.
PASSWORDS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24) | st.sampled_from(
    ["s3cr#et", "a?b", "p/w", "p@ss", "p:w", "100%", "#", "?", "/", "@@", "::", "%40"]
)



def _no_space(value: str) -> bool:
    return not any(c.isspace() for c in value)


@pytest.mark.parametrize("password", ["s3cr#et", "a?b=c", "p/w/x", "p@ss", "pa:ss", "100%25", "#?/@:%"])
def test_a_password_with_url_characters_is_redacted(password):
    url = f"postgresql+psycopg://postgres:{password}@db:5432/medbatch"
    assert redact_url(url) == "postgresql+psycopg://postgres:***@db:5432/medbatch"
    assert redact_text(f"could not connect to {url}: timeout") == (
        "could not connect to postgresql+psycopg://postgres:***@db:5432/medbatch: timeout"
    )


@settings(max_examples=300, deadline=None)
@given(scheme=SCHEMES, user=USERS, password=PASSWORDS, host=HOSTS)
def test_redact_url_hides_a_password_of_any_characters(scheme, user, password, host):
    url = f"{scheme}://{user}:{password}@{host}"
    assert redact_url(url) == f"{scheme}://{user}:***@{host}"


@settings(max_examples=300, deadline=None)
@given(scheme=SCHEMES, user=USERS.filter(_no_space), password=PASSWORDS.filter(_no_space), host=HOSTS)
def test_redact_text_hides_every_url_password_in_a_message(scheme, user, password, host):
    # In free text a URL ends at whitespace; a message may name two
    url = f"{scheme}://{user}:{password}@{host}"
    text = f"Error 111 connecting to {url}; fallback {url}, giving up"
    safe = f"{scheme}://{user}:***@{host}"
    assert redact_text(text) == f"Error 111 connecting to {safe}; fallback {safe}, giving up"


def test_urls_without_a_password_are_unchanged():
    for url in ("sqlite:///medbatch.db", "redis://redis:6379/0", "postgresql+psycopg://app@db/x", "https://h/p?q=1#f"):
        assert redact_url(url) == url
        assert redact_text(f"at {url} now") == f"at {url} now"


def test_error_reason_redacts_through_the_same_function():
    exc = ConnectionError("Error connecting to redis://:s3cr#et/x@redis:6379/0.")
    assert error_reason(exc) == "ConnectionError: Error connecting to redis://:***@redis:6379/0."


def test_a_settings_error_never_echoes_the_input():
    # pydantic quotes a model validator's whole input (the database URL with its password) in the error
    with pytest.raises(ValueError, match="placeholder") as info:
        Settings(
            environment="production",
            broker_url="redis://:changeme@redis:6379/0",
            database_url="postgresql+psycopg://app:Other#Secret1@db/x",
        )
    assert "Other#Secret1" not in str(info.value) and "Secret1" not in str(info.value)
    with pytest.raises(ValueError) as info:
        Settings(broker_url="redis://:s3cr#et@redis:6379/0", batch_size="abc")
    assert "s3cr" not in str(info.value)
