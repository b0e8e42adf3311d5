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
