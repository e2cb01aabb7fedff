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

from medbatch.cli._common import app, err
from medbatch.errors import MedbatchError

#: The command-group modules of this package, imported (and so registered) in this order.
GROUPS = ("submit", "jobs", "night", "train", "ops", "export", "dicom", "review")

for _group in GROUPS:
    import_module(f"{__name__}.{_group}")


def main() -> None:
    try:
        app()
    except MedbatchError as exc:  # anything a command did not handle itself
        err.print(f"[bold red]error:[/] {exc}")
        sys.exit(1)


__all__ = ["GROUPS", "app", "main"]
