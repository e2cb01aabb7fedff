"""A molecule job's metrics read the same in ``medbatch status``, the demo's summary and the morning page."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime

import pytest
from rich.console import Console
from rich.table import Table

from medbatch import molecule_metrics as mm
from medbatch.cli.jobs import _add_molecule_metrics
from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.ml.moses import MOSES_CHARRNN
from medbatch.nightly import night_of
from medbatch.summary import collect, render

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

METRICS = {
    "generated": 12,
    "valid": 1,
    "unique": 1,
    "duplicates": 0,
    "validity": 1 / 12,
    "unique@1k": 1.0,
    "unique@10k": 1.0,
    "unique@k_used": {"1k": 1, "10k": 1},
    "novelty": 1.0,
    "intdiv": None,  # one molecule: no pair to compare
    "filters": 1.0,
    "reference": MOSES_CHARRNN,
}


def test_status_demo_and_morning_page_show_the_same_figures(db_url):
    expected = ["0.083", "1.000", "1.000", "1.000", "n/a", "1.000"]
    assert mm.figures(METRICS) == expected
    # medbatch status
    table = Table(show_header=False)
    _add_molecule_metrics(table, METRICS)
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    status = console.file.getvalue()
    assert re.search(r"this job\s*│\s*" + r"\s+".join(map(re.escape, expected)), status), status
    assert "unique@1k and unique@10k are over the 1 valid molecules" in status
    # the demo's summary line
    line = mm.one_line(METRICS)
    assert "validity 0.083 (MOSES CharRNN 0.975)" in line and "IntDiv n/a (0.856)" in line
    # the morning page
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload="molecules", source_uri="generate", model_name="m", model_version="1")
        repo.set_job_metrics(s, job, METRICS)
    page = render(collect(db_url, night_of(datetime.now(UTC))))
    row = re.search(rf"<tr><td>job {job}</td>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td>(.*?)</td>", row) == expected
