"""The quality + out-of-distribution gate: fitting, storage in the bundle, and the shipped model's figures."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bmcore.bundle import BundleError, load_bundle, save_gate
from bmcore.ood import (OOD_FILE, REASON_BLANK, REASON_BLUR, REASON_FIELD, REASON_OOD, fit_gate, quality_stats,
                        size_refusal)
from tests.conftest import DEV_CLASSES, REPO, SHARED

SPLITS = REPO / "train" / "splits" / "bm-dev_seed42.csv"
BCCD = SHARED / "data" / "fields" / "bccd"


def _clusters(rng, n, centres, spread=1.0):
    y = rng.integers(0, len(centres), n)
    return centres[y] + rng.normal(0, spread, (n, centres.shape[1])), y


def _sharp_quality(n):
    return np.column_stack([np.full(n, 50.0), np.full(n, 500.0)])


def test_fit_gate_calibrates_rejection_and_refuses_far_points():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 6, (4, 32))
    ftr, ytr = _clusters(rng, 2000, centres)
    fva, _ = _clusters(rng, 1000, centres)
    w = rng.normal(0, 1, (32, 4))
    gate = fit_gate(ftr, ytr, _sharp_quality(2000), fva, fva @ w, _sharp_quality(1000), k=16, target_rejection=0.05)
    r_val, _ = gate.reasons(fva, fva @ w, _sharp_quality(1000))
    assert np.mean([bool(r) for r in r_val]) == pytest.approx(0.05, abs=0.01)
    fte, _ = _clusters(rng, 1000, centres)  # fresh in-distribution points
    r_te, _ = gate.reasons(fte, fte @ w, _sharp_quality(1000))
    assert np.mean([bool(r) for r in r_te]) < 0.09
    far = rng.normal(0, 6, (200, 32)) + 40  # nowhere near any class
    r_far, _ = gate.reasons(far, far @ w, _sharp_quality(200))
    assert all(r == REASON_OOD for r in r_far)
    q = np.array([[0.5, 500.0], [50.0, 0.1]])  # blank, then out of focus
    r_q, _ = gate.reasons(fte[:2], fte[:2] @ w, q)
    assert r_q == [REASON_BLANK, REASON_BLUR]


def test_quality_stats_tell_blank_and_blurred_from_a_real_crop(crop_path):
    im = Image.open(crop_path).convert("RGB").resize((224, 224))
    std, focus = quality_stats(np.asarray(im))
    b_std, b_focus = quality_stats(np.asarray(im.filter(ImageFilter.GaussianBlur(8))))
    flat_std, _ = quality_stats(np.full((224, 224, 3), 200, np.uint8))
    assert flat_std == 0 and std > 5
    assert b_focus < focus / 10


def test_gate_is_stored_and_verified_in_the_bundle(tiny_bundle, tmp_path):
    import shutil

    b = load_bundle(shutil.copytree(tiny_bundle.path, tmp_path / "b"))
    assert b.gate() is None
    rng = np.random.default_rng(1)
    f, y = _clusters(rng, 300, rng.normal(0, 5, (3, 8)))
    gate = fit_gate(f, y, _sharp_quality(300), f[:100], f[:100, :3], _sharp_quality(100), k=4)
    save_gate(b, gate, fitted_on="synthetic")
    again = load_bundle(b.path).gate()
    assert again.threshold == pytest.approx(gate.threshold) and np.allclose(again.components, gate.components)
    assert json.loads((b.path / "bundle.json").read_text())["ood"]["fitted_on"] == "synthetic"
    raw = bytearray((b.path / OOD_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (b.path / OOD_FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(b.path).gate()


# --- the shipped default model's gate -------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_bundle_with_gate():
    from bmcore.cli import default_bundle

    b = load_bundle(default_bundle())
    if "ood" not in b.meta:
        pytest.fail("the default bundle has no out-of-distribution gate (run python -m train.ood)")
    return b


def test_default_gate_figures_reproduce_on_the_test_split(default_bundle_with_gate, dev_root):
    """The stated refusal rate on the test split (never used to fit or calibrate) is what the app's own Predictor
    (the bundle's engine, precision and TTA) refuses of those crop files, to the crop, and is at most 5%."""
    from bmcore.predictor import Predictor
    from train.ood import _split_files

    b = default_bundle_with_gate
    ev = json.loads((b.path / "eval_ood.json").read_text())
    stated = ev["test_as_run"]
    pred = Predictor(b)
    files, _ = _split_files(dev_root, SPLITS, "test", pred.classes)
    refused = [p.name for p in pred.predict(files) if p.rejected or not p.ok]
    assert len(files) == stated["crops"] == 810 and stated["split"] == "test split of bm-dev_seed42.csv"
    assert stated["setting"] == pred.setting and ev["test_rejection"] == stated["rate"]
    assert len(refused) == stated["refused"] and stated["rate"] <= 0.05
    assert ev["weights_sha256"] == b.sha256 and ev["val_rejection"] == b.meta["ood"]["val_rejection"] <= 0.05
    # the input-size rule refused none of them; the mosaics from 750 px up, all
    rule = ev["input_size_rule"]
    assert rule["test_refused"] == 0 and rule["max_side"] == 625
    for name, m in rule["mosaics"].items():
        if "2x2" not in name:
            assert m["refused"] == 1.0 and m["reasons"] == {REASON_FIELD: m["n"]}, name


def test_the_docs_and_eval_ood_state_the_same_gate_figures(default_bundle_with_gate):
    """The gate's documentation quotes the default bundle's eval_ood.json: the test split's refusals as the app runs
    them and the peripheral-blood figure (a new model or a new measurement must update both)."""
    ev = json.loads((default_bundle_with_gate.path / "eval_ood.json").read_text())
    readme = (REPO / "docs" / "reliability-and-deployment.md").read_text()
    t, blood = ev["test_as_run"], ev["peripheral_blood"]
    row = next(line for line in readme.splitlines() if line.startswith("| **test split"))
    assert f"**{t['rate']:.1%}** ({t['refused']} of {t['crops']}" in row and t["setting"] in row
    assert f"{t['ci95'][0]:.1%}–{t['ci95'][1]:.1%}" in row
    row = next(line for line in readme.splitlines() if line.startswith("| white cells of real peripheral-blood"))
    assert f"| {blood['crops']} |" in row and f"{blood['passed']} ({blood['passed'] / blood['crops']:.0%})" in row
    assert f"{blood['passed_confident']} ({blood['passed_confident'] / blood['crops']:.0%})" in row


def test_default_predictor_rejects_what_is_not_a_cell_crop(default_bundle_with_gate, crops):
    """Through the app's path (bytes in, Predictor.predict): generated non-crops are refused, real crops are not."""
    from bmcore.predictor import Predictor
    from train.ood import ood_corpus

    pred = Predictor(default_bundle_with_gate)
    real = [p for c in DEV_CLASSES for p in crops[c]]
    corpus = ood_corpus([Image.open(p).convert("RGB") for p in real], n=4, seed=3)

    def as_png(im):
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    kinds = [k for k, ims in corpus.items() for _ in ims]
    out = pred.predict([as_png(im) for ims in corpus.values() for im in ims], names=kinds)
    by_kind = {}
    for p in out:
        by_kind.setdefault(p.name, []).append(p)
    for kind in ("blank crop", "blurred crop", "screenshot", "noise"):
        assert all(p.rejected for p in by_kind[kind]), kind
    assert all(p.reject_reason == REASON_BLANK for p in by_kind["blank crop"])
    assert np.mean([p.rejected for p in out]) >= 0.75
    ok = pred.predict(real)
    assert np.mean([p.rejected for p in ok]) <= 0.15
    assert all(p.ok and p.code in DEV_CLASSES for p in ok)
    # the CSV carries the gate's score: higher for the generated non-crops than for real crops
    from bmcore.cellrows import prediction_rows

    out_scores = [r["gate_score"] for r in prediction_rows(out, pred.classes)]
    real_scores = [r["gate_score"] for r in prediction_rows(ok, pred.classes)]
    assert all(isinstance(v, float) for v in out_scores + real_scores)
    assert np.median(out_scores) > np.median(real_scores)
    # the gate changes no accepted prediction
    plain = Predictor(default_bundle_with_gate, gate=False).predict(real)
    assert [p.code for p in ok] == [p.code for p in plain]
    assert np.allclose([p.confidence for p in ok], [p.confidence for p in plain], atol=1e-5)


def test_train_ood_command_end_to_end(tiny_bundle, dev_root, tmp_path):
    """``python -m train.ood`` on a tiny budget: fits on train, calibrates on val, measures on test + corpus."""
    import shutil

    import pandas as pd

    from train.ood import main

    df = pd.read_csv(SPLITS)
    mini = pd.concat([df[df.split == s].groupby("label").head(k) for s, k in (("train", 8), ("val", 4), ("test", 3))])
    mini.to_csv(tmp_path / "mini.csv", index=False)
    b = shutil.copytree(tiny_bundle.path, tmp_path / "b")
    assert main(["--bundle", str(b), "--splits", str(tmp_path / "mini.csv"), "--data-root", str(dev_root),
                 "--n-ood", "3"]) == 0
    meta = load_bundle(b).meta["ood"]
    assert meta["val_rejection"] <= 0.04 + 1 / 32 and "train split" in meta["fitted_on"]
    ev = json.loads((b / "eval_ood.json").read_text())
    assert {"smear field (mosaic)", "blurred crop", "blank crop", "screenshot"} <= set(ev["by_kind"])
    assert all(0 <= v["auroc_vs_test"] <= 1 and v["n"] >= 1 for v in ev["by_kind"].values())
    assert ev["by_kind"]["blank crop"]["refused"] == 1.0  # the quality check needs no trained features
    # measured as the app runs it, the setting named; the input-size rule refuses the large mosaics, no test crop
    t = ev["test_as_run"]
    assert t["setting"] == "torch fp32, no TTA" and t["crops"] == 24 and t["split"] == "test split of mini.csv"
    assert t["refused"] == round(t["rate"] * 24) and t["ci95"][0] <= t["rate"] <= t["ci95"][1]
    rule = ev["input_size_rule"]
    assert rule["test_refused"] == 0 and meta["crop_side"] == rule["crop_side"] == 250
    assert rule["mosaics"]["camera field, 150 crops (4000x3000 px)"]["reasons"] == {REASON_FIELD: 1}
    if (BCCD / "Annotations").is_dir():
        blood = ev["peripheral_blood"]
        assert blood["crops"] > 250 and blood["passed_confident"] <= blood["passed"] <= blood["crops"]


# --- the input-size rule: camera fields and mosaics are not single-cell crops -----------------------------------


def _jpeg(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def real_crops(dev_root, n: int) -> list[Image.Image]:
    """``n`` different real crops, the classes taken in turn."""
    files = [sorted((dev_root / c).glob("*.jpg")) for c in DEV_CLASSES]
    return [Image.open(files[i % len(files)][i // len(files)]).convert("RGB") for i in range(n)]


def test_fields_and_mosaics_of_real_crops_are_refused_by_size_a_crop_is_not(tiny_bundle, dev_root, crops):
    """Through the path the app, the command line and the jobs share (Predictor.predict_items on uploaded bytes):
    a 4000x3000 camera field of 150 real crops and a 4x4 mosaic (1000x1000) are refused with the reason, by name,
    before the model; the real 250x250 crops of the same batch are classified."""
    from bmcore.inputs import from_upload
    from bmcore.predictor import Predictor
    from train.ood import field_mosaic

    real = real_crops(dev_root, 150)
    field = field_mosaic(real, 15, 10, (4000, 3000))
    mosaic = field_mosaic(real[-16:], 4, 4)
    assert field.size == (4000, 3000) and mosaic.size == (1000, 1000)
    items = [it for name, data in [("field.jpg", _jpeg(field)), (crops["BLA"][0].name, crops["BLA"][0].read_bytes()),
                                   ("mosaic.jpg", _jpeg(mosaic)), (crops["EOS"][0].name, crops["EOS"][0].read_bytes())]
             for it in from_upload(name, data)]
    out = Predictor(tiny_bundle).predict_items(items)
    assert [p.name for p in out] == [it.name for it in items]
    field_p, bla, mosaic_p, eos = out
    assert not field_p.ok and field_p.error.startswith("image is 4000x3000 px, " + REASON_FIELD)
    assert not mosaic_p.ok and "1000x1000 px" in mosaic_p.error and "at most 625 px a side" in mosaic_p.error
    assert bla.ok and eos.ok and bla.code in DEV_CLASSES and not bla.rejected


def test_size_rule_scales_with_the_training_crops_and_passes_every_test_crop(dev_root):
    """At most 2.5x the training crop side: 625 px for 250 px crops. None of the 810 test crops (all 250x250, as
    every crop of bm-dev) is refused by it; a 2x crop passes, a 3x3 mosaic does not."""
    from train.ood import _split_files

    assert size_refusal((250, 250), 250) == size_refusal((500, 500), 250) == size_refusal((625, 400), 250) == ""
    assert REASON_FIELD in size_refusal((750, 750), 250) and REASON_FIELD in size_refusal((626, 200), 250)
    assert size_refusal((750, 750), 300) == ""  # a model trained on larger crops accepts more
    files, _ = _split_files(dev_root, SPLITS, "test", DEV_CLASSES)
    sizes = [Image.open(p).size for p in files]
    assert len(sizes) == 810 and [s for s in sizes if size_refusal(s, 250)] == []


def test_bccd_white_cells_are_cut_one_per_box():
    """Peripheral-blood crops for the out-of-distribution figure: one 250 px square crop per boxed white cell."""
    import xml.etree.ElementTree as ET

    from train.ood import bccd_white_cells

    if not (BCCD / "Annotations").is_dir():
        pytest.skip(f"BCCD smear fields not found at {BCCD} (../shared/data is absent on this machine)")
    boxes = sum(o.findtext("name") == "WBC" for x in (BCCD / "Annotations").glob("*.xml")
                for o in ET.parse(x).getroot().iter("object"))
    cells = bccd_white_cells(BCCD, 250)
    assert len(cells) == boxes > 250 and all(c.size == (250, 250) for _, c in cells)
    name, first = cells[0]
    assert name == "BloodImage_00000#0"
    # the box (260,177)-(491,376) is a stained white cell: the crop's centre is bluer than its corner (red cells)
    a = np.asarray(first, np.float64)
    centre, corner = a[100:150, 100:150].reshape(-1, 3).mean(0), a[:30, :30].reshape(-1, 3).mean(0)
    assert centre[2] - centre[0] > corner[2] - corner[0] + 20
