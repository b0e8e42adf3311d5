"""Teaching mode in a real browser (Debian's chromium driven by Playwright): an instructor builds a 20-cell quiz from
a signed case of real crops on the Teaching page; two students take it at the same time in two browser contexts,
with the gallery's tick-and-key interface; a stale second tab of one of them is refused; their grades and Cohen's
kappa on the page are checked against a hand computation, and the strict and tolerant scores differ exactly where a
neighbouring maturation stage was answered. A student's navigation has no case page, a case page's address shows
no case, and the store refuses a student's case reads and another learner's results. Screenshots in
test-artifacts/e2e/quiz_*.png. Skipped where chromium or playwright is missing, unless BM_REQUIRE_E2E=1.
"""

import re

import pytest

from bench import appdriver
from bmcore.cases import CaseStore
from bmcore.db import PermissionDenied
from bmcore.quiz import NO_ANSWER
from tests.conftest import REPO, need_browser
from tests.labstore import signed_case, val_crops
from tests.test_quiz import _hand_kappa

ART = REPO / "test-artifacts" / "e2e"
TIMEOUT_S = 120
USERS = {**appdriver.USERS, "ann": ("student", "ann-password-1"), "bob": ("student", "bob-password-1")}


def _tick(page, n: int) -> None:
    page.get_by_role("button", name=re.compile(rf"^#{n} · ")).click()


def _answer(page, numbers: list[int], code: str, classes: list[str]) -> None:
    """Tick the cells numbered ``numbers`` (as the learner sees them) and answer them with ``code``: key 1-9 for the
    first nine classes offered, as a learner at the keyboard would."""
    from playwright.sync_api import expect

    for n in numbers:
        _tick(page, n)
    page.keyboard.press(str(classes.index(code) + 1))
    expect(page.get_by_text(re.compile(rf"{len(numbers)} cell\(s\) answered {code}"))).to_be_visible()
    appdriver.wait_idle(page)


def test_an_instructor_builds_a_quiz_and_two_students_take_it(dev_root, tmp_path):
    need_browser()
    from playwright.sync_api import expect, sync_playwright

    ART.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "cases.db"
    appdriver.add_users(db, USERS)
    store = CaseStore(f"sqlite:///{db}")
    crops = val_crops(dev_root, 3)[:20]
    case_id = signed_case(store, "LAB-7", crops, by_base=True)
    signed_case(store, "OPEN-2", val_crops(dev_root, 4)[-2:], sign=False)  # never in a quiz
    with appdriver.app_server(db, tmp_path / "server.log", users=USERS) as srv, sync_playwright() as pw:
        browser = appdriver.launch(pw)
        teacher = appdriver.new_page(browser, TIMEOUT_S)
        teacher.goto(srv.url)
        appdriver.sign_in(teacher, "path")
        teacher.get_by_role("link", name="Teaching").first.click()
        appdriver.wait_idle(teacher)
        expect(teacher.get_by_text("20 cells of 1 signed case(s) can be used")).to_be_visible()
        teacher.get_by_role("textbox", name="Title").fill("Marrow week 1")
        teacher.get_by_role("button", name="Make the quiz").click()
        expect(teacher.get_by_text("Quiz Marrow week 1 made (20 cells) and published.")).to_be_visible()
        appdriver.wait_idle(teacher)
        teacher.screenshot(path=str(ART / "quiz_built.png"), full_page=True)

        path_actor = store.authenticate("path", USERS["path"][1])
        (quiz,) = store.list_quizzes(path_actor)
        assert quiz["cells"] == 20 and "NGB" in quiz["classes"]  # NGS was drawn: its neighbouring stage is offered
        classes = quiz["classes"]
        key = {i["position"]: i["expert"] for i in store.quiz_items(path_actor, quiz["id"])}
        assert sorted(key.values()) == sorted(label for label, _ in crops)

        pages, plans = {}, {}
        for who in ("ann", "bob"):
            p = appdriver.new_page(browser, TIMEOUT_S)
            p.goto(srv.url)
            appdriver.sign_in(p, who, USERS[who][1])
            expect(p.get_by_role("heading", name="Quizzes")).to_be_visible()  # a student's first page
            p.get_by_role("button", name=re.compile("Start the quiz")).click()
            expect(p.get_by_text("0 of 20 answered")).to_be_visible()
            appdriver.wait_idle(p)
            pages[who] = p
        for who, p in pages.items():
            me = store.authenticate(who, USERS[who][1])
            order = [i["position"] for i in store.learner_items(me, quiz["id"])]  # what #1..#20 are for this learner
            truth = {n + 1: key[pos] for n, pos in enumerate(order)}
            plan = dict(truth)
            if who == "ann":  # every segmented neutrophil called a band (a neighbouring stage); one blast a lymphocyte
                for n, k in truth.items():
                    if k == "NGS":
                        plan[n] = "NGB"
                plan[next(n for n, k in truth.items() if k == "BLA")] = "LYT"
            else:  # bob: every eosinophil called a monocyte; one cell left unanswered
                for n, k in truth.items():
                    if k == "EOS":
                        plan[n] = "MON"
                plan[max(truth)] = None
            plans[who] = (truth, plan, me)
        # the two students answer class by class, in turns, at the same time on one server
        for code in classes:
            for who, p in pages.items():
                numbers = [n for n, a in plans[who][1].items() if a == code]
                if numbers:
                    _answer(p, numbers, code, classes)

        # a second tab of ann's, drawn now; ann changes an answer in the first; the second tab's save is refused
        ann2 = appdriver.new_page(browser, TIMEOUT_S)
        ann2.goto(srv.url)
        appdriver.sign_in(ann2, "ann", USERS["ann"][1])
        expect(ann2.get_by_text("20 of 20 answered")).to_be_visible()
        truth_a, plan_a, _ = plans["ann"]
        first_lyt = next(n for n, k in truth_a.items() if k == "LYT" and plan_a[n] == "LYT")
        _answer(pages["ann"], [first_lyt], "MON", classes)  # ann changes her mind in the first tab, and back
        _answer(pages["ann"], [first_lyt], "LYT", classes)
        _tick(ann2, first_lyt)
        ann2.keyboard.press(str(classes.index("MON") + 1))
        expect(ann2.get_by_text(re.compile("Not saved: your answers were changed in another tab"))).to_be_visible()
        ann2.screenshot(path=str(ART / "quiz_stale_tab.png"), full_page=True)

        for who, p in pages.items():
            p.reload()
            appdriver.reload_signed_in(p, who, USERS[who][1])
            truth, plan, me = plans[who]
            missing = sum(a is None for a in plan.values())
            if missing:
                p.get_by_text(f"I know {missing} cell(s) are not answered").click()
                appdriver.wait_idle(p)
            p.get_by_role("button", name="Submit my answers").click()
            expect(p.get_by_text("Submitted. Your answers are graded below")).to_be_visible()
            appdriver.wait_idle(p)
            expect(p.get_by_test_id("stMetricLabel").filter(has_text="Strict score")).to_be_visible()
            expert = [truth[n] for n in sorted(truth)]
            given = [plan[n] or NO_ANSWER for n in sorted(truth)]
            strict = sum(a == e for a, e in zip(given, expert))
            tolerant = strict + sum(e == "NGS" and a == "NGB" for a, e in zip(given, expert))
            metrics = {m.get_by_test_id("stMetricLabel").inner_text().strip():
                       m.get_by_test_id("stMetricValue").inner_text().strip()
                       for m in p.get_by_test_id("stMetric").all()}
            assert metrics["Strict score"] == f"{strict} of 20 ({strict / 20:.0%})", (who, metrics)
            assert metrics["Tolerant score"] == f"{tolerant} of 20 ({tolerant / 20:.0%})", (who, metrics)
            assert metrics["Cohen's kappa"] == f"{_hand_kappa(expert, given):.2f}", (who, metrics)
            if who == "ann":
                assert tolerant > strict  # the bands for segmented neutrophils: tolerant forgives them, strict not
            else:
                assert tolerant == strict  # eosinophil/monocyte is no neighbouring stage
            wrong = p.get_by_text(re.compile(r"answer\(s\) differ from the signed label"))
            expect(wrong).to_be_visible()
            # the heatmap of the model that classified the case, for the signed class
            expect(p.get_by_text(re.compile(r"^Grad-CAM for [A-Z]{3} \(")).first).to_be_visible()
            p.screenshot(path=str(ART / f"quiz_result_{who}.png"), full_page=True)
            wrong.scroll_into_view_if_needed()
            p.screenshot(path=str(ART / f"quiz_wrong_{who}.png"))
            # what a student's navigation holds, and what a case page's address shows them
            assert p.get_by_role("link", name="Review").count() == 0
            assert p.get_by_role("link", name="Classify").count() == 0
            p.goto(srv.url + "/review")
            appdriver.reload_signed_in(p, who, USERS[who][1])
            expect(p.get_by_role("heading", name="Quizzes")).to_be_visible()
            assert p.get_by_text("LAB-7").count() == 0
        # role checks in the store, whatever a page shows
        bob = plans["bob"][2]
        with pytest.raises(PermissionDenied):
            store.get_case(case_id, bob)
        with pytest.raises(PermissionDenied):
            store.list_cases(bob)
        with pytest.raises(PermissionDenied):
            store.quiz_result(bob, quiz["id"], plans["ann"][2].user_id)

        # the instructor's report: both learners, and the cells most of them got wrong
        teacher.reload()
        appdriver.reload_signed_in(teacher, "path")
        teacher.get_by_role("tab", name="Quizzes and results").click()
        expect(teacher.get_by_text("2 learner(s) submitted.")).to_be_visible()
        expect(teacher.get_by_text("The cells most of the class got wrong")).to_be_visible()
        appdriver.wait_idle(teacher)
        expect(teacher.get_by_role("tabpanel", name="Quizzes and results").get_by_test_id("stImage").first) \
            .to_be_visible()
        teacher.wait_for_timeout(1000)  # the data grids draw on a canvas a moment after the run ends
        teacher.screenshot(path=str(ART / "quiz_report.png"), full_page=True)
        events = [(e["who"], e["action"]) for e in store.quiz_events(path_actor, quiz["id"])]
        assert events[:2] == [("path", "created"), ("path", "published")]
        assert sorted(events[2:]) == [("ann", "started"), ("ann", "submitted"), ("bob", "started"),
                                      ("bob", "submitted")]
