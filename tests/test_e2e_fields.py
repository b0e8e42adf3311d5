"""End to end in a real browser: smear-field photographs uploaded on Classify become cells of one case.

Two real peripheral-blood fields (BCCD, 640x480) and one bone marrow crop: the page says how many nucleated cells
were found and how many the gate refused, draws both fields with numbered boxes, lists the cell cut by the border
by name, and a field cell opens in the cell view with its heatmap like an uploaded crop; a third field is then
added to the open case and drawn with the others. Screenshots go to
test-artifacts/e2e/. Skipped where chromium, playwright or the shared fields are missing (see tests/conftest.py).
"""

import pytest

from bench import appdriver
from tests.conftest import REPO, SHARED, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 90
BCCD = SHARED / "data" / "fields" / "bccd" / "JPEGImages"
FIELDS = ["BloodImage_00000.jpg", "BloodImage_00193.jpg"]  # one white cell; two, one cut by the bottom border


@pytest.fixture
def server(tmp_path):
    need_browser()
    if not BCCD.is_dir():
        pytest.skip(f"smear fields not found at {BCCD} (../shared/data is absent on this machine)")
    with appdriver.app_server(tmp_path / "e2e.db", tmp_path / "streamlit.log") as srv:
        yield srv


def test_fields_become_cells_drawn_with_boxes_and_open_in_the_cell_view(server, crops):
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = appdriver.launch(pw)
        try:
            page = appdriver.new_page(browser, TIMEOUT_S)
            appdriver.open_classify(page, server.url, "E2E-FIELDS")
            appdriver.upload(page, [BCCD / f for f in FIELDS] + [crops["LYT"][0]])
            m = appdriver.classify(page, "E2E-FIELDS")
            assert m["Unreadable files"] == "1"  # the border-cut cell
            expect(page.get_by_text("3 nucleated cells found in 2 field image(s)")).to_be_visible()
            expect(page.get_by_text("expected to refuse many peripheral-blood cells")).to_be_visible()
            shots = page.get_by_test_id("stExpander").filter(has_text="Smear fields (2)")
            for f in FIELDS:
                expect(shots.get_by_text(f"{f} (640x480 px)")).to_be_visible()
            assert shots.locator("img").count() == 2
            # each field says the scale it was read at, beside a red cell drawn at that scale
            assert shots.get_by_text("is a 7.5 µm red cell at the scale used").count() == 2
            shots.screenshot(path=str(ART / "fields_drawn.png"))
            appdriver.open_cell_view(page)
            # a whole cell of a field: offered in the cell view (unless the gate refused it, then in the rejected
            # bin, which the cell view also offers) with its crop and heatmap
            assert appdriver.show_heatmap(page, "BloodImage_00193.jpg #1") is not None
            page.screenshot(path=str(ART / "fields_cell_view.png"), full_page=True)
            # a third field of the same smear joins the open case (a 500-cell count is counted over several uploads)
            add = page.get_by_test_id("stExpander").filter(has_text="Add more smear fields")
            add.get_by_text("Add more smear fields or crops to this case").click()
            add.locator('input[type="file"]').set_input_files([str(BCCD / "BloodImage_00300.jpg")])
            button = add.get_by_role("button", name="Add to this case")
            expect(button).to_be_enabled()
            appdriver.wait_idle(page)
            button.click()
            expect(page.get_by_text("in 3 field image(s)")).to_be_visible()
            appdriver.wait_classified(page)
            shots = page.get_by_test_id("stExpander").filter(has_text="Smear fields (3)")
            expect(shots.get_by_text("BloodImage_00300.jpg (640x480 px)")).to_be_visible()
            page.screenshot(path=str(ART / "fields_added.png"), full_page=True)
            expect(page.get_by_text("For research use only. Not for use in diagnostic procedures.").first) \
                .to_be_visible()
        finally:
            browser.close()


def _add_field(page, path) -> None:
    """Open "Add more smear fields" on the Classify page and choose ``path`` (the upload's rerun redraws the page)."""
    from playwright.sync_api import expect

    add = page.get_by_test_id("stExpander").filter(has_text="Add more smear fields")
    add.get_by_text("Add more smear fields or crops to this case").click()
    add.locator('input[type="file"]').set_input_files([str(path)])
    expect(add.get_by_role("button", name="Add to this case")).to_be_enabled()
    appdriver.wait_idle(page)


def test_two_users_add_fields_to_one_case_and_the_stale_screen_adds_nothing(server, tmp_path):
    """A and B both have case E2E-ADD open on Classify. B chooses a field to add; A adds another field first. B's
    click is refused with both cell counts and nothing is added; the case holds A's field only once."""
    from playwright.sync_api import expect, sync_playwright

    from bmcore.cases import CaseStore

    ART.mkdir(parents=True, exist_ok=True)
    store = CaseStore(f"sqlite:///{tmp_path / 'e2e.db'}")  # the server's database (fixture: same tmp_path)
    with sync_playwright() as pw:
        browser = appdriver.launch(pw)
        try:
            a = appdriver.new_page(browser, TIMEOUT_S)
            appdriver.open_classify(a, server.url, "E2E-ADD")
            appdriver.upload(a, [BCCD / FIELDS[0]])
            appdriver.classify(a, "E2E-ADD")
            cid = store.case_id("E2E-ADD")
            n0 = len(store.get_case(cid).cells)
            b = appdriver.new_page(browser, TIMEOUT_S)
            appdriver.open_case(b, server.url, "E2E-ADD", user="path")
            b.get_by_role("link", name="Classify").first.click()
            appdriver.wait_idle(b)
            _add_field(b, BCCD / "BloodImage_00300.jpg")  # B's screen: n0 cells
            _add_field(a, BCCD / FIELDS[1])
            a.get_by_role("button", name="Add to this case").click()
            expect(a.get_by_text("in 2 field image(s)")).to_be_visible()
            appdriver.wait_classified(a)
            n1 = len(store.get_case(cid).cells)
            assert n1 > n0
            b.get_by_role("button", name="Add to this case").click()
            expect(b.get_by_text(f"now has {n1} cells, not the {n0} your page showed")).to_be_visible()
            b.screenshot(path=str(ART / "fields_add_stale_refused.png"), full_page=True)
            assert len(store.get_case(cid).cells) == n1
            assert sorted(f["name"] for f in store.field_images(cid)) == sorted(FIELDS)
        finally:
            browser.close()
