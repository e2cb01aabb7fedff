"""``medbatch dicom listen``: a DICOM node (C-ECHO, C-STORE SCP) the PACS routes studies to."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from medbatch.cli._common import app, err, ready_db, sender, with_exit_codes
from medbatch.config import get_settings

dicom_app = typer.Typer(help="Be a DICOM node in the hospital's network.", no_args_is_help=True)
app.add_typer(dicom_app, name="dicom")


@dicom_app.command("listen")
@with_exit_codes
def listen(
    aet: Annotated[
        str | None, typer.Option("--aet", help="Own AE title \\[default: MEDBATCH_DICOM_AET, MEDBATCH].")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="TCP port \\[default: MEDBATCH_DICOM_PORT, 11112].")
    ] = None,
) -> None:
    """Accept C-ECHO and C-STORE from the AE titles in MEDBATCH_DICOM_ALLOWED_AETS, keep every instance under
    the input root, and stage each study as an X-ray job once it has been quiet for
    MEDBATCH_DICOM_STUDY_SETTLE_S. Runs until interrupted (SIGINT/SIGTERM); a restart loses nothing."""
    from medbatch.interop.listener import DicomListener, ListenerConfig

    settings = get_settings()
    config = ListenerConfig(
        database_url=ready_db(),
        inbox=settings.dicom_inbox_dir(),
        aet=aet or settings.dicom_aet,
        port=port or settings.dicom_port,
        allowed_aets=settings.allowed_aet_list(),
        settle_s=settings.dicom_study_settle_s,
        batch_size=settings.imaging_batch_size,
        modalities=settings.modality_list(),
        max_bytes=settings.imaging_max_file_mb * 2**20,
    )
    node = DicomListener(config, send=sender())
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: node.stop())
    node.start()
    err.print(f"listening as {config.aet} on port {config.port}; studies settle after {config.settle_s:g} s")
    node.serve_forever()
    err.print("listener stopped")
