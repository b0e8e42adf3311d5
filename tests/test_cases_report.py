import pytest
from bmcore import caserules

from bmcore.cases import CaseError, CaseStore, CellInput, ConflictError, PermissionDenied
from tests.conftest import REPO, TEST_PASSWORD, actor
from bmcore.differential import REJECTED, UNCERTAIN, UNREADABLE, differential
from bmcore.report import case_rows, render_html_report


def _cells():
    return [CellInput("a.jpg", True, predicted="BLA", confidence=0.9, probabilities={"BLA": 0.9, "EBO": 0.1}),
            CellInput("b.jpg", True, predicted="EBO", confidence=0.4, probabilities={"BLA": 0.6, "EBO": 0.4},
                      uncertain=True),
            CellInput("c.jpg", True, predicted="ART", confidence=0.8, probabilities={"BLA": 0.2, "EBO": 0.8}),
            CellInput("d.jpg", False, error="not a recognised image format")]


@pytest.fixture
def store(tmp_path):
    return CaseStore(str(tmp_path / "db" / "cases.db"))


def test_case_lifecycle(store):
    cid = store.create_case("BM-1", _cells(), actor=actor(store, "amy"), model_classes=["ART", "BLA", "EBO"])
    with pytest.raises(CaseError, match="already exists"):
        store.create_case("BM-1", _cells(), actor=actor(store))
    with pytest.raises(CaseError, match="case id is required"):
        store.create_case("  ", _cells(), actor=actor(store))
    case = store.get_case(cid)
    a, b, c, d = case.cells
    with pytest.raises(PermissionDenied, match="needs a signed-in user"):
        store.review_cell(a.id, "amy", "BLA")  # a typed name is no identity
    with pytest.raises(CaseError, match="nothing to review"):
        store.review_cell(d.id, actor(store, "amy"), "BLA")
    shown = {a.id: a.version, c.id: c.version}  # the page showed the two confident cells, not the uncertain one
    assert len(store.review_cells(cid, actor(store, "amy"), shown).changed) == 2
    with pytest.raises(CaseError, match="uncertain"):
        store.sign_off(cid, actor(store, "amy"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    store.review_cell(b.id, actor(store, "amy"), "PEB", note="large nucleus")
    store.sign_off(cid, actor(store, "amy"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    with pytest.raises(CaseError, match="signed off"):
        store.review_cell(a.id, actor(store, "bob"), "LYT")
    with pytest.raises(CaseError, match="reason"):
        store.reopen(cid, actor(store, "bob"), "")
    store.reopen(cid, actor(store, "bob"), "recount")
    log = store.audit(cid)
    assert [e["action"] for e in log] == ["create", "confirm", "confirm", "reclassify", "sign-off", "reopen"]
    assert log[3]["from"] == "EBO" and log[3]["to"] == "PEB" and log[3]["who"] == "amy"
    assert store.list_cases()[0]["status"] == "open" and store.integrity_ok()
    store.delete_case(cid, actor(store))
    assert store.list_cases() == [] and store.audit(cid) == []


def test_optimistic_locking(store):
    cid = store.create_case("BM-2", _cells(), actor=actor(store))
    cell = store.get_case(cid).cells[0]
    v = store.review_cell(cell.id, actor(store, "amy"), "BLA", expected_version=cell.version)
    with pytest.raises(ConflictError, match="changed by amy"):
        store.review_cell(cell.id, actor(store, "bob"), "LYT", expected_version=cell.version)
    store.review_cell(cell.id, actor(store, "bob"), "LYT", expected_version=v)
    assert store.get_case(cid).cells[0].label == "LYT"


def test_differential_rules():
    d = differential(["BLA", "BLA", "EBO", "NGS", "ART", "NIF", None, "LYT", None],
                     ["ART", "BLA", "EBO", "LYT", "NGS", "NIF"],
                     uncertain=[False, False, False, False, False, False, False, True, False],
                     rejected=[False] * 8 + [True])
    assert d.counts == {"BLA": 2, "EBO": 1, "NGS": 1} and d.denominator == 4
    assert d.excluded == {"ART (Artefact)": 1, "NIF (Not identifiable)": 1, UNREADABLE: 1, REJECTED: 1,
                          UNCERTAIN: 1}
    # two cells are pending (one awaiting review, one the gate would not judge): no blast % as a number, its range
    assert d.pending == 2 and d.blast_percent is None
    assert d.percent["BLA"] == pytest.approx(50) and d.blast_range == (pytest.approx(100 / 3), pytest.approx(200 / 3))
    assert d.percent_text("BLA") == "pending: 33.3–66.7%"
    settled = differential(["BLA", "BLA", "EBO", "NGS"], ["ART", "BLA", "EBO", "LYT", "NGS", "NIF"])
    assert settled.blast_percent == pytest.approx(50) and settled.percent_text("BLA") == "50.0%"
    assert d.me_ratio == pytest.approx(1.0)  # NGS (myeloid) : EBO (erythroid)
    assert d.hairy_percent is None and "Hairy-cell screening unavailable" in d.notes[0]
    no_ery = differential(["NGS"], ["NGS", "BLA"])
    assert no_ery.me_ratio is None and "the model cannot name erythroid" in no_ery.me_note
    # a reviewer's labels give the ratio, whatever the model could name; no caveat once every counted cell is reviewed
    reviewed = differential(["NGS", "NGS", "EBO", "PEB"], ["NGS", "BLA"], reviewed=[True] * 4)
    assert reviewed.me_ratio == pytest.approx(1.0) and reviewed.me_note == "2 myeloid : 2 erythroid cells"
    half = differential(["NGS", "NGS", "EBO", "PEB"], ["NGS", "BLA"], reviewed=[False, True, True, True])
    assert half.me_ratio == pytest.approx(1.0) and "provisional: 1 counted cell(s) carry only the model's label" in \
        half.me_note


def test_exports(store):
    cid = store.create_case("BM-<3>", _cells(), model_classes=["ART", "BLA", "EBO"], actor=actor(store))
    case = store.get_case(cid)
    rows = case_rows(case)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "unreadable"] and rows[0]["p_BLA"] == 0.9
    html = render_html_report(case, {"name": "m"}, store.audit(cid))
    assert html.count("For research use only. Not for use in diagnostic procedures.") == 2
    assert "BM-&lt;3&gt;" in html and "BM-<3>" not in html  # user text is escaped
    assert "Not signed off" in html and "#2 model: EBO 0.40<br>uncertain" in html


def test_cases_cli_lists_and_deletes(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    db = tmp_path / "c.db"
    store = CaseStore(str(db))
    store.create_case("KEEP", _cells(), actor=actor(store))
    store.create_case("DROP", _cells(), actor=actor(store))
    actor(store, "tess", "technologist")
    run = lambda *a, pw="": subprocess.run([sys.executable, "-m", "bmcore", "cases", *a, "--db", str(db)], cwd=REPO,
                                           capture_output=True, text=True, input=pw + "\n")
    assert "DROP" in run("list").stdout
    r = run("delete", "DROP")
    assert r.returncode == 2 and "needs an admin account" in r.stderr
    r = run("delete", "DROP", "--as", "tess", "--password-stdin", pw=TEST_PASSWORD)
    assert r.returncode == 1 and "needs the admin role; tess is a technologist" in r.stderr
    r = run("delete", "DROP", "--as", "amy", "--password-stdin", pw="wrong password")
    assert r.returncode == 1 and "wrong user name or password" in r.stderr
    assert [c["case"] for c in store.list_cases()] == ["DROP", "KEEP"]
    r = run("delete", "DROP", "--as", "amy", "--password-stdin", pw=TEST_PASSWORD)
    assert r.returncode == 0 and "deleted" in r.stdout
    assert [c["case"] for c in store.list_cases()] == ["KEEP"]
    assert store.login_events()[0]["event"] == "case-deleted" and "'DROP'" in store.login_events()[0]["detail"]
    assert run("delete", "NOPE").returncode == 1


def _flagged_cells():
    """Five classified cells: two confident, one uncertain, one critical (possible blast), one rejected."""
    return [CellInput("ok1.jpg", True, predicted="LYT", confidence=0.95, probabilities={"LYT": 0.95, "BLA": 0.05}),
            CellInput("ok2.jpg", True, predicted="LYT", confidence=0.9, probabilities={"LYT": 0.9, "BLA": 0.1}),
            CellInput("unc.jpg", True, predicted="LYT", confidence=0.4, probabilities={"LYT": 0.4, "BLA": 0.35},
                      uncertain=True),
            CellInput("bla.jpg", True, predicted="LYT", confidence=0.93, probabilities={"LYT": 0.7, "BLA": 0.3},
                      critical="BLA"),
            CellInput("rej.jpg", True, predicted="LYT", confidence=0.9, rejected=True, reject_reason="blank")]


def test_a_page_confirms_or_moves_exactly_the_cells_it_showed_at_the_versions_shown(store):
    cid = store.create_case("BULK", _flagged_cells(), model_classes=["LYT", "BLA"], actor=actor(store))
    ok1, ok2, unc, bla, rej = store.get_case(cid).cells
    pending = store.create_case("OTHER", [CellInput("p.jpg", True, pending=True)], actor=actor(store))
    seen = {ok1.id: ok1.version, ok2.id: ok2.version, rej.id: rej.version}
    store.review_cell(ok2.id, actor(store, "amy"), "PLM")  # a colleague changes one of them after the page was drawn
    res = store.review_cells(cid, actor(store, "bob"), seen)
    assert list(res.changed) == [ok1.id], "only the unchanged, labelled cell is confirmed"
    why = dict(res.skipped)
    assert "changed by amy since your page showed it (now PLM)" in why[ok2.id]
    assert "not judged by the model's gate" in why[rej.id]
    assert "Not changed: 2 (#2 ok2.jpg: changed by amy" in res.message("confirmed")
    case = store.get_case(cid)
    assert [c.final_label for c in case.cells] == ["LYT", "PLM", None, None, None]
    assert case.cells[1].reviewed_by == "amy", "amy's label stands"
    with pytest.raises(CaseError, match="not part of case"):  # a cell of another case is never touched
        store.review_cells(cid, actor(store, "bob"), {store.get_case(pending).cells[0].id: 1})
    # a flagged cell the page showed can be judged on it: moved with the others, one action id, undoable
    shown = {c.id: c.version for c in store.get_case(cid).cells if c.id in (unc.id, bla.id, rej.id)}
    moved = store.review_cells(cid, actor(store, "bob"), shown, label="BLA")
    assert set(moved.changed) == {unc.id, bla.id, rej.id}
    rows = [e for e in store.audit(cid) if e["action_id"] == moved.action_id]
    assert [e["cell"] for e in rows] == ["unc.jpg", "bla.jpg", "rej.jpg"] and {e["to"] for e in rows} == {"BLA"}
    undone = store.undo(cid, actor(store, "bob"), moved.action_id)
    assert set(undone.changed) == {unc.id, bla.id, rej.id}
    assert [c.final_label for c in store.get_case(cid).cells] == ["LYT", "PLM", None, None, None]
    redo = store.review_cells(cid, actor(store, "bob"), {c.id: c.version for c in store.get_case(cid).cells
                                                        if c.id in (unc.id, bla.id)}, label="BLA")
    store.review_cell(bla.id, actor(store, "amy"), "LYT")  # changed again after the action
    undone = store.undo(cid, actor(store, "bob"), redo.action_id)
    assert list(undone.changed) == [unc.id] and "changed again since (now LYT)" in undone.skipped[0][1]
    # sign-off names what blocks it, and refuses a page that showed other versions
    with pytest.raises(CaseError, match=r"1 uncertain or flagged cell\(s\) are unresolved.*unc\.jpg"):
        store.sign_off(cid, actor(store, "bob"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    store.review_cell(unc.id, actor(store, "bob"), "LYT")
    # the image the gate would not judge blocks sign-off until a person gives it a class or dismisses it
    with pytest.raises(CaseError, match=r"1 image\(s\) the model's gate would not judge are unresolved.*rej\.jpg"):
        store.sign_off(cid, actor(store, "bob"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    with pytest.raises(CaseError, match="only an image the gate would not judge can be dismissed"):
        store.review_cell(ok1.id, actor(store, "bob"), "DIS")  # a classified cell is given a class, not dismissed
    with pytest.raises(CaseError, match="is not a class a cell can be given"):
        store.review_cell(rej.id, actor(store, "bob"), "<b>X</b>")
    dis = store.review_cells(cid, actor(store, "bob"), {c.id: c.version for c in store.get_case(cid).cells
                                                        if c.id in (ok1.id, rej.id)}, label="DIS")
    assert list(dis.changed) == [rej.id] and "only an image the gate would not judge" in dict(dis.skipped)[ok1.id]
    assert [e["action"] for e in store.audit(cid) if e["action_id"] == dis.action_id] == ["dismiss"]
    case = store.get_case(cid)
    assert caserules.summary(case).rejected_dismissed == 1 and caserules.said_text(case.cells[4]) == \
        "gate: not judged -> reviewer: dismissed, not a cell"
    shown = {c.id: c.version for c in case.cells}
    store.review_cell(ok1.id, actor(store, "amy"), "MON")
    with pytest.raises(ConflictError, match=r"not signed: 1 cell\(s\) changed.*ok1\.jpg \(now MON by amy\)"):
        store.sign_off(cid, actor(store, "bob"), password=TEST_PASSWORD, expected_versions=shown, no_specimen_id=True, under_target=True)
    store.sign_off(cid, actor(store, "bob"), password=TEST_PASSWORD,
                   expected_versions={c.id: c.version for c in store.get_case(cid).cells}, no_specimen_id=True, under_target=True)
    assert store.get_case(cid).status == "signed"


def test_long_names_are_truncated_and_audited(store):
    long = "x" * 400 + ".jpg"
    cid = store.create_case("LONG", [CellInput(long, True, predicted="LYT"), CellInput("b" * 350, False, error="bad")],
                            actor=actor(store))
    a, b = store.get_case(cid).cells
    assert len(a.name) == 300 and a.name.endswith("….jpg") and len(b.name) == 300
    notes = [e["note"] for e in store.audit(cid) if e["action"] == "name-truncated"]
    assert notes == [f"full file name: {long}", f"full file name: {'b' * 350}"]
    with pytest.raises(CaseError, match="at most 100 characters"):
        store.create_case("C" * 101, [], actor=actor(store))


def test_pending_cells_are_filled_once(store):
    cells = [CellInput(f"p{i}.jpg", True, pending=True, sha256=f"{i:064d}") for i in range(4)]
    cid = store.create_case("PEND", cells + [CellInput("bad.jpg", False, error="empty")], model_classes=["LYT", "BLA"],
                            actor=actor(store))
    case = store.get_case(cid)
    from bmcore import caserules

    assert [caserules.status(c) for c in case.cells] == ["pending"] * 4 + ["unreadable"]
    with pytest.raises(CaseError, match="not classified yet"):
        store.review_cell(case.cells[0].id, actor(store, "amy"), "LYT")
    with pytest.raises(CaseError, match="4 cell\\(s\\) are not classified yet"):
        store.sign_off(cid, actor(store, "amy"), password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    job = store.create_job(cid, 4, "test")
    done = CellInput("", True, predicted="LYT", confidence=0.9, probabilities={"LYT": 0.9, "BLA": 0.1})
    assert store.save_results(cid, {0: done, 1: done}, job_id=job) == 2
    assert store.save_results(cid, {1: done, 2: done}, job_id=job) == 1  # #2 was filled already: left alone
    assert store.latest_job(cid)["done"] == 3
    d = __import__("bmcore.report", fromlist=["x"]).case_differential(store.get_case(cid))
    assert d.counts == {"LYT": 3} and d.excluded == {"not classified yet": 1, "unreadable": 1}
    assert store.integrity_ok()


def test_a_database_of_the_previous_version_is_upgraded_in_place(tmp_path):
    """Columns and tables added by this version (review rules, pending / critical cells, jobs) are added to an
    existing database, whose cases stay readable and reviewable."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    first = CaseStore(url)
    cid = first.create_case("OLD", _cells(), model_classes=["ART", "BLA", "EBO"], actor=actor(first))
    old = CaseStore(url)
    with old.engine.begin() as c:  # the schema as the previous version left it
        for ddl in ("ALTER TABLE cells DROP COLUMN pending", "ALTER TABLE cells DROP COLUMN critical",
                    "ALTER TABLE cases DROP COLUMN rules", "DROP TABLE jobs"):
            c.exec_driver_sql(ddl)
    old.engine.dispose()
    store = CaseStore(url)
    case = store.get_case(cid)
    assert case.rules is None and [c.pending for c in case.cells] == [False] * 4
    assert store.latest_job(cid) is None
    store.review_cell(case.cells[1].id, actor(store, "amy"), "BLA", expected_version=case.cells[1].version)
    shown = {c.id: c.version for c in store.get_case(cid).cells}
    assert len(store.review_cells(cid, actor(store, "amy"), shown).changed) == 2 and store.integrity_ok()


def test_ids_of_a_deleted_case_are_never_reused(store):
    """A stale screen of a deleted case must not act on the next case's cells (SQLite reuses ids by default)."""
    a = store.create_case("A", _cells(), actor=actor(store))
    b = store.create_case("B", _cells(), actor=actor(store))
    old = store.get_case(b).cells[0]
    store.delete_case(b, actor(store))
    c = store.create_case("C", _cells(), actor=actor(store))
    new_ids = {x.id for x in store.get_case(c).cells}
    assert c != b and old.id not in new_ids
    with pytest.raises(CaseError, match="no longer exists"):
        store.review_cell(old.id, actor(store, "amy"), "BLA", expected_version=old.version, case_id=b)
    first = store.get_case(a).cells[0]
    with pytest.raises(CaseError, match="no longer exists"):  # an action for case C naming a cell of case A
        store.review_cell(first.id, actor(store, "amy"), "BLA", expected_version=first.version, case_id=c)


def test_a_page_waiting_at_a_jobs_end_learns_of_it_when_it_comes_and_never_waits_earlier(store):
    """``JobRunner.wait_near_end`` (the Classify page's progress check): with more than one chunk still to start it
    answers at once; in the last chunk it returns as soon as the job's end is recorded, not at its timeout; while
    another job shares the classifier it answers at once even in the last chunk."""
    import threading
    import time

    from bmcore.jobs import JobRunner

    class Gate:  # a classifier that holds every chunk until released, and then classifies nothing
        def __init__(self):
            self.go, self.chunks = threading.Event(), 0

        def predict_items(self, items, **_):
            self.chunks += 1
            self.go.wait(60)
            raise RuntimeError("held")

    cid = store.create_case("JOB-1", _cells(), actor=actor(store))
    runner, gate = JobRunner(store, chunk=2), Gate()
    job = runner.submit(cid, gate, None, [(i, object()) for i in range(6)])  # 3 chunks: the end is not near
    t = time.monotonic()
    assert runner.wait_near_end(job, timeout=30) is False
    assert time.monotonic() - t < 10  # answered without waiting out its 30 s
    gate.go.set()  # the first chunk fails: the job ends (failed), recorded before it leaves the queue
    for _ in range(300):
        if not runner.running(job):
            break
        time.sleep(0.1)
    assert runner.wait_near_end(job, timeout=30) is True  # no longer queued
    assert store.latest_job(cid)["status"] == "failed"

    gate2 = Gate()
    job2 = runner.submit(cid, gate2, None, [(0, object())])  # one chunk: its end is near
    ended = {}
    waiter = threading.Thread(target=lambda: ended.update(ok=runner.wait_near_end(job2, timeout=30),
                                                          at=time.monotonic()))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # waiting for the end, which has not come
    released = time.monotonic()
    gate2.go.set()
    waiter.join(30)
    assert ended["ok"] is True and ended["at"] - released < 10  # woken by the end, not by the 30 s timeout
    assert store.latest_job(cid)["status"] == "failed" and store.latest_job(cid)["id"] == job2

    gate3 = Gate()
    job3 = runner.submit(cid, gate3, None, [(0, object())])  # near its end, but sharing the classifier with job4
    job4 = runner.submit(cid, gate3, None, [(0, object())])
    t = time.monotonic()
    assert runner.wait_near_end(job3, timeout=30) is False
    assert time.monotonic() - t < 10  # answered at once: no wait while jobs share the classifier
    gate3.go.set()
    for _ in range(300):
        if not runner.running(job3) and not runner.running(job4):
            break
        time.sleep(0.1)


def test_a_job_over_files_on_disk_fills_its_cells(store, tmp_path, crops):
    """Items read from paths (a script, a benchmark, the CLI) are hashed by their content, as uploads are: before,
    ``bytes(path)`` hashed the path's name, every result was taken for another crop, and the job ended "done" with
    every cell still pending."""
    import time

    from bmcore.bundle import find_bundles, pick_default
    from bmcore.inputs import from_paths
    from bmcore.jobs import JobRunner, pending_inputs, sha256
    from bmcore.predictor import Predictor

    files = [crops["LYT"][0], crops["BLA"][0]]
    items = from_paths(files)
    assert [c.sha256 for c in pending_inputs(items)] == [sha256(f.read_bytes()) for f in files]
    pred = Predictor(pick_default(find_bundles(REPO / "assets" / "models")))
    runner = JobRunner(store)
    cid = runner.start_case("DISK", items, pred, pred.rules, actor(store, "tina", "technologist"))
    t0 = time.time()
    while store.latest_job(cid)["status"] in ("queued", "running") and time.time() - t0 < 120:
        time.sleep(0.1)
    assert store.latest_job(cid)["done"] == 2
    assert [caserules.status(c) for c in store.get_case(cid).cells] != ["pending", "pending"]
    assert not any(c.pending for c in store.get_case(cid).cells)


def test_a_case_whose_classification_stopped_is_listed_with_its_progress(store):
    cid = store.create_case("HALF", [CellInput(f"c{i}.jpg", True, pending=True) for i in range(4)], actor=actor(store))
    job = store.create_job(cid, 4, "elsewhere:1:1")
    assert store.list_cases()[0]["short"] == "open, 0 of 4 classified, classifying"
    store.save_results(cid, {0: CellInput("c0.jpg", True, predicted="LYT", confidence=0.9)}, job_id=job)
    store.set_job(job, "interrupted")
    row = store.list_cases()[0]
    assert row["short"] == "open, 1 of 4 classified, interrupted"
    assert row["status"] == ("open; classification interrupted (the server stopped): 1 of 4 files classified; upload "
                             "the same files again to finish")
