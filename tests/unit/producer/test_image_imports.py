"""The X-ray submit path stays light: a folder of radiographs is staged without pandas (the CSV reader's)."""

from __future__ import annotations

import subprocess
import sys


def test_xray_submit_path_imports_no_pandas():
    code = (
        "import sys; import medbatch.cli, medbatch.cli.submit, medbatch.producer.submit, medbatch.producer.images, "
        "medbatch.producer.staging; "
        "print([m for m in ('pandas', 'pyarrow', 'tensorflow', 'sklearn') if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "[]"
