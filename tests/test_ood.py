"""The quality + out-of-distribution gate: fitting, storage in the bundle, and the shipped model's figures."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bmcore.bundle import BundleError, load_bundle, save_gate
from bmcore.ood import OOD_FILE, REASON_BLANK, REASON_BLUR, REASON_OOD, fit_gate, quality_stats
from tests.conftest import DEV_CLASSES, REPO

SPLITS = REPO / "train" / "splits" / "bm-dev_seed42.csv"


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
    """The stated in-distribution rejection rate (test split, never used to fit or calibrate) reproduces, <= 5%."""
    from bmcore.predictor import Predictor
    from train.evaluate import split_batches
    from train.ood import gate_inputs

    b = default_bundle_with_gate
    pred = Predictor(b, gate=False)
    y, batches = split_batches(pred, dev_root, SPLITS, "test")
    lg, ft, q = gate_inputs(pred, batches)
    reasons, _ = b.gate().reasons(ft, lg, q)
    refused = np.mean([bool(r) for r in reasons])
    assert len(y) == 810
    assert refused == pytest.approx(b.meta["ood"]["test_rejection"], abs=0.002)
    assert refused <= 0.05
    assert b.meta["ood"]["val_rejection"] <= 0.05
    ev = json.loads((b.path / "eval_ood.json").read_text())
    assert ev["weights_sha256"] == b.sha256 and ev["auroc"] == b.meta["ood"]["auroc"]


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
    from bmcore.report import prediction_rows

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
