"""The demo case: what ships under assets/demo (test-split crops and held-out fields only, attributed, small), what
opening it does (a case marked as a demo on the page and in every export), and that no lab figure counts it."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import subprocess
import time

import pytest

from bmcore import demo
from bmcore.agreement import REFUSED, SignedCell, agreement, lab_agreement
from bmcore.cases import CaseStore, CellInput
from tests.conftest import DEV_CLASSES, REPO, SHARED, actor

MANIFEST = json.loads((REPO / "assets" / "demo" / "manifest.json").read_text())
SPLITS = REPO / "train" / "splits" / "bm-dev_seed42.csv"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_the_demo_holds_test_split_crops_of_every_class_and_held_out_fields_within_2_mb():
    with open(SPLITS) as f:
        split_of = {r["sha256"]: (r["split"], r["label"]) for r in csv.DictReader(f)}
    crops = MANIFEST["crops"]
    assert len(crops) == 40
    for c in crops:
        p = demo.DEMO_DIR / c["file"]
        assert _sha(p) == c["sha256"], f"{p} is not the file the manifest names"
        assert split_of[c["sha256"]] == ("test", c["label"]), f"{c['source']} is not a test-split crop of its class"
        assert c["label"] not in p.name, "a demo file's name must not give its class away"
    assert {c["label"] for c in crops} == set(DEV_CLASSES)
    assert {c["label"]: sum(x["label"] == c["label"] for x in crops) for c in crops} == {k: 5 for k in DEV_CLASSES}
    size = sum(p.stat().st_size for p in demo.DEMO_DIR.rglob("*") if p.is_file())
    assert size <= demo.MAX_BYTES
    text = (demo.DEMO_DIR / "ATTRIBUTION.md").read_text()
    for must in ("Matek", "TCIA", "CC BY 4.0", "BCCD", "MIT", "Copyright (c) 2017 shenggan",
                 "For research use only. Not for use in diagnostic procedures."):
        assert must in text
    assert len(demo.demo_uploads()) == 42


def test_the_demo_fields_come_from_the_half_the_field_finder_never_saw():
    from train.bccd import bccd_split

    bccd = SHARED / "data" / "fields" / "bccd"
    if not (bccd / "Annotations").is_dir():
        pytest.skip(f"annotated smear fields not found at {bccd} (../shared/data is absent on this machine)")
    report = set(bccd_split(bccd)["report"])
    for f in MANIFEST["fields"]:
        stem = (demo.DEMO_DIR / f["file"]).stem
        assert stem in report
        assert _sha(demo.DEMO_DIR / f["file"]) == _sha(bccd / "JPEGImages" / f"{stem}.jpg")


def test_no_other_dataset_image_is_in_the_repository():
    """Nothing of ../shared/data enters the repository but the demo case: every tracked image is compared, by content,
    with every crop of the split file (and the BCCD fields where ../shared is here)."""
    with open(SPLITS) as f:
        dataset = {r["sha256"] for r in csv.DictReader(f)}
    bccd = SHARED / "data" / "fields" / "bccd" / "JPEGImages"
    if bccd.is_dir():
        dataset |= {_sha(p) for p in bccd.glob("*.jpg")}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    images = [REPO / t for t in tracked if t.lower().endswith(IMAGE_EXT) and (REPO / t).is_file()]
    assert images, "git ls-files found no image at all: the check would prove nothing"
    outside = [p.relative_to(REPO) for p in images
               if _sha(p) in dataset and demo.DEMO_DIR not in p.resolve().parents]
    assert outside == []


def test_demo_code_takes_the_first_free_number():
    assert demo.demo_code([]) == "DEMO-1"
    assert demo.demo_code(["DEMO-1", "DEMO-3", "BM-1"]) == "DEMO-2"


def _sign(store, cid, who):
    """Everything a sign-off needs: each refused image dismissed, every cell confirmed, then signed with the
    password."""
    from bmcore import caserules
    from tests.conftest import TEST_PASSWORD

    for c in store.get_case(cid).cells:
        if caserules.rejected_open(c):
            store.review_cell(c.id, who, "DIS", expected_version=c.version)
    shown = {c.id: c.version for c in store.get_case(cid).cells if caserules.unresolved(c)}
    store.review_cells(cid, who, shown)  # "these are right", as a reviewer's gallery confirms a page
    store.sign_off(cid, who, password=TEST_PASSWORD, no_specimen_id=True, under_target=True)


def test_an_opened_demo_case_is_marked_in_every_export_and_no_lab_figure_counts_it(tmp_path):
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    from bmcore.bundle import find_bundles, pick_default
    from bmcore.fhirexport import fhir_report
    from bmcore.fields import expand_fields
    from bmcore.inputs import from_upload
    from bmcore.jobs import JobRunner
    from bmcore.predictor import Predictor
    from bmcore.report import case_rows, render_html_report

    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}")
    path = actor(store, "drp", "pathologist")
    tech = actor(store, "tina", "technologist")
    pred = Predictor(pick_default(find_bundles(REPO / "assets" / "models")))
    items = [it for name, data in demo.demo_uploads() for it in from_upload(name, data)]
    items, fields = expand_fields(items, pred.bundle.crop_side)
    assert len(fields) == 2 and len(items) > 40  # the fields' whole cells joined the crops
    runner = JobRunner(store)
    cid = runner.start_case(demo.demo_code([]), items, pred, pred.rules, tech, demo=True)
    lab = store.create_case("BM-1", [CellInput("a.jpg", True, predicted="LYT", confidence=0.99),
                                     CellInput("b.jpg", True, predicted="NGS", confidence=0.99)],
                            actor=tech, model_classes=DEV_CLASSES, model_name="m", model_sha256="ab" * 32)
    t0 = time.time()
    while store.latest_job(cid)["status"] in ("queued", "running") and time.time() - t0 < 180:
        time.sleep(0.2)
    assert store.latest_job(cid)["status"] == "done"
    _sign(store, cid, path)
    store.review_cell(store.get_case(lab).cells[1].id, path, "NGB")  # a class the model lacks
    _sign(store, lab, path)

    listed = {c["case"]: c["demo"] for c in store.list_cases()}
    assert listed == {"DEMO-1": True, "BM-1": False}
    fig = lab_agreement(store)
    assert (fig.cases, fig.cells, fig.agree, fig.demo_cases_left_out) == (1, 2, 1, 1)
    assert fig.unknown_to_model == {"NGB": 1}

    case = store.get_case(cid)
    assert demo.DEMO_NOTE in html.unescape(render_html_report(case, {}, store.audit(cid)))
    assert {r["demo_case"] for r in case_rows(case)} == {True}
    assert {r["demo_case"] for r in case_rows(store.get_case(lab))} == {False}
    data = fhir_report(case, {}, store.audit(cid))
    DiagnosticReport.model_validate(data)
    assert data["meta"]["security"][0]["code"] == "HTEST" and demo.DEMO_NOTE in data["conclusion"]
    assert "meta" not in fhir_report(store.get_case(lab), {}, store.audit(lab))


def test_the_pdf_of_a_demo_case_says_so_on_every_page(tmp_path):
    from bmcore.pdfreport import render_pdf_report
    from tests.test_reports import _need_poppler

    _need_poppler()
    store = CaseStore(f"sqlite:///{tmp_path / 'c.db'}")
    cells = [CellInput(f"c{i}.jpg", True, predicted="LYT", confidence=0.99) for i in range(300)]
    cid = store.create_case("DEMO-1", cells, actor=actor(store, "t", "technologist"), model_classes=DEV_CLASSES,
                            demo=True)
    pdf = tmp_path / "r.pdf"
    pdf.write_bytes(render_pdf_report(store.get_case(cid), {}, store.audit(cid)))
    pages = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout.split("\f")
    pages = [" ".join(p.split()) for p in pages if p.strip()]
    assert len(pages) > 1
    assert all("Demo case: example images from public datasets" in p for p in pages)


def test_agreement_figures_by_hand():
    """Four signed cells, computed by hand: LYT kept, a confident NGS a reviewer called a band (a class the model
    lacks: auto-accepted and changed), a flagged BLA confirmed, a refused image called an erythroblast."""
    def row(pred, final, auto, month="2026-11"):
        return SignedCell("C", month, "m", "s" * 64, tuple(DEV_CLASSES), pred, final, auto, pred != final)

    rows = [row("LYT", "LYT", True), row("NGS", "NGB", True), row("BLA", "BLA", False, "2026-12"),
            row(REFUSED, "EBO", False, "2026-12")]
    a = agreement(rows)
    assert (a.cells, a.agree, a.cases, a.refused) == (4, 2, 1, 1)
    assert (a.auto_accepted, a.auto_changed) == (2, 1)
    assert a.unknown_to_model == {"NGB": 1, "EBO": 1}
    assert a.confusion["NGB"] == {"NGS": 1} and a.confusion["EBO"] == {REFUSED: 1}
    per = {r["class"]: r for r in a.per_class}
    assert per["NGS"]["precision"] == 0.0 and per["NGB"]["recall"] == 0.0 and per["LYT"]["recall"] == 1.0
    assert [(m["month"], m["cells"], m["agree"]) for m in a.by_month] == [("2026-11", 2, 1), ("2026-12", 2, 1)]
    assert a.share_text().startswith("2 of 4 signed cells (50.0%")
