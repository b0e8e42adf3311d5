"""Review integrity in a real browser: two reviewers on one case, ten actions in a row, and the background job.

Debian's chromium driven by Playwright against `streamlit run app.py` (bench/appdriver.py). Skipped where
chromium or playwright is missing, unless BM_REQUIRE_E2E=1 (CI sets it), then it fails. Screenshots go to
test-artifacts/e2e/.
"""

import os
import re
import shutil
import signal
import time
from pathlib import Path


from bench import appdriver
from bmcore import caserules
from bmcore.cases import CaseStore
from tests.conftest import REPO, need_browser

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 90
PICKER = "Cell (flagged and uncertain first, then unreviewed)"


def _copy(files, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return sorted(folder.iterdir())


def _cell_no(picker_text: str) -> int:
    return int(re.match(r"#(\d+) ", picker_text)[1])


def test_two_reviewers_stale_screen_and_ten_actions_in_a_row(dev_root, tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    files = _copy([f for c in ("BLA", "LYT", "MON", "NGS", "EOS", "PMO") for f in sorted((dev_root / c).glob("*.jpg"))[:3]],
                  tmp_path / "up")
    db = tmp_path / "two.db"
    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        a = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_classify(a, srv.url, "TWO-1")
        appdriver.upload(a, files)
        appdriver.classify(a, "TWO-1")
        store = CaseStore(f"sqlite:///{db}")
        cid = store.case_id("TWO-1")
        by_no = {c.position + 1: c for c in store.get_case(cid).cells}

        a.get_by_role("link", name="Review").first.click()  # reviewer A: the technologist who classified
        appdriver.wait_idle(a)
        appdriver.review_mode(a, "One cell")
        b = appdriver.new_page(browser, TIMEOUT_S)  # reviewer B: another browser context, another account
        appdriver.open_case(b, srv.url, "TWO-1", user="path")
        b.get_by_role("link", name="Review").first.click()
        appdriver.settle(b)
        appdriver.review_mode(b, "One cell")
        first = appdriver.selectbox_text(a, PICKER)
        assert appdriver.selectbox_text(b, PICKER) == first
        cell = by_no[_cell_no(first)]

        # A relabels the cell; B, whose screen still shows the old state, relabels it and then confirms it
        appdriver.relabel_then_stale(a, b, cell.position + 1, "PMO", "MON", "tech")
        assert appdriver.selectbox_text(b, PICKER) == first, "a refused save stays on the cell, its text unchanged"
        b.screenshot(path=str(ART / "review_conflict_save.png"), full_page=True)
        b.get_by_role("button", name="Confirm model's label").click()
        appdriver.settle(b)
        expect(b.get_by_text(re.compile(r"Not saved: .*changed by tech"))).to_be_visible()
        assert appdriver.selectbox_text(b, PICKER).startswith(f"#{cell.position + 1} "), "B still sees that cell"
        got = next(c for c in store.get_case(cid).cells if c.id == cell.id)
        assert (got.final_label, got.reviewed_by) == ("PMO", "tech"), "A's label stands"

        # ten actions in a row by A: each lands on the cell the picker named, and the picker then names the next
        acted = [cell.position + 1]
        for step in range(10):
            shown = appdriver.selectbox_text(a, PICKER)
            no = _cell_no(shown)
            assert no not in acted, f"step {step}: the picker shows #{no} again"
            if step % 3 == 1:
                appdriver.choose(a, "Label", "LYT")
                assert appdriver.selectbox_text(a, PICKER) == shown, "choosing a label never moves the picker"
                a.get_by_role("button", name="Save label").click()
                expect(a.get_by_text(f"#{no} set to LYT")).to_be_visible()
            else:
                a.get_by_role("button", name="Confirm model's label").click()
                expect(a.get_by_text(f"#{no} confirmed as")).to_be_visible()
            appdriver.wait_idle(a)
            acted.append(no)
            ev = [e for e in store.audit(cid) if e["action"] in ("confirm", "reclassify")]
            assert [e["cell"] for e in ev] == [by_no[n].name for n in acted], f"step {step}: the audit"
            assert [e["who"] for e in ev] == ["tech"] * len(acted)
            assert {e["user_id"] for e in ev} == {store.list_users()[[u["username"] for u in store.list_users()]
                                                                      .index("tech")]["id"]}
        a.screenshot(path=str(ART / "review_ten_in_a_row.png"), full_page=True)
        browser.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log and "Uncaught" not in log, log[-2000:]


def _classified_positions(store: CaseStore, cid: int) -> list[int]:
    """Every position (1-based) that a 'classified' audit event names, repeats kept."""
    out = []
    for e in store.audit(cid):
        if e["action"] != "classified":
            continue
        for a, b in re.findall(r"#(\d+)(?:-(\d+))?", e["note"].split(";")[0]):
            out += list(range(int(a), int(b or a) + 1))
    return out


def test_background_job_survives_widgets_reload_and_a_killed_server(dev_root, tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    pool = sorted(dev_root.rglob("*.jpg"))
    files = _copy(pool[::len(pool) // 300][:300], tmp_path / "up")
    assert len(files) == 300
    db = tmp_path / "jobs.db"
    store = CaseStore(f"sqlite:///{db}")
    with sync_playwright() as pw:
        browser = appdriver.launch(pw)
        with appdriver.app_server(db, tmp_path / "server1.log") as srv:
            page = appdriver.new_page(browser, 300)
            appdriver.open_classify(page, srv.url, "JOB-1")
            appdriver.upload(page, files)
            t0 = time.perf_counter()
            page.get_by_role("button", name="Classify", exact=True).click()
            expect(page.get_by_text("Case JOB-1", exact=True)).to_be_visible()
            # the user goes on working while it classifies: another tab, another page, a reload
            page.get_by_role("tab", name="Gallery").click()
            page.get_by_role("link", name="Differential").first.click()
            appdriver.settle(page)
            page.reload()  # a new session: the app asks for the password again, then opens the same page and case
            appdriver.reload_signed_in(page, "tech")
            expect(page.get_by_text(re.compile("Case \\*?\\*?JOB-1"))).to_be_visible()  # the address kept the case
            page.get_by_role("link", name="Classify").first.click()
            appdriver.wait_classified(page)
            seconds = time.perf_counter() - t0
            cid = store.case_id("JOB-1")
            case = store.get_case(cid)
            assert len(case.cells) == 300 and not caserules.summary(case).pending
            assert sorted(_classified_positions(store, cid)) == list(range(1, 301)), "each cell classified once"
            assert store.latest_job(cid)["status"] == "done"
            page.screenshot(path=str(ART / "job_done.png"), full_page=True)

            # a second case; the server is killed in the middle of its job
            appdriver.open_classify(page, srv.url, "JOB-2")
            appdriver.upload(page, files)
            page.get_by_role("button", name="Classify", exact=True).click()
            deadline = time.monotonic() + 120
            while True:
                cid2 = store.case_id("JOB-2")
                job = store.latest_job(cid2) if cid2 else None
                if job and 0 < job["done"] < 300:
                    break
                assert time.monotonic() < deadline and not (job and job["done"] >= 300), "no moment to kill"
                time.sleep(0.05)
            os.killpg(srv.proc.pid, signal.SIGKILL)
            srv.proc.wait(10)
        done_before = store.latest_job(cid2)["done"]
        with appdriver.app_server(db, tmp_path / "server2.log") as srv:
            page = appdriver.new_page(browser, 300)
            appdriver.open_case(page, srv.url, "JOB-2")
            page.get_by_role("link", name="Classify").first.click()
            appdriver.settle(page)
            expect(page.get_by_text("Partial case:")).to_be_visible()
            appdriver.wait_idle(page)
            page.screenshot(path=str(ART / "job_partial.png"), full_page=True)
            jobs = store.latest_job(cid2)
            assert jobs["status"] == "interrupted" and jobs["done"] == done_before
            pending = caserules.summary(store.get_case(cid2)).pending
            assert pending == 300 - done_before > 0
            # the case lists say how far it got and that it stopped, not "open, N cells"
            listed = next(c for c in store.list_cases() if c["case"] == "JOB-2")
            assert listed["short"] == f"open, {done_before} of 300 classified, interrupted", listed
            assert f"classification interrupted (the server stopped): {done_before} of 300 files" in listed["status"]
            # resume: the same files again; only the missing cells are classified
            appdriver.resume_with_same_files(page, files)
            expect(page.get_by_text("Partial case:")).to_have_count(0)
            case = store.get_case(cid2)
            assert len(case.cells) == 300 and not caserules.summary(case).pending
            assert sorted(_classified_positions(store, cid2)) == list(range(1, 301)), "nothing classified twice"
            assert store.latest_job(cid2)["status"] == "done" and store.latest_job(cid2)["total"] == pending
            assert store.integrity_ok()
        browser.close()
    (ART / "job_timing.txt").write_text(f"300 crops, upload to complete table with reload in between: {seconds:.1f} s\n")


def test_cell_view_shows_a_colleagues_review_of_the_cell_it_opens(dev_root, tmp_path):
    """A has the Cell view open (a fragment that reruns alone); B relabels a cell; A opens that cell: A's picker names
    it and the view says B reviewed it (read from the store, not from the page A drew before)."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    files = _copy([f for c in ("BLA", "LYT", "MON", "EOS") for f in sorted((dev_root / c).glob("*.jpg"))[:3]],
                  tmp_path / "up")
    with appdriver.app_server(tmp_path / "cv.db", tmp_path / "server.log") as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        a = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_classify(a, srv.url, "CV-1")
        appdriver.upload(a, files)
        expect(a.get_by_test_id("stFileChip")).to_have_count(len(files))
        appdriver.classify(a, "CV-1")
        # the upload is in the case: the uploader starts empty again (appkit.empty_uploader), Classify waits for files
        expect(a.get_by_test_id("stFileChip")).to_have_count(0)
        expect(a.get_by_role("button", name="Classify", exact=True)).to_be_disabled()
        # the case names its model by bundle name and the start of its weights' digest (names can repeat)
        from bmcore.bundle import load_bundle
        from bmcore.cli import default_bundle
        from bmcore.predictor import Predictor

        sha = load_bundle(default_bundle()).sha256[:8]
        setting = re.escape(Predictor(default_bundle(), gate=False).setting)  # "ONNX fp32, no TTA": the bundle's
        expect(a.get_by_text(re.compile(rf"Classified by .*\(weights {sha}\).*\({setting}\)"))).to_be_visible()
        a.get_by_role("tab", name="Cell view").click()
        appdriver.settle(a)
        b = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_case(b, srv.url, "CV-1", user="path")
        b.get_by_role("link", name="Review").first.click()
        appdriver.settle(b)
        appdriver.review_mode(b, "One cell")
        no = _cell_no(appdriver.selectbox_text(b, PICKER))
        appdriver.choose(b, "Label", "MON")
        b.get_by_role("button", name="Save label").click()
        expect(b.get_by_text(f"#{no} set to MON")).to_be_visible()
        appdriver.choose(a, "Cell", f"#{no} ")
        assert _cell_no(appdriver.selectbox_text(a, "Cell")) == no
        expect(a.get_by_text(re.compile(r"^Reviewed: MON \(Monocyte\) by path"))).to_be_visible()
        a.screenshot(path=str(ART / "cell_view_colleague_review.png"), full_page=True)
        browser.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-2000:]


def test_a_stale_details_form_in_the_browser_is_refused_and_keeps_what_was_typed(dev_root, tmp_path):
    """Export page, two browser contexts on one case with no details yet: B saves an accession number; A, whose
    form was drawn before, types another and saves. A is told B changed it (nothing saved, the section stays open),
    A's typed text is still in A's box, and "Load the current details" fills A's form with B's. Before, Streamlit
    put B's value in A's box and the page said "Saved" (found by a second reviewer driving two browsers)."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    acc = "Specimen / accession no."
    crops = [f for c in ("LYT", "MON") for f in sorted((dev_root / c).glob("*.jpg"))[:2]]
    db = tmp_path / "details.db"
    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        cid = appdriver.classified_case(db, "DET-1", crops)
        store = CaseStore(f"sqlite:///{db}")
        browser = appdriver.launch(pw)
        pages = []
        for user in ("tech", "path"):
            p = appdriver.new_page(browser, TIMEOUT_S)
            appdriver.open_case(p, srv.url, "DET-1", user=user)
            p.get_by_role("link", name="Export").first.click()
            appdriver.settle(p)
            expect(p.get_by_role("textbox", name=acc)).to_be_visible()  # open: no details yet
            pages.append(p)
        a, b = pages
        b.get_by_role("textbox", name=acc).fill("ACC-B-999")
        b.get_by_role("button", name="Save details").click()
        expect(b.get_by_text("Saved. The reports below include them.")).to_be_visible()
        assert store.get_case(cid).specimen == {"specimen_id": "ACC-B-999"}
        a.get_by_role("textbox", name=acc).fill("ACC-A-777")
        a.get_by_role("button", name="Save details").click()
        appdriver.settle(a)
        expect(a.get_by_text(re.compile(r"^Not saved: path changed the specimen details after your page showed it: "
                                        r"Specimen / accession no\. now 'ACC-B-999' \(your page showed ''\)"))).to_be_visible()
        expect(a.get_by_text("Saved. The reports below include them.")).to_have_count(0)
        expect(a.get_by_role("textbox", name=acc)).to_have_value("ACC-A-777")
        a.screenshot(path=str(ART / "details_stale_refused.png"), full_page=True)
        assert store.get_case(cid).specimen == {"specimen_id": "ACC-B-999"}, "nothing of A's was saved"
        a.get_by_role("button", name=re.compile(r"^Load the current details")).click()
        appdriver.settle(a)
        expect(a.get_by_role("textbox", name=acc)).to_have_value("ACC-B-999")
        browser.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-2000:]


def test_a_sign_off_refused_for_a_colleagues_relabel_is_acknowledged_then_signed(dev_root, tmp_path):
    """Two pathologists in two browser contexts. A confirms every cell one at a time; B then relabels one. A's
    sign-off is refused, naming that cell and B's label; A presses "I have checked the 1 changed cell(s)" and signs
    with the password: the signed case holds B's label. Before, the refusal said "reload" and nothing cleared it."""
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    crops = [f for c in ("LYT", "MON", "EOS") for f in sorted((dev_root / c).glob("*.jpg"))[:1]]
    db = tmp_path / "ack.db"
    with appdriver.app_server(db, tmp_path / "server.log") as srv, sync_playwright() as pw:
        cid = appdriver.classified_case(db, "ACK-1", crops)
        store = CaseStore(f"sqlite:///{db}")
        browser = appdriver.launch(pw)
        a = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_case(a, srv.url, "ACK-1", user="path")
        a.get_by_role("link", name="Review").first.click()
        appdriver.settle(a)
        appdriver.review_mode(a, "One cell")
        first = appdriver.selectbox_text(a, PICKER).split(" — ")[0]
        for _ in crops:  # each cell opened on A's screen, then confirmed
            a.get_by_role("button", name="Confirm model's label").click()
            appdriver.settle(a)
        assert all(c.final_label for c in store.get_case(cid).cells)
        b = appdriver.new_page(browser, TIMEOUT_S)
        appdriver.open_case(b, srv.url, "ACK-1", user="path2")
        b.get_by_role("link", name="Review").first.click()
        appdriver.settle(b)
        appdriver.review_mode(b, "One cell")
        appdriver.choose(b, PICKER, first)
        new = "MON" if appdriver.selectbox_text(b, "Label").startswith("PMO") else "PMO"
        appdriver.choose(b, "Label", new)
        b.get_by_role("button", name="Save label").click()
        expect(b.get_by_text(f"{first.split(' ')[0]} set to {new}")).to_be_visible()

        appdriver.review_mode(a, "Gallery by class")
        appdriver.gallery_dismiss_rejected(a)  # any image the gate would not judge: looked at, not a cell

        def sign():
            appdriver.sign_off(a, appdriver.USERS["path"][1])

        sign()
        expect(a.get_by_text(re.compile(rf"^Not signed: 1 cell\(s\) changed since your page showed the case: "
                                        rf"{re.escape(first)} \(now {new} by path2\)"))).to_be_visible()
        assert store.get_case(cid).status != "signed"
        a.screenshot(path=str(ART / "sign_off_refused_for_a_colleague.png"), full_page=True)
        a.get_by_role("button", name="I have checked the 1 changed cell(s)").click()
        appdriver.settle(a)
        expect(a.get_by_text("1 changed cell(s) taken as checked")).to_be_visible()
        sign()
        expect(a.get_by_text(re.compile(r"^Case ACK-1 signed off by"))).to_be_visible()
        signed = store.get_case(cid)
        assert signed.status == "signed" and signed.signed_by == "path"
        assert next(c for c in signed.cells if f"#{c.position + 1} {c.name}" == first).final_label == new
        browser.close()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, log[-2000:]
