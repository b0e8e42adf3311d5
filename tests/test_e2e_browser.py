"""End to end in a real browser: Debian's chromium driven by Playwright against `streamlit run app.py`.

Uploads twenty real crops, waits for the results, opens a heatmap, reclassifies a cell, resolves the
rest, signs off, downloads the CSV and checks its rows. Screenshots go to test-artifacts/e2e/.
Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1 (CI sets it), then it fails.
"""

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import DEV_CLASSES, REPO

CHROMIUM = os.environ.get("BM_CHROMIUM", "/usr/bin/chromium")
ART = REPO / "test-artifacts" / "e2e"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def _need_browser():
    why = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "playwright is not installed"
    if not why and not Path(CHROMIUM).exists():
        why = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
    if why:
        if os.environ.get("BM_REQUIRE_E2E") == "1":
            pytest.fail(why)
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    _need_browser()
    port = _free_port()
    env = dict(os.environ, BM_DATABASE_URL=f"sqlite:///{tmp_path / 'e2e.db'}", PYTHONPATH=str(REPO))
    log = open(tmp_path / "streamlit.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (tmp_path / "streamlit.log").read_text()[-2000:])
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_upload_heatmap_review_signoff_download(server, crops, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    files = [f for c in DEV_CLASSES for f in crops[c][:3]][:20]
    upload_dir = tmp_path / "upload"
    upload_dir.mkdir()
    for f in files:
        shutil.copy(f, upload_dir / f.name)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.set_default_timeout(90_000)
        expect.set_options(timeout=90_000)
        page.goto(server)
        expect(page.get_by_text("Bone marrow cell classifier").first).to_be_visible()
        page.get_by_role("link", name="Classify").first.click()
        page.get_by_role("textbox", name="Case id").fill("E2E-001")
        page.get_by_role("textbox", name="Case id").press("Enter")
        page.locator('input[type="file"]').set_input_files(sorted(str(p) for p in upload_dir.iterdir()))
        expect(page.get_by_text(files[-1].name).first).to_be_visible()
        page.get_by_role("button", name="Classify", exact=True).click()
        expect(page.get_by_text("Case E2E-001")).to_be_visible()
        expect(page.get_by_text("Cells classified")).to_be_visible()
        page.screenshot(path=str(ART / "1_results.png"), full_page=True)

        page.get_by_role("tab", name="Cell view").click()
        expect(page.get_by_text("as the model sees it")).to_be_visible()
        expect(page.get_by_text("gradcam for").first).to_be_visible()
        page.screenshot(path=str(ART / "2_heatmap.png"), full_page=True)

        page.get_by_role("link", name="Review").first.click()
        name = page.get_by_role("textbox", name="Your name (recorded with every change)")
        name.fill("Dr E2E")
        name.press("Enter")
        label_box = page.get_by_role("combobox", name="Label", exact=True)
        label_box.click()
        page.keyboard.type("PLM")
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Save label").click()
        expect(page.get_by_text("set to PLM")).to_be_visible()
        reviewed_metric = page.get_by_test_id("stMetric").filter(has_text="Reviewed")
        expect(reviewed_metric).to_contain_text(f"1 / {len(files)}")
        confident = page.get_by_role("button", name="confident unreviewed")
        if confident.is_enabled():
            confident.click()
            expect(page.get_by_text("cells confirmed")).to_be_visible()
        done = int(re.search(r"(\d+) / ", reviewed_metric.inner_text())[1])
        while done < len(files):  # resolve the remaining (uncertain) cells one by one, waiting for each save
            page.get_by_role("button", name="Confirm model's label").click()
            done += 1
            expect(reviewed_metric).to_contain_text(f"{done} / {len(files)}")
        page.get_by_role("button", name="Sign off case").click()
        expect(page.get_by_text("signed off").first).to_be_visible()
        page.screenshot(path=str(ART / "3_signed.png"), full_page=True)

        page.get_by_role("link", name="Export").first.click()
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download cell table (CSV)").click()
        text = Path(dl.value.path()).read_text()
        (ART / "cells.csv").write_text(text)
        page.screenshot(path=str(ART / "4_export.png"), full_page=True)
        browser.close()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 20 and {r["file"] for r in rows} == {f.name for f in files}
    assert all(r["status"] == "ok" and r["reviewed_by"] == "Dr E2E" for r in rows)
    assert sum(r["final_label"] == "PLM" for r in rows) == 1
    assert all(abs(sum(float(r[f"p_{c}"]) for c in DEV_CLASSES) - 1) < 1e-2 for r in rows)
