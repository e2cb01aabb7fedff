"""The ``medbatch`` script's fast exit (``cli.main`` after ``allow_fast_exit``): the same exit code and output
as the normal exit, ``atexit`` handlers run, and the normal exit kept where it cannot be sure."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)


SETUP = (
    "import atexit, sys; from medbatch import cli; "
    "atexit.register(lambda: print('atexit ran', flush=True)); "
    "cli.allow_fast_exit(); "
)


@pytest.mark.parametrize(("argv", "code"), [(["--version"], 0), (["no-such-command"], 2)])
def test_fast_exit_keeps_exit_code_output_and_atexit(argv, code):
    run = _run(SETUP + f"sys.argv = ['medbatch', *{argv!r}]; cli.main()")
    assert run.returncode == code, run.stderr
    if code == 0:
        assert "medbatch " in run.stdout
    else:
        assert "No such command" in run.stderr  # the usage error reached stderr before os._exit
    assert "atexit ran" in run.stdout


def test_fast_exit_skips_interpreter_teardown():
    # A finaliser that only the interpreter's teardown would run shows which exit was taken.
    body = (
        "import sys; from medbatch import cli\n"
        "class Tell:\n"
        "    def __del__(self): print('teardown ran', flush=True)\n"
        "keep = Tell()\n"
        "{allow}"
        "sys.argv = ['medbatch', '--version']; cli.main()\n"
    )
    fast = _run(body.format(allow="cli.allow_fast_exit()\n"))
    normal = _run(body.format(allow=""))
    assert fast.returncode == normal.returncode == 0
    assert "teardown ran" not in fast.stdout
    assert "teardown ran" in normal.stdout


def test_a_running_thread_keeps_the_normal_exit():
    body = SETUP + (
        "import threading, time; "
        "t = threading.Thread(target=lambda: (time.sleep(0.5), print('thread finished', flush=True))); t.start(); "
        "sys.argv = ['medbatch', '--version']; cli.main()"
    )
    run = _run(body)
    assert run.returncode == 0
    assert "thread finished" in run.stdout  # joined by the normal exit, not cut off


def test_text_exit_code_keeps_the_normal_exit():
    run = _run(
        SETUP + "import typer\n@cli.app.command('boom')\ndef boom():\n    sys.exit('went wrong')\n"
        "sys.argv = ['medbatch', 'boom']; cli.main()"
    )
    assert run.returncode == 1
    assert "went wrong" in run.stderr
