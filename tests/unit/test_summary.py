"""The morning page's molecule table: measured figures next to the complete MOSES reference row."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.nightly import night_of
from medbatch.summary import collect, render

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_the_moses_reference_row_shows_every_figure(db_url):
    # Given tonight's molecule job with every MOSES metric measured
    measured = {"validity": 0.9, "unique@1k": 1.0, "unique@10k": 0.99, "novelty": 0.8, "intdiv": 0.85, "filters": 0.97}
    with session_scope(db_url) as s:
        job = repo.create_job(s, workload="molecules", source_uri="generate", model_name="m", model_version="1")
        repo.set_job_metrics(s, job, measured)
    # When the morning page is rendered
    page = render(collect(db_url, night_of(datetime.now(UTC))))
    # Then the reference row has a figure in every column (unique@1k, IntDiv and filters were "-")
    row = re.search(r"<tr><td>MOSES CharRNN \(reference\)</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert cells == ["0.975", "1.000", "0.999", "0.842", "0.856", "0.994", "-"]  # MOSES reports no samples/delivered
