"""Measure the field cell finder (bmcore.fields) on real annotated smear fields; writes JSON.

    .venv/bin/python bench/fields.py --out bench/results/fields.json          # the BCCD fields, both halves
    .venv/bin/python bench/fields.py --train-ratio --out bench/results/fields_train_ratio.json
    .venv/bin/python bench/fields.py --block-cv 4 --out bench/results/fields_block_cv.json   # the fitting procedure

Fields: ``../shared/data/fields/bccd`` (292 peripheral-blood fields, 640x480, every white cell boxed, red cells
boxed). Split once, by file name: the first half of the sorted stems (``tune``) is where the finder's constants
were chosen; the second half (``report``) was used only to measure them. Per half: white-cell recall and
precision at IoU >= 0.5 (every annotated WBC box, border-cut ones included: the finder must find them and mark
them), the same for whole cells only, the scale estimate from the red cells against the red-cell boxes (median of
the annotated whole red cells' (w+h)/2 per field; relative error per field), and seconds per field (decode
excluded, one thread, this machine; loading the scorer, once per process, is timed apart; ``--busy`` runs it
beside one CPU-bound process). Speed is measured, never asserted.

``--train-ratio``: the nucleated cell's size over the crop side in the training crops of
``../shared/data/bm-dev`` (250x250, cell centred): the side of the nucleus box the finder gives for the cell
nearest the centre of each crop (the nucleus, not the grown cell box: a marrow cell's cytoplasm often reaches
the crop's edge; crops whose central nucleus box touches the crop's edge are left out, merged with a
neighbour or cut), over a seeded sample per class; the median is ``bmcore.fields.TRAIN_NUCLEUS_FRACTION``.

``--block-cv K``: how the scorer's *fitting procedure* (``train.fields_scorer.fit``: trees, out-of-fold threshold)
generalises across batches of fields. All 292 fields are cut into K contiguous blocks by file name; each block is
measured with a scorer fitted on the other K-1 (the shipped scorer is not used), at the threshold that fit chose
and at fixed thresholds (a precision/recall curve), pooled over the blocks. No block is scored by a scorer that
saw it, unlike the tune half in the two-half figures. ``--windows 0.5,0.6,...`` adds the choice of
``EXTENT_WINDOW`` to the procedure (nested: each held-out block gets the window whose fit on the other blocks
reached the best out-of-fold F1) and reports each window's pooled figures beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bmcore import fields as F  # noqa: E402
from train import bccd  # noqa: E402

SHARED = Path(os.environ.get("BM_SHARED", REPO.parent / "shared")) / "data"


def evaluate(root: Path, stems: list[str], um_per_px: float | None = None) -> dict:
    tp = n_found = n_true = 0
    tp_w = n_found_w = n_true_w = 0
    times, errs, misses, fps = [], [], [], []
    F.field_scorer()  # loaded once per process, before the clock (main times it)
    for s in stems:
        truth = bccd.read_voc(root / "Annotations" / f"{s}.xml")
        rgb = np.asarray(Image.open(root / "JPEGImages" / f"{s}.jpg").convert("RGB"))
        h, w = rgb.shape[:2]
        t0 = time.perf_counter()
        res = F.find_cells(rgb, um_per_px)
        times.append(time.perf_counter() - t0)
        found = [c.box for c in res.cells]
        wbc = truth.get("WBC", [])
        m = bccd.match_boxes(found, wbc)
        tp, n_found, n_true = tp + m, n_found + len(found), n_true + len(wbc)
        if m < len(wbc):
            misses.append(s)
        if m < len(found):
            fps.append(s)
        whole_t = [b for b in wbc if b[0] > 1 and b[1] > 1 and b[2] < w - 1 and b[3] < h - 1]
        whole_f = [c.box for c in res.whole]
        tp_w += bccd.match_boxes(whole_f, whole_t)
        n_found_w, n_true_w = n_found_w + len(whole_f), n_true_w + len(whole_t)
        rbc = truth.get("RBC_whole", [])
        if res.scale.rbc_diameter_px and len(rbc) >= 3:
            gt = statistics.median(((b[2] - b[0]) + (b[3] - b[1])) / 2 for b in rbc)
            errs.append((res.scale.rbc_diameter_px - gt) / gt)
    e = np.abs(errs) if errs else np.zeros(0)
    return {
        "fields": len(stems), "wbc_boxes": n_true, "found": n_found, "matched": tp,
        "recall": tp / max(1, n_true), "precision": tp / max(1, n_found),
        "whole_cells": {"wbc_boxes": n_true_w, "found": n_found_w, "matched": tp_w,
                        "recall": tp_w / max(1, n_true_w), "precision": tp_w / max(1, n_found_w)},
        "scale": {"fields_compared": len(errs), "median_abs_rel_error": float(np.median(e)) if len(e) else None,
                  "p90_abs_rel_error": float(np.percentile(e, 90)) if len(e) else None,
                  "median_signed_rel_error": float(np.median(errs)) if errs else None,
                  "fields_within_10pct": int((e <= 0.10).sum())},
        "seconds_per_field": {"mean": statistics.mean(times), "median": statistics.median(times),
                              "max": max(times)},
        "fields_with_missed_wbc": misses, "fields_with_extra_boxes": fps,
    }


def train_ratio(root: Path, per_class: int) -> dict:
    """Cell side / crop side in the training crops: the found cell nearest each crop's centre."""
    out, per = [], {}
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted((root / cls).glob("*.jpg"))
        vals = []
        for f in random.Random(0).sample(files, min(per_class, len(files))):
            rgb = np.asarray(Image.open(f).convert("RGB"))
            h, w = rgb.shape[:2]
            res = F.find_cells(rgb)
            if not res.cells:
                continue
            c = min(res.cells, key=lambda c: ((c.box[0] + c.box[2]) / 2 - w / 2) ** 2 + ((c.box[1] + c.box[3]) / 2 - h / 2) ** 2)
            nb = c.nucleus_box
            if nb[0] <= 1 or nb[1] <= 1 or nb[2] >= w - 1 or nb[3] >= h - 1:
                continue  # a nucleus box that reaches the crop's edge is cut or merged with a neighbour: not measured
            vals.append(max(nb[2] - nb[0], nb[3] - nb[1]) / max(w, h))
        per[cls] = {"crops": len(vals), "median": statistics.median(vals) if vals else None}
        out += vals
    return {"crops": len(out), "median_nucleus_fraction": statistics.median(out),
            "quartiles": [float(q) for q in np.percentile(out, [25, 50, 75])], "per_class": per,
            "measure": "nucleus box side / crop side", "note": "training crops carry no scale; the finder ran with its own scale estimate or its default"}


def block_cv(root: Path, k: int, thresholds=(0.05, 0.2, 0.4, 0.6, 0.8, 0.9), windows=()) -> dict:
    """Contiguous-block cross-validation of the scorer's fitting procedure (see the module's docstring). With
    ``windows``, the procedure also chooses ``bmcore.fields.EXTENT_WINDOW`` among them, for each held-out block by
    the out-of-fold F1 that fitting on the other blocks reaches (nested: no block chooses its own window)."""
    from train.fields_scorer import field_rows, fit

    stems = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    split = np.array_split(np.arange(len(stems)), k)

    def score(scorer, rows, idx) -> list[int]:
        tp = nf = nt = 0
        for i in idx:
            _, (w, h), cands, X, truth, _ = rows[i]
            found = [c.box for c in scorer.select(cands, X, w, h)] if cands else []
            tp, nf, nt = tp + bccd.match_boxes(found, truth), nf + len(found), nt + len(truth)
        return [tp, nf, nt]

    def run(window: float) -> dict:
        shipped, F.EXTENT_WINDOW = F.EXTENT_WINDOW, window
        try:
            rows = field_rows(root, stems)
        finally:
            F.EXTENT_WINDOW = shipped
        blocks, curve = [], {t: [0, 0, 0] for t in thresholds}
        for idx in split:
            held = set(idx.tolist())
            model, info = fit([r for i, r in enumerate(rows) if i not in held])
            tp, nf, nt = score(F.FieldScorer(model["classifier"], model["box"], model["threshold"], model["nms_iou"]),
                               rows, idx)
            blocks.append({"fields": f"{stems[idx[0]]} .. {stems[idx[-1]]} ({len(idx)})",
                           "threshold": model["threshold"], "inner_out_of_fold_f1": info["out_of_fold_on_tune"]["f1"],
                           "recall": tp / max(1, nt), "precision": tp / max(1, nf), "found": nf, "matched": tp,
                           "annotated": nt})
            for t in thresholds:
                c = score(F.FieldScorer(model["classifier"], model["box"], t, model["nms_iou"]), rows, idx)
                curve[t] = [a + b for a, b in zip(curve[t], c)]
        return {"extent_window": window, "blocks": blocks, "pooled": _pooled(blocks),
                "fixed_thresholds": [{"threshold": t, "recall": c[0] / c[2], "precision": c[0] / max(1, c[1])}
                                     for t, c in curve.items()]}

    out = {"k": k, **run(F.EXTENT_WINDOW)}
    if windows:
        runs = {F.EXTENT_WINDOW: out, **{w: run(w) for w in windows if w != F.EXTENT_WINDOW}}
        nested = []
        for b in range(k):
            w = max(runs, key=lambda w: runs[w]["blocks"][b]["inner_out_of_fold_f1"])
            nested.append({**runs[w]["blocks"][b], "extent_window": w})
        out["windows"] = [{"extent_window": w, "pooled": r["pooled"], "thresholds": [b["threshold"] for b in r["blocks"]]}
                          for w, r in sorted(runs.items())]
        out["nested"] = {"blocks": nested, "pooled": _pooled(nested)}
    return out


def _pooled(blocks: list[dict]) -> dict:
    tp, nf, nt = (sum(b[key] for b in blocks) for key in ("matched", "found", "annotated"))
    return {"recall": tp / nt, "precision": tp / nf, "matched": tp, "found": nf, "annotated": nt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", default=str(SHARED / "fields" / "bccd"))
    ap.add_argument("--part", choices=["tune", "report", "both"], default="both")
    ap.add_argument("--um-per-px", type=float, default=None, help="give the scale instead of estimating it")
    ap.add_argument("--train-ratio", action="store_true", help="measure the cell/crop ratio of the training crops")
    ap.add_argument("--train-root", default=str(SHARED / "bm-dev"))
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--block-cv", type=int, default=0, metavar="K", help="cross-validate the scorer's fitting over K "
                    "contiguous blocks of all fields (instead of the two halves)")
    ap.add_argument("--windows", default="", help="with --block-cv: comma-separated EXTENT_WINDOW values the "
                    "procedure chooses among (nested)")
    ap.add_argument("--busy", action="store_true", help="run beside one CPU-bound process (a lab server is never "
                    "idle): the finder's speed with one core taken")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import subprocess

    import cv2

    cv2.setNumThreads(1)
    t0 = time.perf_counter()
    F.field_scorer()  # once per process (imports scikit-learn, checks and loads the trees): timed apart
    load_s = time.perf_counter() - t0
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
    try:
        return _run(a, argv, load_s)
    finally:
        if burner:
            burner.kill()


def _run(a, argv, load_s: float) -> int:
    import cv2

    from bmcore.bench import cpu_model

    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "scorer_load_seconds_once": load_s,
            "competing_load": "one CPU-bound process (python: while True: pass) for the whole run" if a.busy else None,
            "opencv": cv2.__version__, "command": " ".join(["bench/fields.py", *(argv or sys.argv[1:])]),
            "constants": {k: getattr(F, k) for k in dir(F)
                          if k.isupper() and isinstance(getattr(F, k), (int, float, tuple))}}
    if a.train_ratio:
        root = Path(a.train_root)
        if not root.is_dir():
            print(f"training crops not found at {root}", file=sys.stderr)
            return 1
        result = {**meta, "train_ratio": train_ratio(root, a.per_class)}
        print(json.dumps(result["train_ratio"], indent=1))
    elif a.block_cv:
        root = Path(a.fields)
        if not (root / "Annotations").is_dir():
            print(f"annotated fields not found at {root}", file=sys.stderr)
            return 1
        result = {**meta, "fields_root": str(root), "iou": 0.5, "block_cv": block_cv(
            root, a.block_cv, windows=[float(w) for w in a.windows.split(",") if w])}
        cv = result["block_cv"]
        for b in cv["blocks"]:
            print(f"{b['fields']}: recall {b['recall']:.3f} precision {b['precision']:.3f} (threshold {b['threshold']})")
        print("pooled:", cv["pooled"])
        for r in cv["fixed_thresholds"]:
            print(f"threshold {r['threshold']}: recall {r['recall']:.3f} precision {r['precision']:.3f}")
        for r in cv.get("windows", []):
            print(f"extent window {r['extent_window']}: {r['pooled']}")
        if "nested" in cv:
            print("nested (window chosen per block):", cv["nested"]["pooled"],
                  [b["extent_window"] for b in cv["nested"]["blocks"]])
    else:
        root = Path(a.fields)
        if not (root / "Annotations").is_dir():
            print(f"annotated fields not found at {root}", file=sys.stderr)
            return 1
        parts = bccd.bccd_split(root)
        names = ["tune", "report"] if a.part == "both" else [a.part]
        result = {**meta, "fields_root": str(root), "split": {k: f"{v[0]} .. {v[-1]} ({len(v)})" for k, v in parts.items()},
                  "iou": 0.5, "scale_given": a.um_per_px}
        for k in names:
            r = evaluate(root, parts[k], a.um_per_px)
            result[k] = r
            print(f"{k:7s} fields {r['fields']}: recall {r['recall']:.3f} precision {r['precision']:.3f} "
                  f"(whole cells: {r['whole_cells']['recall']:.3f} / {r['whole_cells']['precision']:.3f}); "
                  f"scale error median {r['scale']['median_abs_rel_error']:.3f} p90 {r['scale']['p90_abs_rel_error']:.3f}; "
                  f"{r['seconds_per_field']['mean']:.3f} s/field")
            print(f"   missed in {len(r['fields_with_missed_wbc'])} fields: {r['fields_with_missed_wbc'][:12]}")
            print(f"   extra in {len(r['fields_with_extra_boxes'])} fields: {r['fields_with_extra_boxes'][:12]}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
