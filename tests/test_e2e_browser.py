"""End to end in a real browser: Debian's chromium driven by Playwright against `streamlit run app.py`.

Uploads twenty real crops, waits for the results, opens a heatmap, reclassifies a cell, resolves the
rest, signs off, downloads the CSV and checks its rows. Screenshots go to test-artifacts/e2e/.
Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1 (CI sets it), then it fails.
"""

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import appdriver
from tests.conftest import DEV_CLASSES, REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 90


@pytest.fixture
def server(tmp_path):
    need_browser()
    with appdriver.app_server(tmp_path / "e2e.db", tmp_path / "streamlit.log") as srv:
        yield srv


def test_upload_heatmap_review_signoff_download(server, crops, tmp_path):
    url = server.url
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    files = [f for c in DEV_CLASSES for f in crops[c][:3]][:20]
    upload_dir = tmp_path / "upload"
    upload_dir.mkdir()
    for f in files:
        shutil.copy(f, upload_dir / f.name)
    with sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, TIMEOUT_S, accept_downloads=True)
        page.goto(url)  # nothing of the app before sign-in
        expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
        expect(page.get_by_text("Classify", exact=True)).to_have_count(0)
        page.screenshot(path=str(ART / "0_sign_in.png"), full_page=True)
        appdriver.sign_in(page, "path")  # a pathologist: classifies, reviews and signs
        appdriver.open_classify(page, url, "E2E-001", user="path")
        appdriver.upload(page, sorted(upload_dir.iterdir()))
        appdriver.classify(page, "E2E-001")
        expect(page.get_by_text("Cells classified")).to_be_visible()
        page.screenshot(path=str(ART / "1_results.png"), full_page=True)

        appdriver.open_cell_view(page)
        expect(page.get_by_text("Grad-CAM for").first).to_be_visible()
        page.screenshot(path=str(ART / "2_heatmap.png"), full_page=True)

        page.get_by_role("link", name="Review").first.click()
        appdriver.settle(page)
        appdriver.review_mode(page, "One cell")
        label_box = page.get_by_role("combobox", name="Label", exact=True)
        label_box.click()
        page.keyboard.type("PLM")
        page.keyboard.press("Enter")
        page.get_by_role("button", name="Save label").click()
        expect(page.get_by_text("set to PLM")).to_be_visible()
        reviewed_metric = page.get_by_test_id("stMetric").filter(has_text="Reviewed")
        expect(reviewed_metric).to_contain_text("1 / ")
        # the denominator is the classified cells; images the gate would not judge are resolved apart (dismissed here)
        total = int(re.search(r"/ (\d+)", reviewed_metric.inner_text())[1])
        appdriver.review_mode(page, "Gallery by class")  # every other cell: class by class, as drawn
        page.screenshot(path=str(ART / "3_gallery.png"), full_page=True)
        appdriver.gallery_confirm_everything(page)
        expect(reviewed_metric).to_contain_text(f"{total} / {total}")
        dismissed = appdriver.gallery_dismiss_rejected(page)
        page.get_by_label(re.compile(r"^Specimen / accession no\. \(none entered")).fill("S-E2E-001")
        page.get_by_text(re.compile(r"^Sign with \d+ of 200 cells counted, under the target count")).click()
        # sign-off is a deliberate act: the password again; a wrong one signs nothing
        pw_box = page.get_by_label(re.compile("Your password, to sign as"))
        pw_box.fill("not-my-password")
        page.get_by_role("button", name="Sign off case").click()
        expect(page.get_by_text("Not signed: wrong user name or password")).to_be_visible()
        expect(pw_box).to_have_value("")  # the password is not kept
        page.screenshot(path=str(ART / "3_sign_wrong_password.png"), full_page=True)
        pw_box.fill(appdriver.USERS["path"][1])
        page.get_by_role("button", name="Sign off case").click()
        expect(page.get_by_text("signed off by").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"Signature: signed by Pathologist path \(user path, id \d+, "
                                           r"pathologist\)"))).to_be_visible()
        page.screenshot(path=str(ART / "3_signed.png"), full_page=True)

        page.get_by_role("link", name="Export").first.click()
        with page.expect_download() as dl:
            page.get_by_role("button", name="Cell table (CSV)").click()
        text = Path(dl.value.path()).read_text()
        (ART / "cells.csv").write_text(text)
        with page.expect_download() as dl:  # the signed case's files say so: no PRELIMINARY banner, status final
            page.get_by_role("button", name="Report (PDF)").click()
        pdf = Path(dl.value.path()).read_bytes()
        (ART / "report.pdf").write_bytes(pdf)
        with page.expect_download() as dl:
            page.get_by_role("button", name="Report for the LIS (FHIR R4 JSON)").click()
        fhir = json.loads(Path(dl.value.path()).read_text())
        page.screenshot(path=str(ART / "4_export.png"), full_page=True)
        browser.close()
    assert pdf.startswith(b"%PDF") and fhir["resourceType"] == "DiagnosticReport" and fhir["status"] == "final"
    if shutil.which("pdftotext"):
        words = subprocess.run(["pdftotext", str(ART / "report.pdf"), "-"], capture_output=True, text=True).stdout
        assert "E2E-001" in words and "PRELIMINARY" not in words
        assert "For research use only. Not for use in diagnostic procedures." in words
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 20 and {r["file"] for r in rows} == {f.name for f in files}
    assert sum(r["status"] == "ok" for r in rows) == total and {r["status"] for r in rows} <= {"ok", "rejected"}
    assert all(r["reviewed_by"] == "path" for r in rows if r["status"] == "ok")
    assert sum(r["final_label"] == "DIS" for r in rows) == dismissed == sum(r["status"] == "rejected" for r in rows)
    assert fhir["contained"][0]["accessionIdentifier"]["value"] == "S-E2E-001"
    assert sum(r["final_label"] == "PLM" for r in rows) == 1
    # privacy: uploaded file names and the case id never reach the server's log output
    log = server.log.read_text()
    assert "Uncaught" not in log and "Traceback" not in log, log[-2000:]
    leaked = [s for s in ["E2E-001", *(f.name for f in files), *(f.stem for f in files)] if s in log]
    assert not leaked, f"found in the server log: {leaked}"
    # nor does any password, the right ones or the wrong one
    assert not [pw for pw in ["not-my-password", *(p for _, p in appdriver.USERS.values())] if pw in log]
    assert all(abs(sum(float(r[f"p_{c}"]) for c in DEV_CLASSES) - 1) < 1e-2 for r in rows)


def test_a_fresh_install_reaches_a_signed_in_page_through_the_setup_link(tmp_path):
    """`make run` on a fresh clone, as a newcomer meets it: no account exists; the first page says where the setup
    link is; the server's console has it, once; opening it and filling the form makes the first admin, signed in."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "console.log"
    with appdriver.app_server(tmp_path / "fresh.db", log, users=None) as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, TIMEOUT_S)
        page.goto(srv.url)
        expect(page.get_by_text("Create the first admin")).to_be_visible()
        expect(page.get_by_text("Classify", exact=True)).to_have_count(0)  # nothing of the app before
        page.screenshot(path=str(ART / "0_first_run.png"), full_page=True)
        for _ in range(600):  # the console line is printed by the first page's run (a busy machine: up to 60 s)
            links = re.findall(r"http://\S+\?setup=(\S+)", log.read_text())
            if links:
                break
            page.wait_for_timeout(100)
        assert len(links) == 1, log.read_text()[-1500:]
        token = links[0]
        page.goto(f"{srv.url}/?setup={token}")
        page.get_by_label("User name (no spaces)").fill("labadmin")
        page.get_by_label("Name shown on signatures and reports").fill("Lab Admin")
        page.get_by_label("Password (at least 10 characters)").fill("first admin password 1")
        page.get_by_label("Password again").fill("first admin password 1")
        page.get_by_role("button", name="Create the admin and sign in").click()
        expect(page.get_by_text(re.compile(r"Signed in as Lab Admin \(labadmin\) · admin"))).to_be_visible()
        expect(page.get_by_role("link", name="Users")).to_be_visible()
        assert "setup=" not in page.url, "the spent token leaves the address bar"
        page.screenshot(path=str(ART / "0_first_admin_signed_in.png"), full_page=True)
        other = appdriver.new_page(browser, TIMEOUT_S)  # the link again, in another browser: a sign-in form only
        other.goto(f"{srv.url}/?setup={token}")
        expect(other.get_by_role("button", name="Sign in", exact=True)).to_be_visible()
        expect(other.get_by_text("Create the first admin")).to_have_count(0)
        browser.close()
        text = log.read_text()  # read while the server runs: its shutdown may interrupt the heatmap warm-up thread
    assert text.count(token) == 1, "the token is printed once, on the console, and nowhere else"
    assert "first admin password 1" not in text
    assert "Traceback" not in text, text[-2000:]
