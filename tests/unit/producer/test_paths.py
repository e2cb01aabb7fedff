"""Input roots: producers read only under the configured directories, whatever the path says."""

from __future__ import annotations

import os

import pytest

from medbatch.config import Settings
from medbatch.errors import InvalidInput
from medbatch.producer.paths import check_input_path


@pytest.fixture
def tree(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "night").mkdir(parents=True)
    (inbox / "night" / "p.csv").write_text("x\n")
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "other.csv").write_text("x\n")
    return inbox, secret


def test_a_path_under_a_root_is_resolved_and_allowed(tree):
    inbox, _ = tree
    assert check_input_path(inbox / "night" / "p.csv", [inbox]) == (inbox / "night" / "p.csv").resolve()
    assert check_input_path(inbox / "night" / ".." / "night" / "p.csv", [inbox]).name == "p.csv"
    assert check_input_path(inbox, [inbox]) == inbox.resolve()  # a whole folder (X-ray) is fine too
    assert check_input_path(inbox / "night" / "missing.csv", [inbox]).name == "missing.csv"  # reported later


@pytest.mark.parametrize(
    "make",
    [
        lambda inbox, secret: inbox / ".." / "elsewhere" / "other.csv",  # dot-dot out of the root
        lambda inbox, secret: secret / "other.csv",  # plainly elsewhere
        lambda inbox, secret: inbox.parent / "inbox-evil" / "p.csv",  # a sibling sharing the prefix
        lambda inbox, secret: "/etc/passwd",
    ],
)
def test_a_path_outside_every_root_is_refused_with_the_roots_named(tree, make):
    inbox, secret = tree
    with pytest.raises(InvalidInput, match="outside the input roots") as info:
        check_input_path(make(inbox, secret), [inbox])
    assert str(inbox.resolve()) in str(info.value)


def test_a_symlink_out_of_the_root_is_refused(tree):
    inbox, secret = tree
    os.symlink(secret / "other.csv", inbox / "night" / "link.csv")
    os.symlink(secret, inbox / "share")
    for path in (inbox / "night" / "link.csv", inbox / "share" / "other.csv"):
        with pytest.raises(InvalidInput, match="resolves to"):
            check_input_path(path, [inbox])


def test_a_symlinked_root_is_compared_by_its_real_location(tree, tmp_path):
    inbox, _ = tree
    os.symlink(inbox, tmp_path / "current")
    assert check_input_path(inbox / "night" / "p.csv", [tmp_path / "current"]).name == "p.csv"


def test_no_roots_means_anywhere_but_empty_roots_mean_nowhere(tree):
    _, secret = tree
    assert check_input_path(secret / "other.csv", None).is_absolute()
    with pytest.raises(InvalidInput, match="MEDBATCH_INPUT_ROOTS"):
        check_input_path(secret / "other.csv", [])


def test_settings_default_is_open_in_development_and_closed_in_production(tmp_path):
    assert Settings(environment="development").allowed_input_roots() is None
    assert Settings(environment="production").allowed_input_roots() == ()
    roots = Settings(input_roots=f"{tmp_path}/a, {tmp_path}/b ,").allowed_input_roots()
    assert roots == (tmp_path / "a", tmp_path / "b")
