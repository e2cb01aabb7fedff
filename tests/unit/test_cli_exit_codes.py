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


# --------------------------------------------------------------------------- the one table of outcomes


def _counts(status: str, *, failed: int = 0, rejected: int = 0) -> dict:
    return {"status": status, "items_done": 10, "items_failed": failed, "rows_rejected": rejected}


@pytest.mark.parametrize(
    ("counts", "code"),
    [
        (_counts("completed"), 0),
        (_counts("completed_with_errors", rejected=3), 5),
        (_counts("completed_with_errors", failed=1, rejected=3), 6),
        (_counts("completed_with_errors", failed=1), 6),
        (_counts("failed"), 1),
        (_counts("running"), 7),
        (_counts("queued"), 7),
    ],
)
def test_a_jobs_outcome_has_one_exit_code(counts, code):
    from medbatch.exit_codes import job_exit_code

    assert job_exit_code(counts) == code


def test_the_demo_does_not_count_its_deliberate_rejections_and_several_jobs_end_with_the_worst():
    from medbatch.exit_codes import ExitCode, job_exit_code, worst

    assert job_exit_code(_counts("completed_with_errors", rejected=3), count_rejected=False) == 0
    assert worst([0, 5, 6, 0]) == ExitCode.ITEMS_FAILED
    assert worst([6, 1, 7]) == ExitCode.FAILED and worst([]) == ExitCode.OK


def test_exit_codes_do_not_collide_and_help_and_readme_list_each_one():
    from medbatch.cli._common import EXIT_CODES_EPILOG
    from medbatch.exit_codes import SEVERITY, ExitCode
    from tests.helpers import ROOT

    assert len({int(c) for c in ExitCode}) == len(ExitCode)
    assert set(SEVERITY) == set(ExitCode) - {ExitCode.BROKEN_PIPE}
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("#### Exit codes") :].split("\n#", 1)[0]
    for code in ExitCode:
        assert f" {int(code)} " in EXIT_CODES_EPILOG + " ", code
        assert f"| {int(code)} |" in table, code


def test_a_closed_standard_output_ends_quietly_with_141(capsys):
    @with_exit_codes
    def command():
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(typer.Exit) as caught:
        command()
    assert caught.value.exit_code == 141
    assert capsys.readouterr().err == ""


def test_version_prints_the_package_version():
    from typer.testing import CliRunner

    from medbatch import __version__

    run = CliRunner().invoke(app, ["--version"])
    assert (run.exit_code, run.output.strip()) == (0, f"medbatch {__version__}")


def test_a_sqlite_file_that_does_not_exist_is_refused_not_created(tmp_path):
    from medbatch.db.session import require_existing, sqlite_file

    url = f"sqlite:///{tmp_path / 'medbatch.db'}"
    with pytest.raises(DatabaseUnavailable, match="medbatch db upgrade"):
        require_existing(url)
    assert not (tmp_path / "medbatch.db").exists()
    (tmp_path / "medbatch.db").touch()
    require_existing(url)
    assert sqlite_file("postgresql+psycopg://u@h/db") is None and sqlite_file("sqlite://") is None
