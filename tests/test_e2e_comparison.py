"""End to end in a real browser: an instructor opens the Model comparison page.

The page opens on the committed GPU study (complete, the longest budget) with the deployed model in the detail
view; it warns with the fewest epochs a run really got; a model picked in the detail view does not follow the
instructor into another study, which opens on the deployed model again. Screenshots go to test-artifacts/e2e/.
Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1 (CI sets it), then it fails.
"""

import json

import pytest

from bench import appdriver
from tests.conftest import REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
GPU = REPO / "assets" / "comparison_gpu"


@pytest.fixture
def server(tmp_path):
    need_browser()
    with appdriver.app_server(tmp_path / "e2e.db", tmp_path / "streamlit.log") as srv:
        yield srv


def test_instructor_opens_the_gpu_study_and_another_study_reopens_on_the_deployed_model(server):
    from playwright.sync_api import expect, sync_playwright

    if not (GPU / "summary.json").is_file():
        pytest.skip("no GPU study committed")
    summary = json.loads((GPU / "summary.json").read_text())
    fewest = min(json.loads((GPU / f"{k}.json").read_text())["epochs"] for k in summary["runs"])
    ART.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, 90)
        appdriver.goto(page, server.url, "tech")
        page.get_by_role("link", name="Model comparison").first.click()
        appdriver.settle(page)
        expect(page.get_by_text("Macro-F1 by model")).to_be_visible()
        assert appdriver.selectbox_text(page, "Study") == summary["title"]
        assert appdriver.selectbox_text(page, "Model").endswith("(bundled default)")
        expect(page.get_by_text(f"{fewest} epochs (the fewest any run here got) is far too short")).to_be_visible()
        expect(page.get_by_text("For research use only. Not for use in diagnostic procedures.").first).to_be_visible()
        page.screenshot(path=str(ART / "comparison_gpu_study.png"), full_page=True)

        appdriver.choose(page, "Model", "Xception")  # a model both committed studies hold
        assert appdriver.selectbox_text(page, "Model") == "Xception"
        appdriver.choose(page, "Study", "3 epochs")
        expect(page.get_by_text("3 epochs is far too short")).to_be_visible()
        assert appdriver.selectbox_text(page, "Model").endswith("(bundled default)")
        assert page.locator('[data-testid="stException"]').count() == 0
        page.screenshot(path=str(ART / "comparison_cpu_study.png"), full_page=True)
        browser.close()
