"""A molecule job's metrics read the same in ``medbatch status``, the demo's summary, the morning page and the
README/card table: the raw model row and the delivered row side by side with MOSES CharRNN."""

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
    "delivered": {
        "requested": 3,
        "delivered": 1,
        "samples": 12,
        "max_samples": 12,
        "budget_spent": True,
        "samples_per_delivered": 12.0,
        "outcomes": {"delivered": 1, "invalid": 11, "duplicate": 0},
        "intdiv": None,
        "novelty": 1.0,
        "allow_known": False,
    },
}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_status_demo_and_morning_page_show_the_same_figures(db_url):
    expected = ["0.083", "1.000", "1.000", "1.000", "n/a", "1.000", "-"]
    delivered = ["selected", "selected", "selected", "selected", "n/a", "selected", "12.000"]
    assert [cells for _, cells in mm.comparison_rows(METRICS)][:2] == [expected, delivered]
    # medbatch status
    table = Table(show_header=False)
    _add_molecule_metrics(table, METRICS)
    console = Console(file=io.StringIO(), width=200)
    console.print(table)
    status = console.file.getvalue()
    assert re.search(r"model, raw \(12 samples\)\s*│\s*" + r"\s+".join(map(re.escape, expected)), status), status
    assert re.search(r"delivered \(1 of 3\)\s*│\s*" + r"\s+".join(map(re.escape, delivered)), status), status
    assert "delivered 1 of 3; sample budget spent (12 samples)" in status and "invalid 11" in status
    assert "unique@1k and unique@10k are over the 1 valid molecules" in status
    # the demo's summary line
    line = mm.one_line(METRICS)
    assert line.startswith("delivered 1 of 3; sample budget spent")
    assert "validity 0.083 (MOSES CharRNN 0.975)" in line and "IntDiv n/a (0.856)" in line
    # the README / model card table
    md = mm.comparison_markdown(METRICS).splitlines()
    assert md[2] == "| model, raw (12 samples) | " + " | ".join(expected) + " |" and "| MOSES CharRNN | 0.975" in md[4]
    # the morning page
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload="molecules", source_uri="generate", model_name="m", model_version="1")
        repo.set_job_metrics(s, job, METRICS)
    page = render(collect(db_url, night_of(datetime.now(UTC))))
    for label, cells in ((r"model, raw \(12 samples\)", expected), (r"delivered \(1 of 3\)", delivered)):
        row = re.search(rf"<tr><td>job {job}: {label}</td>(.*?)</tr>", page).group(1)
        assert re.findall(r"<td>(.*?)</td>", row) == cells
    assert "delivered 1 of 3; sample budget spent" in page


def test_nothing_calls_a_delivered_set_validity():
    # the delivered row never carries a validity, uniqueness or filters figure, whatever the metrics say
    metrics = {**METRICS, "delivered": {**METRICS["delivered"], "validity": 1.0, "filters": 1.0, "allow_known": True}}
    label, cells = mm.comparison_rows(metrics)[1]
    assert label.startswith("delivered") and cells[:3] == ["selected"] * 3 and cells[5] == "selected"
    assert cells[3] == "1.000"  # known molecules allowed: the delivered set's novelty is a figure of its own
