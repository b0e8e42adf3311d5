"""Fit the field cell finder's scorer (``bmcore.fields.FieldScorer``) on the tuning half of the annotated fields.

    .venv/bin/python -m train.fields_scorer                 # writes assets/fields/scorer.joblib + scorer.json

The finder reads every field many ways (``bmcore.fields.nucleus_candidates``: stain thresholds, lobe groupings,
watershed splits). Two models, gradient-boosted trees (scikit-learn), learn from the annotated white-cell boxes of
the *tune* half of ``../shared/data/fields/bccd`` (``train.bccd.bccd_split``; the *report* half is never read
here):

1. ``box``: the cell box from a reading's nucleus box and features, the cytoplasm's extents included (centre
   offset and log sides, in nucleus sides), learned on the readings whose nucleus centre lies in an annotated box;
2. ``classifier``: whether a reading's cell box, as ``box`` predicts it out of fold, matches an annotated white cell
   at IoU >= 0.5, from the features without the extents (``bmcore.fields.CLASSIFIER_FEATURES``). The finder's
   readings are nearly all of white cells (15 of the tune half's 360 are not), so the classifier also learns from
   the fields' annotated platelets: the readings down to ``PLATELET_MIN_AREA_UM2`` whose centre lies in a
   ``Platelets`` box and in no white cell's, as negatives (a clump of platelets is what the finder most often
   took for a small nucleus on fields the scorer had not seen).

The keep threshold comes from the F1 of whole-field selection (non-maximum suppression included) on the tune half
with out-of-fold predictions (5 folds grouped by field): the lowest threshold whose F1 is within ``F1_PLATEAU``
(0.01) of the best. That F1 curve is flat over most thresholds, so its exact maximum wandered from 0.05 to 0.95
between batches of fields; the lowest threshold on the plateau favours recall, the harder of the two goals
(README, "Smear fields": both rules measured by block cross-validation).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BM_SHARED", REPO.parent / "shared")) / "data"


def field_rows(root: Path, stems: list[str]):
    """Per field: (stem, rgb size, candidates, features, WBC boxes, platelet features). The candidates' features
    are exactly the finder's. The platelet features are rows of ``FEATURE_NAMES`` for the readings made with the
    smallest blob at ``PLATELET_MIN_AREA_UM2`` whose centre lies in an annotated platelet box and in no white
    cell's, and that are not (IoU > 0.9) one of the finder's own readings. They are close to, not exactly, what
    the finder would measure: almost all are smaller than any reading it makes (on the report half, 101 of 102
    under ``MIN_NUCLEUS_AREA_UM2``), their lobe groupings may take in specks it drops, and their nesting features
    count the other platelet readings too. They teach the classifier where platelets lie in its features; what
    they changed was measured on the finder itself (README, "Smear-field images")."""
    from PIL import Image

    from bmcore import fields as F
    from train import bccd

    out = []
    for s in stems:
        rgb = np.asarray(Image.open(root / "JPEGImages" / f"{s}.jpg").convert("RGB"))
        h, w = rgb.shape[:2]
        px = 1.0 / F.field_scale(rgb).um_per_px
        chan = F.nuclear_channel(rgb)
        cands = F.nucleus_candidates(rgb, px, chan)
        ann = bccd.read_voc(root / "Annotations" / f"{s}.xml")
        wbc = ann.get("WBC", [])
        plt = [c for c in F.nucleus_candidates(rgb, px, chan, F.PLATELET_MIN_AREA_UM2)
               if any(F.centre_in(c.nucleus_box, g) for g in ann.get("Platelets", []))
               and not any(F.centre_in(c.nucleus_box, g) for g in wbc)
               and not any(F.iou(c.nucleus_box, o.nucleus_box) > 0.9 for o in cands)]
        none = np.zeros((0, len(F.FEATURE_NAMES)), np.float32)
        X = F.candidate_features(rgb, cands, px, chan) if cands else none  # as the finder measures them
        Xp = F.candidate_features(rgb, cands + plt, px, chan)[len(cands):] if plt else none
        out.append((s, (w, h), cands, X, wbc, Xp))
    return out


def box_targets(cands, truth):
    """Per candidate: the annotated box its nucleus centre falls in (the tightest), as regression targets, or None."""
    from bmcore import fields as F

    t = []
    for c in cands:
        x0, y0, x1, y1 = c.nucleus_box
        cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
        hits = [g for g in truth if F.centre_in(c.nucleus_box, g)]
        if not hits:
            t.append(None)
            continue
        g = min(hits, key=lambda g: (g[2] - g[0]) * (g[3] - g[1]))
        t.append([((g[0] + g[2]) / 2 - cx) / s, ((g[1] + g[3]) / 2 - cy) / s,
                  np.log((g[2] - g[0]) / s), np.log((g[3] - g[1]) / s)])
    return t


F1_PLATEAU = 0.01


def pick_threshold(curve: list[dict], plateau: float = F1_PLATEAU) -> dict:
    """The lowest threshold of ``curve`` (dicts of threshold, recall, precision, f1) whose F1 is within ``plateau``
    of the best."""
    top = max(c["f1"] for c in curve)
    return min((c for c in curve if c["f1"] >= top - plateau), key=lambda c: c["threshold"])


def fit(rows, seed: int = 0, folds: int = 5):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.model_selection import GroupKFold

    from bmcore import fields as F
    from train import bccd

    X = np.concatenate([r[3] for r in rows])
    groups = np.concatenate([[i] * len(r[2]) for i, r in enumerate(rows)])
    platelets = np.concatenate([r[5] for r in rows])[:, :len(F.CLASSIFIER_FEATURES)]
    platelet_groups = np.concatenate([[i] * len(r[5]) for i, r in enumerate(rows)])
    cands = [c for r in rows for c in r[2]]
    tg = [t for r in rows for t in box_targets(r[2], r[4])]
    has = np.array([t is not None for t in tg])
    T = np.array([t if t is not None else [0, 0, 0, 0] for t in tg], np.float64)

    def regs(idx):
        return [HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                              min_samples_leaf=10, random_state=seed).fit(X[idx], T[idx, k])
                for k in range(4)]

    def clf():
        return HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, max_leaf_nodes=15,
                                              min_samples_leaf=10, random_state=seed)

    # out-of-fold cell boxes, then labels from them, then out-of-fold scores
    gkf = GroupKFold(n_splits=folds)
    oof_boxes = np.zeros((len(X), 4))
    for tr, te in gkf.split(X, groups=groups):
        sc = F.FieldScorer(None, regs(tr[has[tr]]), 0.5)
        oof_boxes[te] = sc.cell_boxes([cands[i] for i in te], X[te])
    y = np.zeros(len(X), int)
    for i, r in enumerate(rows):
        w, h = r[1]
        for j in np.nonzero(groups == i)[0]:
            b = np.clip(oof_boxes[j], 0, [w, h, w, h])  # as select() gives it: clipped to the field
            y[j] = int(any(F.iou(b, g) >= 0.5 for g in r[4]))
    Xc = X[:, :len(F.CLASSIFIER_FEATURES)]  # the classifier's columns: FieldScorer.scores
    oof_p = np.zeros(len(X))
    for tr, te in gkf.split(X, groups=groups):
        neg = np.isin(platelet_groups, groups[tr])  # the platelets of the training folds' fields only
        oof_p[te] = clf().fit(np.concatenate([Xc[tr], platelets[neg]]), np.concatenate([y[tr], np.zeros(neg.sum(), int)])
                              ).predict_proba(Xc[te])[:, 1]
    # the threshold: from the whole-field F1 of selection on out-of-fold figures (pick_threshold)
    curve = []
    for thr in np.round(np.arange(0.05, 0.96, 0.025), 3):
        tp = nf = nt = 0
        sc = F.FieldScorer(None, [], float(thr))
        for i, r in enumerate(rows):
            idx = np.nonzero(groups == i)[0]
            w, h = r[1]
            cells = sc.select(r[2], X[idx], w, h, scores=oof_p[idx], boxes=oof_boxes[idx]) if len(idx) else []
            found = [c.box for c in cells]
            tp, nf, nt = tp + bccd.match_boxes(found, r[4]), nf + len(found), nt + len(r[4])
        rec, prec = tp / max(1, nt), tp / max(1, nf)
        f1 = 2 * rec * prec / max(1e-9, rec + prec)
        curve.append({"threshold": float(thr), "recall": rec, "precision": prec, "f1": f1})
    best = pick_threshold(curve)
    final = {"classifier": clf().fit(np.concatenate([Xc, platelets]), np.concatenate([y, np.zeros(len(platelets), int)])),
             "box": regs(np.nonzero(has)[0]), "threshold": best["threshold"], "nms_iou": 0.3}
    info = {"candidates": int(len(X)), "positives": int(y.sum()), "with_box_target": int(has.sum()),
            "platelet_negatives": int(len(platelets)),
            "out_of_fold_on_tune": best, "folds": folds, "curve": curve}
    return final, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", default=str(SHARED / "fields" / "bccd"))
    ap.add_argument("--out", default=str(REPO / "assets" / "fields" / "scorer.joblib"))
    a = ap.parse_args(argv)
    import cv2
    import joblib
    import sklearn

    from bmcore import fields as F
    from train import bccd

    cv2.setNumThreads(1)
    root = Path(a.fields)
    if not (root / "Annotations").is_dir():
        print(f"annotated fields not found at {root}", file=sys.stderr)
        return 1
    stems = bccd.bccd_split(root)["tune"]
    t0 = time.perf_counter()
    rows = field_rows(root, stems)
    model, info = fit(rows)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out, compress=3)
    meta = {"sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "fitted": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "command": "python -m train.fields_scorer", "data": f"BCCD fields, tune half: {stems[0]} .. "
        f"{stems[-1]} ({len(stems)} fields)", "scikit_learn": sklearn.__version__, "features": F.FEATURE_NAMES,
        "classifier_features": F.CLASSIFIER_FEATURES, "cytoplasm_levels": list(F.CYTOPLASM_LEVELS),
        "extent_window": F.EXTENT_WINDOW,
        "platelet_min_area_um2": F.PLATELET_MIN_AREA_UM2, "candidate_levels": list(F.CANDIDATE_LEVELS), "candidate_groups_um": list(F.CANDIDATE_GROUPS_UM),
        "threshold": model["threshold"], "nms_iou": model["nms_iou"], **info,
        "seconds": round(time.perf_counter() - t0, 1)}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
