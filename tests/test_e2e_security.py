"""Security in a real browser (Debian's chromium driven by Playwright): hostile text and the idle sign-out.

* A viewer opens a case whose id is a Markdown image of a foreign host, with hostile file names, notes, specimen
  details and display names (tests/test_hostile_text.py's case): on every page the browser asks that host for
  nothing, and the page holds no link or image to it; the case id reads as typed.
* A signed-in pathologist leaves a case on screen and does nothing: after the idle timeout the server's own timer
  signs the session out and the page shows the sign-in form, no case data.

Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1 (CI sets it), then it fails.
"""

import re
import time

from bench import appdriver
from bmcore.cases import CaseStore
from tests.conftest import REPO, need_browser
from tests.test_hostile_text import CASE_ID, HOST, _hostile_case

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 90
PAGES = ("Classify", "Hairy cells", "Differential", "Review", "Export")


def test_a_hostile_case_fetches_nothing_and_links_nowhere(tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "hostile.db"
    appdriver.add_users(db)
    _hostile_case(CaseStore(f"sqlite:///{db}"))
    asked = []
    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, TIMEOUT_S)
        page.on("request", lambda r: asked.append(r.url))
        appdriver.open_case(page, srv.url, "=![]", user="viewer")
        for name in PAGES:
            page.get_by_role("link", name=name).first.click()
            appdriver.settle(page)
            page.wait_for_timeout(500)  # images and frames of the page load
            for frame in page.frames:  # the Export page's report preview is an iframe
                bad = frame.locator(f"a[href*='{HOST}'], img[src*='{HOST}']")
                assert bad.count() == 0, (name, frame.url, [bad.nth(i).evaluate("e => e.parentElement.outerHTML")
                                                            for i in range(bad.count())])
            page.screenshot(path=str(ART / f"hostile_{name.lower().replace(' ', '_')}.png"), full_page=True)
        page.get_by_role("link", name="Review").first.click()
        appdriver.settle(page)
        expect(page.get_by_role("heading", name=re.compile(r"^Case =!"))).to_be_visible()
        heads = [h.replace("\u2060", "") for h in page.get_by_role("heading").all_inner_texts()]
        assert f"Case {CASE_ID}: open" in heads, heads  # read as typed (less the invisible joiner)
        browser.close()
    assert not [u for u in asked if HOST in u], [u for u in asked if HOST in u]
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-2000:]


def test_an_idle_session_is_signed_out_by_the_servers_timer(tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "idle.db"
    idle_s = 6
    with appdriver.app_server(db, tmp_path / "server.log",
                              env_extra={"BM_SESSION_IDLE_MINUTES": str(idle_s / 60)}) as srv, \
            sync_playwright() as pw:
        browser = appdriver.launch(pw)
        page = appdriver.new_page(browser, TIMEOUT_S)
        t_open = time.monotonic()  # the session's last activity is no earlier than this
        appdriver.goto(page, srv.url, "path")
        expect(page.get_by_text("Signed in as")).to_be_visible()
        t0 = time.monotonic()  # ... and, for the upper bound, no later than about this
        # nothing is clicked from here on: the server's timer alone signs the session out
        expect(page.get_by_role("button", name="Sign in", exact=True)).to_be_visible(timeout=(idle_s + 20) * 1000)
        t_out = time.monotonic()
        since_open, waited = t_out - t_open, t_out - t0
        expect(page.get_by_text(re.compile(r"You were signed out after [\d.]+ minutes without activity"))) \
            .to_be_visible()
        expect(page.get_by_text("Signed in as")).to_have_count(0)
        page.screenshot(path=str(ART / "idle_signed_out.png"), full_page=True)
        browser.close()
    # never before the idle time has passed since the page was opened (a loaded machine can take seconds to show the
    # page, so the time from the page shown is no lower bound), and not long after it
    assert since_open >= idle_s - 0.5 and waited <= idle_s + 20, (since_open, waited)
    out = [e for e in CaseStore(f"sqlite:///{db}").login_events() if e["event"] == "sign-out"]
    assert out and "idle for more than" in out[0]["detail"], out
