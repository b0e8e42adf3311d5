"""The demo case in a real browser (Debian's chromium driven by Playwright): a technologist with no crops of their own
presses "Try the demo case" on Classify; the case is classified by the bundled default model, says it is a demo on
every page that shows it, and a pathologist's Agreement page, after it is signed, does not count it. Screenshots in
test-artifacts/e2e/demo_*.png. Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1 (CI sets it).
"""

from bench import appdriver
from bmcore.cases import CaseStore
from tests.conftest import REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 120
DEMO_WORDS = "Demo case: example images from public datasets"


def test_a_newcomer_opens_the_demo_case_and_no_lab_figure_counts_it(tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "cases.db"
    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.goto(page, srv.url, "tech")
        page.get_by_role("link", name="Classify").first.click()
        appdriver.wait_idle(page)
        page.get_by_role("button", name="Try the demo case").click()
        appdriver.wait_classified(page)
        expect(page.get_by_text(DEMO_WORDS).first).to_be_visible()
        expect(page.get_by_role("heading", name="Case DEMO-1")).to_be_visible()
        page.screenshot(path=str(ART / "demo_classify.png"), full_page=True)
        for name in ("Review", "Differential", "Export"):
            page.get_by_role("link", name=name).first.click()
            appdriver.wait_idle(page)
            expect(page.get_by_text(DEMO_WORDS).first).to_be_visible()
        page.get_by_role("link", name="Review").first.click()
        appdriver.wait_idle(page)
        page.screenshot(path=str(ART / "demo_review.png"), full_page=True)

        store = CaseStore(f"sqlite:///{db}")
        case = store.get_case(store.case_id("DEMO-1"))
        assert case.demo and len(case.cells) > 40 and not any(c.pending for c in case.cells)
        # signed off (through the store: the browser sign-off is test_e2e_signoff's), then read as a pathologist
        from bmcore import caserules
        path = store.authenticate("path", appdriver.USERS["path"][1])
        for c in case.cells:
            if caserules.rejected_open(c):
                store.review_cell(c.id, path, "DIS", expected_version=c.version)
        store.review_cells(case.id, path, {c.id: c.version for c in store.get_case(case.id).cells
                                           if caserules.unresolved(c)})
        store.sign_off(case.id, path, password=appdriver.USERS["path"][1], no_specimen_id=True, under_target=True)
        doc = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.goto(doc, srv.url, "path")
        doc.get_by_role("link", name="Agreement").first.click()
        appdriver.wait_idle(doc)
        expect(doc.get_by_text("No signed case yet")).to_be_visible()
        expect(doc.get_by_text("1 signed demo case(s) left out")).to_be_visible()
        doc.screenshot(path=str(ART / "demo_agreement.png"), full_page=True)
        browser.close()


def test_the_agreement_page_in_a_browser_shows_the_labs_figures_and_a_class_the_model_lacks(tmp_path):
    """A pathologist reads the Agreement page of a store with one signed lab case (a band signed over the model's
    segmented neutrophil) and one signed demo case: the figures count the lab case only, and say the model cannot
    name bands. Screenshot: test-artifacts/e2e/agreement_figures.png."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    from bmcore.cases import CellInput
    from tests.test_app import _signed_case

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "cases.db"
    store = CaseStore(f"sqlite:///{db}")
    ok = dict(ok=True, confidence=0.99)
    _signed_case(store, "BM-1", [CellInput("a.jpg", predicted="LYT", **ok), CellInput("b.jpg", predicted="NGS", **ok),
                                 CellInput("c.jpg", predicted="EOS", **ok), CellInput("d.jpg", predicted="NGS", **ok)],
                 {1: "NGB"})
    _signed_case(store, "DEMO-1", [CellInput("x.jpg", predicted="MON", **ok)], {0: "EOS"}, demo=True)
    store.engine.dispose()
    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.goto(page, srv.url, "path")
        page.get_by_role("link", name="Agreement").first.click()
        appdriver.wait_idle(page)
        expect(page.get_by_text("3 of 4 signed cells (75.0%")).to_be_visible()
        expect(page.get_by_text("NGB: 1 signed cell; the model cannot name them")).to_be_visible()
        expect(page.get_by_text("1 signed demo case(s) left out")).to_be_visible()
        assert appdriver.metrics(page)["Agreement"] == "75.0%"
        page.screenshot(path=str(ART / "agreement_figures.png"), full_page=True)
        browser.close()
