"""Headless tests of every page with streamlit.testing.v1.AppTest, on real crops."""

import json
import os

import pytest
from streamlit.testing.v1 import AppTest

from appkit import upload_key
from bmcore.bundle import load_bundle
from bmcore.cases import CaseError, CaseStore
from tests.conftest import DEV_CLASSES, REPO



PASSWORDS = {"student": "student-password-1", "viewer": "viewer-password-1", "technologist": "tech-password-1", "pathologist": "path-password-1",
             "admin": "admin-password-1"}


def sign_in(env, name: str = "drpath", role: str = "pathologist"):
    """An account of ``role`` (created once per test database) signed in with its password: the Actor a session
    holds after the sign-in form."""
    store = CaseStore(env["db"])
    if name not in {u["username"] for u in store.list_users()}:
        store.add_user(name, role, PASSWORDS[role], display_name=f"Dr {name}")
    return store.authenticate(name, PASSWORDS[role])


def app(env, bundle="eight", user=("drpath", "pathologist"), **state) -> AppTest:
    """The app in a session signed in as ``user`` (name, role); ``user=None``: nobody signed in."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180)
    if user is not None:
        at.session_state["actor"] = sign_in(env, *user)
    at.session_state["bundle"] = env[bundle]
    sha = load_bundle(env[bundle]).sha256[:16]
    for k, v in state.items():
        # the sidebar's review thresholds are kept per model
        at.session_state[f"{k}::{sha}" if k in ("threshold", "hairy_threshold") else k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def upload(at: AppTest, case: str, files, extra=()) -> AppTest:
    at.switch_page("views/classify.py").run()
    at.text_input(key="new_case_code").set_value(case)
    at.file_uploader(key=upload_key(at.session_state)).set_value([(f.name, f.read_bytes(), "image/jpeg") for f in files] + list(extra))
    at.run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    return wait_classified(at)


def open_tab(at: AppTest, name: str) -> AppTest:
    """Open a tab of the Classify page's case view, as a click on it does (only the open tab's content is drawn)."""
    from appkit import CASE_TAB_KEY, CASE_TABS

    assert name in CASE_TABS
    at.session_state[CASE_TAB_KEY] = name
    at.run()
    assert not at.exception, at.exception
    return at


def wait_classified(at: AppTest, timeout: float = 120) -> AppTest:
    """Classification runs in the server's background worker: rerun the page until the case has no pending cell."""
    import time

    from bmcore import caserules

    store = CaseStore(os.environ["BM_DATABASE_URL"])
    deadline = time.monotonic() + timeout
    waited = False
    while caserules.summary(store.get_case(at.session_state["case_id"])).pending:
        assert time.monotonic() < deadline, "classification did not finish"
        time.sleep(0.2)
        waited = True
    # redraw if the page was drawn while cells were pending (the job may have finished just before this check; a
    # page drawn complete is left as it is, with any message it shows)
    drawn_pending = any("not classified" in str(o) for sb in at.selectbox if sb.key == "_w_case_id" for o in sb.options)
    if waited or drawn_pending:
        at.run()
    assert not at.exception, at.exception
    return at


def send_text(selectbox, text: str) -> None:
    """Make ``selectbox`` send ``text`` on the next run, as a browser does with an option text from a screen older
    than the server's last run (AppTest always sends the last run's own text)."""
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    class Stale(type(selectbox)):
        @property
        def _widget_state(self):
            return WidgetState(id=self.id, string_value=text)

    selectbox.__class__ = Stale


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def captions(at) -> list[str]:
    """Every image caption on the page, as a reader sees it (captions are Markdown: user text in them is escaped)."""
    from tests.conftest import as_read

    return [as_read(i.caption) for e in at.get("image") for i in e.proto.imgs]


def label_box(at, cid, cell_id):
    """The One cell view's label box for a cell (keyed per case, cell and the version the reviewer saw)."""
    return next(s for s in at.selectbox if (s.key or "").startswith(f"label_{cid}_{cell_id}_"))


def real(crops, per_class=2):
    return [f for c in DEV_CLASSES for f in crops[c][:per_class]]


def test_home_lists_classes_and_statement(env):
    at = app(env)
    text = " ".join(m.value for m in at.markdown)
    assert "BLA (Blast)" in text and "EBO (Erythroblast)" in text  # covered and not covered
    assert any("For research use only" in w.value for w in at.warning)


def test_classify_table_uncertain_bin_and_unreadable(env, crops):
    files = real(crops)
    at = upload(app(env, threshold=0.99), "C-1", files, [("broken.jpg", b"\xff\xd8garbage", "image/jpeg")])
    n = len(files)
    assert metric(at, "Cells classified") == f"{n} of {n}"  # every tile says what it counts of
    assert metric(at, "Unreadable files") == "1"
    # an untrained model is never 99% sure: every cell lands in the uncertain bin
    assert metric(at, "Uncertain") == f"{n} of {n}"
    bad = at.dataframe[0].value
    assert list(bad.file) == ["broken.jpg"]
    assert "not a recognised" in bad.error.iloc[0] or "corrupt" in bad.error.iloc[0]
    table = at.dataframe[1].value
    assert len(table) == len(files) and set(table.file) == {f.name for f in files}
    assert table.confidence.between(0, 1).all() and table.uncertain.all()
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    assert [c.name for c in case.cells if c.ok] == [f.name for f in files]
    # the classified upload is emptied: its files are in the case (500 file chips left on the page cost the browser)
    assert upload_key(at.session_state) == "uploads_1" and not at.file_uploader(key="uploads_1").value


def test_a_job_that_ends_between_the_pages_reads_is_drawn_complete_not_partial(env, crops, monkeypatch):
    """A job of a few cells can end after the page read the case (cells pending) and before it read the job (done):
    the page must draw the case again, not call a complete case partial and wait forever (CI, 2026-12-07: a
    one-cell field case in the browser)."""
    import appkit

    at = upload(app(env), "C-RACE", real(crops, 1))
    read = appkit.active_case
    calls = []

    def stale_once():
        case = read()
        calls.append(case.id)
        if len(calls) > 1:
            return case
        case.cells[0].pending = True  # a detached copy: as read just before the job saved its last cell
        return case

    monkeypatch.setattr(appkit, "active_case", stale_once)
    at.run()
    assert not at.exception, at.exception
    assert len(calls) == 2  # drawn again, once
    assert not [e for e in at.error if "Partial case" in e.value]
    assert any("Classification complete: all" in c.value for c in at.caption)


def test_threshold_zero_means_no_uncertain_and_duplicate_case_refused(env, crops):
    at = upload(app(env, threshold=0.0), "C-2", real(crops, 1))
    assert metric(at, "Uncertain") == f"0 of {len(real(crops, 1))}"
    upload(at, "C-2", real(crops, 1))
    assert any("already exists" in e.value for e in at.error)


def test_cell_view_heatmap(env, crops):
    at = upload(app(env, threshold=0.0), "C-3", real(crops, 1))
    assert not [e for e in at.get("image") if "as the model sees it" in str(e.proto)], \
        "no heatmap is computed or sent while the Cell view is closed"
    imgs = open_tab(at, "Cell view").get("image")
    assert len(imgs) >= 2, "the cell view shows the crop and its heatmap"
    at.selectbox(key="_w_cam_method").set_value("layercam").run()
    at.slider(key="_w_cam_opacity").set_value(0.8).run()
    assert not at.exception


def test_a_reviewers_choices_in_a_tab_are_kept_while_another_tab_is_open(env, crops):
    """Only the open tab is drawn, and Streamlit forgets a widget it does not draw: the gallery's class and page and
    the Cell view's cell, method, class to explain and opacity must still be as the reviewer left them."""
    at = upload(app(env, threshold=0.0), "C-KEEP", real(crops, 6))
    cid = at.session_state["case_id"]
    open_tab(at, "Gallery")
    klass = at.selectbox(key=f"_w_gallery_class_{cid}")
    big = klass.options[0].split(" ")[0]  # the largest class first
    other = klass.options[-1].split(" ")[0]
    page = f"_w_gallery_page_{cid}_{big}"
    assert at.number_input(key=page).max == 2, "the test needs a class of more than one gallery page"
    at.number_input(key=page).set_value(2).run()
    at.selectbox(key=f"_w_gallery_class_{cid}").set_value(other).run()
    open_tab(at, "Cell view")
    last = CaseStore(env["db"]).get_case(cid).cells[-1]
    at.selectbox(key=f"_w_cell_pick_{cid}").set_value(last.id).run()
    at.selectbox(key="_w_cam_method").set_value("layercam").run()
    explain = f"_w_cam_class_{cid}_{last.id}"
    second = at.selectbox(key=explain).options[1].split(" ")[0]
    at.selectbox(key=explain).set_value(second).run()
    at.slider(key="_w_cam_opacity").set_value(0.8).run()
    open_tab(at, "Results table")
    assert not at.get("selectbox") or all(s.key != "_w_cam_method" for s in at.selectbox), "the Cell view is closed"
    open_tab(at, "Cell view")
    assert at.selectbox(key=f"_w_cell_pick_{cid}").value == last.id
    assert at.selectbox(key="_w_cam_method").value == "layercam"
    assert at.selectbox(key=explain).value == second
    assert at.slider(key="_w_cam_opacity").value == 0.8
    assert any(f'"LayerCAM for {second}' in str(e.proto) for e in at.get("image")), "the heatmap drawn is the one chosen"
    open_tab(at, "Gallery")
    assert at.selectbox(key=f"_w_gallery_class_{cid}").value == other != big
    at.selectbox(key=f"_w_gallery_class_{cid}").set_value(big).run()
    assert at.number_input(key=page).value == 2, "each class's gallery page is kept"


def test_cell_view_follows_the_active_case(env, crops):
    """After a second case is classified, the cell view shows a cell of that case, never the first case's."""
    at = open_tab(upload(app(env, threshold=0.0), "C-V1", real(crops, 1)), "Cell view")
    first = at.session_state["case_id"]
    last = CaseStore(env["db"]).get_case(first).cells[-1]
    at.selectbox(key=f"_w_cell_pick_{first}").set_value(last.id).run()
    assert f"{last.name} as the model sees it" in captions(at)
    upload(at, "C-V2", real(crops, 2)[8:12])
    second = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    assert second.id != first
    pick = at.selectbox(key=f"_w_cell_pick_{second.id}")
    assert pick.value in {c.id for c in second.cells}
    assert pick.options[pick.index].startswith(f"#1 {second.cells[0].name}")
    assert f"{second.cells[0].name} as the model sees it" in captions(at)


def test_cell_view_stays_on_its_cell_when_a_colleague_reviews_it(env, crops):
    """A has cell X open in the Cell view; B relabels X; A's stale picker text still names X (and a text that names no
    cell leaves A on X); the view then says who reviewed it."""
    at = open_tab(upload(app(env, threshold=0.0), "C-CV", real(crops, 1)), "Cell view")
    cid = at.session_state["case_id"]
    store = CaseStore(env["db"])
    x = store.get_case(cid).cells[2]
    key = f"_w_cell_pick_{cid}"
    at.selectbox(key=key).set_value(x.id).run()
    sb = at.selectbox(key=key)
    text = sb.options[sb.index]
    store.review_cell(x.id, sign_in(env, "drb", "technologist"), "PMO", expected_version=x.version, case_id=cid)
    at.run()
    assert at.selectbox(key=key).value == x.id and text in at.selectbox(key=key).options, "the text still names X"
    assert any(c.value.startswith("Reviewed: PMO") and "drb" in c.value for c in at.caption)
    send_text(at.selectbox(key=key), text + " (a text the page no longer shows)")
    at.run()
    assert not at.exception and at.selectbox(key=key).value == x.id
    assert f"{x.name} as the model sees it" in captions(at)


def test_differential_matches_stored_labels(env, crops):
    """The count holds every classified cell that needs no review, by its stored label; a cell the rule sent to
    review (here: the untrained bundle's built-in blast rule, P(BLA) >= 0.10) waits out of it."""
    from bmcore.caserules import needs_review

    files = real(crops, 3)
    at = upload(app(env, threshold=0.0), "C-4", files)
    store = CaseStore(env["db"])
    case = store.get_case(at.session_state["case_id"])
    waiting = [c for c in case.cells if needs_review(c)]
    assert any("BLA" in c.critical for c in waiting)  # near-uniform probabilities: P(BLA) >= 0.10
    expect = {}
    for c in case.cells:
        if c.predicted not in ("ART", "NIF") and not needs_review(c):
            expect[c.predicted] = expect.get(c.predicted, 0) + 1
    at.switch_page("views/differential.py").run()
    assert not at.exception
    counted = {r["class"]: r["count"] for _, r in at.dataframe[0].value.iterrows()} if at.dataframe else {}
    assert counted.pop("BLA", 0) == expect.pop("BLA", 0), "the model's blast class has its row, at 0 too"
    assert counted == expect  # the waiting cells are out of the count
    # cells wait for review: no percentage is a number, the blast figure says how many possible blasts are pending
    assert all(t.startswith("pending: ") for t in at.dataframe[0].value["percent_text"])
    assert metric(at, "Blasts") == "pending"
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)  # bars are counts, on a count axis
    assert chart["layout"]["yaxis"]["title"]["text"] == "cells counted" and chart["data"][0]["y"] is not None
    key = at.dataframe[-1].value  # every code shown has its name beside it
    assert {"BLA": "Blast", "NIF": "Not identifiable"}.items() <= dict(zip(key["code"], key["cell type"])).items()
    for c in waiting:  # a reviewer confirms them: now they count, by their stored label
        store.review_cell(c.id, sign_in(env), c.predicted, expected_version=c.version, case_id=case.id)
        if c.predicted not in ("ART", "NIF"):
            expect[c.predicted] = expect.get(c.predicted, 0) + 1
    at.run()
    if expect:
        df = at.dataframe[0].value
        assert {k: v for k, v in zip(df["class"], df["count"]) if v} == {k: v for k, v in expect.items() if v}
        assert sum(float(t.rstrip("%")) for t in df["percent_text"]) == pytest.approx(100, abs=0.5)
        assert metric(at, "Blasts").endswith("%")  # nothing pending: the blast figure is a number
    assert metric(at, "M:E ratio") == "n/a"  # the 8-class model knows no erythroid precursors


def test_hairy_screen_disabled_with_default_classes(env, crops):
    at = upload(app(env), "C-5", real(crops, 1))
    at.switch_page("views/hairy_cells.py").run()
    assert any("Hairy-cell screening unavailable for this case" in i.value for i in at.info)


def test_a_case_is_judged_by_its_own_model_not_the_sidebars(env, crops, monkeypatch):
    """Classified with M (no HAC); the sidebar then picks N (with HAC): every page still reads the case with M."""
    from bmcore.predictor import Predictor

    explained_by = []
    real_cam = Predictor.cam

    def spy(self, *a, **kw):
        explained_by.append(self.bundle.name)
        return real_cam(self, *a, **kw)

    monkeypatch.setattr(Predictor, "cam", spy)
    at = upload(app(env, "eight", threshold=0.0), "C-M", real(crops, 1))
    cid = at.session_state["case_id"]
    at.session_state["bundle"] = env["hac"]  # the sidebar now offers a hairy-cell model for new cases
    at.switch_page("views/hairy_cells.py").run()
    assert not at.exception
    assert any("Hairy-cell screening unavailable for this case" in i.value and "eight" in i.value for i in at.info)
    assert not at.success, "no reassurance that no cell reached the flag threshold"
    open_tab(at.switch_page("views/classify.py"), "Cell view")
    assert metric(at, "Hairy-cell flags") == "unavailable"
    # the heatmap is computed by M, over M's classes
    cap = next(c.value for c in at.caption if "Classified by" in c.value)
    sha = CaseStore(env["db"]).get_case(cid).model_sha256
    assert len(sha) == 64 and f"**eight (weights {sha[:8]})**" in cap  # two bundles may share a name: not a digest
    explain = next(sb for sb in at.selectbox if sb.label == "Explain class")
    assert set(explain.options_values if hasattr(explain, "options_values") else
               [o.split(" ")[0] for o in explain.options]) == set(DEV_CLASSES)
    assert any("by eight" in str(e.proto) for e in at.get("image")), "the heatmap says which model computed it"
    at.selectbox(key="_w_cam_method").set_value("layercam").run()  # a heatmap computed after the sidebar changed
    assert explained_by and set(explained_by) == {"eight"}, explained_by
    at.switch_page("views/differential.py").run()
    assert metric(at, "Hairy cells (HAC)") == "unavailable"
    assert any("Hairy-cell screening unavailable" in c.value for c in at.caption)
    # the case's model removed from this server: pages say so and never fall back to another model
    import shutil

    shutil.rmtree(env["eight"])
    at.session_state["case_id"] = cid
    at.switch_page("views/classify.py").run()
    assert not at.exception
    assert any("is not installed on this server" in w.value for w in at.warning)
    assert not [c for c in at.caption if "as the model sees it" in c.value]


def test_hairy_flag_and_alert_with_hac_model(env, crops):
    files = real(crops, 2)
    at = upload(app(env, "hac", threshold=0.0, hairy_threshold=0.2), "C-6", files)
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    flagged = [c for c in case.cells if c.probabilities["HAC"] >= 0.2]
    assert [c.hairy_flag for c in case.cells] == [c.probabilities["HAC"] >= 0.2 for c in case.cells]
    at.switch_page("views/hairy_cells.py").run()
    if flagged:
        alert = at.error[0].value
        assert f"{len(flagged)} suspected hairy cell" in alert
        assert f"{100 * len(flagged) / len(files):.1f}%" in alert
    else:
        assert at.success
    assert metric(upload(app(env, "hac", threshold=0.0, hairy_threshold=0.05), "C-7", files),
                  "Hairy-cell flags") == f"{len(files)} of {len(files)}"  # P(HAC) of 5 classes is never below 0.05 here


def test_review_signoff_reopen_audit(env, crops):
    """Each action lands on the cell the picker names; the picker then names the cell acted on next."""
    files = real(crops, 1)[:6]
    at = upload(app(env, threshold=0.99), "C-8", files)
    cid = at.session_state["case_id"]
    store = CaseStore(env["db"])
    names = {c.id: c.name for c in store.get_case(cid).cells}
    at.switch_page("views/review.py").run()
    at.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    at.text_input(key=f"sign_pw_{cid}").set_value(PASSWORDS["pathologist"])
    at.button(key="sign_off").click().run()
    assert any("uncertain" in e.value for e in at.error)  # refused while uncertain cells are open
    pick = f"_w_review_cell_{cid}"
    assert len(at.selectbox(key=pick).options) == 6
    acted = []
    for step in range(6):  # relabel the first and the fourth, confirm the others, always the cell on screen
        shown = at.selectbox(key=pick).value
        sb = at.selectbox(key=pick)
        assert names[shown] in sb.options[sb.index], "the picker's text names the cell its value is"
        if step in (0, 3):
            label_box(at, cid, shown).set_value("PLM").run()
            assert at.selectbox(key=pick).value == shown, "choosing a label never moves the picker"
            at.button(key="save_btn").click().run()
            assert any("set to PLM" in s.value for s in at.success)
        else:
            at.button(key="confirm_btn").click().run()
            assert any("confirmed as" in s.value for s in at.success), [e.value for e in at.error]
        acted.append(shown)
        ev = [e for e in store.audit(cid) if e["action"] in ("confirm", "reclassify")]
        assert [e["cell"] for e in ev] == [names[i] for i in acted], "the audit holds exactly the cells acted on"
        if step < 5:
            assert at.selectbox(key=pick).value not in acted, "the picker moved on to a cell not yet reviewed"
    at.button(key="sign_off").click().run()
    assert any("enter your password to sign" in e.value for e in at.error), "no password, no signature"
    at.text_input(key=f"sign_pw_{cid}").set_value(PASSWORDS["pathologist"])
    at.button(key="sign_off").click().run()
    # no specimen id and under the target count: refused until the signer gives one and confirms the other
    from bmcore.report import case_differential

    refusal = " ".join(e.value for e in at.error)
    counted = case_differential(store.get_case(cid)).denominator
    assert "no specimen / accession number" in refusal and f"only {counted} of the target 200 cells" in refusal, refusal
    assert store.get_case(cid).status == "open"
    at.text_input(key=f"sign_pw_{cid}").set_value(PASSWORDS["pathologist"])
    at.text_input(key=f"sign_specimen_{cid}").set_value("S-26-77")
    at.checkbox(key=f"sign_under_{cid}").check()
    at.button(key="sign_off").click().run()
    assert any("signed off" in s.value for s in at.success), [e.value for e in at.error]
    case = store.get_case(cid)
    assert case.specimen == {"specimen_id": "S-26-77"}, "the id typed at sign-off is stored with the case"
    assert case.signature["specimen_id"] == "S-26-77" and case.signature["no_specimen_id"] is False
    assert case.signature["under_target"] is True and (case.signature["counted"], case.signature["target"]) == (counted, 200)
    assert case.status == "signed" and case.signed_by == "drpath"
    assert case.signed_by_id == at.session_state["actor"].user_id
    assert case.signature["case_version"] == case.version and case.signature["proof"] == "password re-entered"
    assert sorted(c.label for c in case.cells).count("PLM") == 2
    at.button(key="reopen").click().run()
    assert any("reason" in e.value for e in at.error)  # reopening needs a reason
    at.text_input(key=f"reopen_reason_{cid}").set_value("wrong smear").run()
    at.button(key="reopen").click().run()
    actions = [a["action"] for a in store.audit(case.id)]
    assert actions[0] == "create" and actions.count("reclassify") == 2 and actions.count("confirm") == 4
    assert actions[-2:] == ["sign-off", "reopen"]
    # a stale Reopen (the case was reopened meanwhile) says who reopened it, when and why
    with pytest.raises(CaseError, match=r"is not signed off: drpath reopened it at \d\d:\d\d:\d\d UTC \(wrong smear\)"):
        store.reopen(case.id, at.session_state["actor"], "another reason")


def test_stale_screen_never_overwrites_a_colleague(env, crops):
    """B opened a cell; A relabels it; B (no reload) relabels, then confirms: refused both times, A's label stands."""
    a = upload(app(env, threshold=0.99), "C-S", real(crops, 1)[:3])
    cid = a.session_state["case_id"]
    b = app(env, case_id=cid, user=("drb", "technologist"))
    b.switch_page("views/review.py").run()
    b.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    a.switch_page("views/review.py").run()
    a.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    pick = f"_w_review_cell_{cid}"
    cell = a.selectbox(key=pick).value
    assert b.selectbox(key=pick).value == cell
    sb = b.selectbox(key=pick)
    b_text = sb.options[sb.index]  # what B's browser will send back for B's choice, however stale B's screen gets
    label_box(a, cid, cell).set_value("PMO").run()
    a.button(key="save_btn").click().run()
    assert any("set to PMO" in s.value for s in a.success)
    label_box(b, cid, cell).set_value("MON").run()  # B's rerun re-reads the cell ...
    assert any("changed since you opened it" in w.value and "PMO" in w.value for w in b.warning)
    assert b_text in b.selectbox(key=pick).options, "a cell's text in the picker survives a colleague's review"
    b.button(key="save_btn").click().run()  # ... but acts on the version B opened
    assert any("Not saved" in w.value and "changed by drpath" in w.value and "PMO" in w.value for w in b.warning)
    # the refusal is drawn beside the buttons that were pressed (One cell), not at the top of the page out of view
    order = [n for n in b._tree if getattr(n, "type", "") in ("button", "alert")
             or type(n).__name__ in ("Button", "Warning")]
    save_at = next(i for i, n in enumerate(order) if getattr(n, "key", None) == "save_btn")
    refusal_at = next(i for i, n in enumerate(order) if type(n).__name__ == "Warning" and "Not saved" in n.value)
    assert refusal_at > save_at, "the refusal is drawn after the Save button, beside it"
    assert b.selectbox(key=pick).value == cell, "a refused action does not move on"
    send_text(b.selectbox(key=pick), b_text + " · an option text this page no longer shows")  # a browser's stale text
    b.button(key="confirm_btn").click().run()
    assert any("Not saved" in w.value and "changed by drpath" in w.value for w in b.warning)
    assert not b.exception and b.selectbox(key=pick).value == cell, "a stale picker text never moves to another cell"
    store = CaseStore(env["db"])
    got = next(c for c in store.get_case(cid).cells if c.id == cell)
    assert got.final_label == "PMO" and got.reviewed_by == "drpath"
    # a deliberate reload lets B act on what B now sees
    b.button(key=f"reload_{cell}").click().run()
    assert label_box(b, cid, cell).value == "PMO", "after a reload the label box shows the stored label"
    label_box(b, cid, cell).set_value("MON").run()
    b.button(key="save_btn").click().run()
    assert any("set to MON" in s.value for s in b.success)
    assert [e["who"] for e in store.audit(cid) if e["cell"] == got.name] == ["drpath", "drb"]


def test_a_sign_off_refused_for_a_colleagues_change_says_how_to_go_on(env, crops):
    """A pathologist opened every cell; a colleague then relabels one. A's sign-off is refused naming that cell and
    what it is now; signing again is refused again until A says the change was checked (a button naming how many
    cells); then A's signature goes through and signs the colleague's label. Before, the refusal said "reload", and
    no reload or page visit cleared it."""
    a = upload(app(env, threshold=0.99), "C-ACK", real(crops, 1)[:3])
    cid = a.session_state["case_id"]
    store = CaseStore(env["db"])
    a.switch_page("views/review.py").run()
    a.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    pick = f"_w_review_cell_{cid}"
    for _ in range(3):  # A confirms every cell, one at a time (each opened first)
        a.button(key="confirm_btn").click().run()
        assert any("confirmed as" in x.value for x in a.success), [e.value for e in a.error]
    b = app(env, case_id=cid, user=("drb", "pathologist"))
    b.switch_page("views/review.py").run()
    b.button_group(key=f"review_mode_{cid}").set_value("One cell").run()
    cell = store.get_case(cid).cells[1]
    b.selectbox(key=pick).set_value(cell.id).run()
    label_box(b, cid, cell.id).set_value("PMO").run()
    b.button(key="save_btn").click().run()
    assert any("set to PMO" in x.value for x in b.success), [w.value for w in b.warning]

    def sign(at):
        at.text_input(key=f"sign_pw_{cid}").set_value(PASSWORDS["pathologist"])
        at.checkbox(key=f"sign_nospec_{cid}").check()
        at.checkbox(key=f"sign_under_{cid}").check()
        at.button(key="sign_off").click().run()
        assert not at.exception, at.exception

    for attempt in range(2):  # a page visit in between changes nothing: the change is still unchecked
        sign(a)
        refusal = " ".join(w.value for w in a.warning)
        assert "Not signed" in refusal and f"#{cell.position + 1} {cell.name} (now PMO by drb)" in refusal, refusal
        assert store.get_case(cid).status != "signed"
        assert a.button(key="sign_ack").label == "I have checked the 1 changed cell(s)"
        last = store.login_events(1)[0]  # the password was right, and the log says no signature was made
        assert last["event"] == "signature-not-made" and "now PMO by drb" in last["detail"], last
        a.switch_page("views/differential.py").run()
        a.switch_page("views/review.py").run()
    sign(a)
    a.button(key="sign_ack").click().run()
    assert any("taken as checked" in i.value for i in a.info)
    sign(a)
    assert any("signed off" in x.value for x in a.success), [w.value for w in a.warning]
    signed = store.get_case(cid)
    assert signed.status == "signed" and next(c for c in signed.cells if c.id == cell.id).final_label == "PMO"


def test_export_page_and_model_pages(env, crops):
    at = upload(app(env, threshold=0.0), "C-9", real(crops, 1))
    at.switch_page("views/export.py").run()
    assert not at.exception and any("not signed off" in w.value for w in at.warning)
    at.switch_page("views/model_card.py").run()
    assert not at.exception and any("Not covered" in w.value for w in at.warning)
    assert any("no out-of-distribution gate" in i.value for i in at.info)
    at.switch_page("views/model_comparison.py").run()
    assert not at.exception
    published = at.dataframe[-1].value
    assert {"000", "001", "003", "004"} <= set(published.seed)


def test_rejected_bin_is_left_out_of_the_differential(env, crops):
    """With the default bundle's gate: a blank image and a screenshot get no class, their own bin, no count."""
    import io

    import numpy as np
    from PIL import Image

    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.caserules import needs_review
    from bmcore.differential import REJECTED
    from train.ood import _screenshot

    def png(im):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    blank = png(Image.new("RGB", (250, 250), (214, 190, 205)))
    shot = png(_screenshot(np.random.default_rng(0)))
    env = {**env, "default": str(default_bundle())}
    files = real(crops, 1)
    at = upload(app(env, bundle="default", threshold=0.0), "C-R", files,
                [("blank.png", blank, "image/png"), ("screen.png", shot, "image/png")])
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    rejected = [c for c in case.cells if c.rejected]
    assert {"blank.png", "screen.png"} <= {c.name for c in rejected}
    assert all(c.reject_reason and c.label is None for c in rejected)
    assert metric(at, "Not judged by the gate") == f"{len(rejected)} of {len(case.cells)}"
    assert metric(at, "Cells classified") == f"{len(case.cells) - len(rejected)} of {len(case.cells)}"
    assert not [d for d in at.dataframe if "reason" in d.value.columns], "the closed bin is not drawn"
    shown = next(d.value for d in open_tab(at, "Not judged by the gate").dataframe if "reason" in d.value.columns)
    assert set(shown.file) == {c.name for c in rejected}
    at.switch_page("views/differential.py").run()
    assert not at.exception
    counted = at.dataframe[0].value["count"].sum()
    assert counted == sum(1 for c in case.cells if c.label and c.label not in ("ART", "NIF") and not needs_review(c))
    assert any(f"{REJECTED}: {len(rejected)}" in c.value for c in at.caption)
    # a reviewer who recognises a rejected image as a cell can still count it
    store = CaseStore(env["db"])
    cell = next(c for c in rejected if c.name == "blank.png")
    store.review_cell(cell.id, sign_in(env), "LYT", expected_version=cell.version)
    assert store.get_case(case.id).cells[cell.position].label == "LYT"
    # the model card states the gate's measured figures, from the bundle's eval_ood.json (as the app runs it)
    at.switch_page("views/model_card.py").run()
    assert not at.exception
    ev = json.loads((load_bundle(default_bundle()).path / "eval_ood.json").read_text())
    assert metric(at, "Real test crops refused") == f"{ev['test_as_run']['rate']:.1%}"
    assert metric(at, "AUROC, unfamiliar vs real") == f"{ev['auroc']['gate']:.3f}"
    blood = ev["peripheral_blood"]
    assert metric(at, "Peripheral-blood white cells passed with a confident label") == \
        f"{blood['passed_confident']} of {blood['crops']}"
    assert any(ev["test_as_run"]["setting"] in m.value for m in at.markdown)


def test_a_large_image_without_nucleated_cells_is_refused_by_name_and_the_rest_classified(env, crops):
    """Uploaded with real crops: an image too large to be one cell in which the cell finder sees no nucleated cell
    (a 1600x1200 photo of a pale, empty slide) is listed by name with the size rule's reason, never classified as one
    cell; the crops of the same batch are classified."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((1200, 1600, 3), (222, 226, 224), np.uint8)).save(buf, "JPEG", quality=90)
    files = real(crops, 1)
    at = upload(app(env, threshold=0.0), "C-F", files, [("empty_field.jpg", buf.getvalue(), "image/jpeg")])
    assert metric(at, "Cells classified") == f"{len(files)} of {len(files)}"
    shown = next(d.value for d in at.dataframe if list(d.value.columns) == ["file", "error"])
    assert list(shown.file) == ["empty_field.jpg"]
    assert shown.error.iloc[0].startswith("image is 1600x1200 px, too large for a single-cell crop")
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    assert [c.name for c in case.cells if c.label] == [f.name for f in files]
    assert not any(c.origin for c in case.cells) and CaseStore(env["db"]).field_images(case.id) == []


BCCD_FIELDS = ["BloodImage_00000", "BloodImage_00193"]  # one white cell; two (one cut by the bottom border)


def test_smear_fields_become_cells_of_one_case_with_source_box_and_drawn_field(env, crops):
    """Two real peripheral-blood fields (BCCD, 640x480) and a crop in one upload: one case; each whole nucleated
    cell is a cell of the case with its own thumbnail, source field and box; a cell cut by the border is listed
    by name, not classified; each field is stored and drawn with numbered boxes; the gate's refusals are explained."""
    from PIL import Image

    from bmcore import fields as F
    from tests.conftest import SHARED

    root = SHARED / "data" / "fields" / "bccd"
    if not (root / "JPEGImages").is_dir():
        pytest.skip(f"annotated smear fields not found at {root} (../shared/data is absent on this machine)")
    paths = [root / "JPEGImages" / f"{s}.jpg" for s in BCCD_FIELDS]
    expected = {p.name: F.find_cells(Image.open(p)) for p in paths}
    files = real(crops, 1)[:1]
    at = upload(app(env), "C-FIELDS", files, [(p.name, p.read_bytes(), "image/jpeg") for p in paths])
    store = CaseStore(env["db"])
    case = store.get_case(at.session_state["case_id"])
    from_fields = [c for c in case.cells if c.origin]
    assert len(from_fields) == sum(len(r.cells) for r in expected.values()) == 3
    for c in from_fields:
        res = expected[c.origin["field"]]
        cell = res.cells[c.origin["cell_number"] - 1]
        assert c.name == f"{c.origin['field']} #{c.origin['cell_number']}" and c.origin["box"] == list(cell.box)
        assert c.origin["scale_source"] == "red cells"
        if cell.border:
            assert not c.ok and "cut by the field's border" in c.error
        else:
            assert c.ok and not c.pending and c.thumbnail and (c.predicted or c.rejected)
    assert [c.name for c in case.cells if not c.origin] == [files[0].name]
    from bmcore.report import case_rows  # the Export page's cell table carries each field cell's source and box

    boxes = {r["file"]: r["box"] for r in case_rows(case)}
    assert all(boxes[c.name] == f"{c.origin['field']} " + " ".join(map(str, c.origin["box"])) for c in from_fields)
    assert boxes[files[0].name] == ""
    shots = store.field_images(case.id)
    assert [s["name"] for s in shots] == [p.name for p in paths] and all(s["width"] == 640 for s in shots)
    assert any("nucleated cells found in 2 field image(s)" in i.value and "expected to refuse many peripheral-blood"
               in i.value for i in at.info)
    drawn = [c for c in captions(at) if "numbered as in the results table" in c]
    assert [n for n in BCCD_FIELDS if any(n in c for c in drawn)] == BCCD_FIELDS  # both fields drawn
    for s in shots:  # each says the scale it was read at, beside the red cell drawn at that scale
        um = s["scale"]["um_per_px"]
        assert any(s["name"] in c and f"7.5 µm red cell at the scale used, {um:.4f} µm/px (estimated from the red cells)"
                   in c for c in drawn), s["name"]
    assert any("BloodImage_00193.jpg #" in f for d in at.dataframe if "file" in d.value.columns
               for f in d.value.file)  # the border-cut cell listed by name
    assert any("For research use only" in w.value for w in at.warning)


def test_more_fields_join_an_open_case_by_its_own_model_and_a_stale_screen_adds_nothing(env, crops):
    """A case started from one field grows by a second field through "Add more smear fields" (a 500-cell count is
    counted over several uploads): the new cells are classified by the case's model though the sidebar now shows
    another; a colleague whose screen still shows the old cell count adds nothing and is told why; the same field
    cannot be counted twice; a signed-off case offers no adding."""
    from tests.conftest import SHARED

    root = SHARED / "data" / "fields" / "bccd" / "JPEGImages"
    if not root.is_dir():
        pytest.skip(f"annotated smear fields not found at {root} (../shared/data is absent on this machine)")
    first, second, third = (root / f"{s}.jpg" for s in ("BloodImage_00000", "BloodImage_00193", "BloodImage_00300"))
    a = upload(app(env, "eight"), "C-ADD", [], [(first.name, first.read_bytes(), "image/jpeg")])
    store = CaseStore(env["db"])
    cid = a.session_state["case_id"]
    n0 = len(store.get_case(cid).cells)
    b = app(env, "eight", user=("tech2", "technologist"), case_id=cid)
    b.switch_page("views/classify.py").run()
    # the colleague chooses a third field (the page reruns: n0 cells on screen), then A adds a field first
    b.file_uploader(key=f"add_files_{cid}").set_value([(third.name, third.read_bytes(), "image/jpeg")]).run()
    assert not b.exception
    a.session_state["bundle"] = env["hac"]  # the sidebar now shows another model for new cases
    a.switch_page("views/classify.py").run()
    a.file_uploader(key=f"add_files_{cid}").set_value([(second.name, second.read_bytes(), "image/jpeg")]).run()
    a.button(key=f"add_btn_{cid}").click().run()
    assert not a.exception and not a.error, [e.value for e in a.error]
    wait_classified(a)
    case = store.get_case(cid)
    added = [c for c in case.cells if c.origin and c.origin["field"] == second.name]
    assert len(case.cells) == n0 + len(added) and added
    assert [c.position for c in case.cells] == list(range(len(case.cells)))
    eight = list(load_bundle(env["eight"]).classes)
    for c in added:
        assert c.name.startswith(f"{second.name} #")
        if c.ok and not c.rejected:
            assert set(c.probabilities) == set(eight), "classified by the sidebar's model, not the case's"
    assert {s["name"] for s in store.field_images(cid)} == {first.name, second.name}
    assert any(e["action"] == "add-cells" and second.name in e["note"] for e in store.audit(cid))
    assert store.integrity_ok(), store.integrity_problems()
    # the colleague's stale screen (n0 cells) clicks Add: refused, nothing added
    b.button(key=f"add_btn_{cid}").click().run()
    assert any(f"now has {len(case.cells)} cells, not the {n0} your page showed" in e.value for e in b.error)
    assert len(store.get_case(cid).cells) == len(case.cells)
    # now that the screen shows the case as it is, the same field again is refused by name
    b.file_uploader(key=f"add_files_{cid}").set_value([(second.name, second.read_bytes(), "image/jpeg")]).run()
    b.button(key=f"add_btn_{cid}").click().run()
    assert any("already in case" in e.value and second.name in e.value for e in b.error)
    assert len(store.get_case(cid).cells) == len(case.cells)
    # signed off: the page offers no adding, and the store refuses it
    path = a.session_state["actor"]
    case = store.get_case(cid)
    store.review_cells(cid, path, {c.id: c.version for c in case.cells if c.ok and not c.pending})
    store.sign_off(cid, path, password=PASSWORDS["pathologist"], no_specimen_id=True, under_target=True)
    b.run()
    assert not [e for e in b.get("expander") if "Add more smear fields" in str(e.proto)]
    from bmcore.jobs import pending_inputs
    from bmcore.inputs import InputItem

    with pytest.raises(CaseError, match="signed off"):
        store.add_cells(cid, pending_inputs([InputItem("late.jpg", first.read_bytes())]), actor=path,
                        expected_cells=len(case.cells))


def test_model_card_states_the_review_rule_and_its_test_figures(env):
    """The model card shows the default bundle's fitted review rule with its test-split figures, from bundle.json."""
    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle

    tri = load_bundle(default_bundle()).meta["triage"]
    te = tri["test"]
    at = app({**env, "default": str(default_bundle())}, bundle="default")
    at.switch_page("views/model_card.py").run()
    assert not at.exception
    assert metric(at, "Sent to review") == f"{te['review_fraction']:.1%}"
    assert metric(at, "Auto-accepted accuracy") == f"{te['auto_accuracy']:.1%}"
    assert metric(at, "Errors caught").endswith(f"({te['errors_caught']}/{te['errors']})")
    assert metric(at, "Blast sensitivity") == f"{te['blast_sensitivity']:.1%} ({te['blasts_flagged']}/{te['blasts']})"
    assert any(f"test split, {te['n']} crops" in c.value for c in at.caption)
    assert any(f"under **{tri['rules']['uncertain_below']:.2f}**" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) >= 1  # the risk-coverage chart
    inf = load_bundle(default_bundle()).meta["inference"]
    assert metric(at, "Inference").startswith("ONNX" if inf["engine"] == "onnx" else "torch")
    table = next(d.value for d in at.dataframe if "ms per cell (forward)" in d.value.columns)
    assert len(table) == len(inf["settings"]) and (table["default"] == "✓").sum() == 1
    # the caption says how many views the app computes per crop: the default runs one (its val choice)
    views = "test-time augmentation: the mean over" if inf["tta"] else ": one view of each crop."
    assert sum(views in c.value for c in at.caption) == 1
    # where the weights came from: the distillation teachers by digest, and the note on the data it was trained on
    tr = load_bundle(default_bundle()).meta["training"]
    text = " ".join(m.value for m in at.markdown)
    assert all(f"{t['name']} (weights {t['weights_sha256'][:8]})" in text for t in tr.get("teachers", []))
    assert tr.get("data_note", "") in text
    # a bundle with no fitted rule says plainly that the unvalidated built-in default applies
    at = app(env)
    at.switch_page("views/model_card.py").run()
    assert not at.exception
    info = next(i.value for i in at.info if "No review rule was fitted" in i.value)
    assert "not fitted or validated" in info and "review when confidence < 0.50" in info
    assert "P(BLA) ≥ 0.10" in info  # the 8-class tiny bundle still has a blast rule, built in


def test_a_case_keeps_the_inference_setting_it_was_classified_with(env, crops):
    """The case records how its model computed; resuming it uses that setting even after the bundle's default changed."""
    import appkit
    from bmcore.bundle import update_bundle_meta

    at = upload(app(env), "C-INF", real(crops, 1)[:3])
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    assert case.inference["setting"] == "torch fp32, no TTA" and case.inference["tta"] is False
    assert any("(torch fp32, no TTA)" in c.value for c in at.caption if "Classified by" in c.value)
    update_bundle_meta(load_bundle(env["eight"]), inference={"tta": True})  # the bundle's default changes later
    appkit.get_predictor.clear()
    assert appkit.get_predictor(env["eight"]).tta is True
    resumed = appkit.case_predictor(case)
    assert (resumed.engine, resumed.precision, resumed.tta) == ("torch", "fp32", False)
    from bmcore.report import render_html_report

    assert "torch fp32, no TTA" in render_html_report(case, load_bundle(env["eight"]).meta, CaseStore(env["db"]).audit(case.id))


def comparison_page(env) -> AppTest:
    at = app(env)
    at.switch_page("views/model_comparison.py").run()
    assert not at.exception, at.exception
    return at


def test_comparison_opens_on_the_deployed_model_in_labelled_groups(env):
    """The deployed (DEFAULT) bundle is a row, read from its own eval_test.json, and the detail view opens on it; the
    rows are split into an ImageNet-initialised and a from-scratch table, each model in its own group."""
    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.comparison import PRETRAINED, SCRATCH, find_studies, load_results, result_from_bundle, weights_group

    deployed = result_from_bundle(load_bundle(default_bundle()))
    at = comparison_page(env)
    assert at.selectbox(key="cmp_model").value == deployed["title"]
    rows = [deployed] + load_results(find_studies(REPO / "assets")[0])
    want = {g: {r["title"] for r in rows if weights_group(r["weights_source"]) == g} for g in (PRETRAINED, SCRATCH)}
    assert [h.value for h in at.subheader] == [f"{g} ({len(want[g])})" for g in (PRETRAINED, SCRATCH)]
    pre, scratch = at.dataframe[0].value, at.dataframe[1].value
    assert set(pre.model) == want[PRETRAINED] and set(scratch.model) == want[SCRATCH]
    assert pre.set_index("model").loc[deployed["title"], "macro-F1"] == deployed["metrics"]["macro_f1"]
    assert pre.set_index("model").loc[deployed["title"], "trained with"] == "its own recipe (deployed model)"
    assert any(deployed["split"] in c.value for c in at.caption)  # every figure says its data and split
    assert any("For research use only" in w.value for w in at.warning)


def test_comparison_defaults_to_the_longest_study_and_offers_every_study(env, tmp_path, monkeypatch):
    """With a 30-epoch study beside the committed 3-epoch one, the page opens on the 30-epoch study and both can be
    picked; the short study carries its warning, the long one does not."""
    import json

    root = tmp_path / "studies"
    root.mkdir()
    (root / "comparison").symlink_to(REPO / "assets" / "comparison")
    gpu = root / "comparison_gpu"
    gpu.mkdir()
    run = json.loads((REPO / "assets" / "comparison" / "resnet50.json").read_text())
    webp = "test split of webp.csv (810 crops, bm-dev as WebP)"
    run.update(title="ResNet-50 (fake 30-epoch run)", weights_source="timm:resnet50", epochs=30, img_size=224,
               split=webp)
    (gpu / "resnet50.json").write_text(json.dumps(run))
    (gpu / "summary.json").write_text(json.dumps({
        "budget": {"img_size": 224, "epochs": 30, "batch_size": 64}, "split": "train/splits/bm-dev_seed42.csv",
        "data": "bm-dev", "config": "compare_gpu.yaml", "runs": ["resnet50"], "hardware": "1 NVIDIA H100"}))
    monkeypatch.setenv("BM_COMPARISON_ROOT", str(root))
    at = comparison_page(env)
    box = at.selectbox(key="cmp_study")
    assert box.options == ["30 epochs, 224 px, 1 NVIDIA H100", "3 epochs, 128 px, x86_64 CPU, 2 threads"]
    assert box.value == str(gpu)
    pre = at.dataframe[0].value.set_index("model")  # timm weights: ImageNet group; splits differ: each row says its own
    assert pre.loc["ResNet-50 (fake 30-epoch run)", "measured on"] == webp
    assert not any("far too short" in w.value for w in at.warning)
    box.select(str(root / "comparison")).run()
    assert not at.exception, at.exception
    assert "measured on" not in at.dataframe[0].value.columns  # one split for every row: said once, in the captions
    assert "ConvNeXt-Tiny" in set(at.dataframe[1].value.model) and "ResNet-50" in set(at.dataframe[1].value.model)
    assert any("3 epochs is far too short for from-scratch networks" in w.value for w in at.warning)
    assert "(bundled default)" in at.selectbox(key="cmp_model").value


def test_committed_gpu_study_opens_first_with_the_epochs_each_run_really_got(env, monkeypatch):
    """The GPU study (all registered backbones, one time guard each) is complete, so the page opens on it before the
    3-epoch CPU study; each row shows the epochs its run really got, and where the guard left runs under 20 epochs the
    page warns with the fewest, not with the 30 the budget planned."""
    import json

    gpu = REPO / "assets" / "comparison_gpu"
    if not (gpu / "summary.json").is_file():
        pytest.skip("no GPU study committed")
    summary = json.loads((gpu / "summary.json").read_text())
    assert not summary.get("partial")
    ran = {}
    for k in summary["runs"]:
        r = json.loads((gpu / f"{k}.json").read_text())
        ran[r["title"]] = r["epochs"]
    monkeypatch.delenv("BM_COMPARISON_ROOT", raising=False)
    at = comparison_page(env)
    box = at.selectbox(key="cmp_study")
    assert box.value == str(gpu) and summary["title"] in box.options
    rows = {**at.dataframe[0].value.set_index("model")["epochs"].to_dict(),
            **at.dataframe[1].value.set_index("model")["epochs"].to_dict()}
    assert all(rows[t] == e for t, e in ran.items())
    pre = at.dataframe[0].value
    assert list(pre.columns[:2]) == ["model", "measured on"]  # seen without scrolling: copies vs the original crops
    how = {**pre.set_index("model")["trained with"].to_dict(),
           **at.dataframe[1].value.set_index("model")["trained with"].to_dict()}
    planned = summary["budget"]["epochs"]
    for title, e in ran.items():  # a row cut by the time guard says so where its recipe is written
        assert (f"stopped by the time guard at {e} of {planned} epochs" in how[title]) == (e < planned), how[title]
    fewest = min(ran.values())
    warned = [w.value for w in at.warning if "far too short" in w.value]
    if fewest < 20:
        cut = " (the fewest any run here got)" if fewest < summary["budget"]["epochs"] else ""
        assert len(warned) == 1 and warned[0].startswith(f"{fewest} epochs{cut} is far too short")
    else:
        assert warned == []
    assert any("copies" in c.value for c in at.caption)  # the copies the GPU study was measured on are said
    # a model of both studies picked in the detail view; another study opens its detail on the deployed model again
    at.selectbox(key="cmp_model").select("Xception").run()
    assert at.selectbox(key="cmp_model").value == "Xception"
    at.selectbox(key="cmp_study").select(str(REPO / "assets" / "comparison")).run()
    assert not at.exception, at.exception
    assert "(bundled default)" in at.selectbox(key="cmp_model").value


def test_a_viewer_is_told_to_choose_a_case_not_to_start_one(env):
    at = app(env, user=("vera", "viewer"))
    at.switch_page("views/differential.py").run()
    said = " ".join(i.value for i in at.info)
    assert "Choose one under **Active case**" in said and "Start one" not in said
    tech = app(env, user=("tina", "technologist"))
    tech.switch_page("views/differential.py").run()
    assert "Start one on the **Classify** page" in " ".join(i.value for i in tech.info)


def test_try_the_demo_case_opens_a_case_marked_as_a_demo(env):
    """A technologist without crops of their own opens the demo from Classify: a case of the shipped example images,
    said to be a demo on the page and in the case picker, and stored as one (so no lab figure counts it)."""
    at = app(env, user=("tina", "technologist"))
    at.switch_page("views/classify.py").run()
    btn = next(b for b in at.button if b.label == "Try the demo case")
    assert not btn.disabled
    btn.click().run()
    assert not at.exception, at.exception
    wait_classified(at)
    case = CaseStore(env["db"]).get_case(at.session_state["case_id"])
    assert case.demo and case.case_code == "DEMO-1" and len(case.cells) > 40
    assert any("Demo case: example images from public datasets" in w.value for w in at.warning)
    assert any(str(o).startswith("DEMO-1 (demo, ") for o in at.selectbox(key="_w_case_id").options)
    # a second demo is another case, never the first one's cells counted twice
    next(b for b in at.button if b.label == "Try the demo case").click().run()
    assert not at.exception, at.exception
    assert [c["case"] for c in CaseStore(env["db"]).list_cases()] == ["DEMO-2", "DEMO-1"]


def _signed_case(store, code, cells, reviews, *, demo=False, sign=True):
    """A case of ``cells`` (CellInput), reviewed {position: label} then every other cell confirmed, and signed."""
    from bmcore import caserules
    from tests.conftest import TEST_PASSWORD, actor

    tech, path = actor(store, "tina", "technologist"), actor(store, "drp", "pathologist")
    cid = store.create_case(code, cells, actor=tech, model_classes=DEV_CLASSES, model_name="m",
                            model_sha256="ab" * 32, demo=demo)
    for c in store.get_case(cid).cells:
        if c.position in reviews:
            store.review_cell(c.id, tech, reviews[c.position])
    store.review_cells(cid, tech, {c.id: c.version for c in store.get_case(cid).cells if caserules.unresolved(c)})
    if sign:
        store.sign_off(cid, path, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    return cid


def test_the_agreement_page_counts_the_labs_signed_cells_only_figures_by_hand(env):
    """One signed case of 4 counted cells (a confident LYT kept; a confident NGS signed as a band, a class the model
    lacks; a flagged BLA kept; a refused image signed as an erythroblast) and one dismissed image; a signed demo case
    and an open case that must not count. By hand: 2 of 4 agree (50.0%), 1 of 2 auto-accepted cells changed, 1
    refused, NGB and EBO cannot be named by the model."""
    from bmcore.cases import CellInput

    store = CaseStore(env["db"])
    ok = dict(ok=True, confidence=0.99)
    _signed_case(store, "BM-1", [CellInput("a.jpg", predicted="LYT", **ok), CellInput("b.jpg", predicted="NGS", **ok),
                                 CellInput("c.jpg", predicted="BLA", critical="BLA", **ok),
                                 CellInput("d.jpg", True, predicted="LYT", rejected=True, reject_reason="unlike"),
                                 CellInput("e.jpg", True, predicted="NIF", rejected=True, reject_reason="unlike")],
                 {1: "NGB", 3: "EBO", 4: "DIS"})
    _signed_case(store, "DEMO-1", [CellInput("x.jpg", predicted="MON", **ok)], {0: "EOS"}, demo=True)
    _signed_case(store, "BM-2", [CellInput("y.jpg", predicted="MON", **ok)], {0: "EOS"}, sign=False)
    at = app(env, user=("drpath", "pathologist"))
    at.switch_page("views/agreement.py").run()
    assert not at.exception, at.exception
    assert metric(at, "Agreement") == "50.0%"
    assert metric(at, "Signed cells") == "4 in 1 case(s)"
    assert metric(at, "Auto-accepted, then changed") == "1 of 2"
    assert metric(at, "Refused by the gate") == "1"
    warnings = [w.value for w in at.warning]
    assert "NGB: 1 signed cell; the model cannot name them" in warnings
    assert "EBO: 1 signed cell; the model cannot name them" in warnings
    assert any("1 signed demo case(s) left out" in c.value for c in at.caption)
    per = at.dataframe[0].value.set_index("class")
    assert per.loc["NGS", "precision"] == 0.0 and per.loc["LYT", "recall"] == 1.0 and per.loc["NGB", "recall"] == 0.0
    # the page is for pathologists and admins; the store refuses a technologist whatever a page shows
    tech = app(env, user=("tina2", "technologist"))
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # not in a technologist's navigation
        tech.switch_page("views/agreement.py")
    from bmcore.agreement import lab_agreement
    from bmcore.cases import PermissionDenied

    with pytest.raises(PermissionDenied):
        lab_agreement(store, sign_in(env, "tina3", "technologist"))


def test_the_comparison_lesson_counts_from_the_data_and_like_with_like_keeps_to_one_start_and_budget(env):
    """The lesson's counts (networks, how many from scratch and their epochs) are the study's own; the like-with-like
    view shows only runs of the chosen starting weights trained with exactly the study's budget, names the ones left
    out, and puts the VGG16 '~8%' next to what guessing gets."""
    import plotly.io as pio

    from bmcore.bundle import load_bundle
    from bmcore.cli import default_bundle
    from bmcore.comparison import (PRETRAINED, SCRATCH, budget_changes, find_studies, load_results, load_summary,
                                   result_from_bundle, weights_group)

    at = comparison_page(env)
    study = find_studies(REPO / "assets")[0]
    results, budget = load_results(study), load_summary(study)["budget"]
    rows = [result_from_bundle(load_bundle(default_bundle()))] + results
    scratch = [r for r in rows if weights_group(r["weights_source"]) == SCRATCH]
    lo, hi = min(r["epochs"] for r in scratch), max(r["epochs"] for r in scratch)
    lesson = next(m.value for m in at.markdown if "Most of the difference is the starting point" in m.value)
    span = f"for {lo} epochs" if lo == hi else f"for {lo} to {hi} epochs"
    assert f"Of the {len(rows)} networks shown, {len(scratch)} started from random weights and were trained {span}" \
        in lesson
    assert "VGG16 at about 8%" in lesson and "guessing gets about 7% (1 in 14)" in lesson
    assert "seed 0" not in lesson.lower()
    for group in (PRETRAINED, SCRATCH):
        at.radio(key="cmp_like_group").set_value(group).run()
        assert not at.exception, at.exception
        want = {r["title"] for r in results if weights_group(r["weights_source"]) == group
                and not budget_changes(r, budget)}
        charts = [pio.from_json(c.proto.spec) for c in at.get("plotly_chart")]
        like = next(f for f in charts if f.data and set(f.data[0].y) <= {r["title"] for r in rows}
                    and len(f.data) == 1 and set(f.data[0].y) == want)
        assert set(like.data[0].y) == want
        changed = [r["title"] for r in results if weights_group(r["weights_source"]) == group and
                   budget_changes(r, budget)]
        cap = next(c.value for c in at.caption if c.value.startswith(f"{group}, trained with this study's budget"))
        assert all(t in cap for t in changed) and (("Left out" in cap) == bool(changed))
