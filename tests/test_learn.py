"""Learning a candidate from the lab's signed cases (``python -m bmcore learn`` -> ``train.learn``), on real crops with
a short schedule: what it learns from (signed, non-demo, labelled cells only), the lab test set held out by case, a
class added once it has enough signed cells, a valid candidate bundle with its lineage, the criteria checked; and a
store with too little data is refused with what is missing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from bmcore.bundle import load_bundle
from bmcore.cases import CaseStore
from tests.conftest import SHARED
from tests.labstore import BASE, signed_case as _case, val_crops as _crops

EXTRA = SHARED / "data" / "bm-extra"


def test_a_candidate_learnt_from_signed_cases_holds_its_lab_test_out_by_case(dev_root, tmp_path):
    bands = sorted((EXTRA / "NGB").glob("*.jpg"))
    if len(bands) < 3:
        pytest.skip(f"the band neutrophil crops of {EXTRA / 'NGB'} are needed")
    db = f"sqlite:///{tmp_path / 'lab.db'}"
    store = CaseStore(db)
    crops = _crops(dev_root, 24)
    for k in range(9):  # 9 signed cases of 21 cells each; bands in three of them, a dismissed image in one
        part = crops[k::9]
        if k < 3:
            part = part + [("NGB", bands[k].read_bytes())]
        _case(store, f"LAB-{k}", part, refuse_last=(k == 4))
    demo = _case(store, "DEMO-1", _crops(dev_root, 30)[-5:], demo=True)
    unsigned = _case(store, "OPEN-1", _crops(dev_root, 31)[-5:], sign=False)
    never = {c.sha256 for cid in (demo, unsigned) for c in store.get_case(cid).cells}
    never |= {c.sha256 for c in store.get_case(store.case_id("LAB-4")).cells if c.rejected}
    out = tmp_path / "learn"
    r = subprocess.run([sys.executable, "-m", "bmcore", "learn", "--from-store", "--db", db, "--base", str(BASE),
                        "--out", str(out), "--name", "cand", "--epochs", "1", "--max-steps", "3", "--batch-size", "8",
                        "--min-class-cells", "2", "--skip-reference-test"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "cand" / "report.json").read_text())
    cases = report["cases"]
    assert cases["test"] and not set(cases["test"]) & (set(cases["train"]) | set(cases["val"]))
    assert not {"DEMO-1", "OPEN-1"} & set(sum(cases.values(), []))
    with open(out / "cand" / "lab_splits.csv") as f:
        rows = list(csv.DictReader(f))
    by_case = {r["case"]: r["split"] for r in rows if r["case"] != "(reference)"}
    assert all(by_case[k] == "test" for k in cases["test"] if k in by_case)
    assert {r["case"] for r in rows if r["split"] in ("train", "val")}.isdisjoint(cases["test"])  # by case id
    assert not never & {r["sha256"] for r in rows}, "learnt from an unsigned, demo or unlabelled refused cell"
    assert any(r["path"].startswith("ref/") for r in rows), "the reference training crops are replayed"
    cand = load_bundle(out / "cand" / "bundle")
    trained_bands = sum(r["label"] == "NGB" and r["split"] == "train" for r in rows)
    assert ("NGB" in cand.classes) == (trained_bands >= 2) and cand.classes[:2] == ["ART", "BLA"]
    lin = cand.lineage
    assert lin.parent_sha256 == load_bundle(BASE).sha256 and lin.data[0].kind == "signed-cases"
    assert "light augmentation; weights: the best epoch's; classes ART, BLA" in lin.method  # how it was learnt
    assert lin.data[0].cells == sum(r["split"] in ("train", "val") and r["case"] != "(reference)" for r in rows)
    assert cand.meta["onnx"]["fp32"]["file"] and cand.meta["ood"] and cand.meta["triage"]
    assert "lab test" in cand.meta["metrics"]["split"]
    from bmcore.governance import check

    assert report["passed"] == (not check(report["criteria"], report["figures"]["current"],
                                          report["figures"]["candidate"]))
    assert json.loads((out / "cand" / "status.json").read_text())["step"] == "done"


def test_too_little_data_is_refused_with_what_is_missing(dev_root, tmp_path):
    db = f"sqlite:///{tmp_path / 'lab.db'}"
    store = CaseStore(db)
    _case(store, "ONLY-1", _crops(dev_root, 2))
    r = subprocess.run([sys.executable, "-m", "bmcore", "learn", "--from-store", "--db", db, "--base", str(BASE),
                        "--out", str(tmp_path / "learn"), "--name", "c"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "1 case(s): at least 3 are needed" in r.stderr and "training cell(s)" in r.stderr
    assert not (tmp_path / "learn" / "c" / "bundle").exists()


def test_the_criteria_name_what_a_candidate_fails():
    from bmcore.governance import DEFAULT_CRITERIA, check
    from train.learn import figures

    cur = {"lab_test": figures(["LYT", "NGS", "EBO"], ["LYT", "NGS", "EBO"])}
    worse = {"lab_test": figures(["LYT", "NGS", "(refused)"], ["LYT", "NGS", "EBO"])}
    fails = check(DEFAULT_CRITERIA, cur, worse)
    assert any("lab-test macro-F1" in f for f in fails) and any(f.startswith("EBO:") for f in fails)
    assert any("refuses 33.3%" in f for f in fails)
    assert worse["lab_test"]["per_class_refused"] == {"EBO": 1} and cur["lab_test"]["per_class_refused"] == {}
    assert check(DEFAULT_CRITERIA, cur, cur) == []


def test_the_replay_is_the_stated_multiple_of_the_lab_cells_and_of_the_base_classes_only(dev_root, tmp_path):
    """``--replay-ratio``: the reference training crops replayed are that multiple of the lab's training cells, alike
    per class, of the base model's classes only (a class learnt from the lab is learnt from its cells alone)."""
    import hashlib
    from pathlib import Path

    from bmcore.labdata import LabCell
    from train.learn import write_dataset

    splits = Path(__file__).resolve().parents[1] / "train" / "splits" / "bm-dev_seed42.csv"
    files = sorted((dev_root / "LYT").glob("*.jpg"))[:12] + sorted((dev_root / "PMO").glob("*.jpg"))[:12]
    cells = [LabCell(case=f"c{i % 4}", label=f.parent.name, sha256=hashlib.sha256(f.read_bytes()).hexdigest(),
                     data=f.read_bytes()) for i, f in enumerate(files)]
    sides = {"c0": "train", "c1": "train", "c2": "val", "c3": "test"}
    counts = {}
    for ratio in (1.0, 3.0):
        _, csv_path, extra = write_dataset(tmp_path / str(ratio), cells, sides, ["EOS", "LYT", "PMO"], dev_root,
                                           splits, 0, replay_classes=["EOS", "LYT"], replay_ratio=ratio)
        rows = list(csv.DictReader(open(csv_path)))
        ref = [r for r in rows if r["case"] == "(reference)"]
        lab_train = sum(r["split"] == "train" and r["case"] != "(reference)" for r in rows)
        assert lab_train == 12 and extra["replayed_reference_crops"] == len(ref)
        assert {r["label"] for r in ref} == {"EOS", "LYT"}  # never the new class
        per = {k: sum(r["label"] == k for r in ref) for k in ("EOS", "LYT")}
        assert per["EOS"] == per["LYT"] == int(ratio * lab_train) // 2
        counts[ratio] = len(ref)
    assert counts[3.0] == 3 * counts[1.0]
