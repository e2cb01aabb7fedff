"""The night runs itself: `medbatch nightly` on a real inbox with real workers; the morning page in a real browser."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from medbatch.producer.synthetic import write_patients, write_xrays
from tests.helpers import register_xray
from tests.helpers import run_cli as medbatch

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def _inbox(root: Path) -> Path:
    """A night's arrivals: radiographs, two patient CSVs (one in its folder, one recognised by its columns),
    a stray file, a half-copied file and one still being written."""
    write_xrays(root / "xray", 3, size=96, seed=31, split="ward-b", formats=("png", "dicom"))
    (root / "risk").mkdir(parents=True)
    write_patients(root / "risk" / "clinic-a.csv", "risk", 120, seed=1, bad_fraction=0.05)
    write_patients(root / "cardiology-export.csv", "treatment", 80, seed=2)
    (root / "molecules").mkdir()
    (root / "molecules" / "screen-42.json").write_text('{"count": 40, "seed": 42, "temperature": 1.0}')
    (root / "handover.docx").write_bytes(b"PK\x03\x04 not for us")
    (root / "upload.csv.part").write_text("patient_id,age\n")
    old = time.time() - 3600
    for p in root.rglob("*"):
        os.utime(p, (old, old))
    fresh = write_patients(root / "risk" / "arriving-now.csv", "risk", 10, seed=3)  # still being written
    os.utime(fresh, (time.time() + 3600, time.time() + 3600))
    return root


def test_nightly_takes_the_inbox_once_and_says_what_needs_a_human(
    db_url, service_env, start_worker, tmp_path, xray_artifact
):
    # Given an X-ray model, workers for the tabular and imaging queues, and a night's inbox
    register_xray(db_url, xray_artifact)
    start_worker("tabular,imaging,molecules")
    inbox = _inbox(tmp_path / "inbox")
    env = {**service_env, "MEDBATCH_NIGHTLY_SETTLE_S": "60"}
    # When the nightly run goes
    run = medbatch(env, "nightly", "--inbox", str(inbox), "--json", "--timeout-s", "240")
    # Then it submitted one job per unit, waited for them, and exits 1 because some of it needs a human
    assert run.returncode == 1, run.stderr
    night = json.loads(run.stdout)
    jobs = {j["workload"]: j for j in night["jobs"]}
    assert sorted(jobs) == ["molecules", "risk", "treatment", "xray"]
    assert jobs["molecules"]["items_staged"] >= 40  # 40 to deliver: the first round samples more, at the card's yield
    assert jobs["xray"]["items_staged"] == 6 and jobs["treatment"]["items_staged"] == 80
    assert all(j["status"] in ("completed", "completed_with_errors") for j in night["jobs"])
    assert jobs["risk"]["rejected"] > 0
    assert [Path(r["path"]).name for r in night["rejected"]] == ["handover.docx"]
    assert sorted(Path(p).name for p in night["still_arriving"]) == ["arriving-now.csv", "upload.csv.part"]
    assert any("handover.docx" in n for n in night["needs_human"])
    assert any(f"job {jobs['risk']['job_id']}" in n and "rejected" in n for n in night["needs_human"])
    assert set(night["awaiting_review"]) == {"xray_positives", "draft_reports"}
    page = Path(night["summary_html"])
    assert page.is_file()
    assert "Generated molecules" in page.read_text() and "MOSES CharRNN (reference)" in page.read_text()

    # When it runs again the same night, nothing is submitted twice
    again = medbatch(env, "nightly", "--inbox", str(inbox), "--json", "--timeout-s", "60")
    second = json.loads(again.stdout)
    assert second["jobs"] == [] and second["already_taken"] == 10  # 6 images, 2 CSVs, a request, the .docx
    assert again.returncode == 0, again.stderr

    # And a file whose content changed, or one that has settled since, is taken on the next run
    write_patients(inbox / "cardiology-export.csv", "treatment", 40, seed=9)
    old = time.time() - 3600
    for p in (inbox / "cardiology-export.csv", inbox / "risk" / "arriving-now.csv"):
        os.utime(p, (old, old))
    third = json.loads(medbatch(env, "nightly", "--inbox", str(inbox), "--json", "--timeout-s", "120").stdout)
    assert sorted((j["workload"], j["items_staged"]) for j in third["jobs"]) == [("risk", 10), ("treatment", 40)]


def test_morning_page_renders_in_a_real_browser(db_url, service_env, start_worker, tmp_path, xray_artifact):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (chromium and driver_bin):
        from tests.helpers import need

        need("Chromium", "install Debian's chromium and chromium-driver (scripts/setup does as root)")
    # Given a night with an X-ray job and a risk job done by real workers
    register_xray(db_url, xray_artifact)
    start_worker("tabular,imaging")
    inbox = tmp_path / "inbox"
    write_xrays(inbox / "xray", 4, size=96, seed=41, formats=("png",))
    (inbox / "risk").mkdir()
    write_patients(inbox / "risk" / "a.csv", "risk", 200, seed=4, bad_fraction=0.05)
    run = medbatch(service_env, "nightly", "--inbox", str(inbox), "--settle-s", "0", "--json", "--timeout-s", "240")
    page = Path(json.loads(run.stdout)["summary_html"])
    # When the page is opened in headless Chromium
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400"):
        options.add_argument(arg)
    from selenium.webdriver.chrome.service import Service

    browser = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        browser.get(page.as_uri())
        images = browser.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0, i.naturalWidth])"
        )
        text = browser.find_element("tag name", "body").text
        browser.save_screenshot(str(tmp_path / "night.png"))
        if os.environ.get("MEDBATCH_TEST_ARTIFACTS"):  # keep the screenshot for a human to look at
            shutil.copy(tmp_path / "night.png", Path(os.environ["MEDBATCH_TEST_ARTIFACTS"]) / "night.png")
    finally:
        browser.quit()
    # Then every plot and overlay decodes, and the page says what the night did
    plots = {alt for alt, ok, _w in images if ok and alt != "Grad-CAM overlay"}
    assert {"states", "throughput", "risk_scores", "xray_probabilities"} <= plots, images
    assert all(ok for _alt, ok, _w in images), images
    assert "medbatch: the night of" in text and "Errors by reason" in text
    assert "X-ray positives awaiting review" in text and "Models used" in text
    assert "is not a number" in text or "outside" in text or "rejected" in text.lower()
