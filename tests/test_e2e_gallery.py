"""The review gallery in a real browser: a scripted reviewer reviews a 100-cell case class by class (moves 10 cells,
confirms every class page as drawn), and a second reviewer confirms a page that the first changed after it was drawn.

Debian's chromium driven by Playwright against `streamlit run app.py` (bench/appdriver.py). The case is made of 100
real crops classified in-process by the bundled default model. Skipped where chromium or playwright is missing,
unless BM_REQUIRE_E2E=1 (CI), then it fails.
"""

import re
from collections import Counter

from bench import appdriver
from bmcore import caserules
from bmcore.cases import CaseStore
from tests.conftest import REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 90


def test_gallery_review_of_a_100_cell_case_and_a_stale_page(dev_root, tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    pool = sorted(dev_root.rglob("*.jpg"))
    crops = pool[::len(pool) // 100][:100]
    db = tmp_path / "gallery.db"
    appdriver.add_users(db)
    cid = appdriver.classified_case(db, "GAL-100", crops)
    store = CaseStore(f"sqlite:///{db}")
    before = {c.id: c for c in store.get_case(cid).cells}
    ok = [c for c in before.values() if caserules.status(c) == caserules.OK]
    # the 10 cells to move: those the model got wrong (the file name says the class), then others, to another class
    wrong = [c for c in ok if c.name[:3] != c.predicted]
    other = [c for c in ok if c not in wrong]
    moves = {c.id: c.name[:3] for c in wrong[:10]}
    for c in other[: 10 - len(moves)]:
        moves[c.id] = "LYT" if c.predicted != "LYT" else "MON"
    assert len(moves) == 10

    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        a = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_case(a, srv.url, "GAL-100", user="tech")
        a.get_by_role("link", name="Review").first.click()
        appdriver.settle(a)
        clicks = 0

        # reviewer B draws the page of the class that holds the first move; A then moves that cell; B confirms
        first = before[next(iter(moves))]
        b = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_case(b, srv.url, "GAL-100", user="path")
        b.get_by_role("link", name="Review").first.click()
        appdriver.settle(b)
        appdriver.gallery_open(b, first.predicted)
        drawn_by_b = {c.id for c in store.get_case(cid).cells if caserules.gallery_group(c) == first.predicted}

        # A: the 10 moves, class by class (open the class, tick its cells, one click per target class)
        by_group = {}
        for i, target in moves.items():
            by_group.setdefault(before[i].predicted, {}).setdefault(target, []).append(before[i])
        for group, targets in by_group.items():
            appdriver.gallery_open(a, group)
            clicks += 1
            for target, cells in targets.items():
                for c in cells:
                    appdriver.gallery_tick(a, c.position + 1)
                    clicks += 1
                if group == next(iter(by_group)):  # the first class's moves by key (1-9), the others by click
                    appdriver.gallery_move_by_key(a, target)
                else:
                    appdriver.gallery_move(a, target)
                clicks += 1
                expect(a.get_by_text(f"{len(cells)} cell(s) moved to {target}")).to_be_visible()
        a.screenshot(path=str(ART / "gallery_after_moves.png"), full_page=True)

        b.get_by_role("button", name=re.compile("^Confirm this page")).click()
        appdriver.settle(b)
        b.screenshot(path=str(ART / "gallery_stale_page.png"), full_page=True)
        said = " ".join(b.get_by_test_id("stAlert").all_inner_texts())
        changed_under_b = [before[i] for i in moves if before[i].predicted == first.predicted]
        assert f"Not changed: {len(changed_under_b)} (" in said, said
        for c in changed_under_b:
            assert f"#{c.position + 1} {c.name}: changed by tech since your page showed it (now {moves[c.id]})" in said
        after_b = {c.id: c for c in store.get_case(cid).cells}
        confirmed_by_b = {i for i, c in after_b.items() if c.reviewed_by == "path"}
        assert confirmed_by_b == drawn_by_b - {c.id for c in changed_under_b}, "exactly the unchanged cells B drew"
        assert all(after_b[c.id].final_label == moves[c.id] and after_b[c.id].reviewed_by == "tech"
                   for c in changed_under_b), "A's moves stand"

        # A confirms every class page as drawn
        times = appdriver.gallery_confirm_everything(a)
        clicks += 2 * len(times)
        expect(a.get_by_role("radio", name=appdriver.GALLERY_TODO)).to_have_count(0)
        # the images the gate would not judge: looked at and dismissed (a page of ticks, one action), so it can sign
        refused = sum(caserules.rejected_open(c) for c in store.get_case(cid).cells)
        assert appdriver.gallery_dismiss_rejected(a) == refused
        clicks += refused + 2 if refused else 0
        a.screenshot(path=str(ART / "gallery_done.png"), full_page=True)
        browser.close()

    # the store holds exactly the 10 moves and one confirmation of every other classified cell, nothing else
    final = {c.id: c for c in store.get_case(cid).cells}
    for i, c in final.items():
        if i in moves:
            assert c.final_label == moves[i], c.name
        elif caserules.status(c) == caserules.OK:
            assert c.final_label == before[i].predicted, c.name
        elif caserules.status(c) == caserules.REJECTED:
            assert c.final_label == "DIS", c.name
        else:
            assert c.final_label is None, c.name
    audit = store.audit(cid)
    per_cell = Counter((e["cell"], e["action"]) for e in audit if e["action"] in ("confirm", "reclassify"))
    assert sorted(per_cell.values()) == [1] * len(per_cell), "each cell reviewed once"
    assert Counter(a for _, a in per_cell) == {"reclassify": 10, "confirm": len(ok) - 10}
    assert {e["action"] for e in audit} == {"create", "confirm", "reclassify"} | ({"dismiss"} if refused else set())
    assert len({e["action_id"] for e in audit if e["action"] == "reclassify"}) == sum(map(len, by_group.values()))
    assert caserules.sign_off_blockers(store.get_case(cid)) == []
    (ART / "gallery_interactions.txt").write_text(
        f"100-cell case ({len(ok)} classified, {len(before) - len(ok)} rejected/unreadable): 10 moves + every "
        f"class confirmed in {clicks} clicks; the one-cell page needs at least {len(ok) - 10 + 3 * 10} "
        "(one Confirm per cell, label + type + Save per move)\n")
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "Uncaught" not in log, log[-2000:]
