"""The ``medbatch`` command line. Importing it must stay light: no TensorFlow, no model loading.

One module per command group; each registers its commands on the one ``app`` of ``_common.py`` when
imported. To add a group, write ``medbatch/cli/<group>.py`` (``from medbatch.cli._common import app,
with_exit_codes``; each command decorated ``@app.command()`` (or on a sub-``typer.Typer`` added with
``app.add_typer``) and then ``@with_exit_codes``, raising errors of ``medbatch.errors`` rather than exiting)
and add its name to ``GROUPS`` below: that one line is the whole registration. Help lists groups in order.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Annotated

import typer

from medbatch.cli._common import app, err, out, with_exit_codes
from medbatch.errors import MedbatchError

#: The command-group modules of this package, imported (and so registered) in this order.
GROUPS = ("submit", "jobs", "night", "train", "ops", "export", "dicom", "review")


def _version(value: bool) -> None:
    if value:
        from medbatch import __version__

        out.print(f"medbatch {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
@with_exit_codes
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show TensorFlow's own log lines too (also MEDBATCH_LOG_LEVEL=DEBUG); a TF_CPP_MIN_LOG_LEVEL "
            "you set wins.",
        ),
    ] = False,
) -> None:
    """medbatch: overnight AI batch processing for hospital data."""
    from medbatch.config import get_settings
    from medbatch.ml.artifacts import tensorflow_verbosity

    tensorflow_verbosity(verbose or get_settings().log_level.upper() == "DEBUG")


for _group in GROUPS:
    import_module(f"{__name__}.{_group}")


#: Set by a command whose outputs are all written, committed and sent when it returns (see :func:`main`).
_fast_exit_allowed = False


def allow_fast_exit() -> None:
    """Called by a command that keeps nothing open past its return (every write committed, every message
    sent, nothing left to a finaliser): the process may then skip the interpreter's teardown."""
    global _fast_exit_allowed
    _fast_exit_allowed = True


def main() -> None:
    """The ``medbatch`` script (and ``python -m medbatch``). A command that allowed it
    (:func:`allow_fast_exit`, e.g. ``submit``) leaves with ``os._exit`` once its outputs are flushed, its
    database connections closed and the ``atexit`` handlers run: the teardown of the modules it imported
    (SQLAlchemy, pydicom, Celery) cost 0.2-0.3 CPU s and up to 3 s of wall time under load, after its last
    line. Tests drive ``app`` through typer's CliRunner and never reach this."""
    try:
        try:
            app()
        except MedbatchError as exc:  # anything a command did not handle itself
            err.print(f"[bold red]error:[/] {exc}")
            sys.exit(1)
    except SystemExit as exc:
        if _fast_exit_allowed:
            _leave_now(exc.code)
        raise


def _leave_now(code: object) -> None:
    """``os._exit(code)`` after what the normal exit would do that matters; returns (the caller then exits
    normally) when it cannot be sure: a text exit code, a thread still running, an output that cannot be flushed."""
    import atexit
    import logging
    import os
    import threading

    code = 0 if code is None else code
    if not isinstance(code, int):
        return  # a message for stderr: the normal exit prints it
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return  # the normal exit joins it
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return  # a profiler or debugger (python -m cProfile -m medbatch.cli ...) writes its output after main
    try:
        if "medbatch.db.session" in sys.modules:
            from medbatch.db.session import dispose_engines

            dispose_engines()  # close pooled database connections politely
        atexit._run_exitfuncs()  # weakref finalizers, coverage, kombu/celery handlers...; cleared once run
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001 - e.g. a closed pipe: the normal exit reports it as it always did
        return
    os._exit(code)


__all__ = ["GROUPS", "allow_fast_exit", "app", "main"]
