"""The case report (HTML, PDF) and the laboratory exports (FHIR R4 JSON, CSV) of one realistic case: what they say is
what the store's case rules and the Differential page say."""

import csv
import io
import json
import os
import shutil
import subprocess

import pytest

from bmcore.cases import CaseError, CaseStore, CellInput
from bmcore.report import PRELIMINARY, build_report, case_differential, case_rows, render_html_report
from tests.conftest import TEST_PASSWORD

RUO = "For research use only. Not for use in diagnostic procedures."
HCL = ["HAC", "LYT", "MON", "EOS", "NGS"]  # a hairy-cell model: no blasts, no erythroid precursors


def _thumb(colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, "JPEG")
    return buf.getvalue()


def _p(top, conf, other="LYT"):
    return {top: conf, other: round(1 - conf, 2)} if top != other else {top: conf, "MON": round(1 - conf, 2)}


def make_case(store: CaseStore, code="BM-2026-0142", *, sign=True):
    """12 cells: 6 confident lymphocytes, 3 hairy-cell flags (one confirmed HAC, two relabelled LYT by a reviewer),
    1 uncertain monocyte, and 3 gate-rejected images (uncertain and hairy-flagged by the model), dismissed by the
    pathologist as not cells (never counted).
    Reviewed by a technologist in the gallery (bulk) and by a pathologist one by one; signed off if ``sign``."""
    for name, role, disp in (("tess", "technologist", "Tess Tech"), ("pat", "pathologist", "Dr Pat Path")):
        if name not in {u["username"] for u in store.list_users()}:
            store.add_user(name, role, TEST_PASSWORD, display_name=disp)
    tess, pat = store.authenticate("tess", TEST_PASSWORD), store.authenticate("pat", TEST_PASSWORD)
    cells = [CellInput(f"lyt{i}.jpg", True, predicted="LYT", confidence=0.97, probabilities=_p("LYT", 0.97),
                       thumbnail=_thumb((120, 120, 200))) for i in range(6)]
    cells += [CellInput(f"hac{i}.jpg", True, predicted="HAC", confidence=0.8, probabilities=_p("HAC", 0.8),
                        hairy_flag=True, critical="HAC", thumbnail=_thumb((200, 90, 90))) for i in range(3)]
    cells += [CellInput("mon.jpg", True, predicted="MON", confidence=0.5, probabilities=_p("MON", 0.5),
                        uncertain=True, thumbnail=_thumb((90, 200, 90)))]
    cells += [CellInput(f"rej{i}.jpg", True, predicted="LYT", confidence=0.3, probabilities=_p("LYT", 0.3),
                        uncertain=True, hairy_flag=True, rejected=True, reject_reason="not like a cell crop")
              for i in range(3)]
    cid = store.create_case(code, cells, actor=tess, model_name="hcl-test", model_sha256="ab" * 32,
                            model_classes=HCL, rules={"hairy_flag_at": 0.5})
    store.set_case_details(cid, tess, specimen={"specimen_id": "S-26-0142", "site": "posterior iliac crest aspirate",
                                                "collected": "2026-03-02", "stain": "May-Grünwald-Giemsa"},
                           target_count=500)
    case = store.get_case(cid)
    by = {c.name: c for c in case.cells}
    # the technologist confirms the six lymphocytes on one gallery page (one bulk action)
    store.review_cells(cid, tess, {by[f"lyt{i}.jpg"].id: by[f"lyt{i}.jpg"].version for i in range(6)})
    # the pathologist resolves the flagged cells one by one: one hairy cell confirmed, two are lymphocytes
    store.review_cell(by["hac0.jpg"].id, pat, "HAC")
    store.review_cell(by["hac1.jpg"].id, pat, "LYT")
    store.review_cell(by["hac2.jpg"].id, pat, "LYT")
    store.review_cell(by["mon.jpg"].id, pat, "MON")
    # the three images the gate would not judge are looked at and dismissed as not cells (one gallery action)
    store.review_cells(cid, pat, {by[f"rej{i}.jpg"].id: by[f"rej{i}.jpg"].version for i in range(3)}, label="DIS")
    if sign:
        store.sign_off(cid, pat, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)
    return cid


@pytest.fixture
def store(tmp_path):
    return CaseStore(str(tmp_path / "db" / "cases.db"))


def test_html_report_of_a_signed_case(store):
    cid = make_case(store)
    case = store.get_case(cid)
    html = render_html_report(case, {"name": "hcl-test"}, store.audit(cid), users=store.list_users())
    assert html.count(RUO) == 2 and PRELIMINARY not in html
    # gate-rejected images are their own bin, never "uncertain"; dismissed by a reviewer, they stay out of the count
    d = case_differential(case)
    assert d.excluded == {"dismissed by a reviewer as not a cell": 3} and d.pending == 0
    assert "Not judged by the gate (3)" in html and "uncertain or flagged" not in html
    assert "0 given a class by a reviewer (counted), 3 dismissed as not a cell, 0 not reviewed yet" in html
    assert html.count("gate: not judged -&gt; reviewer: dismissed, not a cell") == 3
    # one hairy-cell line, counted from the reviewers' labels: 1 HAC of 10 counted cells, not the model's 3 flags
    assert html.count("Hairy cells:") == 1 and html.count("Hairy-cell") == 0
    assert "1 cell(s) counted as hairy cells (HAC), 10.0% of 10 counted cells" in html
    assert "flagged 3 cell(s) when classifying: 0 awaiting review, 2 given another class by a reviewer" in html
    # the creator by display name; the specimen; the target count as progress
    assert "by Tess Tech (tess)" in html and "(name not entered)" not in html
    assert "S-26-0142" in html and "May-Grünwald-Giemsa" in html
    assert "10 of 500 cells counted (2% of the target count)" in html
    # blast %: this model has no blast class; M:E: no erythroid precursors
    r = build_report(case, {}, store.audit(cid), store.list_users())
    assert r.blast_text.startswith("not available: the model does not recognise blasts")
    assert "erythroid precursors" in r.me_text
    # who did what: the gallery's bulk confirmation and the one-by-one reviews are told apart
    people = {p["username"]: p for p in r.people}
    assert people["tess"]["who"] == "Tess Tech (tess)" and people["pat"]["who"] == "Dr Pat Path (pat)"
    assert r.reviewers == ["Dr Pat Path (pat)", "Tess Tech (tess)"]  # display names, as the users entered them
    assert people["tess"]["confirmed in gallery"] == 6 and people["tess"]["gallery actions"] == 1
    assert people["tess"]["confirmed one by one"] == 0
    assert people["pat"]["confirmed one by one"] == 2 and people["pat"]["relabelled one by one"] == 2
    assert people["pat"]["confirmed in gallery"] == 0 and "sign-off" in people["pat"]["other"]
    assert "Dr Pat Path" in html  # the signature block


def test_unsigned_report_is_preliminary_and_blast_percent_is_qualified(store):
    cid = store.create_case("BM-U", [CellInput("a.jpg", True, predicted="BLA", confidence=0.9,
                                                probabilities={"BLA": 0.9, "LYT": 0.1}),
                                      CellInput("b.jpg", True, predicted="LYT", confidence=0.9,
                                                probabilities={"BLA": 0.1, "LYT": 0.9})],
                            actor=__import__("tests.conftest", fromlist=["actor"]).actor(store),
                            model_classes=["BLA", "LYT", "ART"])
    case = store.get_case(cid)
    html = render_html_report(case, {}, store.audit(cid))
    assert html.count(PRELIMINARY) == 2 and "#1 BLA (0.90)" not in html
    r = build_report(case)
    assert r.blast_text.startswith("50.0% (1 of 2 counted cells;")
    assert "does not recognise erythroid precursors (EBO, PEB)" in r.blast_text
    assert "2 of the counted cells carry only the model's label" in r.blast_text
    assert "(default; none set for this case)" in r.progress_text and " of 200 " in r.progress_text


def test_case_details_are_checked(store):
    cid = make_case(store, sign=False)
    tess = store.authenticate("tess", TEST_PASSWORD)
    with pytest.raises(CaseError, match="YYYY-MM-DD"):
        store.set_case_details(cid, tess, specimen={"collected": "2 March"})
    with pytest.raises(CaseError, match="unknown specimen field"):
        store.set_case_details(cid, tess, specimen={"patient_name": "x"})
    with pytest.raises(CaseError, match="whole number of cells from 1 to 10000"):
        store.set_case_details(cid, tess, target_count=0)
    store.set_case_details(cid, tess, target_count=200)
    assert store.get_case(cid).target_count == 200
    assert store.audit(cid)[-1]["action"] == "target-count" and store.audit(cid)[-1]["to"] == "200"
    store.add_user("vic", "viewer", TEST_PASSWORD)
    with pytest.raises(Exception, match="technologist"):
        store.set_case_details(cid, store.authenticate("vic", TEST_PASSWORD), target_count=300)


def test_cell_csv_keeps_file_box_labels_reviewer_confidence(store):
    cid = make_case(store)
    rows = case_rows(store.get_case(cid))
    text = io.StringIO(__import__("bmcore.cellrows", fromlist=["x"]).rows_to_csv(rows))
    got = list(csv.DictReader(text))
    assert {"file", "box", "predicted", "final_label", "reviewed_by", "confidence"} <= set(got[0])
    hac1 = next(r for r in got if r["file"] == "hac1.jpg")
    assert (hac1["predicted"], hac1["final_label"], hac1["reviewed_by"], hac1["confidence"], hac1["box"]) == \
        ("HAC", "LYT", "pat", "0.8", "")


# -- PDF --------------------------------------------------------------------------------------------------------------
def _need_poppler():
    if shutil.which("pdftotext") and shutil.which("pdftoppm"):
        return
    if os.environ.get("BM_REQUIRE_POPPLER") == "1":  # .ci/run installs poppler-utils
        pytest.fail("pdftotext / pdftoppm (poppler-utils) are missing")
    pytest.skip("pdftotext / pdftoppm (Debian package poppler-utils) are not installed: the PDF is not read back")


def _pdf_pages(pdf: bytes, tmp_path) -> list[str]:
    f = tmp_path / "r.pdf"
    f.write_bytes(pdf)
    text = subprocess.run(["pdftotext", "-layout", str(f), "-"], capture_output=True, text=True, check=True).stdout
    return text.split("\f")[:-1]


@pytest.mark.parametrize("signed", [True, False])
def test_pdf_report(store, tmp_path, signed):
    from bmcore.pdfreport import render_pdf_report

    _need_poppler()
    cid = make_case(store, sign=signed)
    case = store.get_case(cid)
    pdf = render_pdf_report(case, {"name": "hcl-test", "versions": {"bmcore": "0.1.0"}}, store.audit(cid),
                            store.list_users())
    assert pdf[:5] == b"%PDF-"
    pages = _pdf_pages(pdf, tmp_path)
    assert len(pages) >= 2
    flat = lambda s: " ".join(s.split())
    for p in pages:  # every page: the research-use statement; until signed, "preliminary"
        assert RUO in flat(p)
        assert (PRELIMINARY in p) != signed
    text = flat("\n".join(pages))
    for want in ("case BM-2026-0142", "S-26-0142", "posterior iliac crest aspirate", "May-Grünwald-Giemsa",
                 "hcl-test", "bmcore 0.1.0", "ab" * 32, "HAC (Hairy cell)", "Not covered:",
                 "1 cell(s) counted as hairy cells (HAC), 10.0% of 10 counted cells",
                 "10 of 500 cells counted", "Not judged by the gate (3)", "Flagged and critical cells (4)",
                 "Tess Tech (tess)", "Appendix: audit trail"):
        assert want in text, want
    assert "LYT Lymphocyte 8 80.0%" in text and "HAC Hairy cell 1 10.0%" in text  # what the Differential counts
    if signed:
        assert "Signed off by Dr Pat Path (pathologist)" in text and "Signature: signed by Dr Pat Path" in text
    else:
        assert "Signed off by: ____" in text
    # rendered to an image: the first page is drawn (thumbnails included) and is not blank
    subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "2", str(tmp_path / "r.pdf"),
                    str(tmp_path / "page")], check=True)
    from PIL import Image

    pngs = sorted(tmp_path.glob("page*.png"))
    assert len(pngs) == 2
    colours = Image.open(pngs[0]).convert("RGB").getcolors(1 << 20)
    assert len(colours) > 20  # text, the red banner and the thumbnails, not an empty page
    if os.environ.get("BM_KEEP_PDF"):
        shutil.copy(tmp_path / "r.pdf", os.path.join(os.environ["BM_KEEP_PDF"], f"report_{signed}.pdf"))


# -- FHIR -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [True, False])
def test_fhir_r4_diagnostic_report(store, signed):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from bmcore.fhirexport import LOCAL_SYSTEM, fhir_json

    cid = make_case(store, sign=signed)
    case = store.get_case(cid)
    data = json.loads(fhir_json(case, {"name": "hcl-test"}, store.audit(cid), store.list_users()))
    rep = DiagnosticReport.model_validate(data)  # the R4 (R4B) model: raises on anything not valid FHIR
    assert rep.status == ("final" if signed else "preliminary")
    assert (PRELIMINARY in rep.conclusion) != signed and RUO in rep.conclusion
    obs = {o.id: o for o in rep.contained if o.get_resource_type() == "Observation"}
    d = case_differential(case)
    # one Observation per counted cell type, with the Differential page's percentages, and the M:E ratio
    pct = {k.removeprefix("pct-"): o.valueQuantity.value for k, o in obs.items() if k.startswith("pct-")}
    assert pct == {c: pytest.approx(round(v, 1)) for c, v in d.percent.items()} == {"LYT": 80.0, "HAC": 10.0,
                                                                                      "MON": 10.0}
    assert {r.reference for r in rep.result} == {f"#{k}" for k in obs}
    assert obs["me-ratio"].valueQuantity is None and "erythroid" in obs["me-ratio"].dataAbsentReason.text
    assert obs["counted"].valueQuantity.value == 10
    assert all(c.system == LOCAL_SYSTEM for o in obs.values() for c in o.code.coding)  # no guessed LOINC codes
    spec = next(o for o in rep.contained if o.get_resource_type() == "Specimen")
    assert spec.accessionIdentifier.value == "S-26-0142" and spec.collection.collectedDateTime.isoformat() == \
        "2026-03-02"
    if signed:
        assert rep.resultsInterpreter[0].display == "Dr Pat Path"


# -- the pages show what the report counts ----------------------------------------------------------------------------
def test_differential_and_export_pages_show_what_the_report_counts(env):
    from tests.test_app import app, metric

    store = CaseStore(env["db"])
    cid = make_case(store, sign=False)
    case = store.get_case(cid)
    r = build_report(case, {}, store.audit(cid), store.list_users())
    at = app(env, "hac")
    at.session_state["case_id"] = cid
    at.switch_page("views/differential.py").run()
    assert not at.exception, at.exception
    shown = at.dataframe[0].value
    assert dict(zip(shown["class"], shown["count"])) == r.d.counts == {"LYT": 8, "HAC": 1, "MON": 1}
    assert metric(at, "Hairy cells (HAC)") == "1"
    assert sum(r.hairy.text in c.value for c in at.caption) == 1  # one hairy-cell line, the report's
    assert any(r.blast_text in c.value for c in at.caption)
    at.switch_page("views/export.py").run()
    assert not at.exception, at.exception
    assert any("PRELIMINARY - not signed off" in w.value for w in at.warning)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Report (PDF)", "Report for the LIS (FHIR R4 JSON)", "Cell table (CSV)",
                      "Report (HTML, printable)"]
    # the specimen form refuses a bad date with a clear message and saves nothing
    next(t for t in at.text_input if t.label.startswith("Collection date")).set_value("03/02/2026")
    next(b for b in at.button if b.label == "Save details").click().run()
    assert any("Not saved: collection date '03/02/2026' is not a date written as YYYY-MM-DD" in e.value
               for e in at.error)
    assert store.get_case(cid).specimen["collected"] == "2026-03-02"
    next(t for t in at.text_input if t.label.startswith("Stain")).set_value("Wright-Giemsa")
    next(t for t in at.text_input if t.label.startswith("Collection date")).set_value("2026-03-03")
    next(b for b in at.button if b.label == "Save details").click().run()
    assert not at.error and store.get_case(cid).specimen["stain"] == "Wright-Giemsa"


def test_the_target_count_set_on_the_review_page_is_stored_with_the_case(env):
    from tests.test_app import app

    store = CaseStore(env["db"])
    cid = make_case(store, sign=False)
    at = app(env, "hac")
    at.session_state["case_id"] = cid
    at.switch_page("views/review.py").run()
    box = next(n for n in at.number_input if n.label == "Target count (cells)")
    assert box.value == 500  # the case's, set by the technologist
    box.set_value(300).run()
    assert not at.exception, at.exception
    assert store.get_case(cid).target_count == 300 and store.audit(cid)[-1]["action"] == "target-count"
    assert "10 of 300 cells counted" in build_report(store.get_case(cid)).progress_text


def test_a_case_from_before_accounts_names_its_creator_honestly(tmp_path):
    """A typed creator's name is marked as never verified; a case created with no name says so, not "(name not
    entered)" or "unknown"."""
    import sqlite3

    from tests.test_auth import FIXTURE

    con = sqlite3.connect(tmp_path / "old.db")
    con.executescript(FIXTURE.read_text())
    con.close()
    store = CaseStore(f"sqlite:///{tmp_path / 'old.db'}")
    old1, old2 = (store.get_case(store.case_id(c)) for c in ("OLD-1", "OLD-2"))
    assert build_report(old1).creator == "Dr Typed (typed name, not verified)"
    html = render_html_report(old2, {}, store.audit(old2.id))
    assert "by a user whose name was not recorded (the case predates sign-in accounts)" in html
    assert "by unknown" not in html


def test_a_stale_details_form_is_refused_and_keeps_what_was_typed(env):
    """Two technologists with the Export page's details form open: B saves an accession number; A, whose form was
    filled before, types another and saves. A is refused (B named, both values said), B's value stays, A's typed
    value stays in A's form (it used to be replaced by B's while A was told "Saved"); once A loads the current
    details, A's next save goes through."""
    from tests.conftest import actor
    from tests.test_app import app

    store = CaseStore(env["db"])
    cid = make_case(store, sign=False)
    users = {}
    for name in ("tina", "tom"):
        users[name] = actor(store, name, "technologist")
    pages = {}
    for name in users:
        at = app(env, "hac", user=None)
        at.session_state["actor"] = users[name]
        at.session_state["case_id"] = cid
        at.switch_page("views/export.py").run()
        assert not at.exception, at.exception
        pages[name] = at

    def box(at, label):
        return next(t for t in at.text_input if t.label.startswith(label))

    def save(at):
        next(b for b in at.button if b.label == "Save details").click().run()
        assert not at.exception, at.exception

    a, b = pages["tina"], pages["tom"]
    before = store.get_case(cid).specimen["specimen_id"]
    box(b, "Specimen / accession").set_value("ACC-B-999")
    save(b)
    assert store.get_case(cid).specimen["specimen_id"] == "ACC-B-999" and not b.error
    box(a, "Specimen / accession").set_value("ACC-A-777")
    next(n for n in a.number_input if n.label == "Target count (cells)").set_value(300)
    save(a)
    refusal = " ".join(e.value for e in a.error)
    assert "Not saved" in refusal and "tom" in refusal.lower() and "ACC-B-999" in refusal and before in refusal, refusal
    assert not [s for s in a.success if "Saved" in s.value]
    stored = store.get_case(cid)
    assert stored.specimen["specimen_id"] == "ACC-B-999" and stored.target_count != 300, "nothing of A's was saved"
    assert box(a, "Specimen / accession").value == "ACC-A-777", "A's typed value is kept in A's form"
    assert any("changed these details" in w.value for w in a.warning)
    # A looks at the stored details, then saves a deliberate change on top of them
    next(x for x in a.button if x.label.startswith("Load the current details")).click().run()
    assert box(a, "Specimen / accession").value == "ACC-B-999"
    assert not any("changed these details" in w.value for w in a.warning)
    box(a, "Stain").set_value("May-Grunwald-Giemsa")
    save(a)
    stored = store.get_case(cid)
    assert stored.specimen["specimen_id"] == "ACC-B-999" and stored.specimen["stain"] == "May-Grunwald-Giemsa"
    assert any("Saved" in s.value for s in a.success)


def test_case_details_compare_and_set_in_the_store(store):
    from bmcore.cases import ConflictError, case_details

    cid = make_case(store, sign=False)
    tess = store.authenticate("tess", TEST_PASSWORD)
    shown = case_details(store.get_case(cid))
    store.set_case_details(cid, tess, target_count=300, expected=shown)  # nobody changed it: saved
    with pytest.raises(ConflictError, match=r"tess changed the specimen details.*target count now 300"):
        store.set_case_details(cid, tess, specimen={"site": "sternum"}, expected=shown)
    assert store.get_case(cid).specimen.get("site") != "sternum"
    store.set_case_details(cid, tess, specimen={"site": "sternum"}, expected=case_details(store.get_case(cid)))
    assert store.get_case(cid).specimen == {"site": "sternum"}
    # the Review page shows only the target count and sends only that: a specimen change since is not its conflict
    store.set_case_details(cid, tess, target_count=400, expected={"target_count": 300})
    with pytest.raises(ConflictError, match=r"target count now 400 \(your page showed 300\)"):
        store.set_case_details(cid, tess, target_count=200, expected={"target_count": 300})
    assert store.get_case(cid).target_count == 400


def test_a_refusal_on_a_first_entry_of_details_is_not_folded_away(env):
    """The details section is open while no details are stored; a colleague's first save must not fold A's section
    (and the refusal in it) away when A's stale save is refused."""
    from tests.conftest import actor
    from tests.test_app import app

    store = CaseStore(env["db"])
    cid = make_case(store, sign=False)
    tess = store.authenticate("tess", TEST_PASSWORD)
    store.set_case_details(cid, tess, specimen={})  # no details stored yet
    pages = []
    for name in ("tina", "tom"):
        at = app(env, "hac", user=None)
        at.session_state["actor"] = actor(store, name, "technologist")
        at.session_state["case_id"] = cid
        at.switch_page("views/export.py").run()
        pages.append(at)

    def section(at):
        return next(e for e in at.expander if e.label == "Specimen details and target count")

    a, b = pages
    assert section(a).proto.expanded and section(b).proto.expanded
    for at, acc in ((b, "ACC-B-1"), (a, "ACC-A-1")):
        next(t for t in at.text_input if t.label.startswith("Specimen / accession")).set_value(acc)
        next(x for x in at.button if x.label == "Save details").click().run()
        assert not at.exception, at.exception
    assert any("Not saved" in e.value for e in a.error) and store.get_case(cid).specimen["specimen_id"] == "ACC-B-1"
    assert section(a).proto.expanded, "the refused form stays open"
    a.run()
    assert section(a).proto.expanded, "and stays open on the next run"


def test_an_unsigned_case_with_pending_cells_gives_ranges_not_numbers_in_pdf_and_fhir(store, tmp_path):
    """A possible blast awaits review and the gate refused one image: the PDF and the (valid) FHIR report give each
    percentage as the range it can still take, never as a final number; the blast line says how many are pending."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from bmcore.fhirexport import fhir_json
    from bmcore.pdfreport import render_pdf_report
    from tests.conftest import actor

    _need_poppler()
    cells = [CellInput(f"lyt{i}.jpg", True, predicted="LYT", confidence=0.97, probabilities={"LYT": 0.97, "BLA": 0.03})
             for i in range(3)]
    cells += [CellInput("bla.jpg", True, predicted="LYT", confidence=0.6, probabilities={"LYT": 0.6, "BLA": 0.4},
                        uncertain=True, critical="BLA"),
              CellInput("odd.jpg", True, predicted="LYT", confidence=0.5, probabilities={"LYT": 0.5, "BLA": 0.5},
                        rejected=True, reject_reason="unlike the model's training crops")]
    cid = store.create_case("BM-P", cells, actor=actor(store), model_classes=["LYT", "BLA"])
    case = store.get_case(cid)
    d = case_differential(case)
    assert (d.pending, d.pending_blasts, d.blast_percent) == (2, 1, None)
    rep = DiagnosticReport.model_validate(json.loads(fhir_json(case, {})))
    obs = {o.id: o for o in rep.contained if o.get_resource_type() == "Observation"}
    assert obs["pct-LYT"].valueQuantity is None and obs["pct-BLA"].valueQuantity is None
    assert (obs["pct-LYT"].valueRange.low.value, obs["pct-LYT"].valueRange.high.value) == (60.0, 100.0)
    assert (obs["pct-BLA"].valueRange.low.value, obs["pct-BLA"].valueRange.high.value) == (0.0, 40.0)
    assert any("pending: 1 possible blast(s) and 1 other cell(s) await review" in n.text for n in obs["pct-BLA"].note)
    text = " ".join("\n".join(_pdf_pages(render_pdf_report(case, {}), tmp_path)).split())
    assert "LYT Lymphocyte 3 pending: 60.0–100.0%" in text and "BLA Blast 0 pending: 0.0–40.0%" in text
    assert "Blasts: pending: 1 possible blast(s)" in text and "Not judged by the gate (1)" in text
    assert "#4 model: LYT 0.60" in text and "0 not reviewed yet" not in text
