"""Export a bundle to ONNX (fp32 + int8), choose what it runs by default on the validation split, re-fit.

    python -m train.export --bundle assets/models/bm14-mobilenetv2-224px \
        --splits train/splits/bm-dev_seed42.csv --data-root ../shared/data/bm-dev

1. ``model.onnx`` (fp32) and ``model.int8.onnx`` (static per-channel int8, calibrated on ``--calibration``
   crops of the **train** split) are written and sha256-recorded in ``bundle.json["onnx"]`` (``bmcore.engine``).
2. Every setting (torch fp32, ONNX fp32, ONNX int8; each with and without 4-view TTA) is measured on the **val**
   split: macro-F1, and ms per cell of the forward pass on this machine (``--threads``). The default is the
   fastest setting whose val macro-F1 is within ``--tolerance`` of torch fp32 with the bundle's current TTA
   (the setting the bundle was selected with). The **test** split's macro-F1 of every setting is recorded
   beside it, for the record.
3. Acceptance: a chosen setting that computes something else than that reference (int8, or other TTA) must
   also keep the **test** macro-F1 within ``--tolerance`` of the reference's (the goal of "Fast inference");
   if it does not, it is recorded as the rejected candidate and the default is the reference's own
   computation on ONNX Runtime (fp32, equal to torch within ``bmcore.engine.ONNX_FP32_ATOL``). The test split
   accepts or refuses that one candidate; it never ranks settings.
4. If the default computes something else than the reference, what depends on the model's outputs is fitted
   again on the same splits as at training: the temperature (val), the quality / out-of-distribution gate
   (train + val, ``train.ood``), the review rule (val, ``train.triage``). The test split is evaluated with the
   default (``eval_test.json``, ``bundle.json["metrics"]``): the figures the app shows are of what it runs.
   Otherwise the bundle's gate is kept and measured again as the app now runs it (``train.ood --measure-only``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bmcore.bundle import load_bundle, update_bundle_meta
from bmcore.engine import export_onnx, inference_threads
from bmcore.metrics import classification_metrics, softmax
from bmcore.predictor import Predictor
from bmcore.preprocess import normalize, stack_crops

from .data import CropDataset, load_splits
from .evaluate import bundle_parser, evaluate, split_batches

SETTINGS = [("torch", "fp32", False), ("torch", "fp32", True), ("onnx", "fp32", False), ("onnx", "fp32", True),
            ("onnx", "int8", False), ("onnx", "int8", True)]


def calibration_crops(pred: Predictor, root, splits_csv, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``n`` train-split crops, stratified by class, normalised as the model sees them."""
    df = load_splits(splits_csv)
    df = df[(df.split == "train") & df.label.isin(pred.classes)]
    per = max(1, n // df.label.nunique())
    pick = pd.concat([g.sample(min(per, len(g)), random_state=seed) for _, g in df.groupby("label")])
    ds = CropDataset(root, pick, pred.classes, pred.cfg, cache=False)
    x = normalize(stack_crops([ds.uint8(i) for i in range(len(ds))]), pred.cfg).numpy()
    return x, f"{len(x)} crops of the train split of {Path(splits_csv).name}, stratified by class (seed {seed})"


def measure(bundle, root, splits_csv, engine: str, precision: str, tta: bool, cached: dict) -> dict:
    """Val and test macro-F1 and the forward pass's ms per cell (val crops, micro-batches) of one setting."""
    pred = Predictor(bundle, engine=engine, precision=precision, tta=tta, gate=False)
    row = {"engine": engine, "precision": precision, "tta": tta}
    for split in ("val", "test"):
        if split not in cached:
            y, batches = split_batches(pred, root, splits_csv, split)
            cached[split] = (y, [normalize(b, pred.cfg) for b in batches])
        y, xs = cached[split]
        pred.logits(xs[0][:16])  # warm-up
        t = time.perf_counter()
        lg = np.concatenate([pred.logits(x) for x in xs])
        secs = time.perf_counter() - t
        m = classification_metrics(y, softmax(lg, pred.temperature), pred.classes)
        row[f"{split}_macro_f1"] = m["macro_f1"]
        if split == "val":
            row["val_n"] = int(len(y))
            row["forward_ms_per_cell"] = 1000 * secs / len(y)
        else:
            row["test_n"] = int(len(y))
    return row


def choose(rows: list[dict], reference: dict, tolerance: float) -> dict:
    """The fastest setting whose val macro-F1 is within ``tolerance`` of the reference's."""
    ok = [r for r in rows if r["val_macro_f1"] >= reference["val_macro_f1"] - tolerance]
    return min(ok, key=lambda r: r["forward_ms_per_cell"])


def main(argv=None) -> int:
    ap = bundle_parser("python -m train.export", __doc__)
    ap.add_argument("--calibration", type=int, default=256, help="train crops for the int8 activation ranges")
    ap.add_argument("--tolerance", type=float, default=0.005, help="val macro-F1 a faster setting may lose")
    ap.add_argument("--threads", type=int, default=None, help="inference threads while timing (default: cores)")
    ap.add_argument("--no-refit", action="store_true", help="only export and choose; keep temperature, gate, rule")
    a = ap.parse_args(argv)
    if a.threads:
        import os

        os.environ["BM_INFERENCE_THREADS"] = str(a.threads)
    bundle = load_bundle(a.bundle)
    before = dict(bundle.meta.get("inference", {}))
    ref_tta = bool(before.get("reference_tta", before.get("tta", False)))
    probe = Predictor(bundle, engine="torch", gate=False)
    calib, note = calibration_crops(probe, a.data_root, a.splits, a.calibration)
    export_onnx(bundle, calib, note)
    print(f"exported {bundle.meta['onnx']['fp32']['file']}, {bundle.meta['onnx']['int8']['file']} ({note})", flush=True)
    cached: dict = {}
    rows = []
    for engine, precision, tta in SETTINGS:
        rows.append(measure(bundle, a.data_root, a.splits, engine, precision, tta, cached))
        r = rows[-1]
        print(f"{engine:5s} {precision} tta={str(tta):5s} val macro-F1 {r['val_macro_f1']:.4f} "
              f"test {r['test_macro_f1']:.4f} {r['forward_ms_per_cell']:.2f} ms/cell", flush=True)
    reference = next(r for r in rows if r["engine"] == "torch" and r["tta"] == ref_tta)
    same = next(r for r in rows if (r["engine"], r["precision"], r["tta"]) == ("onnx", "fp32", ref_tta))
    best = choose(rows, reference, a.tolerance)
    # acceptance, not choice: a setting that computes something else than the reference (int8, other TTA) must keep
    # the test macro-F1 within the tolerance of the reference's; if it does not, the default is the reference's
    # own computation on the faster engine (ONNX fp32, equal to torch within bmcore.engine.ONNX_FP32_ATOL)
    rejected = None
    if (best["precision"], best["tta"]) != ("fp32", ref_tta) and \
            best["test_macro_f1"] < reference["test_macro_f1"] - a.tolerance:
        rejected = {**best, "why": f"chosen on val, but its test macro-F1 {best['test_macro_f1']:.4f} is more than "
                                   f"{a.tolerance} below the reference's {reference['test_macro_f1']:.4f}"}
        best = same if same["forward_ms_per_cell"] < reference["forward_ms_per_cell"] else reference
    update_bundle_meta(bundle, inference={
        "engine": best["engine"], "precision": best["precision"], "tta": best["tta"],
        "reference_tta": ref_tta,
        "selected_on": f"val split of {Path(a.splits).name} ({best['val_n']} crops)",
        "rule": f"fastest setting whose val macro-F1 is within {a.tolerance} of torch fp32 "
                f"({'with' if ref_tta else 'without'} TTA, the setting training selected); a setting that computes "
                f"something else must also keep the test macro-F1 within {a.tolerance} of that reference's "
                "(acceptance only: the test split never ranks settings)",
        "rejected_candidate": rejected,
        "timed_on": f"{inference_threads()} inference thread(s), forward pass only, val crops in micro-batches",
        "settings": rows})
    print(f"default: {best['engine']} {best['precision']} tta={best['tta']}"
          + (f" (rejected: {rejected['engine']} {rejected['precision']} tta={rejected['tta']}: {rejected['why']})"
             if rejected else ""), flush=True)
    refit = (best["precision"], best["tta"]) != ("fp32", ref_tta) and not a.no_refit
    # the reference's own computation needs no new temperature, gate or rule: only the figures' setting changes
    report = evaluate(bundle, a.data_root, a.splits, split="test", fit_calibration=refit)
    if refit:
        from .ood import fit_and_measure as fit_gate
        from .triage import fit_and_measure as fit_triage

        g = fit_gate(bundle, a.data_root, a.splits)
        print(f"gate: refuses {g['val_rejection']:.3f} of val, {g['test_rejection']:.3f} of test", flush=True)
        t = fit_triage(bundle, a.data_root, a.splits)
        print(f"review rule: goal reached on test: {t['goal_reached_on_test']}", flush=True)
    elif bundle.meta.get("ood"):  # the same gate, but its figures must be those of what the app now runs
        from .ood import fit_and_measure as measure_gate

        g = measure_gate(bundle, a.data_root, a.splits, refit=False)
        print(f"gate ({g['test_as_run']['setting']}): refuses {g['test_rejection']:.3f} of test", flush=True)
    m = report["metrics"]
    print(f"test ({report['setting']}): macro-F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f}", flush=True)
    print(json.dumps(bundle.meta["inference"], indent=1)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
