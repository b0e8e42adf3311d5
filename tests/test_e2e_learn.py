"""Learning a candidate from the Model updates page in a real browser (Debian's chromium driven by Playwright), as an
admin would: a store of 9 signed cases of real crops (val split, never trained on by the default); the admin starts
the job; it runs in the background, still shown after a reload and on a second admin's page (which cannot start
another); when it ends its candidate is on the page with the figures of its report and a verdict that is the
criteria's own, and the bundle it wrote loads with its lineage. A short schedule (``BM_LEARN_ARGS``) keeps it to a
minute or two. Screenshots in test-artifacts/e2e/learn_*.png. Skipped where chromium or playwright is missing, unless
BM_REQUIRE_E2E=1.
"""

import json
import re

from bench import appdriver
from bmcore.bundle import load_bundle
from bmcore.cases import CaseStore
from bmcore.governance import check
from tests.conftest import REPO, need_browser
from tests.labstore import BASE, signed_case, val_crops

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 120
USERS = {**appdriver.USERS, "admin2": ("admin", "admin2-password-1")}
SHORT = "--epochs 1 --max-steps 3 --batch-size 8 --skip-reference-test"


def _models_page(page, url, user):
    page.goto(url)
    appdriver.sign_in(page, user, USERS[user][1])
    page.get_by_role("link", name="Model updates").first.click()
    appdriver.wait_idle(page)


def test_an_admin_learns_a_candidate_from_the_page_and_it_survives_a_reload(dev_root, tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "cases.db"
    appdriver.add_users(db, USERS)
    store = CaseStore(f"sqlite:///{db}")
    crops = val_crops(dev_root, 24)
    for k in range(9):
        signed_case(store, f"LAB-{k}", crops[k::9])
    n_cells = len(crops)
    env = {"BM_APPROVED_DIR": str(tmp_path / "approved"), "BM_CANDIDATES_DIR": str(tmp_path / "candidates"),
           "BM_LEARN_ARGS": SHORT}
    with appdriver.app_server(db, tmp_path / "server.log", env_extra=env, users=USERS) as srv, \
            sync_playwright() as pw:
        browser = appdriver.launch(pw)
        ada, bob = appdriver.new_page(browser, TIMEOUT_S), appdriver.new_page(browser, TIMEOUT_S)
        _models_page(ada, srv.url, "admin")
        expect(ada.get_by_text(f"{n_cells} signed cells of 9 signed case(s)")).to_be_visible()
        ada.get_by_role("button", name="Learn a candidate").click()
        appdriver.wait_idle(ada)
        expect(ada.get_by_text("Learning started in the background")).to_be_visible()
        expect(ada.get_by_text(re.compile(r"Learning bm14-.*-lab-\d{8}-\d{6}"))).to_be_visible()
        ada.screenshot(path=str(ART / "learn_running.png"), full_page=True)

        ada.reload()  # the job is the server's, not the page's
        appdriver.reload_signed_in(ada, "admin")
        ada.get_by_role("link", name="Model updates").first.click()
        appdriver.wait_idle(ada)
        expect(ada.get_by_role("button", name="Cancel the learning job")).to_be_visible()
        _models_page(bob, srv.url, "admin2")  # a colleague sees the same job, and cannot start a second one
        expect(bob.get_by_text(re.compile(r"started by admin at"))).to_be_visible()
        assert bob.get_by_role("button", name="Learn a candidate").count() == 0

        # the progress fragment redraws the page once the job ends: its candidate, with its report's figures
        verdicts = re.compile("Meets every acceptance criterion|Fails its acceptance criteria")
        expect(ada.get_by_text(verdicts)).to_be_visible(timeout=600_000)
        # the report's table (a data grid: its cells are in the page's accessible grid, drawn on a canvas)
        expect(ada.get_by_text("lab test (held-out cases)", exact=True)).to_be_attached()
        appdriver.wait_idle(ada)
        ada.screenshot(path=str(ART / "learn_done.png"), full_page=True)
        events = store.model_events()
        assert [e["action"] for e in events] == ["learn-started", "registered", "learn-finished"]
        assert events[0]["who"] == "admin"
        folder = tmp_path / "candidates" / events[0]["name"]
        report = json.loads((folder / "report.json").read_text())
        fails = check(report["criteria"], report["figures"]["current"], report["figures"]["candidate"])
        assert report["passed"] == (not fails)
        verdict = "Fails its acceptance criteria" if fails else "Meets every acceptance criterion"
        expect(ada.get_by_text(verdict)).to_be_visible()
        approve = ada.get_by_role("button", name="Approve for new cases")
        expect(approve).to_be_disabled() if fails else expect(approve).to_be_enabled()
        cand = load_bundle(folder / "bundle")
        assert cand.sha256 == events[1]["sha256"] and cand.lineage.parent_sha256 == load_bundle(BASE).sha256
        assert cand.lineage.data[0].kind == "signed-cases"
        assert set(report["cases"]["test"]).isdisjoint(report["cases"]["train"] + report["cases"]["val"])
        cur = report["figures"]["current"]["lab_test"]["macro_f1"]
        expect(ada.get_by_text(f"{round(cur, 3)}", exact=True).first).to_be_attached()
        browser.close()
