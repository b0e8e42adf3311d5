import pytest

from bmcore.cases import CaseError, CaseStore, CellInput, ConflictError
from bmcore.report import REJECTED, UNREADABLE, case_rows, differential, render_html_report


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
    cid = store.create_case("BM-1", _cells(), who="amy", model_classes=["ART", "BLA", "EBO"])
    with pytest.raises(CaseError, match="already exists"):
        store.create_case("BM-1", _cells())
    with pytest.raises(CaseError, match="case id is required"):
        store.create_case("  ", _cells())
    case = store.get_case(cid)
    a, b, c, d = case.cells
    with pytest.raises(CaseError, match="enter your name"):
        store.review_cell(a.id, "", "BLA")
    with pytest.raises(CaseError, match="nothing to review"):
        store.review_cell(d.id, "amy", "BLA")
    assert store.confirm_all(cid, "amy") == 2  # the uncertain cell is left for a person
    with pytest.raises(CaseError, match="uncertain"):
        store.sign_off(cid, "amy")
    store.review_cell(b.id, "amy", "PEB", note="large nucleus")
    store.sign_off(cid, "amy")
    with pytest.raises(CaseError, match="signed off"):
        store.review_cell(a.id, "bob", "LYT")
    with pytest.raises(CaseError, match="reason"):
        store.reopen(cid, "bob", "")
    store.reopen(cid, "bob", "recount")
    log = store.audit(cid)
    assert [e["action"] for e in log] == ["create", "confirm", "confirm", "reclassify", "sign-off", "reopen"]
    assert log[3]["from"] == "EBO" and log[3]["to"] == "PEB" and log[3]["who"] == "amy"
    assert store.list_cases()[0]["status"] == "open" and store.integrity_ok()
    store.delete_case(cid)
    assert store.list_cases() == [] and store.audit(cid) == []


def test_optimistic_locking(store):
    cid = store.create_case("BM-2", _cells())
    cell = store.get_case(cid).cells[0]
    v = store.review_cell(cell.id, "amy", "BLA", expected_version=cell.version)
    with pytest.raises(ConflictError, match="changed by amy"):
        store.review_cell(cell.id, "bob", "LYT", expected_version=cell.version)
    store.review_cell(cell.id, "bob", "LYT", expected_version=v)
    assert store.get_case(cid).cells[0].label == "LYT"


def test_differential_rules():
    d = differential(["BLA", "BLA", "EBO", "NGS", "ART", "NIF", None, "LYT", None],
                     ["ART", "BLA", "EBO", "LYT", "NGS", "NIF"],
                     uncertain=[False, False, False, False, False, False, False, True, False],
                     rejected=[False] * 8 + [True])
    assert d.counts == {"BLA": 2, "EBO": 1, "NGS": 1} and d.denominator == 4
    assert d.excluded == {"ART (Artefact)": 1, "NIF (Not identifiable)": 1, UNREADABLE: 1, REJECTED: 1,
                          "uncertain": 1}
    assert d.percent["BLA"] == pytest.approx(50) and d.blast_percent == pytest.approx(50)
    assert d.me_ratio == pytest.approx(1.0)  # NGS (myeloid) : EBO (erythroid)
    assert d.hairy_percent is None and "Hairy-cell screening is off" in d.notes[0]
    no_ery = differential(["NGS"], ["NGS", "BLA"])
    assert no_ery.me_ratio is None and "does not recognise erythroid" in no_ery.me_note


def test_exports(store):
    cid = store.create_case("BM-<3>", _cells(), model_classes=["ART", "BLA", "EBO"])
    case = store.get_case(cid)
    rows = case_rows(case)
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"] and rows[0]["p_BLA"] == 0.9
    html = render_html_report(case, {"name": "m"}, store.audit(cid))
    assert html.count("For research use only. Not for use in diagnostic procedures.") == 2
    assert "BM-&lt;3&gt;" in html and "BM-<3>" not in html  # user text is escaped
    assert "Not signed off" in html and "uncertain, unresolved" in html


def test_cases_cli_lists_and_deletes(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    db = tmp_path / "c.db"
    store = CaseStore(str(db))
    store.create_case("KEEP", _cells())
    store.create_case("DROP", _cells())
    run = lambda *a: subprocess.run([sys.executable, "-m", "bmcore", "cases", *a, "--db", str(db)], cwd=REPO,
                                    capture_output=True, text=True)
    assert "DROP" in run("list").stdout
    r = run("delete", "DROP")
    assert r.returncode == 0 and "deleted" in r.stdout
    assert [c["case"] for c in store.list_cases()] == ["KEEP"]
    assert run("delete", "NOPE").returncode == 1
