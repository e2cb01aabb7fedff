"""One map from the error tree to exit codes, worn by every command of ``medbatch/cli/``."""

from __future__ import annotations

import click
import pytest
import typer
from sqlalchemy import create_engine, text
from typer.main import get_command

from medbatch.cli import app
from medbatch.cli._common import with_exit_codes
from medbatch.errors import (
    BrokerUnavailable,
    DatabaseUnavailable,
    InvalidInput,
    MedbatchError,
    ModelMisconfigured,
    NotFound,
    RateLimited,
)


def _commands(command: click.Command, path: str = "medbatch"):
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_every_command_and_group_callback_wears_with_exit_codes():
    found = [(path, cmd.callback) for path, cmd in _commands(get_command(app)) if cmd.callback is not None]
    assert len(found) >= 23  # 22 commands and the worker group's own callback
    assert [path for path, callback in found if not getattr(callback, "with_exit_codes", False)] == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidInput("bad column"), 2),
        (BrokerUnavailable("broker unreachable"), 3),
        (DatabaseUnavailable("database unavailable"), 3),
        (NotFound("no job 7"), 4),
        (ModelMisconfigured("no active model"), 1),
        (RateLimited("slow down"), 1),
        (MedbatchError("anything else"), 1),
    ],
)
def test_each_error_of_the_tree_has_one_exit_code_and_one_line(error, code, capsys):
    @with_exit_codes
    def command():
        raise error

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == code
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("error: ") and str(error) in said[0]


def test_an_unreachable_database_driver_error_exits_3_not_a_traceback(tmp_path, capsys):
    @with_exit_codes
    def command():
        with create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}").connect() as conn:
            conn.execute(text("select 1"))

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == 3
    assert capsys.readouterr().err.startswith("error: database unreachable: OperationalError")


def test_other_exceptions_and_exits_pass_through_untouched():
    @with_exit_codes
    def bug():
        raise KeyError("a bug shows its traceback")

    @with_exit_codes
    def done():
        raise typer.Exit(5)

    with pytest.raises(KeyError):
        bug()
    with pytest.raises(typer.Exit) as caught:
        done()
    assert caught.value.exit_code == 5


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"MEDBATCH_BATCH_SIZE": "abc"}, "MEDBATCH_BATCH_SIZE"),
        ({"MEDBATCH_BROKER_URL": "redis://:s3cr#et-Zq9@127.0.0.1:6379/0"}, "MEDBATCH_BROKER_URL"),
        ({"MEDBATCH_BROKER_URL": "redis://:pa/ss?Zq9@127.0.0.1:6379/0"}, "MEDBATCH_BROKER_URL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable_exit_2_and_never_its_value(env, name, monkeypatch, capsys):
    from medbatch.config import get_settings

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()

    @with_exit_codes
    def command():
        get_settings()

    try:
        with pytest.raises(typer.Exit) as caught:
            command()
    finally:
        get_settings.cache_clear()
    assert caught.value.exit_code == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and said[0].startswith(f"error: {name}: ")
    for value in env.values():
        assert value not in said[0] and "Zq9" not in said[0] and "abc'" not in said[0]


def test_a_percent_encoded_broker_password_is_accepted(monkeypatch):
    from medbatch.config import Settings

    monkeypatch.setenv("MEDBATCH_BROKER_URL", "redis://:s3cr%23et%2F%3F@127.0.0.1:6379/0")
    assert Settings().broker_url.endswith("@127.0.0.1:6379/0")
