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


def main() -> None:
    try:
        app()
    except MedbatchError as exc:  # anything a command did not handle itself
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


__all__ = ["GROUPS", "app", "main"]
