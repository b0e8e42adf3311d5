"""Teaching quizzes (bmcore/quiz.py): built from signed cells only, taken blind, graded strict and tolerant with
Cohen's kappa checked by hand, answers frozen at submission, roles checked by the store."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from sqlalchemy import update

from bmcore.cases import CaseStore, CellInput
from bmcore.db import CaseError, ConflictError, PermissionDenied
from bmcore.quiz import NO_ANSWER, QuizAttempt, grade, tolerant_match
from tests.conftest import TEST_PASSWORD, actor, postgres_schema
from tests.labstore import signed_case, val_crops


def _hand_kappa(a: list[str], b: list[str]) -> float:
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(k) / n) * (b.count(k) / n) for k in set(a) | set(b))
    return (po - pe) / (1 - pe)


def test_grading_strict_tolerant_and_kappa_by_hand():
    expert = ["NGS", "NGS", "NGB", "MYB", "PEB", "BLA", "LYT", "LYT"]
    answer = ["NGB", "NGS", "NGB", "MMZ", "EBO", "PMO", None, "LYT"]
    g = grade(expert, answer, ["BLA", "PMO", "MYB", "MMZ", "NGB", "NGS", "PEB", "EBO", "LYT"])
    assert (g.n, g.strict, g.answered) == (8, 3, 7)
    # NGS->NGB, MYB->MMZ, PEB->EBO are neighbouring stages; BLA->PMO is not (it matters clinically); no answer is wrong
    assert g.tolerant == 6
    assert not tolerant_match("PMO", "BLA") and tolerant_match("EBO", "PEB") and not tolerant_match("NGS", "MMZ")
    given = [a or NO_ANSWER for a in answer]
    assert g.kappa == pytest.approx(_hand_kappa(expert, given))
    per = {r["class"]: r for r in g.per_class}
    assert (per["NGS"]["sensitivity"], per["NGS"]["tolerant_sensitivity"]) == (0.5, 1.0)
    assert (per["LYT"]["sensitivity"], per["BLA"]["tolerant_sensitivity"]) == (0.5, 0.0)
    # the confusion matrix: rows the signed classes, one count per cell, the unanswered one in its own column
    cm = dict(zip(g.labels, g.confusion))
    assert sum(map(sum, g.confusion)) == 8
    assert cm["LYT"][g.columns.index(NO_ANSWER)] == 1 and cm["NGS"][g.columns.index("NGB")] == 1
    assert grade(["LYT", "LYT"], ["LYT", "LYT"]).kappa is None  # one class only: chance agreement is 1, undefined


@pytest.fixture(params=["sqlite", "postgresql"])
def lab(request, dev_root, tmp_path):
    """A store (SQLite, and the PostgreSQL of BM_TEST_POSTGRES_URL where set) of signed cases of real crops."""
    if request.param == "postgresql":
        ctx = postgres_schema()
        url = ctx.__enter__()
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))
    else:
        url = f"sqlite:///{tmp_path / 'q.db'}"
    store = CaseStore(url)
    request.addfinalizer(store.engine.dispose)
    crops = val_crops(dev_root, 3)[:20]  # 20 real crops, the model's label the true one
    cid = signed_case(store, "LAB-1", crops)
    open_case = signed_case(store, "OPEN-1", val_crops(dev_root, 4)[-3:], sign=False)
    demo = signed_case(store, "DEMO-1", val_crops(dev_root, 5)[-3:], demo=True)
    # a case whose model said LYT for two monocytes, corrected by the reviewer before sign-off
    mon = [d for label, d in val_crops(dev_root, 6) if label == "MON"][-2:]
    tech, path = actor(store, "tina", "technologist"), actor(store, "drp", "pathologist")
    cells = [CellInput(f"m{i}.jpg", True, sha256=hashlib.sha256(d).hexdigest(), thumbnail=d, predicted="LYT",
                       confidence=0.9) for i, d in enumerate(mon)]
    hard = store.create_case("HARD-1", cells, actor=tech, model_classes=["LYT", "MON"])
    for c in store.get_case(hard).cells:
        store.review_cell(c.id, tech, "MON")
    store.sign_off(hard, path, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    return {"store": store, "case": cid, "open": open_case, "demo": demo, "hard": hard, "crops": crops,
            "teacher": path, "tech": tech, "ann": actor(store, "ann", "student"), "bob": actor(store, "bob", "student")}


def test_a_quiz_is_built_from_signed_cells_only_and_taken_blind(lab):
    store, teacher, ann, bob = lab["store"], lab["teacher"], lab["ann"], lab["bob"]
    pool = store.quiz_cell_pool(teacher)
    assert {c["case"] for c in pool} == {"LAB-1", "HARD-1"}  # never an unsigned or a demo case
    hard = [c for c in pool if c["case"] == "HARD-1"]
    assert all(c["model_disagreed"] and c["reviewer_changed"] for c in hard)
    assert not any(c["model_disagreed"] for c in pool if c["case"] == "LAB-1")
    with pytest.raises(PermissionDenied):
        store.quiz_cell_pool(ann)
    cells = [c["cell_id"] for c in pool if c["case"] == "LAB-1"]
    assert len(cells) == 20
    signed = sorted({c["expert"] for c in pool if c["case"] == "LAB-1"})
    with pytest.raises(CaseError, match="offer every class"):
        store.create_quiz(teacher, "Missing a class", cells, signed[1:])
    with pytest.raises(PermissionDenied):
        store.create_quiz(ann, "Mine", cells, signed)
    other = store.get_case(lab["open"]).cells[0].id
    with pytest.raises(CaseError, match="not counted cells of a signed case"):
        store.create_quiz(teacher, "With an open case", cells + [other], signed)
    qid = store.create_quiz(teacher, "Week 1", cells, signed + ["NGB"], time_limit_minutes=30)

    # a student reads no case at all, by the store's own check
    for read in (lambda: store.list_cases(ann), lambda: store.get_case(lab["case"], ann),
                 lambda: store.audit(lab["case"], ann), lambda: store.quiz_items(ann, qid)):
        with pytest.raises(PermissionDenied):
            read()
    assert [q["id"] for q in store.list_quizzes(ann)] == [qid] and "selection" not in store.list_quizzes(ann)[0]
    with pytest.raises(CaseError, match="start the quiz first"):
        store.learner_items(ann, qid)
    a = store.start_attempt(ann, qid)
    assert a["deadline"] - a["started_at"] == dt.timedelta(minutes=30)
    items = store.learner_items(ann, qid)
    assert len(items) == 20 and all(set(i) == {"number", "position", "image"} for i in items)
    assert store.start_attempt(ann, qid)["started_at"] == a["started_at"]  # the clock does not restart
    assert store.start_attempt(bob, qid)["order"] != a["order"]  # each learner sees an order of their own

    # the key is the signed label, copied: answer every cell right but two, one of them with a neighbouring stage
    key = {i["position"]: i["expert"] for i in store.quiz_items(teacher, qid)}
    ngs = next(p for p, k in key.items() if k == "NGS")
    lyt = next(p for p, k in key.items() if k == "LYT")
    answers = {p: k for p, k in key.items()}
    answers[ngs], answers[lyt] = "NGB", None
    v = store.save_answers(ann, qid, answers, expected_version=a["version"])
    with pytest.raises(ConflictError):  # another tab that drew the attempt before that save
        store.save_answers(ann, qid, {ngs: "NGS"}, expected_version=a["version"])
    with pytest.raises(CaseError, match="not a class this quiz offers"):
        store.save_answers(ann, qid, {ngs: "HAC"}, expected_version=v)
    with pytest.raises(CaseError):  # a learner cannot read results before submitting, nor anyone else's
        store.quiz_result(ann, qid)
    store.submit_attempt(ann, qid, expected_version=v)
    with pytest.raises(CaseError, match="cannot be changed after submission"):
        store.save_answers(ann, qid, {ngs: "NGS"}, expected_version=v + 1)
    with pytest.raises(CaseError, match="already submitted"):
        store.submit_attempt(ann, qid, expected_version=v)
    r = store.quiz_result(ann, qid)
    assert (r["grade"]["strict"], r["grade"]["tolerant"], r["grade"]["answered"]) == (18, 19, 19)
    assert (r["model"]["strict"], r["model"]["n"]) == (20, 20)  # the model's labels stood in LAB-1
    with pytest.raises(PermissionDenied, match="own results"):
        store.quiz_result(bob, qid, ann.user_id)
    with pytest.raises(PermissionDenied):
        store.learner_history(bob, ann.user_id)
    assert store.quiz_result(teacher, qid, ann.user_id)["grade"]["strict"] == 18

    # the quiz's key does not follow a case reopened and relabelled after the quiz was made
    store.reopen(lab["case"], teacher, "a test of the quiz key")
    cell = next(c for c in store.get_case(lab["case"]).cells if c.label == "NGS")
    store.review_cell(cell.id, lab["tech"], "NGB")
    assert store.quiz_result(ann, qid)["grade"]["strict"] == 18
    assert {c["case"] for c in store.quiz_cell_pool(teacher)} == {"HARD-1"}  # LAB-1 is open now

    # the time limit: after it (and a short grace) no answer changes; the answers saved in time can be submitted
    b = store.start_attempt(bob, qid)
    with store.session() as s:
        s.execute(update(QuizAttempt).where(QuizAttempt.id == b["id"])
                  .values(deadline=dt.datetime(2020, 1, 1), version=QuizAttempt.version + 1))
    with pytest.raises(CaseError, match="time is up"):
        store.save_answers(bob, qid, {0: key[0]}, expected_version=b["version"] + 1)
    store.submit_attempt(bob, qid, expected_version=b["version"] + 1)
    rep = store.quiz_report(teacher, qid)
    assert [x["name"] for x in rep["attempts"]] == ["ann", "bob"]
    worst = rep["cells"][0]
    assert worst["wrong"] == 2 and worst["wrong_share"] == 1.0  # bob answered nothing, ann got this one wrong
    assert [e["action"] for e in store.quiz_events(teacher, qid)] == \
        ["created", "published", "started", "started", "submitted", "submitted"]
    assert [e["who"] for e in store.quiz_events(teacher, qid)][2:] == ["ann", "bob", "ann", "bob"]
    hist = store.learner_history(ann)
    assert [h["title"] for h in hist] == ["Week 1"] and hist[0]["grade"]["tolerant"] == 19


def test_a_closed_or_unpublished_quiz_cannot_be_started(lab):
    store, teacher, ann = lab["store"], lab["teacher"], lab["ann"]
    pool = store.quiz_cell_pool(teacher)
    qid = store.create_quiz(teacher, "Draft", [pool[0]["cell_id"]], [pool[0]["expert"]], publish=False)
    assert store.list_quizzes(ann) == []
    with pytest.raises(CaseError, match="not published"):
        store.start_attempt(ann, qid)
    store.set_quiz_state(teacher, qid, published=True, closed=True)
    with pytest.raises(CaseError, match="closed"):
        store.start_attempt(ann, qid)
    with pytest.raises(PermissionDenied):
        store.set_quiz_state(ann, qid, closed=False)


def test_the_certificate_states_the_scores_and_the_statement(lab, tmp_path):
    from bmcore import RUO_STATEMENT
    from bmcore.pdfreport import render_certificate
    from tests.test_reports import _need_poppler, _pdf_pages

    _need_poppler()
    store, teacher, ann = lab["store"], lab["teacher"], lab["ann"]
    pool = [c for c in store.quiz_cell_pool(teacher) if c["case"] == "LAB-1"]
    qid = store.create_quiz(teacher, "Certificate quiz", [c["cell_id"] for c in pool],
                            sorted({c["expert"] for c in pool}) + ["NGB"])
    a = store.start_attempt(ann, qid)
    key = {i["position"]: i["expert"] for i in store.quiz_items(teacher, qid)}
    ngs = next(p for p, k in key.items() if k == "NGS")
    store.save_answers(ann, qid, {**key, ngs: "NGB"}, expected_version=a["version"])
    store.submit_attempt(ann, qid, expected_version=a["version"] + 1)
    quiz = next(q for q in store.list_quizzes(ann) if q["id"] == qid)
    text = " ".join(" ".join(_pdf_pages(render_certificate(store.quiz_result(ann, qid), quiz), tmp_path)).split())
    assert "completed the quiz \"Certificate quiz\"" in text
    assert "Strict score (the signed label exactly): 19 of 20 (95%)" in text
    assert "a neighbouring maturation stage accepted): 20 of 20 (100%)" in text
    assert RUO_STATEMENT in text and "ann (ann)" in text


def test_the_pages_build_take_and_grade_a_quiz(env, dev_root):
    """Teaching and Quizzes through AppTest: the instructor makes a quiz of a signed case's 20 cells; a student,
    whose navigation holds no case page, answers 5 cells with one key press and submits; the page's scores are the
    store's, computed by hand here."""
    from tests.test_app import PASSWORDS, app

    store = CaseStore(env["db"])
    signed_case(store, "LAB-1", val_crops(dev_root, 3)[:20])
    at = app(env, user=("drpath", "pathologist"))
    at.switch_page("views/teaching.py").run()
    assert not at.exception, at.exception
    at.text_input(key="tq_title").input("Week 1")
    next(b for b in at.button if b.label == "Make the quiz").click().run()
    assert [s.value for s in at.success] == ["Quiz Week 1 made (20 cells) and published."]

    stu = app(env, user=("ann", "student"))
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        stu.switch_page("views/review.py")
    stu.button(key="quiz_start").click().run()
    tiles = [b for b in stu.button_group if b.key and b.key.startswith("qsel_")]
    assert len(tiles) == 20 and all(b.options[0].endswith("· –") for b in tiles)
    for b in tiles[:5]:
        b.set_value(b.options)
    next(b for b in stu.button if b.label == "→ ART").click().run()
    assert any("5 cell(s) answered ART" in s.value for s in stu.success)
    answered = [b for b in stu.button_group if b.key and b.key.startswith("qsel_") and b.options[0].endswith("ART")]
    assert len(answered) == 5
    stu.checkbox(key=next(c.key for c in stu.checkbox if c.key.startswith("quiz_sure"))).check().run()
    stu.button(key=next(b.key for b in stu.button if b.key and b.key.startswith("quiz_submit"))).click().run()
    assert not stu.exception, stu.exception
    ann = store.authenticate("ann", PASSWORDS["student"])
    (quiz,) = store.list_quizzes(ann)
    key = {i["position"]: i["expert"] for i in store.quiz_items(store.authenticate("drpath", PASSWORDS["pathologist"]),
                                                                 quiz["id"])}
    first5 = [i["position"] for i in store.learner_items(ann, quiz["id"])][:5]
    right = sum(key[p] == "ART" for p in first5)
    metrics = {m.label: m.value for m in stu.metric}
    assert metrics["Strict score"] == f"{right} of 20 ({right / 20:.0%})"
    assert metrics["The model on the same cells"] == "20 of 20 (100%)"
    # a second quiz: the history holds both, oldest first, and draws them over time
    teacher = store.authenticate("drpath", PASSWORDS["pathologist"])
    pool = store.quiz_cell_pool(teacher)
    q2 = store.create_quiz(teacher, "Week 2", [c["cell_id"] for c in pool[:4]], sorted({c["expert"] for c in pool}))
    a = store.start_attempt(ann, q2)
    store.submit_attempt(ann, q2, expected_version=a["version"])
    stu.run()  # the quiz list as it is now
    stu.selectbox(key="quiz_pick").set_value(q2).run()
    assert not stu.exception, stu.exception
    hist = next(d for d in stu.dataframe if "quiz" in d.value.columns).value
    assert hist["quiz"].tolist() == ["Week 1", "Week 2"] and hist["cells"].tolist() == [20, 4]
    assert stu.get("arrow_vega_lite_chart") or stu.get("vega_lite_chart")  # the scores over time
